"""``edgelearn bench gateway`` and ``edgelearn bench cloud``: their pure helpers, and both
benchmarks run end to end in a reduced form (few cameras, short runs, a real broker)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from bench import cloud as cloud_bench
from bench import gateway as gateway_bench
from bench.runs import percentiles_ms
from cloud.consumer import CloudConsumer, ConsumerConfig
from cloud.registry import Registry
from edgelearn import codec, wire
from edgelearn.artifacts import TensorQuantization
from edgelearn.metrics import Samples, machine_info, parse_samples
from edgelearn.modes import Mode
from edgelearn.secrets import Secrets
from edgelearn.service import serve_in_thread
from gateway.metrics import GatewayMetrics
from gateway.pipeline import Forward, HeldBack
from tests.support.broker import BrokerUnderTest
from tests.support.gateway import pca_deployment

# --- pure helpers ---------------------------------------------------------------------------


def test_stage_times_merge_and_report_means_in_pipeline_order() -> None:
    first, second = gateway_bench.StageTimes(), gateway_bench.StageTimes()
    first.record("encode", 0.004)
    first.record("keyframe", 0.001)
    first.record("keyframe", 0.003)
    second.record("keyframe", 0.002)
    second.record("decode", 0.010)
    first.merge(second)
    means = first.mean_ms()
    assert list(means) == ["keyframe", "decode", "encode"]  # STAGES order, absent ones left out
    assert means == {"keyframe": 2.0, "decode": 10.0, "encode": 4.0}
    assert gateway_bench.StageTimes().mean_ms() == {}


def test_camera_cycles_are_out_of_step_and_interleave_keeps_every_frame() -> None:
    frames = {f"cam-{c}": [(c, i) for i in range(4)] for c in range(1, 5)}
    cycles = gateway_bench.camera_cycles(frames)
    assert [cycle[0][1] for cycle in cycles.values()] == [0, 1, 2, 3]  # camera i starts at i/n
    for camera, cycle in cycles.items():
        assert sorted(cycle) == frames[camera]
    order = gateway_bench.interleave(cycles)
    assert len(order) == 16
    assert [camera for camera, _ in order[:4]] == [1, 2, 3, 4]  # one frame of each camera


def _result(
    frames: int, forwarded: int, seconds: float, start: float = 0.0
) -> gateway_bench.WorkerResult:
    result = gateway_bench.WorkerResult(started=start, ended=start + seconds)
    envelope = wire.Result(
        camera_id="cam-1",
        seq=0,
        capture_ns=0,
        result_ns=0,
        gateway_id="gw-1",
        mode="full",
        label=None,
        predicted=0,
        score=1.0,
        model_version="v1",
        computed_at=wire.ComputedAt.EDGE,
        held_back=0,
        held_mismatched=0,
    )
    for index in range(frames):
        if index < forwarded:
            result.count(Forward(envelope, "full", b"x" * 100), 0.002, 1000)
        else:
            result.count(HeldBack(0.0), 0.001, 1000)
    result.cpu_seconds = seconds / 2
    result.stages.record("keyframe", 0.001 * frames)
    return result


def test_summarize_mode_takes_the_better_worker_count_and_counts_bytes_per_frame() -> None:
    runs = {
        1: [_result(100, 10, 1.0)],
        # Two workers that overlap: 300 frames between t=0 and t=1.5.
        2: [_result(150, 15, 1.5), _result(150, 15, 1.0, start=0.5)],
    }
    entry = gateway_bench.summarize_mode(runs)
    assert entry["by_workers"]["1"]["frames_per_second"] == 100.0
    assert entry["by_workers"]["2"]["frames_per_second"] == 200.0
    assert (entry["frames_per_second"], entry["workers"]) == (200.0, 2)
    assert entry["frames_per_second_per_worker"] == 100.0
    assert entry["keyframe_ratio"] == 0.1
    assert entry["bytes_per_frame_out"] == 100.0
    assert entry["uplink_bytes_per_input_frame"] == 10.0
    assert entry["process_ms"] == {"held_back": 1.0, "forwarded": 2.0}  # the 1-worker run
    assert entry["by_workers"]["1"]["cpu_utilisation_per_worker"] == 0.5
    ratios = gateway_bench.mode_ratios({"raw": entry, "other": entry})
    assert ratios["two_workers_vs_one"] == {"raw": 2.0, "other": 2.0}
    assert ratios["uplink_vs_raw"]["other"] == 1.0


def test_pipeline_cpu_alone_is_rescaled_to_another_keyframe_ratio() -> None:
    in_process = {
        "process_ms": {"held_back": 1.0, "forwarded": 5.0},
        "keyframe_ratio": 0.0,
        "cpu_ms_per_frame": 0.5,  # half of the 1 ms wall: the worker had half a core
    }
    assert gateway_bench.pipeline_cpu_ms_alone(in_process, 0.0) == pytest.approx(0.5)
    # A quarter of the frames are keyframes: 2 ms of wall per frame, so 1 ms of CPU.
    assert gateway_bench.pipeline_cpu_ms_alone(in_process, 0.25) == pytest.approx(1.0)
    missing = {**in_process, "process_ms": {"held_back": None, "forwarded": 5.0}}
    assert gateway_bench.pipeline_cpu_ms_alone(missing, 0.25) is None


def test_scraped_samples_sum_over_label_sets_and_workers() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    metrics.received.labels("cam-1", "mqtt").inc(3)
    metrics.received.labels("cam-2", "mqtt").inc(4)
    metrics.dropped.labels("cam-1", "queue_full").inc(2)
    metrics.stage_seconds.labels("keyframe").observe(0.002)
    one = parse_samples(generate_latest(registry).decode())
    samples = Samples(one.rows * 2)  # two workers
    assert samples.total("edgelearn_gateway_frames_received_total") == 14
    assert samples.total("edgelearn_gateway_frames_received_total", camera="cam-2") == 8
    dropped = samples.by_label("edgelearn_gateway_frames_dropped_total", "reason")
    assert dropped == {"queue_full": 4}
    received = samples.by_label("edgelearn_gateway_frames_received_total", "camera", camera="cam-1")
    assert received == {"cam-1": 6}


def test_percentiles_of_latencies() -> None:
    values = [1_000_000 * v for v in range(1, 101)]  # 1..100 ms
    summary = percentiles_ms(values)
    assert summary["count"] == 100
    assert summary["p50"] == pytest.approx(50.5)
    assert summary["p99"] == pytest.approx(99.01)
    assert summary["max"] == 100.0
    assert percentiles_ms([])["p50"] is None


def test_feature_envelope_bytes_are_the_encoded_envelopes() -> None:
    values = np.arange(2 * 32, dtype=np.int8).reshape(2, 32)
    quantization = TensorQuantization("int8", (32,), 0.1, 3)
    sizes = cloud_bench.feature_envelope_bytes(
        values,
        np.array([1, 2]),
        quantization,
        mode="pca",
        model_version="v7",
        raw_bytes=50_000,
    )
    encoded = codec.encode_array(values[1], codec=wire.Codec.ZSTD, scale=0.1, zero_point=3)
    feature = wire.Feature(
        camera_id="cam-1",
        seq=1,
        capture_ns=0,
        gateway_id="gw-1",
        label=2,
        mode="pca",
        model_version="v7",
        dtype=encoded.dtype,
        shape=encoded.shape,
        scale=encoded.scale,
        zero_point=encoded.zero_point,
        codec=encoded.codec,
        raw_bytes=50_000,
        held_back=0,
        held_mismatched=0,
        payload=encoded.payload,
    )
    assert sizes[1] == len(wire.encode(feature))
    assert len(sizes) == 2 and sizes[0] > len(encoded.payload)


# --- the gateway benchmark, reduced -----------------------------------------------------------


def _random_pca(mode: Mode, secrets: Secrets) -> wire.Model:
    assert mode.kind == "pca"
    return pca_deployment(secrets.directory)


@pytest.mark.e2e
def test_gateway_benchmark_reduced_run_reports_every_mode_and_the_broker_run(
    tmp_path: Path,
) -> None:
    settings = gateway_bench.GatewayBenchSettings(
        modes=("raw", "pca"),
        cameras=4,
        frames_per_camera=30,
        seconds_per_run=0.5,
        decode_samples=5,
        end_to_end=gateway_bench.EndToEndSettings(
            mode="pca", cameras=4, seconds=3.0, gateway_workers=1, warm_up_seconds=1.0
        ),
    )
    report = gateway_bench.measure(settings, _random_pca, tmp_path)
    json.dumps(report)  # JSON-able as it is
    assert report["bare_full_jpeg_decode_ms"] > 0
    assert set(report["reduced_decode_ms"]) == {"grayscale_4", "grayscale_8"}
    assert set(report["modes"]) == {"raw", "pca"}
    for mode, entry in report["modes"].items():
        assert entry["frames_per_second"] > 0, mode
        assert entry["workers"] in (1, 2)
        assert set(entry["by_workers"]) == {"1", "2"}
        assert 0 < entry["keyframe_ratio"] < 0.5, mode  # keyframes on: most frames held back
        assert entry["dropped"] == 0
        # the keyframe rule ran: per object (in "objects"), or on whole frames ("keyframe")
        assert {"keyframe", "objects"} & set(entry["stage_ms"]), mode
    pca, raw = report["modes"]["pca"], report["modes"]["raw"]
    assert {"decode", "extract", "encode"} <= set(pca["stage_ms"])
    assert pca["bytes_per_frame_out"] < 1000 < raw["bytes_per_frame_out"]
    assert report["ratios"]["uplink_vs_raw"]["pca"] < 0.05

    e2e = report["end_to_end"]
    assert e2e["published"] == 4 * 15 * 3
    assert e2e["received"] + e2e["lost_before_gateway"] == e2e["published"]
    processed = sum(e2e["processed"].values()) + sum(e2e["dropped"].values())
    assert processed == e2e["received"] > 0  # every frame accounted for once
    assert e2e["processed"].get("forwarded", 0) > 0
    assert isinstance(e2e["target_met"], bool) and e2e["where_the_time_goes"]
    assert e2e["keyframe_ratio_in_process"] == pca["keyframe_ratio"]
    assert e2e["cores_needed_at_target"] > 0
    assert set(e2e["pipeline_cpu_split_ms"]) == {
        "decode_objects_keyframe_rule_every_frame",
        "decode_extract_encode_of_keyframes",
    }
    assert e2e["features_acked"] > 0  # the stand-in cloud acknowledged what was sent


# --- the cloud benchmark, reduced ------------------------------------------------------------


@dataclass
class _Uniform:
    """A stand-in for the cloud half: every class equally likely, no TensorFlow."""

    takes_frames: bool
    input_size: int = 96
    channels: int = 1
    objects: bool = False  # raw frames' centre squares
    version: str = ""

    def predict(self, batch: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        return np.full((len(batch), 10), 0.1, np.float32)


class _UniformModels:
    def class_names(self, model_version: str) -> tuple[str, ...]:
        return ()

    def classifier_for(self, extractor: str, model_version: str, camera: str = "") -> _Uniform:
        return _Uniform(takes_frames=extractor == "raw")


def test_cloud_consumer_throughput_and_latency_through_a_real_broker(
    broker: BrokerUnderTest, site: str
) -> None:
    templates = cloud_bench.feature_templates(
        ("pca", "raw"), _random_pca, broker.secrets, cameras=2, frames_per_camera=3
    )
    assert {len(made) for made in templates.values()} == {6}
    assert {f.mode for f in templates["raw"]} == {"raw"}
    encoded = {mode: tuple(wire.encode(f) for f in made) for mode, made in templates.items()}
    config = ConsumerConfig(consumer_id=f"{site}-cloud", site=site, group=site)
    base = cloud_bench.FeedJob(broker.host, broker.port, str(broker.secrets_dir), site, ())
    with serve_in_thread(
        lambda: CloudConsumer(config, broker.config_for("cloud"), _UniformModels()), "consumer"
    ) as (consumer, _):
        for mode in ("pca", "raw"):
            job = dataclasses.replace(base, templates=encoded[mode], count=150)
            result = cloud_bench.consumer_throughput(consumer, job, mode, timeout=60)
            assert result["features"] == 150
            assert result["results_per_second"] > 0, mode
            assert result["mean_batch_size"] >= 1
        latency = cloud_bench.paced_latency(
            dataclasses.replace(base, templates=encoded["pca"], cameras=2, fps=15, seconds=2.0)
        )
    assert latency["published"] == 60
    assert latency["results"] == 60  # only this run's results, every one answered
    summary = latency["capture_to_result_ms"]
    assert 0 <= summary["p50"] <= summary["p99"] <= summary["max"]
    received = latency["capture_to_result_received_ms"]
    assert received["p50"] >= summary["p50"]  # the result is published after it is made


@pytest.mark.e2e
def test_cloud_benchmark_reduced_run_on_a_trained_registry(
    tmp_path: Path, trained_registry: Path
) -> None:
    settings = cloud_bench.CloudBenchSettings(
        consumer_modes=("split:2", "raw"),
        features_per_mode=100,
        inference_modes=("raw", "split:2", "pca"),
        batch_sizes=(1, 16),
        inference_repeats=2,
        latency_modes=("split:2",),
        latency_cameras=2,
        latency_seconds=2.0,
        template_cameras=2,
        template_frames=2,
        scale_out_features=80,
        training=cloud_bench.TrainingSettings(
            n_train=200,
            n_held_out=100,
            epochs=1,
            feature_epochs=2,
            modes=("split:2", "pca"),
            camera_jpeg_samples=3,
        ),
    )
    report = cloud_bench.measure(settings, Registry(trained_registry), tmp_path / "work")
    json.dumps(report)
    assert set(report["inference_ms"]) == {"raw", "split:2", "pca"}
    for mode, entry in report["inference_ms"].items():
        assert entry["1"]["ms_per_batch"] > 0 and entry["16"]["ms_per_item"] > 0, mode
        assert entry["16"]["tensorflow_ms_per_batch"] > 0, mode  # the old way, beside it
    assert set(report["consumer_results_per_second"]) == {"split:2", "raw"}
    scaled = report["scale_out"]  # real cloud processes on a real PostgreSQL, every one answered
    assert sorted(scaled["processes"]) == ["1", "2"]
    assert all(run["results"] >= 80 for run in scaled["processes"].values())
    assert scaled["two_over_one"] > 0
    assert report["latency"]["modes"]["split:2"]["results"] == 2 * 15 * 2
    training = report["training"]
    assert set(training["modes"]) == {"raw", "split:2", "pca"}
    raw = training["modes"]["raw"]
    assert raw["bytes_per_item"] > 20_000  # a 720p JPEG
    for mode in ("split:2", "pca"):
        entry = training["modes"][mode]
        assert entry["bytes_received"] < raw["bytes_received"], mode
        assert 0 <= entry["held_out_accuracy"] <= 1
        assert training["ratios"][mode]["training_time_raw_over_features"] > 0


def test_benchmarks_record_the_machine() -> None:
    facts = machine_info()
    assert facts["cpus"] and facts["cpu_model"] and facts["python"] and facts["load_average"]
