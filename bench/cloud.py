"""``edgelearn bench cloud``: what the cloud side costs and gains, per mode (issue 5).

Where it sits: beside the cloud's code, off the path of any feature. ``run(quick)`` returns a
JSON-able dict, every part measured in the same run on this host:

* ``consumer_results_per_second``: one :class:`~cloud.consumer.CloudConsumer` behind a real
  mosquitto, fed pre-made Feature envelopes (the gateway's own pipeline ran on 720p
  labeled-scene frames to make them) by a publisher process as fast as the consumer takes
  them; results per second, with the batch sizes the consumer formed.
* ``inference_ms``: :meth:`~cloud.serving.CloudHalf.predict` per batch size and mode,
  after warm-up (median of repeats), as the cloud serves once its graphs are built (numpy
  for small batches, a TensorFlow graph for big ones: ``cloud.serving.GRAPH_FROM_BATCH``),
  and beside it each way alone (``numpy_ms_per_batch``, ``tensorflow_ms_per_batch``).
* ``latency``: capture to result at a stated camera load (features of ``cameras`` cameras at
  ``fps`` each, ``capture_ns`` stamped as they are published; ``result_ns - capture_ns`` read
  off the results topic), p50/p90/p99.
* ``scale_out``: one, then two ``edgelearn cloud`` processes (as on two machines, with
  their default consumers each) on one PostgreSQL, draining the same backlog of features
  of one mode; results per second summed over their ``/metrics``, and the ratio. The
  processes, the publisher, the broker and PostgreSQL share this host's cores: the ratio
  says what a second process adds here, not on a second machine.
* ``training``: the same items trained two ways - the cloud-only way (the whole CNN from the
  decoded frames the cameras sent as 720p JPEGs) and from the features the gateways' deployed
  lower parts made - with bytes received, training time (``fit`` only) and held-out
  accuracy, and the ratios between them.

The deployed models come from :func:`bench.registry.bench_registry` (quick budget, cached;
the gateway benchmark uses the same). Numbers are wall-clock on a shared machine:
``machine`` says which.
"""

from __future__ import annotations

import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import statistics
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bench.clients import close_client, mqtt_client
from bench.gateway import DeploymentSource, registry_deployments
from bench.registry import BENCH_SPLIT_KS, registry_run
from bench.runs import LoggedWarnings, percentiles_ms, poll_until
from bench.workload import GATEWAY_ID, paced, render_object_cameras
from cloud.consumer import CloudConsumer, ConsumerConfig
from cloud.feature_store import FeatureStore
from cloud.registry import Registry
from cloud.serving import RegistryModels
from edgelearn import signing, wire
from edgelearn.artifacts import TensorQuantization, load_deployment
from edgelearn.config import BrokerConfig
from edgelearn.keyframes import KeyframeSettings
from edgelearn.modes import RAW, Mode
from edgelearn.secrets import Secrets
from edgelearn.service import serve_in_thread
from gateway.pipeline import Forward, FramePipeline, HeldBack
from stack import broker as broker_module

log = logging.getLogger(__name__)

SITE = "bench"


# --- settings ------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainingSettings:
    n_train: int = 10_000
    n_held_out: int = 2_000
    epochs: int = 4  # the CNN (raw) and the upper blocks (split:k): the same number
    feature_epochs: int = 15  # the small dense classifiers of pca/autoencoder
    modes: tuple[str, ...] = ("split:2", "split:6", "pca", "autoencoder")
    camera_jpeg_samples: int = 100  # real 720p frames rendered to size the raw uplink
    jpeg_quality: int = 80  # the cameras' default
    seed: int = 1  # not the registry's seed 0: other items than its models were fitted on


@dataclass(frozen=True)
class CloudBenchSettings:
    consumer_modes: tuple[str, ...] = ("split:2", "split:6", "raw")
    features_per_mode: int = 3000
    inference_modes: tuple[str, ...] = (
        "raw",
        "split:2",
        "split:4",
        "split:6",
        "split:8",
        "pca",
        "autoencoder",
    )
    batch_sizes: tuple[int, ...] = (1, 4, 16, 32, 64)
    inference_repeats: int = 20
    latency_modes: tuple[str, ...] = ("split:6", "raw")
    latency_cameras: int = 10
    latency_fps: float = 15.0
    latency_seconds: float = 15.0
    template_cameras: int = 10
    template_frames: int = 12  # per camera: 720p frames the feature templates come from
    store_features: bool = True  # consumers store what they receive, as in production
    training: TrainingSettings | None = field(default_factory=TrainingSettings)
    # Side by side: 1, then 2 ``edgelearn cloud`` processes on one PostgreSQL (0: skipped)
    scale_out_mode: str = "split:2"
    scale_out_features: int = 3000
    scale_out_consumers: int = 1  # per process (edgelearn cloud's default)

    @classmethod
    def quick(cls) -> CloudBenchSettings:
        return cls(
            consumer_modes=("split:2", "raw"),
            features_per_mode=1000,
            inference_modes=("raw", "split:2", "pca"),
            inference_repeats=5,
            latency_modes=("split:2",),
            latency_seconds=6.0,
            template_frames=6,
            scale_out_features=800,
            training=TrainingSettings(
                n_train=2000,
                n_held_out=500,
                epochs=3,
                feature_epochs=10,
                modes=("split:2", "split:6", "pca"),
                camera_jpeg_samples=30,
            ),
        )


# --- pure helpers --------------------------------------------------------------------------


def feature_envelope_bytes(
    values: np.ndarray[Any, Any],
    labels: np.ndarray[Any, Any],
    quantization: TensorQuantization,
    *,
    mode: str,
    model_version: str,
    raw_bytes: int,
) -> list[int]:
    """The size of the ``wire.Feature`` a gateway would send for each row of ``values``
    (already quantised, zstd-coded as the gateways do)."""
    return [
        len(
            wire.encode(
                quantization.encode(row).feature(
                    camera_id="cam-1",
                    seq=index,
                    capture_ns=0,
                    gateway_id=GATEWAY_ID,
                    label=int(labels[index]),
                    mode=mode,
                    model_version=model_version,
                    raw_bytes=raw_bytes,
                    held_back=0,
                    held_mismatched=0,
                )
            )
        )
        for index, row in enumerate(values)
    ]


# --- feature templates: the gateway's pipeline on real frames ------------------------------


WARMUP = 150  # frames: a lane's cycle, so every lane has been empty once


def feature_templates(
    modes: Sequence[str],
    deployments: DeploymentSource,
    secrets: Secrets,
    *,
    cameras: int,
    frames_per_camera: int,
) -> dict[str, list[wire.Feature]]:
    """Per mode, the Feature envelopes a gateway (keyframe filter off: every object of every
    frame) sends for 720p object scenes (0-3 items; frames with none send nothing);
    ``deployments`` signs the model of each mode (see
    :func:`bench.gateway.registry_deployments`)."""
    # The first WARMUP frames teach the gateway's background models each empty scene.
    frames = render_object_cameras(cameras, WARMUP + frames_per_camera, quality=80)
    trusted = signing.load_public_key(secrets.signing_public_key)
    templates: dict[str, list[wire.Feature]] = {}
    for mode_text in modes:
        mode = Mode.parse(mode_text)
        pipeline = FramePipeline(
            gateway_id=GATEWAY_ID, mode=mode, keyframes=KeyframeSettings(enabled=False)
        )
        if mode.needs_model:
            pipeline.deploy(load_deployment(deployments(mode, secrets), trusted))
        made = []
        for sequence in frames.values():
            for number, frame in enumerate(sequence):
                outcome = pipeline.process(frame)
                if number < WARMUP or (isinstance(outcome, HeldBack) and not outcome.objects):
                    continue  # learning the scene; or an empty scene, which sends nothing
                if not isinstance(outcome, Forward) or not isinstance(
                    outcome.envelope, wire.Feature
                ):
                    raise RuntimeError(f"{mode_text}: the pipeline gave {outcome!r}")
                made.append(outcome.envelope)
        templates[mode_text] = made
    return templates


# --- inference per batch size --------------------------------------------------------------


def classifier_input_shape(registry: Registry, mode: str) -> tuple[int, ...]:
    entry = registry.serving(Mode.parse(mode))
    if mode == RAW:
        return tuple(int(d) for d in entry.input_shape)
    output = (entry.metadata.get("quantization") or {}).get("output", {})
    return tuple(int(d) for d in output.get("shape", ()))


def inference_times(
    models: Any,
    registry: Registry,
    modes: Sequence[str],
    batch_sizes: Sequence[int],
    repeats: int,
) -> dict[str, Any]:
    """Median ms of ``CloudHalf.predict`` per batch size, after two warm-up calls, in numpy
    and through TensorFlow, on the same batches."""
    rng = np.random.default_rng(0)
    results: dict[str, Any] = {}
    for mode in modes:
        entry = registry.serving(Mode.parse(mode))
        classifier = models.classifier_for(mode, entry.version)
        if classifier is None:
            raise RuntimeError(f"no cloud model for {mode}")
        shape = classifier_input_shape(registry, mode)
        keras = dataclasses.replace(
            classifier, numpy=None, keras=registry.load_cloud_model(entry), _call=None
        )
        per_batch: dict[str, Any] = {}
        for size in batch_sizes:
            batch = rng.uniform(0, 255 if mode == RAW else 1, (size, *shape)).astype(np.float32)
            median = _median_seconds(classifier.predict, batch, repeats)
            per_batch[str(size)] = {
                "ms_per_batch": round(1e3 * median, 3),
                "ms_per_item": round(1e3 * median / size, 3),
                "numpy_ms_per_batch": None
                if classifier.numpy is None
                else round(1e3 * _median_seconds(classifier.numpy.predict, batch, repeats), 3),
                "tensorflow_ms_per_batch": round(
                    1e3 * _median_seconds(keras.predict, batch, repeats), 3
                ),
            }
        results[mode] = {"version": entry.version, "input_shape": list(shape), **per_batch}
    return results


def _median_seconds(predict: Any, batch: np.ndarray, repeats: int) -> float:
    for _ in range(2):  # warm-up: a TensorFlow graph is traced on its first call
        predict(batch)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        predict(batch)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings)


# --- a consumer in this process, publishers in another ------------------------------------


def _sample(consumer: CloudConsumer, name: str, **labels: str) -> float:
    return float(consumer.metrics.registry.get_sample_value(name, labels) or 0.0)


@dataclass(frozen=True)
class FeedJob:
    host: str
    port: int
    secrets_dir: str
    site: str
    templates: tuple[bytes, ...]  # encoded Feature envelopes, cycled with fresh seq
    count: int = 0  # flood: publish this many as fast as the broker acknowledges
    cameras: int = 0  # paced: this many cameras ...
    fps: float = 0.0  # ... at this rate each ...
    seconds: float = 0.0  # ... for this long, and read the results topic


def _feed(conn: multiprocessing.connection.Connection, job: FeedJob) -> None:
    """Spawned publisher of features (as the gateway ``gw-1``, QoS 1 like a gateway)."""
    secrets_dir = Path(job.secrets_dir)
    templates = [wire.decode_as(data, wire.Feature) for data in job.templates]
    topics = wire.Topics(job.site)
    publisher = mqtt_client(
        BrokerConfig.for_user(GATEWAY_ID, host=job.host, port=job.port, secrets_dir=secrets_dir),
        f"bench-feed-{os.getpid()}",
        max_inflight=100,
    )
    listener = None
    arrivals: list[tuple[int, bytes]] = []
    try:
        if job.count:
            envelopes = []
            # Captures unique across jobs: the consumers de-duplicate by capture.
            base_ns = time.time_ns()
            for index in range(job.count):
                template = templates[index % len(templates)]
                envelopes.append(
                    (
                        topics.feature(GATEWAY_ID, template.camera_id),
                        wire.encode(
                            dataclasses.replace(template, seq=index, capture_ns=base_ns + index)
                        ),
                    )
                )
            conn.send("ready")
            conn.recv()
            conn.send(_flood(publisher, envelopes))
            return
        listener = mqtt_client(
            BrokerConfig.for_user(
                "observer", host=job.host, port=job.port, secrets_dir=secrets_dir
            ),
            f"bench-results-{os.getpid()}",
        )
        subscribed = threading.Event()
        listener.on_subscribe = lambda *args: subscribed.set()
        listener.on_message = lambda client, userdata, message: arrivals.append(
            (time.time_ns(), message.payload)
        )
        listener.subscribe(topics.all_results(), qos=0)
        if not subscribed.wait(15):
            raise RuntimeError("no SUBACK for the results topic")
        conn.send("ready")
        conn.recv()
        conn.send(_paced(publisher, templates, topics, job, arrivals))
    finally:
        for client in (publisher, listener):
            if client is not None:
                close_client(client)


def _flood(publisher: Any, envelopes: Sequence[tuple[str, bytes]]) -> dict[str, Any]:
    started = time.monotonic()
    infos = [publisher.publish(topic, data, qos=1) for topic, data in envelopes]
    for info in infos:
        info.wait_for_publish(120)
    seconds = time.monotonic() - started
    return {"published": len(infos), "seconds": seconds, "per_second": len(infos) / seconds}


def _paced(
    publisher: Any,
    templates: Sequence[wire.Feature],
    topics: wire.Topics,
    job: FeedJob,
    arrivals: list[tuple[int, bytes]],
) -> dict[str, Any]:
    cameras = [f"cam-{index + 1}" for index in range(job.cameras)]
    start_ns = time.time_ns()
    started = time.monotonic()
    published = 0
    for tick in paced(len(cameras), job.fps, seconds=job.seconds):
        template = templates[published % len(templates)]
        camera = cameras[tick.camera]
        feature = dataclasses.replace(
            template, camera_id=camera, seq=tick.number, capture_ns=time.time_ns()
        )
        publisher.publish(topics.feature(GATEWAY_ID, camera), wire.encode(feature), qos=1)
        published += 1
    offered_seconds = time.monotonic() - started
    poll_until(lambda: len(arrivals) >= published, 30)  # the consumer answers the last ones
    to_result: list[int] = []
    to_arrival: list[int] = []
    for arrived, payload in list(arrivals):
        result = wire.decode_as(payload, wire.Result)
        if result.capture_ns >= start_ns:
            to_result.append(result.result_ns - result.capture_ns)
            to_arrival.append(arrived - result.capture_ns)
    return {
        "published": published,
        "offered_per_second": round(published / offered_seconds, 1),
        "results": len(to_result),
        "capture_to_result_ms": percentiles_ms(to_result),
        "capture_to_result_received_ms": percentiles_ms(to_arrival),
    }


class _Feeder:
    """One spawned :func:`_feed` process: ready, go, its report."""

    def __init__(self, job: FeedJob) -> None:
        context = multiprocessing.get_context("spawn")
        self._conn, child = context.Pipe()
        self._process = context.Process(target=_feed, args=(child, job), daemon=True)
        self._process.start()
        child.close()
        if not self._conn.poll(120) or self._conn.recv() != "ready":
            self.close()
            raise RuntimeError("the feature publisher did not start")

    def go(self) -> None:
        self._conn.send("go")

    def report(self, timeout: float) -> dict[str, Any]:
        if not self._conn.poll(timeout):
            raise RuntimeError("the feature publisher did not report")
        report: dict[str, Any] = self._conn.recv()
        return report

    def close(self) -> None:
        self._process.join(15)
        if self._process.is_alive():
            self._process.terminate()
            self._process.join(10)
        self._conn.close()


def consumer_throughput(
    consumer: CloudConsumer, job: FeedJob, mode: str, timeout: float = 600
) -> dict[str, Any]:
    """Results per second while a backlog of ``job.count`` features drains through."""
    before = consumer.results_published
    batches = _sample(consumer, "edgelearn_cloud_batch_size_count")
    batched = _sample(consumer, "edgelearn_cloud_batch_size_sum")
    inference = _sample(consumer, "edgelearn_cloud_inference_seconds_sum", mode=mode)
    drained = _drain(
        job, lambda: consumer.results_published - before, timeout, poll=0.01, what=mode
    )
    batch_count = _sample(consumer, "edgelearn_cloud_batch_size_count") - batches
    return {
        "results_per_second": drained["results_per_second"],
        "features": job.count,
        "feature_bytes_mean": round(float(np.mean([len(t) for t in job.templates])), 1),
        "publisher_per_second": drained["publisher_per_second"],
        "mean_batch_size": round(
            (_sample(consumer, "edgelearn_cloud_batch_size_sum") - batched) / batch_count, 1
        )
        if batch_count
        else None,
        "inference_ms_per_batch": round(
            1e3
            * (_sample(consumer, "edgelearn_cloud_inference_seconds_sum", mode=mode) - inference)
            / batch_count,
            2,
        )
        if batch_count
        else None,
    }


def scale_out(
    settings: CloudBenchSettings,
    registry: Registry,
    secrets: Secrets,
    broker: Any,
    templates: tuple[bytes, ...],
    work_dir: Path,
) -> dict[str, Any]:
    """Results per second of one, then two cloud processes on one PostgreSQL, each run on
    a site of its own (nothing left over from the run before), the same backlog each."""
    from stack.launcher import postgres_dir
    from stack.postgres import start_postgres

    (work_dir / "scale-out").mkdir(parents=True, exist_ok=True)
    postgres = start_postgres(postgres_dir(work_dir / "scale-out"))
    try:
        runs = {
            str(clouds): _scale_run(
                clouds, settings, registry, secrets, broker, templates, postgres.url, work_dir
            )
            for clouds in (1, 2)
        }
    finally:
        postgres.stop()
    one, two = (runs[key]["results_per_second"] for key in ("1", "2"))
    return {
        "mode": settings.scale_out_mode,
        "consumers_per_process": settings.scale_out_consumers,
        "processes": runs,
        "two_over_one": round(two / one, 2) if one else None,
    }


def _scale_run(
    clouds: int,
    settings: CloudBenchSettings,
    registry: Registry,
    secrets: Secrets,
    broker: Any,
    templates: tuple[bytes, ...],
    store: str,
    work_dir: Path,
) -> dict[str, Any]:
    from cloud.config import CloudConfig, LearnConfig, PlanConfig
    from edgelearn import config as config_module
    from edgelearn.metrics import scrape
    from edgelearn.ports import free_port
    from stack.launcher import ChildProcesses, child_env, edgelearn_command

    site = f"scale-{clouds}"
    children = ChildProcesses(work_dir / site, echo=False)
    children.log_dir.mkdir(parents=True, exist_ok=True)
    env = child_env(secrets.directory, registry.root)
    urls = []
    try:
        for number in range(1, clouds + 1):
            port = free_port()
            config = CloudConfig(
                broker=f"{broker.host}:{broker.port}", site=site, group=site,
                cloud_id=f"{site}-cloud-{number}", registry=registry.root, metrics_port=port,
                consumers=settings.scale_out_consumers, feature_store=store, train=False,
                grow=False, push=False, teacher=False,
                events=False, split_ks=BENCH_SPLIT_KS, plan=PlanConfig(enabled=False),
                learn=LearnConfig(enabled=False),
            )  # fmt: skip
            config_file = children.log_dir / f"cloud-{number}.toml"
            config_file.write_text(config_module.dump(config, "cloud"))
            command = edgelearn_command("cloud", "--config", str(config_file))
            child = children.start(f"cloud-{number}", command, env)
            children.wait_for_line(child, "graphs built", timeout=300)  # fully warm
            urls.append(f"http://127.0.0.1:{port}/metrics")
        before = scrape(urls).total("edgelearn_cloud_results_total")
        job = FeedJob(
            broker.host, broker.port, str(secrets.directory), site, templates,
            count=settings.scale_out_features,
        )  # fmt: skip
        run = _drain(
            job,
            lambda: scrape(urls).total("edgelearn_cloud_results_total") - before,
            what=f"{clouds} cloud processes",
        )
    finally:
        children.stop()
    log.info("%d cloud processes: %s results/s", clouds, run["results_per_second"])
    return run


def _drain(
    job: FeedJob, answered: Any, timeout: float = 600, poll: float = 0.1, what: str = ""
) -> dict[str, Any]:
    """Results per second (``answered()``: results so far) while ``job.count`` features
    drain, from the first result to the last, and the publisher's own rate."""
    feeder = _Feeder(job)
    try:
        feeder.go()
        started = time.monotonic()
        deadline = started + timeout
        # from the first result seen (the connections are made by then); a backlog that
        # drained before the first look is counted from the go
        first = (started, 0.0)
        while (done := answered()) < job.count:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{what}: {done:.0f} of {job.count} results")
            if first[1] == 0 and done > 0:
                first = (time.monotonic(), done)
            time.sleep(poll)  # polling the counters
        ended = time.monotonic()
        published = feeder.report(60)
    finally:
        feeder.close()
    if done <= first[1]:  # all of it between two looks: from the go
        first = (started, 0.0)
    return {
        "results": int(done),
        "results_per_second": round((done - first[1]) / (ended - first[0]), 1),
        "publisher_per_second": round(published["per_second"], 1),
    }


def paced_latency(job: FeedJob) -> dict[str, Any]:
    """Features at ``job.fps`` per camera for ``job.seconds``; capture-to-result latency
    read off the results topic (the consumer must be running)."""
    feeder = _Feeder(job)
    try:
        feeder.go()
        return feeder.report(job.seconds + 120)
    finally:
        feeder.close()


# --- training: raw frames vs features ------------------------------------------------------


def training_comparison(settings: TrainingSettings, registry: Registry) -> dict[str, Any]:
    """Train on the same items from raw frames and from each mode's features."""
    from cloud.models import cnn
    from cloud.models.data import RenderSettings, build_dataset, camera_frames
    from cloud.models.evaluation import features_from
    from cloud.models.training import (
        train_cnn,
        train_feature_classifier,
        train_upper_from_features,
    )
    from edgelearn.artifacts import load_edge_artifact
    from edgelearn.datasets import load_fashion_mnist

    started = time.perf_counter()
    data = build_dataset(settings.n_train, settings.n_held_out, seed=settings.seed)
    render_seconds = time.perf_counter() - started
    # The training renders are 320x180 (what the gateway's reduced decode yields); what a
    # camera sends is a 720p JPEG: sized on real 720p renders of training items.
    camera = camera_frames(
        load_fashion_mnist("train"),
        settings.camera_jpeg_samples,
        seed=settings.seed,
        settings=RenderSettings.camera(jpeg_quality=settings.jpeg_quality),
    )
    jpeg_720p = float(np.mean(camera.jpeg_bytes))
    raw = train_cnn(data, epochs=settings.epochs, seed=settings.seed)
    modes: dict[str, Any] = {
        "raw": {
            "trains": "the whole CNN, from scratch, on decoded frames",
            "training_seconds": round(raw.wall_seconds, 2),
            "held_out_accuracy": round(raw.held_out_accuracy, 4),
            "bytes_received": round(jpeg_720p * settings.n_train),
            "bytes_per_item": round(jpeg_720p, 1),
            "epochs": settings.epochs,
        }
    }
    for mode in settings.modes:
        entry = registry.serving(Mode.parse(mode))
        extractor = load_edge_artifact(entry.kind, entry.read("edge"))
        extract_started = time.perf_counter()
        train = features_from(extractor, data.train)
        held_out = features_from(extractor, data.held_out)
        extraction_seconds = time.perf_counter() - extract_started
        sizes = feature_envelope_bytes(
            train.values,
            train.labels,
            train.quantization,
            mode=mode,
            model_version=entry.version,
            raw_bytes=round(jpeg_720p),
        )
        if entry.kind == "split":
            report = train_upper_from_features(
                train,
                held_out,
                config=cnn.CnnConfig(classes=data.num_classes),
                k=entry.split_k,
                epochs=settings.epochs,
                seed=settings.seed,
            )
            trains = f"fresh upper blocks {entry.split_k + 1}.. on block-{entry.split_k} features"
            epochs = settings.epochs
        else:
            report = train_feature_classifier(
                train,
                held_out,
                classes=data.num_classes,
                epochs=settings.feature_epochs,
                seed=settings.seed,
            )
            trains = "a dense classifier on the features"
            epochs = settings.feature_epochs
        modes[mode] = {
            "trains": trains,
            "training_seconds": round(report.wall_seconds, 2),
            "held_out_accuracy": round(report.held_out_accuracy, 4),
            "bytes_received": int(sum(sizes)),
            "bytes_per_item": round(float(np.mean(sizes)), 1),
            "epochs": epochs,
            "edge_extraction_seconds": round(extraction_seconds, 2),
            "lower_part": f"{entry.name} {entry.version} (registry accuracy {entry.accuracy})",
        }
    ratios = {
        mode: {
            "training_time_raw_over_features": round(
                modes["raw"]["training_seconds"] / entry["training_seconds"], 2
            ),
            "training_time_saved_percent": round(
                100 * (1 - entry["training_seconds"] / modes["raw"]["training_seconds"]), 1
            ),
            "accuracy_minus_raw": round(
                entry["held_out_accuracy"] - modes["raw"]["held_out_accuracy"], 4
            ),
            "bytes_received_vs_raw": round(
                entry["bytes_received"] / modes["raw"]["bytes_received"], 5
            ),
        }
        for mode, entry in modes.items()
        if mode != "raw"
    }
    return {
        "n_train": settings.n_train,
        "n_held_out": settings.n_held_out,
        "render_seconds": round(render_seconds, 1),
        "camera_jpeg_bytes_720p": round(jpeg_720p, 1),
        "note": "training_seconds is Keras fit only (same for every mode); feature modes "
        "train on the int8 features the deployed lower parts (the bench registry's) make, "
        "as a cloud does after a deployment; raw trains the whole CNN from scratch",
        "modes": modes,
        "ratios": ratios,
    }


# --- the run -------------------------------------------------------------------------------


def measure(settings: CloudBenchSettings, registry: Registry, work_dir: Path) -> dict[str, Any]:
    secrets = broker_module.init_secrets(
        work_dir / "secrets", cameras=settings.template_cameras, gateways=1
    )
    template_modes = sorted(
        {*settings.consumer_modes, *settings.latency_modes, settings.scale_out_mode}
    )
    templates = feature_templates(
        template_modes,
        registry_deployments(registry),
        secrets,
        cameras=settings.template_cameras,
        frames_per_camera=settings.template_frames,
    )
    encoded = {mode: tuple(wire.encode(f) for f in made) for mode, made in templates.items()}
    models = RegistryModels(registry)
    started = time.perf_counter()
    models.warm_up(BENCH_SPLIT_KS)
    report: dict[str, Any] = {"warm_up_seconds": round(time.perf_counter() - started, 1)}
    models.build_graphs()  # as a cloud process does once it serves
    if not poll_until(lambda: not models.graphs_pending(), 300):
        raise RuntimeError("the cloud halves' TensorFlow graphs were not built in 300 s")
    report["graphs_seconds"] = round(time.perf_counter() - started, 1)
    report["inference_ms"] = inference_times(
        models,
        registry,
        settings.inference_modes,
        settings.batch_sizes,
        settings.inference_repeats,
    )
    broker = broker_module.start_broker(
        secrets, broker_module.BrokerSettings(role="cloud", run_dir=work_dir / "broker")
    )
    try:
        config = ConsumerConfig(consumer_id="bench-cloud", site=SITE, group="bench")
        store = FeatureStore(work_dir / "features", keep_features=settings.store_features)
        cloud = BrokerConfig.for_user(
            "cloud", host=broker.host, port=broker.port, secrets_dir=secrets.directory
        )
        base = FeedJob(broker.host, broker.port, str(secrets.directory), SITE, ())
        warnings = LoggedWarnings()
        with (
            warnings.attached(),
            serve_in_thread(
                lambda: CloudConsumer(config, cloud, models, store=store), "cloud consumer", 120
            ) as (consumer, _),
        ):
            throughput = {}
            for mode in settings.consumer_modes:
                job = dataclasses.replace(
                    base, templates=encoded[mode], count=settings.features_per_mode
                )
                throughput[mode] = consumer_throughput(consumer, job, mode)
                log.info("%s: %s results/s", mode, throughput[mode]["results_per_second"])
            report["consumer_results_per_second"] = throughput
            latency = {}
            for mode in settings.latency_modes:
                job = dataclasses.replace(
                    base,
                    templates=encoded[mode],
                    cameras=settings.latency_cameras,
                    fps=settings.latency_fps,
                    seconds=settings.latency_seconds,
                )
                latency[mode] = paced_latency(job)
            report["latency"] = {
                "load": f"{settings.latency_cameras} cameras x {settings.latency_fps:g} fps = "
                f"{settings.latency_cameras * settings.latency_fps:g} features/s, one consumer, "
                "publisher, broker and consumer on this host",
                "modes": latency,
            }
        report["consumer_log"] = warnings.summary()
        if settings.scale_out_features:
            report["scale_out"] = scale_out(
                settings, registry, secrets, broker, encoded[settings.scale_out_mode],
                work_dir,
            )  # fmt: skip
    finally:
        broker.stop()
    if settings.training is not None:
        report["training"] = training_comparison(settings.training, registry)
    return report


def run(quick: bool) -> dict[str, Any]:
    """``edgelearn bench cloud [--quick]``: a JSON-able report."""
    settings = CloudBenchSettings.quick() if quick else CloudBenchSettings()
    return registry_run("cloud", quick, lambda registry, work: measure(settings, registry, work))
