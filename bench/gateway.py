"""``edgelearn bench gateway``: what one gateway host sustains, per mode (issue 4).

Where it sits: beside the gateway's code, off the path of any frame. ``run(quick)`` returns a
JSON-able dict; everything is measured in one run, on the same pre-encoded 720p JPEG frames
of labeled-scene cameras (keyframes on, so the keyframe ratio is the scene's own: an item
enters every ``dwell_frames`` frames):

* ``modes``: per mode, frames per second of spawned worker processes, each running its own
  :class:`~gateway.pipeline.FramePipeline` over its share of the cameras as fast as it can,
  with 1 and with 2 workers (``by_workers``; ``frames_per_second`` is the better of the two
  and ``workers`` says which); mean ms per stage from the pipeline's ``on_stage`` callback;
  mean envelope bytes of the forwarded frames; the keyframe ratio; CPU ms per frame.
  Beside them, in the same run, the floors: a bare full-size decode of the 720p JPEG
  (``bare_full_jpeg_decode_ms``) and the reduced decodes (``reduced_decode_ms``).
* ``end_to_end``: issue 4's target - one host sustains 20 cameras at 15 fps (300 frames/s)
  in ``split:k`` with keyframes on and no drops - measured with a real mosquitto, the
  ``edgelearn gateway`` command (two worker processes, one shared-subscription group), the
  model deployed retained as the cloud would, and a paced camera publisher in its own
  process publishing pre-encoded frames (rendering is the cameras' cost, not the
  gateway's). Counts come from the workers' ``/metrics``; CPU per process from
  ``/proc``, to say where the time goes.

Throughput depends on the architecture, not on how well a model was trained, so the models
come from a registry trained once with the quick budget and kept in a cache directory (see
:func:`bench.registry.bench_registry`). Numbers are wall-clock on whatever machine runs this;
``machine`` records it, and per-run CPU utilisation shows how much of a core the workers
actually got on a shared host.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import statistics
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import cv2
import numpy as np

from bench.clients import Acker, close_client, mqtt_client, publish_retained
from bench.registry import registry_run
from bench.runs import LoggedWarnings, wait_until
from bench.workload import GATEWAY_ID, paced, render_object_cameras
from cloud.registry import Registry
from edgelearn import signing, wire
from edgelearn.artifacts import load_deployment
from edgelearn.config import BrokerConfig
from edgelearn.keyframes import KeyframeSettings
from edgelearn.metrics import Samples, scrape
from edgelearn.modes import Mode
from edgelearn.preprocess import sequential_opencv
from edgelearn.secrets import Secrets
from gateway.config import GatewayConfig
from gateway.pipeline import (
    STAGES,
    Dropped,
    Forward,
    FramePipeline,
    HeldBack,
)
from stack import broker as broker_module
from stack.launcher import ChildProcesses, StackSettings, child_env, start_gateway

log = logging.getLogger(__name__)

T = TypeVar("T")

ALL_MODES = ("raw", "pca", "autoencoder", "split:2", "split:4", "split:6", "split:8", "full")
QUICK_MODES = ("raw", "pca", "split:2", "split:6")  # split:6: the end-to-end mode
SITE = "bench"

# (mode, secrets) -> the signed deployment a gateway would receive for that mode.
DeploymentSource = Callable[[Mode, Secrets], wire.Model]


@dataclass(frozen=True)
class EndToEndSettings:
    mode: str = "split:6"
    cameras: int = 20
    fps: float = 15.0
    seconds: float = 20.0
    gateway_workers: int = 2
    warm_up_seconds: float = 3.0  # publishing before the steady window starts

    @property
    def target_frames_per_second(self) -> float:
        return self.cameras * self.fps


@dataclass(frozen=True)
class GatewayBenchSettings:
    modes: tuple[str, ...] = ALL_MODES
    cameras: int = 20
    frames_per_camera: int = 60  # a whole number of items: the stream is cyclic
    dwell_frames: int = 30  # frames per item in the scene (2 s at 15 fps)
    jpeg_quality: int = 80  # the cameras' default
    seconds_per_run: float = 6.0
    worker_counts: tuple[int, ...] = (1, 2)
    decode_samples: int = 60
    end_to_end: EndToEndSettings | None = field(default_factory=EndToEndSettings)

    @classmethod
    def quick(cls) -> GatewayBenchSettings:
        return cls(
            modes=QUICK_MODES,
            frames_per_camera=30,
            seconds_per_run=2.5,
            decode_samples=30,
            end_to_end=EndToEndSettings(seconds=8.0, warm_up_seconds=2.0),
        )


# --- pure helpers --------------------------------------------------------------------------


@dataclass
class StageTimes:
    """Sums of the pipeline's ``on_stage`` callback: ``record`` is the callback."""

    seconds: dict[str, float] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def record(self, stage: str, seconds: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
        self.counts[stage] = self.counts.get(stage, 0) + 1

    def merge(self, other: StageTimes) -> None:
        for stage, seconds in other.seconds.items():
            self.seconds[stage] = self.seconds.get(stage, 0.0) + seconds
            self.counts[stage] = self.counts.get(stage, 0) + other.counts.get(stage, 0)

    def mean_ms(self) -> dict[str, float]:
        """Mean milliseconds per call of every stage that ran, in pipeline order."""
        order = [*STAGES, *sorted(set(self.counts) - set(STAGES))]
        return {
            stage: round(1e3 * self.seconds[stage] / self.counts[stage], 3)
            for stage in order
            if self.counts.get(stage)
        }


def camera_cycles(frames: Mapping[str, Sequence[T]]) -> dict[str, list[T]]:
    """Each camera's frames rotated so the cameras are out of step: camera ``i`` of ``n``
    starts ``i/n`` of the way through its cycle. Frames wrap from the last to the first,
    which the scene renders as the next item entering, so the cycle repeats seamlessly."""
    count = len(frames)
    cycles: dict[str, list[T]] = {}
    for index, (camera, sequence) in enumerate(frames.items()):
        offset = (index * len(sequence)) // max(1, count)
        cycles[camera] = [*sequence[offset:], *sequence[:offset]]
    return cycles


def interleave(cycles: Mapping[str, Sequence[T]]) -> list[T]:
    """Frame 0 of every camera, then frame 1 of every camera... (the order they arrive)."""
    longest = max((len(sequence) for sequence in cycles.values()), default=0)
    return [
        sequence[position]
        for position in range(longest)
        for sequence in cycles.values()
        if position < len(sequence)
    ]


@dataclass
class WorkerResult:
    """What one worker process did in one timed run (``started``/``ended`` are
    ``time.monotonic()``: CLOCK_MONOTONIC, comparable between processes on one host)."""

    frames: int = 0
    forwarded: int = 0
    held_back: int = 0
    dropped: int = 0
    input_bytes: int = 0
    forwarded_bytes: int = 0
    forwarded_seconds: float = 0.0
    held_back_seconds: float = 0.0
    cpu_seconds: float = 0.0
    started: float = 0.0
    ended: float = 0.0
    stages: StageTimes = field(default_factory=StageTimes)

    def count(self, outcome: Dropped | HeldBack | Forward, seconds: float, size: int) -> None:
        self.frames += 1
        self.input_bytes += size
        if isinstance(outcome, Forward):
            self.forwarded += 1
            self.forwarded_bytes += len(outcome.data)
            self.forwarded_seconds += seconds
        elif isinstance(outcome, HeldBack):
            self.held_back += 1
            self.held_back_seconds += seconds
        else:
            self.dropped += 1


def _ratio(numerator: float, denominator: float, digits: int = 4) -> float | None:
    return round(numerator / denominator, digits) if denominator else None


def summarize_run(results: Sequence[WorkerResult]) -> dict[str, Any]:
    """One timed run of ``len(results)`` workers that ran at the same time."""
    frames = sum(result.frames for result in results)
    span = max(result.ended for result in results) - min(result.started for result in results)
    cpu = sum(result.cpu_seconds for result in results)
    stages = StageTimes()
    for result in results:
        stages.merge(result.stages)
    return {
        "frames_per_second": round(frames / span, 1) if span > 0 else 0.0,
        "frames": frames,
        "seconds": round(span, 3),
        # Wall ms of FramePipeline.process per outcome.
        "process_ms": {
            "held_back": _ms(
                sum(r.held_back_seconds for r in results), sum(r.held_back for r in results)
            ),
            "forwarded": _ms(
                sum(r.forwarded_seconds for r in results), sum(r.forwarded for r in results)
            ),
        },
        "cpu_ms_per_frame": round(1e3 * cpu / frames, 3) if frames else None,
        # CPU the workers got over the wall time they had: below 1 means other processes
        # on the host (or the workers' own contention for cores) took the rest.
        "cpu_utilisation_per_worker": _ratio(cpu, span * len(results), 3),
        "stage_ms": stages.mean_ms(),
    }


def summarize_mode(runs: Mapping[int, Sequence[WorkerResult]]) -> dict[str, Any]:
    """A mode's entry from its runs, keyed by worker count."""
    by_workers = {str(workers): summarize_run(results) for workers, results in runs.items()}
    best = max(runs, key=lambda workers: by_workers[str(workers)]["frames_per_second"])
    fps = by_workers[str(best)]["frames_per_second"]
    pooled = [result for results in runs.values() for result in results]
    frames = sum(result.frames for result in pooled)
    forwarded = sum(result.forwarded for result in pooled)
    reference = by_workers[str(min(runs))]  # fewest workers: least contention for cores
    return {
        "frames_per_second": fps,
        "workers": best,
        "frames_per_second_per_worker": round(fps / best, 1),
        "by_workers": by_workers,
        "stage_ms": reference["stage_ms"],
        "cpu_ms_per_frame": reference["cpu_ms_per_frame"],
        "process_ms": reference["process_ms"],
        "keyframe_ratio": _ratio(forwarded, frames),
        "bytes_per_frame_out": _ratio(sum(r.forwarded_bytes for r in pooled), forwarded, 1),
        "uplink_bytes_per_input_frame": _ratio(sum(r.forwarded_bytes for r in pooled), frames, 1),
        "input_bytes_per_frame": _ratio(sum(r.input_bytes for r in pooled), frames, 1),
        "dropped": sum(result.dropped for result in pooled),
    }


def _ms(seconds: float, count: int) -> float | None:
    return round(1e3 * seconds / count, 3) if count else None


def mode_ratios(modes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """Ratios between modes of this run: uplink and throughput against ``raw``, and what the
    second worker added."""
    ratios: dict[str, Any] = {"two_workers_vs_one": {}}
    for mode, entry in modes.items():
        by_workers = entry["by_workers"]
        if "1" in by_workers and "2" in by_workers and by_workers["1"]["frames_per_second"]:
            ratios["two_workers_vs_one"][mode] = round(
                by_workers["2"]["frames_per_second"] / by_workers["1"]["frames_per_second"], 2
            )
    raw = modes.get("raw")
    if raw and raw["uplink_bytes_per_input_frame"]:
        ratios["uplink_vs_raw"] = {
            mode: _ratio(entry["uplink_bytes_per_input_frame"], raw["uplink_bytes_per_input_frame"])
            for mode, entry in modes.items()
        }
        ratios["frames_per_second_vs_raw"] = {
            mode: _ratio(entry["frames_per_second"], raw["frames_per_second"], 3)
            for mode, entry in modes.items()
        }
    return ratios


# --- frames ----------------------------------------------------------------------------------


def write_frames(path: Path, frames: Mapping[str, Sequence[wire.Frame]]) -> None:
    """Frame envelopes, length-prefixed, for the worker and publisher processes."""
    with path.open("wb") as out:
        for sequence in frames.values():
            for frame in sequence:
                data = wire.encode(frame)
                out.write(struct.pack(">I", len(data)))
                out.write(data)


def read_frames(path: Path) -> dict[str, list[wire.Frame]]:
    data = path.read_bytes()
    frames: dict[str, list[wire.Frame]] = {}
    position = 0
    while position < len(data):
        (length,) = struct.unpack_from(">I", data, position)
        position += 4
        frame = wire.decode_as(data[position : position + length], wire.Frame)
        position += length
        frames.setdefault(frame.camera_id, []).append(frame)
    return frames


def decode_floors(jpegs: Sequence[bytes], repeats: int = 5) -> dict[str, Any]:
    """ms to decode the 720p JPEGs at full size and at the reduced sizes: each frame's
    fastest of ``repeats`` decodes (a floor, as little disturbed by other load as we can),
    median over the frames."""

    def floor_ms(flag: int) -> float:
        fastest = []
        for jpeg in jpegs:
            buffer = np.frombuffer(jpeg, np.uint8)
            timings = []
            for _ in range(repeats):
                started = time.perf_counter()
                image = cv2.imdecode(buffer, flag)
                timings.append(time.perf_counter() - started)
                assert image is not None
            fastest.append(min(timings))
        return round(1e3 * statistics.median(fastest), 3)

    return {
        "bare_full_jpeg_decode_ms": floor_ms(cv2.IMREAD_COLOR),
        "full_grayscale_decode_ms": floor_ms(cv2.IMREAD_GRAYSCALE),
        "reduced_decode_ms": {
            "grayscale_4": floor_ms(cv2.IMREAD_REDUCED_GRAYSCALE_4),
            "grayscale_8": floor_ms(cv2.IMREAD_REDUCED_GRAYSCALE_8),
        },
    }


# --- throughput: worker processes ------------------------------------------------------------


@dataclass(frozen=True)
class _Job:
    mode: str
    model: bytes | None  # the signed deployment envelope; None for raw
    cameras: tuple[str, ...]
    seconds: float


def _throughput_worker(
    conn: multiprocessing.connection.Connection, frames_file: str, public_key: str
) -> None:
    """A spawned worker: frames decoded once, then one timed run per job until ``None``."""
    sequential_opencv()  # as a gateway worker runs
    frames = read_frames(Path(frames_file))
    trusted = signing.load_public_key(Path(public_key))
    while True:
        job = conn.recv()
        if job is None:
            return
        conn.send(_run_job(conn, job, frames, trusted))


def _run_job(
    conn: multiprocessing.connection.Connection,
    job: _Job,
    frames: Mapping[str, Sequence[wire.Frame]],
    trusted: Any,
) -> WorkerResult:
    pipeline = FramePipeline(gateway_id=GATEWAY_ID, mode=Mode.parse(job.mode))
    if job.model is not None:
        deployment = load_deployment(wire.decode_as(job.model, wire.Model), trusted)
        pipeline.deploy(deployment)
        blank = np.zeros(deployment.extractor.input_shape, np.uint8)
        for _ in range(3):  # LiteRT's first invocations allocate
            deployment.extractor.run(blank)
    if str(pipeline.effective_mode()) != job.mode:
        raise RuntimeError(f"worker runs {pipeline.effective_mode()}, not {job.mode}")
    cycles = camera_cycles({camera: frames[camera] for camera in job.cameras})
    for cycle in cycles.values():
        pipeline.process(cycle[-1])  # the frame before the first: the stream is cyclic
    order = interleave(cycles)
    result = WorkerResult()
    pipeline.on_stage = result.stages.record
    conn.send("ready")
    conn.recv()  # go
    cpu = time.process_time()
    result.started = time.monotonic()
    deadline = result.started + job.seconds
    position = 0
    while time.monotonic() < deadline:
        frame = order[position % len(order)]
        position += 1
        started = time.perf_counter()
        outcome = pipeline.process(frame)
        result.count(outcome, time.perf_counter() - started, len(frame.payload))
    result.ended = time.monotonic()
    result.cpu_seconds = time.process_time() - cpu
    return result


class WorkerPool:
    """Spawned worker processes, each holding every camera's frames; a run starts them
    together (ready, then go) and returns what each did."""

    def __init__(self, count: int, frames_file: Path, public_key: Path) -> None:
        context = multiprocessing.get_context("spawn")
        self._workers: list[tuple[Any, multiprocessing.connection.Connection]] = []
        for index in range(count):
            parent, child = context.Pipe()
            process = context.Process(
                target=_throughput_worker,
                args=(child, str(frames_file), str(public_key)),
                name=f"bench-gateway-worker-{index}",
                daemon=True,
            )
            process.start()
            child.close()
            self._workers.append((process, parent))

    def _receive(self, index: int, timeout: float) -> Any:
        process, conn = self._workers[index]
        if not conn.poll(timeout):
            raise RuntimeError(f"benchmark worker {index} did not answer in {timeout:.0f} s")
        try:
            return conn.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeError(f"benchmark worker {index} died ({process.exitcode})") from exc

    def run(self, jobs: Sequence[_Job]) -> list[WorkerResult]:
        for (_, conn), job in zip(self._workers, jobs, strict=False):
            conn.send(job)
        for index in range(len(jobs)):
            ready = self._receive(index, 300)  # the first job waits for imports and frames
            if ready != "ready":
                raise RuntimeError(f"benchmark worker {index}: {ready!r}")
        for _, conn in self._workers[: len(jobs)]:
            conn.send("go")
        return [self._receive(index, job.seconds + 120) for index, job in enumerate(jobs)]

    def close(self) -> None:
        for _, conn in self._workers:
            with contextlib.suppress(OSError):
                conn.send(None)
        for process, conn in self._workers:
            process.join(10)
            if process.is_alive():
                process.terminate()
                process.join(10)
            conn.close()

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def measure_modes(
    settings: GatewayBenchSettings,
    pool: WorkerPool,
    cameras: Sequence[str],
    models: Mapping[str, bytes | None],
) -> dict[str, Any]:
    """Every mode with every worker count; cameras split evenly between the workers."""
    modes: dict[str, Any] = {}
    for mode in settings.modes:
        runs: dict[int, list[WorkerResult]] = {}
        for workers in settings.worker_counts:
            jobs = [
                _Job(mode, models[mode], tuple(cameras[index::workers]), settings.seconds_per_run)
                for index in range(workers)
            ]
            runs[workers] = pool.run(jobs)
        modes[mode] = summarize_mode(runs)
        log.info("%s: %.0f frames/s", mode, modes[mode]["frames_per_second"])
    return modes


# --- end to end: metrics and processes ----------------------------------------------------


def _process_cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of a process (0 if it is gone)."""
    if pid is None:
        return 0.0
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _host_busy_seconds() -> float:
    """CPU seconds all cores spent not idle since boot (from /proc/stat)."""
    try:
        values = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except OSError:
        return 0.0
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return (sum(values[:8]) - idle) / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class _Snapshot:
    time: float
    samples: Samples
    mosquitto_cpu: float
    publisher_cpu: float
    supervisor_cpu: float  # the gateway pool's supervisor, which serves no metrics
    host_busy: float

    def received(self) -> float:
        return self.samples.total("edgelearn_gateway_frames_received_total")

    def processed(self) -> float:
        return self.samples.total("edgelearn_gateway_frames_processed_total")

    def dropped(self) -> float:
        return self.samples.total("edgelearn_gateway_frames_dropped_total")

    def gateway_cpu(self) -> float:
        return self.samples.total("process_cpu_seconds_total")


def _snapshot(
    urls: Sequence[str],
    mosquitto: int | None,
    publisher: int | None,
    supervisor: int | None = None,
) -> _Snapshot:
    return _Snapshot(
        time.monotonic(),
        scrape(urls),
        _process_cpu_seconds(mosquitto),
        _process_cpu_seconds(publisher),
        _process_cpu_seconds(supervisor),
        _host_busy_seconds(),
    )


@dataclass(frozen=True)
class PublishJob:
    host: str
    port: int
    secrets_dir: str
    site: str
    frames_file: str
    cameras: tuple[str, ...]
    fps: float
    seconds: float


def _publish_cameras(conn: multiprocessing.connection.Connection, job: PublishJob) -> None:
    """A spawned camera publisher: one MQTT connection per camera (each publishes only its
    own topic), pre-encoded JPEGs, frames paced at ``fps`` per camera, cameras staggered
    evenly within a frame period; a fresh ``seq`` and ``capture_ns`` per frame."""
    frames = read_frames(Path(job.frames_file))
    cycles = camera_cycles({camera: frames[camera] for camera in job.cameras})
    topics = wire.Topics(job.site)
    clients = {
        camera: mqtt_client(
            BrokerConfig.for_user(
                camera, host=job.host, port=job.port, secrets_dir=Path(job.secrets_dir)
            ),
            f"bench-{camera}",
        )
        for camera in cycles
    }
    try:
        conn.send("ready")
        conn.recv()  # go
        conn.send(_paced_publish(clients, cycles, topics, job))
    finally:
        for client in clients.values():
            close_client(client)


def _paced_publish(
    clients: Mapping[str, Any],
    cycles: Mapping[str, Sequence[wire.Frame]],
    topics: wire.Topics,
    job: PublishJob,
) -> dict[str, Any]:
    cameras = list(cycles)
    published = failed = 0
    behind_max = 0.0
    last: dict[str, Any] = {}
    cpu = time.process_time()
    started = time.monotonic()
    for tick in paced(len(cameras), job.fps, seconds=job.seconds):
        behind_max = max(behind_max, tick.late)
        camera = cameras[tick.camera]
        cycle = cycles[camera]
        frame = dataclasses.replace(
            cycle[tick.number % len(cycle)], seq=tick.number, capture_ns=time.time_ns()
        )
        info = clients[camera].publish(topics.frame(camera), wire.encode(frame), qos=0)
        if info.rc == 0:
            published += 1
            last[camera] = info
        else:
            failed += 1
    for info in last.values():  # QoS 0: written to the socket
        with contextlib.suppress(RuntimeError, ValueError):
            info.wait_for_publish(10)
    ended = time.monotonic()
    return {
        "published": published,
        "failed": failed,
        "seconds": ended - started,
        "behind_max_ms": round(1e3 * behind_max, 1),
        "cpu_seconds": time.process_time() - cpu,
    }


def _stage_means(samples: Samples) -> dict[str, float]:
    sums = samples.by_label("edgelearn_gateway_stage_seconds_sum", "stage")
    counts = samples.by_label("edgelearn_gateway_stage_seconds_count", "stage")
    order = [*STAGES, "publish"]
    return {
        stage: round(1e3 * sums[stage] / counts[stage], 3) for stage in order if counts.get(stage)
    }


def end_to_end(
    settings: EndToEndSettings,
    frames_file: Path,
    cameras: Sequence[str],
    model: wire.Model | None,
    secrets: Secrets,
    work_dir: Path,
    in_process: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The target run: broker, gateway command, retained deployment, paced cameras."""
    topics = wire.Topics(SITE)
    mode = Mode.parse(settings.mode)
    broker = broker_module.start_broker(
        secrets, broker_module.BrokerSettings(role="edge", run_dir=work_dir / "broker")
    )
    children = ChildProcesses(work_dir, echo=False)
    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    publisher = None
    cloud = BrokerConfig.for_user(
        "cloud", host=broker.host, port=broker.port, secrets_dir=secrets.directory
    )
    acker = Acker(cloud, SITE)  # the cloud's receipts, so the outbox runs as in a pipeline
    try:
        if model is not None:
            publish_retained(
                cloud,
                topics.model(wire.ALL_GATEWAYS, mode),
                wire.encode(model),
            )
        gateway = start_gateway(
            children,
            StackSettings(
                run_dir=work_dir, site=SITE, mode=settings.mode, workers=settings.gateway_workers
            ),
            broker.port,
            child_env(secrets.directory),
        )
        urls = gateway.metrics_urls

        def running_mode() -> bool:
            effective = scrape(urls).total(
                "edgelearn_gateway_mode_info", mode=settings.mode, effective=settings.mode
            )
            return effective == settings.gateway_workers

        wait_until(running_mode, 120, f"every gateway worker to run {settings.mode}")

        publisher = context.Process(
            target=_publish_cameras,
            args=(
                child,
                PublishJob(
                    broker.host,
                    broker.port,
                    str(secrets.directory),
                    SITE,
                    str(frames_file),
                    tuple(cameras[: settings.cameras]),
                    settings.fps,
                    settings.seconds,
                ),
            ),
            name="bench-camera-publisher",
            daemon=True,
        )
        publisher.start()
        child.close()
        if not parent.poll(120) or parent.recv() != "ready":
            raise RuntimeError("the camera publisher did not connect")
        broker_pid = broker.process.pid
        # With more than one worker, the gateway's own process is the pool's supervisor.
        supervisor = gateway.process.pid if settings.gateway_workers > 1 else None
        start = _snapshot(urls, broker_pid, publisher.pid, supervisor)
        parent.send("go")
        go = time.monotonic()
        time.sleep(settings.warm_up_seconds)  # let queues and rates settle
        steady_from = _snapshot(urls, broker_pid, publisher.pid, supervisor)
        time.sleep(max(0.0, go + settings.seconds - 0.5 - time.monotonic()))
        steady_to = _snapshot(urls, broker_pid, publisher.pid, supervisor)
        if not parent.poll(settings.seconds + 120):
            raise RuntimeError("the camera publisher did not finish")
        published: dict[str, Any] = parent.recv()

        last_received = [-1.0]

        def drained() -> bool:
            # Idle: nothing queued, every frame accounted for, and nothing arrived since
            # the previous poll (frames still inside the broker would).
            snapshot = _snapshot(urls, None, None)
            queued = snapshot.samples.total("edgelearn_gateway_queue_depth")
            done = snapshot.processed() + snapshot.dropped()
            received = snapshot.received()
            settled = received == last_received[0]
            last_received[0] = received
            return settled and queued == 0 and done >= received

        wait_until(drained, 60, "the gateway to finish the queued frames")
        end = _snapshot(urls, broker_pid, publisher.pid, supervisor)
    finally:
        if publisher is not None:
            publisher.join(15)
            if publisher.is_alive():
                publisher.terminate()
                publisher.join(10)
        parent.close()
        children.stop()
        acker.close()
        broker.stop()
    result = summarize_end_to_end(
        settings, published, start, steady_from, steady_to, end, in_process
    )
    result["gateway_log"] = LoggedWarnings.in_log(work_dir / "gateway.log").summary()
    return result


def summarize_end_to_end(
    settings: EndToEndSettings,
    published: Mapping[str, Any],
    start: _Snapshot,
    steady_from: _Snapshot,
    steady_to: _Snapshot,
    end: _Snapshot,
    in_process: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """``in_process``: the same mode's entry of the throughput runs, to split the gateway's
    CPU per frame into the pipeline's share and the rest."""
    samples = end.samples
    received = end.received() - start.received()
    processed = samples.by_label("edgelearn_gateway_frames_processed_total", "outcome")
    dropped = samples.by_label("edgelearn_gateway_frames_dropped_total", "reason")
    forwarded = processed.get("forwarded", 0.0)
    held_back = processed.get("held_back", 0.0)
    window = steady_to.time - steady_from.time
    received_rate = (steady_to.received() - steady_from.received()) / window
    processed_rate = (steady_to.processed() - steady_from.processed()) / window
    cores = {
        "gateway_workers": (steady_to.gateway_cpu() - steady_from.gateway_cpu()) / window,
        "gateway_supervisor": (steady_to.supervisor_cpu - steady_from.supervisor_cpu) / window,
        "mosquitto": (steady_to.mosquitto_cpu - steady_from.mosquitto_cpu) / window,
        "camera_publisher": (steady_to.publisher_cpu - steady_from.publisher_cpu) / window,
    }
    host_busy = (steady_to.host_busy - steady_from.host_busy) / window
    cores["other_processes"] = max(0.0, host_busy - sum(cores.values()))
    cores["host_busy"] = host_busy
    cores["host_cores"] = float(os.cpu_count() or 1)
    stage_sums = samples.by_label("edgelearn_gateway_stage_seconds_sum", "stage")
    done = forwarded + held_back
    pipeline_ms = 1e3 * sum(stage_sums.get(stage, 0.0) for stage in STAGES) / max(1.0, done)
    gateway_cores = cores["gateway_workers"] + cores["gateway_supervisor"]
    gateway_cpu_ms = 1e3 * gateway_cores / received_rate if received_rate else None
    offered = published["published"] / published["seconds"] if published["seconds"] else 0.0
    lost = published["published"] - received
    target = settings.target_frames_per_second
    reasons = []
    if offered < 0.97 * target:
        reasons.append(f"the publisher offered only {offered:.0f} frames/s")
    if lost > 0:
        reasons.append(f"{lost:.0f} frames never reached the gateway")
    if sum(dropped.values()) > 0:
        reasons.append(f"the gateway dropped {sum(dropped.values()):.0f} frames {dropped}")
    if processed_rate < 0.97 * target:
        reasons.append(f"steady processing rate {processed_rate:.0f} frames/s")
    result: dict[str, Any] = {
        "mode": settings.mode,
        "cameras": settings.cameras,
        "fps_per_camera": settings.fps,
        "target_frames_per_second": target,
        "gateway_workers": settings.gateway_workers,
        "gateway_queue_depth": GatewayConfig().queue_depth,
        "seconds": round(published["seconds"], 2),
        "published": published["published"],
        "publish_failures": published["failed"],
        "publisher_frames_per_second": round(offered, 1),
        "publisher_behind_max_ms": published["behind_max_ms"],
        "received": received,
        "lost_before_gateway": lost,
        "processed": processed,
        "dropped": dropped,
        "achieved_frames_per_second": round(processed_rate, 1),
        "received_frames_per_second": round(received_rate, 1),
        "steady_window_seconds": round(window, 2),
        "keyframe_ratio": _ratio(forwarded, done),
        # Sent again for want of an ack within the gateway's retry_after: ~0 when the
        # stand-in cloud keeps up, as the real one does.
        "features_resent": samples.total("edgelearn_gateway_features_resent_total"),
        "features_acked": samples.total("edgelearn_gateway_features_acked_total"),
        "uplink_bytes_per_forwarded_frame": _ratio(
            samples.total("edgelearn_gateway_uplink_bytes_total"), forwarded, 1
        ),
        "stage_ms": _stage_means(samples),
        "pipeline_wall_ms_per_frame": round(pipeline_ms, 3),
        "gateway_cpu_ms_per_frame": round(gateway_cpu_ms, 3) if gateway_cpu_ms else None,
        "cpu_cores_used": {name: round(value, 3) for name, value in cores.items()},
        "target_met": not reasons,
        "target_missed_because": reasons,
    }
    if in_process is not None and gateway_cpu_ms is not None and done:
        result["keyframe_ratio_in_process"] = in_process["keyframe_ratio"]
        alone = pipeline_cpu_ms_alone(in_process, forwarded / done)
        if alone is not None:
            # Every received frame is ingested; only the processed ones (not those dropped
            # from a full queue) went through the pipeline.
            ingest = (1e3 * gateway_cores - alone * processed_rate) / received_rate
            result["pipeline_cpu_ms_per_frame_alone"] = round(alone, 3)
            result["ingest_and_forwarding_cpu_ms_per_frame"] = round(max(0.0, ingest), 3)
            # The CPU the whole run needs at the target rate, whatever else the host runs.
            others = (cores["mosquitto"] + cores["camera_publisher"]) / received_rate
            result["cores_needed_at_target"] = round(
                target * ((alone + max(0.0, ingest)) / 1e3 + others), 2
            )
            # The pipeline's CPU shared out like its stages' wall times measured alone.
            stages = in_process["stage_ms"]
            every = sum(stages.get(stage, 0.0) for stage in ("decode_small", "objects", "keyframe"))
            keyframe_work = (forwarded / done) * sum(
                stages.get(stage, 0.0) for stage in ("decode", "extract", "encode")
            )
            if every + keyframe_work > 0:
                result["pipeline_cpu_split_ms"] = {
                    "decode_objects_keyframe_rule_every_frame": round(
                        alone * every / (every + keyframe_work), 3
                    ),
                    "decode_extract_encode_of_keyframes": round(
                        alone * keyframe_work / (every + keyframe_work), 3
                    ),
                }
    result["where_the_time_goes"] = _where_the_time_goes(result)
    return result


def pipeline_cpu_ms_alone(in_process: Mapping[str, Any], keyframe_ratio: float) -> float | None:
    """CPU ms per frame of ``FramePipeline.process`` alone at ``keyframe_ratio``: the
    throughput run's CPU per frame, rescaled from its own keyframe ratio by the wall times
    of held-back and forwarded frames (contention stretches both alike)."""
    held_back = in_process["process_ms"]["held_back"]
    forwarded = in_process["process_ms"]["forwarded"]
    measured_ratio = in_process["keyframe_ratio"]
    cpu = in_process["cpu_ms_per_frame"]
    if held_back is None or forwarded is None or measured_ratio is None or cpu is None:
        return None
    wall_measured = (1 - measured_ratio) * held_back + measured_ratio * forwarded
    wall_here = (1 - keyframe_ratio) * held_back + keyframe_ratio * forwarded
    return float(cpu * wall_here / wall_measured)


def _where_the_time_goes(result: Mapping[str, Any]) -> str:
    cores = result["cpu_cores_used"]
    text = (
        f"Steady window: the host's {cores['host_cores']:.0f} cores were "
        f"{cores['host_busy']:.2f} busy: gateway workers {cores['gateway_workers']:.2f} and "
        f"their supervisor {cores['gateway_supervisor']:.2f}, "
        f"mosquitto {cores['mosquitto']:.2f}, camera publisher {cores['camera_publisher']:.2f}, "
        f"other processes on the host {cores['other_processes']:.2f}."
    )
    gateway_ms = result["gateway_cpu_ms_per_frame"]
    if gateway_ms is not None:
        text += f" The gateway spent {gateway_ms:.2f} ms of CPU per received frame"
        if "pipeline_cpu_split_ms" in result:
            split = result["pipeline_cpu_split_ms"]
            text += (
                f": the pipeline {result['pipeline_cpu_ms_per_frame_alone']:.2f} ms per "
                f"processed frame at keyframe ratio {result['keyframe_ratio']} (about "
                f"{split['decode_objects_keyframe_rule_every_frame']} ms the small decode, the "
                "objects and the keyframe rule on every frame, and "
                f"{split['decode_extract_encode_of_keyframes']} ms decode + extract + encode "
                "of the keyframes), and about "
                f"{result['ingest_and_forwarding_cpu_ms_per_frame']:.2f} ms per received frame "
                "the pool's hop from its MQTT receive (paho) to the worker, envelope decode, "
                "queueing, metrics, and forwarding with its outbox and acks. At the target "
                "rate the run needs about "
                f"{result['cores_needed_at_target']} cores in all"
            )
        text += "."
    text += f" Stage times under load (wall ms, including waits for a core): {result['stage_ms']}."
    return text


# --- the run -------------------------------------------------------------------------------


def measure(
    settings: GatewayBenchSettings, deployments: DeploymentSource, work_dir: Path
) -> dict[str, Any]:
    """Everything but the machine facts; ``deployments`` signs a model per mode."""
    cameras_needed = max(
        settings.cameras, settings.end_to_end.cameras if settings.end_to_end else 0
    )
    started = time.perf_counter()
    # Scenes of 0-3 items walking in and out, as the cameras show them: the gateway finds
    # the objects in every frame and extracts each one it sends.
    frames = render_object_cameras(
        cameras_needed, settings.frames_per_camera, quality=settings.jpeg_quality
    )
    render_seconds = time.perf_counter() - started
    frames_file = work_dir / "frames.bin"
    write_frames(frames_file, frames)
    secrets = broker_module.init_secrets(work_dir / "secrets", cameras=cameras_needed, gateways=1)
    wanted = set(settings.modes)
    if settings.end_to_end is not None:
        wanted.add(settings.end_to_end.mode)
    signed = {
        mode: None if mode == "raw" else deployments(Mode.parse(mode), secrets) for mode in wanted
    }
    jpegs = [frame.payload for sequence in frames.values() for frame in sequence]
    report: dict[str, Any] = {
        "frames": {
            "cameras": settings.cameras,
            "frames_per_camera": settings.frames_per_camera,
            "dwell_frames": settings.dwell_frames,
            "jpeg_quality": settings.jpeg_quality,
            "size": "1280x720",
            "mean_jpeg_bytes": round(float(np.mean([len(jpeg) for jpeg in jpegs])), 1),
            "render_seconds": round(render_seconds, 1),
        },
        "keyframes": dataclasses.asdict(KeyframeSettings()),
        "model_versions": {
            mode: model.version for mode, model in signed.items() if model is not None
        },
        "seconds_per_run": settings.seconds_per_run,
        **decode_floors(jpegs[: settings.decode_samples]),
    }
    camera_ids = list(frames)[: settings.cameras]
    with WorkerPool(max(settings.worker_counts), frames_file, secrets.signing_public_key) as pool:
        models = {
            mode: None if model is None else wire.encode(model) for mode, model in signed.items()
        }
        report["modes"] = measure_modes(settings, pool, camera_ids, models)
    report["ratios"] = mode_ratios(report["modes"])
    if settings.end_to_end is not None:
        e2e = settings.end_to_end
        report["end_to_end"] = end_to_end(
            e2e,
            frames_file,
            list(frames),
            signed.get(e2e.mode),
            secrets,
            work_dir,
            report["modes"].get(e2e.mode),
        )
    return report


def registry_deployments(registry: Registry) -> DeploymentSource:
    """Sign the newest registry entry of each mode with the benchmark's key."""

    def deployment(mode: Mode, secrets: Secrets) -> wire.Model:
        key = signing.load_private_key(secrets.signing_key)
        entry = registry.serving(mode)
        return registry.deployment(entry.name, entry.version, key)

    return deployment


def run(quick: bool) -> dict[str, Any]:
    """``edgelearn bench gateway [--quick]``: a JSON-able report."""
    settings = GatewayBenchSettings.quick() if quick else GatewayBenchSettings()
    return registry_run(
        "gateway",
        quick,
        lambda registry, work: measure(settings, registry_deployments(registry), work),
    )
