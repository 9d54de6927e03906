"""What several benchmarks share: the bench model registry, camera frames, paced publishing,
MQTT clients, waiting and work directories.

* :func:`bench_registry`: every mode's models, trained once on the quick budget and cached
  (speed and bytes depend on the architecture, not on how well a model was trained; where
  accuracy matters a benchmark trains afresh or takes a registry of its own);
* :func:`scene_frames`, :func:`render_cameras`: 720p JPEG frames of labeled-scene
  cameras, made the way ``edgelearn camera`` makes them, so every benchmark (and test)
  replays real camera frames;
* :func:`paced`: the moments at which free-running cameras send, out of step;
* :func:`mqtt_client`, :func:`publish_retained`: paho clients of the benchmark's own
  publishers and listeners;
* :func:`serve_in_thread`: a role's service (an async context manager) in an event loop
  of its own thread, for a benchmark or a test that drives it from outside;
* :func:`poll_until`, :func:`wait_until`, :func:`work_dir`, :func:`quantile`,
  :func:`percentiles_ms`.

Machine facts come from :func:`edgelearn.metrics.machine_info` and metrics from
:func:`edgelearn.metrics.scrape`, both in the floor.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import io
import logging
import os
import re
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from cloud.registry import Registry
from edgelearn import preprocess, roi, wire
from edgelearn.config import BrokerConfig

BENCH_SPLIT_KS = (2, 4, 6, 8)
GATEWAY_ID = "gw-1"
T = TypeVar("T")


# --- models ----------------------------------------------------------------------------------


def bench_registry_path() -> Path:
    explicit = os.environ.get("EDGELEARN_BENCH_REGISTRY")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "edgelearn" / "bench-registry"


def bench_registry(split_ks: Sequence[int] = BENCH_SPLIT_KS) -> tuple[Registry, dict[str, Any]]:
    """A registry with every mode, trained once on the quick plan (every generation) and
    then reused from a cache directory (``$EDGELEARN_BENCH_REGISTRY``, else
    ``~/.cache/edgelearn/bench-registry``), and what it holds."""
    from cloud.bootstrap import TrainingPlan, train_plan, with_splits

    root = bench_registry_path()
    root.mkdir(parents=True, exist_ok=True)
    registry = Registry(root)
    started = time.perf_counter()
    outcomes = train_plan(registry, with_splits(TrainingPlan.quick(), split_ks))
    return registry, {
        "registry": str(root),
        "budget": "TrainingPlan.quick()",
        "split_ks": list(split_ks),
        "trained_now": bool(outcomes),
        "training_seconds": round(time.perf_counter() - started, 1) if outcomes else 0,
        "entries": {
            f"{entry.name}/{entry.version}": {
                "kind": entry.kind,
                "split_k": entry.split_k,
                "accuracy": entry.accuracy,
            }
            for entry in registry.list()
        },
    }


def registry_run(
    part: str, quick: bool, measure: Callable[[Registry, Path], dict[str, Any]]
) -> dict[str, Any]:
    """A benchmark part's report: ``measure(bench registry, work directory)`` and what it
    ran on, the models it used and how long it took."""
    from edgelearn.metrics import machine_info

    started = time.perf_counter()
    registry, models = bench_registry()
    with work_dir(part) as directory:
        report = measure(registry, directory)
    return {
        "benchmark": part,
        "quick": quick,
        "machine": machine_info(),
        "models": models,
        **report,
        "elapsed_seconds": round(time.perf_counter() - started, 1),
    }


# --- camera frames ---------------------------------------------------------------------------


def scene_frames(
    camera_id: str, count: int, *, seed: int = 0, dwell: int = 30, quality: int = 80
) -> list[wire.Frame]:
    """``count`` 720p JPEG frames of one labeled scene of Fashion-MNIST *test* items, as
    ``edgelearn camera --source fashion-mnist:test`` sends them (an item every ``dwell``
    frames)."""
    from cameras.scene import LabeledScene
    from edgelearn.datasets import load_fashion_mnist

    scene = LabeledScene(load_fashion_mnist("test"), seed=seed, dwell_frames=dwell)
    return [_frame(camera_id, number, scene.render(number), quality) for number in range(count)]


def _frame(camera_id: str, number: int, rendered: Any, quality: int) -> wire.Frame:
    """The Frame a camera sends for ``rendered`` (a :class:`cameras.scene.SourceFrame`)."""
    height, width = rendered.image.shape[:2]
    return wire.Frame(
        camera_id,
        number,
        time.time_ns(),
        width,
        height,
        wire.Encoding.JPEG,
        rendered.label,
        preprocess.encode_jpeg(rendered.image, quality),
        truth_labels=tuple(item.label for item in rendered.objects),
        truth_boxes=tuple(item.box for item in rendered.objects),
        truth_items=tuple(item.item for item in rendered.objects),
    )


def object_frames(
    camera_id: str, count: int, *, seed: int = 0, quality: int = 80, first: int = 0
) -> list[wire.Frame]:
    """``count`` 720p JPEG frames of an :class:`cameras.scene.ObjectScene` of Fashion-MNIST
    *test* items (0-3 in view, walking in and out), from frame ``first``, with each item's
    label and box, as ``edgelearn camera --source fashion-mnist:test`` sends them."""
    from cameras.scene import ObjectScene
    from edgelearn.datasets import load_fashion_mnist

    scene = ObjectScene(load_fashion_mnist("test"), seed=seed)
    return [
        _frame(camera_id, number, scene.render(number), quality)
        for number in range(first, first + count)
    ]


def items_shown(
    cameras: int, frames_per_camera: int, *, first_seed: int = 1, first: int = 0
) -> int:
    """How many distinct items :func:`render_object_cameras` with these arguments shows
    wholly in view at least once. Each item is seen in many frames, so a per-object accuracy
    is about as certain as a sample of this many items (95% within about 1.96 * sqrt(p (1 -
    p) / items))."""
    from cameras.scene import ObjectScene
    from edgelearn.datasets import load_fashion_mnist

    data = load_fashion_mnist("test")
    shown: set[tuple[int, int]] = set()
    for camera in range(cameras):
        scene = ObjectScene(data, seed=first_seed + camera)
        for number in range(first, first + frames_per_camera):
            frame = scene.render(number)
            height, width = frame.image.shape[:2]
            shown.update(
                (camera, item.item)
                for item in frame.objects
                if item.box[0] > 0
                and item.box[1] > 0
                and item.box[2] < width
                and item.box[3] < height
            )
    return len(shown)


IN_VIEW = 0.01  # of the frame: a smaller true item is stepping in or out


@dataclass(frozen=True)
class BoxScore:
    hits: int = 0
    misses: int = 0
    false: int = 0
    ignored: int = 0  # boxes over an item only partly in view: neither hit nor false

    def __add__(self, other: BoxScore) -> BoxScore:
        return BoxScore(*(a + b for a, b in zip(self.counts, other.counts, strict=True)))

    @property
    def counts(self) -> tuple[int, int, int, int]:
        return (self.hits, self.misses, self.false, self.ignored)

    def recall(self) -> float | None:
        return self.hits / (self.hits + self.misses) if self.hits + self.misses else None

    def precision(self) -> float | None:
        return self.hits / (self.hits + self.false) if self.hits + self.false else None


def score_boxes(
    truth: Sequence[roi.Box],
    found: Sequence[roi.Box],
    frame_size: tuple[int, int],
    *,
    ignore_cut: bool = False,
) -> BoxScore:
    """Found boxes against the true ones at IoU 0.5 (:func:`edgelearn.roi.match`). A true
    item under :data:`IN_VIEW` of the frame (or, with ``ignore_cut``, cut by its edge) is
    neither required nor a source of false boxes."""
    width, height = frame_size

    def partial(box: roi.Box) -> bool:
        x0, y0, x1, y1 = box
        cut = x0 <= 0 or y0 <= 0 or x1 >= width or y1 >= height
        return (x1 - x0) * (y1 - y0) < IN_VIEW * width * height or (ignore_cut and cut)

    whole = [box for box in truth if not partial(box)]
    parts = [box for box in truth if partial(box)]
    matched = roi.match(whole, found, 0.5)
    used = set(matched.values())
    ignored = sum(
        1
        for k, box in enumerate(found)
        if k not in used and any(roi.iou(box, part) > 0.1 for part in parts)
    )
    return BoxScore(
        len(matched), len(whole) - len(matched), len(found) - len(used) - ignored, ignored
    )


def render_cameras(
    cameras: int,
    frames_per_camera: int,
    *,
    dwell_frames: int,
    quality: int = 80,
    first_seed: int = 1,
) -> dict[str, list[wire.Frame]]:
    """:func:`scene_frames` of ``cam-1``...``cam-N``, seeds ``first_seed``, ``first_seed +
    1``...; OpenCV releases the GIL while it composes and encodes, so two threads render."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="render") as pool:
        rendered = list(
            pool.map(
                lambda index: scene_frames(
                    f"cam-{index + 1}",
                    frames_per_camera,
                    seed=first_seed + index,
                    dwell=dwell_frames,
                    quality=quality,
                ),
                range(cameras),
            )
        )
    return {frames[0].camera_id: frames for frames in rendered}


def render_object_cameras(
    cameras: int,
    frames_per_camera: int,
    *,
    quality: int = 80,
    first_seed: int = 1,
    first: int = 0,
) -> dict[str, list[wire.Frame]]:
    """:func:`object_frames` of ``cam-1``...``cam-N`` (seeds ``first_seed``...) from frame
    ``first``, rendered in two threads."""
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="render") as pool:
        rendered = list(
            pool.map(
                lambda index: object_frames(
                    f"cam-{index + 1}",
                    frames_per_camera,
                    seed=first_seed + index,
                    quality=quality,
                    first=first,
                ),
                range(cameras),
            )
        )
    return {frames[0].camera_id: frames for frames in rendered}


@dataclass(frozen=True)
class Tick:
    number: int  # the camera's frame number
    camera: int  # index of the camera
    late: float  # seconds the send was past its moment (0 when on time)


def paced(
    cameras: int,
    fps: float,
    *,
    seconds: float | None = None,
    frames_per_camera: int | None = None,
) -> Iterator[Tick]:
    """Every camera's next frame as it falls due, sleeping until then: camera ``i`` of
    ``n`` sends frame ``k`` at ``k / fps + i / (n * fps)`` after the start (free-running
    cameras are out of step), for ``seconds`` or ``frames_per_camera`` frames each."""
    period = 1.0 / fps
    started = time.monotonic()
    tick = 0
    while True:
        number, index = divmod(tick, cameras)
        offset = number * period + index * period / cameras
        if seconds is not None and offset >= seconds:
            return
        if frames_per_camera is not None and number >= frames_per_camera:
            return
        delay = started + offset - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing: this frame is not due yet
        yield Tick(number, index, max(0.0, -delay))
        tick += 1


# --- MQTT ------------------------------------------------------------------------------------


def mqtt_client(config: BrokerConfig, client_id: str, *, max_inflight: int = 20) -> Any:
    """A connected paho client (MQTT v5) with its network thread running."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    config.apply_to_paho(client)
    client.max_inflight_messages_set(max_inflight)
    connected = threading.Event()
    outcome: list[Any] = []

    def on_connect(client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        outcome.append(code)
        connected.set()

    client.on_connect = on_connect
    client.connect(config.host, config.port)
    client.loop_start()
    if not connected.wait(15) or outcome[0].is_failure:
        client.loop_stop()
        raise RuntimeError(f"{client_id}: no connection to {config.address} ({outcome})")
    return client


def close_client(client: Any) -> None:
    client.disconnect()
    client.loop_stop()


def publish_retained(config: BrokerConfig, topic: str, payload: bytes) -> None:
    """Publish ``payload`` retained at QoS 1 and wait for the broker's acknowledgement."""
    client = mqtt_client(config, f"bench-retain-{os.getpid()}")
    try:
        info = client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(15)
        if not info.is_published():
            raise RuntimeError(f"the broker did not acknowledge the message on {topic}")
    finally:
        close_client(client)


# --- services in a thread --------------------------------------------------------------------


@contextlib.contextmanager
def serve_in_thread(
    enter: Callable[[], AbstractAsyncContextManager[T]], what: str, start_timeout: float = 30.0
) -> Iterator[tuple[T, asyncio.AbstractEventLoop]]:
    """Enter ``enter()`` in an event loop of its own thread and keep it entered until the
    block ends; a failure to start is raised here, a failure to stop reports every task."""
    ready: list[tuple[T, asyncio.AbstractEventLoop]] = []
    failure: list[BaseException] = []
    started = threading.Event()
    stop: list[asyncio.Event] = []

    async def main() -> None:
        stop.append(asyncio.Event())
        try:
            async with enter() as running:
                ready.append((running, asyncio.get_running_loop()))
                started.set()
                await stop[0].wait()
        except BaseException as exc:
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), name=what, daemon=True)
    thread.start()
    if not started.wait(start_timeout):
        raise RuntimeError(f"{what} did not start within {start_timeout:.0f} s")
    if failure:
        raise failure[0]
    loop = ready[0][1]
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(30)
        if thread.is_alive():
            raise RuntimeError(f"{what} did not stop:\n{_where_it_hangs(loop)}")


def _where_it_hangs(loop: asyncio.AbstractEventLoop) -> str:
    """Every pending task of ``loop`` and every thread, with their stacks: what a service
    that does not stop is waiting for."""

    async def tasks() -> str:
        out = io.StringIO()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                print(f"task {task.get_name()}:", file=out)
                task.print_stack(file=out)
        return out.getvalue()

    try:
        report = asyncio.run_coroutine_threadsafe(tasks(), loop).result(5)
    except Exception as exc:  # the loop itself may be stuck
        report = f"(tasks unavailable: {exc!r})\n"
    for ident, frame in sys._current_frames().items():
        report += f"thread {ident}:\n" + "".join(traceback.format_stack(frame)[-6:])
    return report


# --- odds and ends ---------------------------------------------------------------------------


class LoggedWarnings:
    """WARNING and ERROR messages a run logged, counted by message with digits folded (so
    one message about many frames counts as one kind)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, message: str) -> None:
        self.counts[re.sub(r"\d+", "N", message.strip())] += 1

    def summary(self, examples: int = 5) -> dict[str, Any]:
        return {
            "warnings_and_errors": sum(self.counts.values()),
            "most_common": dict(self.counts.most_common(examples)),
        }

    @classmethod
    def in_log(cls, log_file: Path) -> LoggedWarnings:
        """The WARNING and ERROR lines of a child process's log file."""
        found = cls()
        for line in log_file.read_text(errors="replace").splitlines():
            if "WARNING" in line or "ERROR" in line:
                found.add(line)
        return found

    @contextlib.contextmanager
    def attached(self) -> Iterator[LoggedWarnings]:
        """Count the records of this process while the block runs."""
        warnings = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                warnings.add(f"{record.name}: {record.getMessage()}")

        handler = Handler(logging.WARNING)
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield self
        finally:
            root.removeHandler(handler)


def poll_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` (another process's state) until true or ``timeout`` seconds have
    passed; whether it came true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # polling another process's state, bounded by the timeout
    return True


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """:func:`poll_until`, and a RuntimeError naming ``what`` if it did not come true."""
    if not poll_until(condition, timeout):
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def work_dir(part: str) -> Iterator[Path]:
    """A temporary directory for one benchmark run, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"edgelearn-bench-{part}-") as directory:
        yield Path(directory)


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (linear between samples), or None without samples."""
    return float(np.quantile(np.asarray(values, np.float64), q)) if len(values) else None


def percentiles_ms(values_ns: Sequence[int]) -> dict[str, float | int | None]:
    """p50/p90/p99/max/mean in milliseconds of nanosecond durations."""
    if not values_ns:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    array = np.asarray(values_ns, dtype=np.float64) / 1e6
    summary: dict[str, float | int | None] = {"count": len(values_ns)}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        summary[name] = round(float(np.quantile(array, q)), 2)
    summary["max"] = round(float(array.max()), 2)
    summary["mean"] = round(float(array.mean()), 2)
    return summary
