"""``edgelearn bench drift``: the world changes; a static model against the continuous
trainer, on the same features, in one run.

The setup is the real stack (:func:`stack.launcher.launch`, as ``edgelearn up`` starts it):
an edge broker bridged to a cloud broker, ``edgelearn cloud`` with its continuous trainer on
(the *learning* cloud), and one gateway pinned to ``split:k`` with keyframes. Beside it, in
this process, a second cloud (the *static* one) joins the cloud broker in a shared-
subscription group of its own, with a copy of the same registry and no trainer: both groups
get every feature the gateway sends, answer it and score it against the ground truth, so the
two accuracies are of the same objects.

The benchmark plays the cameras: :class:`cameras.scene.ObjectScene` scenes of Fashion-MNIST
*test* items (never trained on), rendered before the run and paced at ``fps``. At
``drift_at`` seconds the world changes, all at once:

* new backgrounds and lighting: every camera's scene is drawn from a new seed;
* the cameras moved back: items are 16-26% of the frame's height, not 28-45%;
* the class mix shifts: only tops (T-shirt/top, pullover, coat, shirt) and footwear
  (sandal, sneaker, ankle boot), the classes most confused with one another;
* a new camera joins, with a scene never seen before.

Every ``interval`` seconds both clouds' ``edgelearn_cloud_frames_scored_total{camera}`` are
read: accuracy over time per camera and overall, for static and learning. Reported with
them: the learning cloud's training runs and their time, promotions, rejections and
rollbacks, model bytes pushed to the gateways, and the latency of ``split:k`` (p50/p99 from
its histogram) over the whole run and over the intervals in which a training run started or
ended. ``edgelearn report`` draws the accuracy over time (``drift.png``).
"""

from __future__ import annotations

import itertools
import json
import shutil
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import (
    BENCH_SPLIT_KS,
    bench_registry,
    bench_registry_path,
    close_client,
    mqtt_client,
    paced,
    poll_until,
    serve_in_thread,
    wait_until,
)
from edgelearn import preprocess, wire
from edgelearn.config import BrokerConfig
from edgelearn.datasets import LabeledImages, load_fashion_mnist, subset
from edgelearn.metrics import Samples, machine_info, scrape
from edgelearn.modes import Mode
from stack.launcher import StackSettings, launch

SITE = "drift"
FIRST_SEED = 2000  # of the scenes before the drift
DRIFT_SEED = 3000  # of the scenes after it
DRIFT_HEIGHTS = (0.16, 0.26)
DRIFT_CLASSES = (0, 2, 4, 6, 5, 7, 9)  # tops and footwear
SCORED = "edgelearn_cloud_frames_scored_total"
JPEG_QUALITY = 80


@dataclass(frozen=True)
class Budget:
    cameras: int  # before the drift; one more joins at it
    fps: float
    drift_at: float  # seconds
    duration: float  # seconds in all
    interval: float  # seconds between two readings
    split_k: int
    training: str  # the first model set's budget
    learn_every: int

    @classmethod
    def of(cls, quick: bool) -> Budget:
        if quick:
            return cls(3, 5.0, 20.0, 65.0, 5.0, 2, "quick", 100)
        return cls(4, 6.0, 150.0, 600.0, 10.0, 2, "default", 600)

    @property
    def mode(self) -> Mode:
        return Mode.split(self.split_k)


# --- the cameras' frames ----------------------------------------------------------------


def _scene_frames(
    camera: str, data: LabeledImages, seed: int, heights: tuple[float, float], frames: range
) -> list[tuple[bytes, tuple[int, ...], tuple[wire.Box, ...]]]:
    from cameras.scene import OBJECT_HEIGHTS, ObjectScene

    scene = ObjectScene(data, seed=seed, heights=heights or OBJECT_HEIGHTS)
    rendered = []
    for number in frames:
        frame = scene.render(number)
        rendered.append(
            (
                preprocess.encode_jpeg(frame.image, JPEG_QUALITY),
                tuple(item.label for item in frame.objects),
                tuple(item.box for item in frame.objects),
            )
        )
    return rendered


def render_world(budget: Budget) -> dict[str, list[Any]]:
    """Per camera, the JPEG, labels and boxes of each of its frames: ``None`` for a camera
    not there yet (the new one, before the drift)."""
    from cameras.scene import OBJECT_HEIGHTS

    test = load_fashion_mnist("test")
    drifted = subset(test, np.flatnonzero(np.isin(test.labels, DRIFT_CLASSES)).astype(np.int64))
    before = int(budget.drift_at * budget.fps)
    total = int(budget.duration * budget.fps)
    jobs = []
    for index in range(budget.cameras + 1):
        camera = f"cam-{index + 1}"
        if index < budget.cameras:
            jobs.append((camera, test, FIRST_SEED + index, OBJECT_HEIGHTS, range(before)))
        jobs.append((camera, drifted, DRIFT_SEED + index, DRIFT_HEIGHTS, range(total - before)))
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="render") as pool:
        parts = list(pool.map(lambda job: _scene_frames(*job), jobs))
    world: dict[str, list[Any]] = {}
    for (camera, *_), frames in zip(jobs, parts, strict=True):
        world.setdefault(camera, [] if camera != f"cam-{budget.cameras + 1}" else [None] * before)
        world[camera].extend(frames)
    return world


def _play(
    world: dict[str, list[Any]], budget: Budget, clients: dict[str, Any], stop: threading.Event
) -> None:
    cameras = sorted(world, key=lambda c: (len(c), c))
    topics = wire.Topics(SITE)
    for tick in paced(len(cameras), budget.fps, seconds=budget.duration):
        if stop.is_set():
            return
        camera = cameras[tick.camera]
        shot = world[camera][tick.number] if tick.number < len(world[camera]) else None
        if shot is None:
            continue
        jpeg, labels, boxes = shot
        frame = wire.Frame(
            camera, tick.number, time.time_ns(), 1280, 720, wire.Encoding.JPEG, None, jpeg,
            truth_labels=labels, truth_boxes=boxes,
        )  # fmt: skip
        clients[camera].publish(topics.frame(camera), wire.encode(frame), qos=0)


# --- readings -----------------------------------------------------------------------------


def _scored(samples: Samples, mode: str) -> dict[str, tuple[float, float]]:
    correct = samples.by_label(SCORED, "camera", mode=mode, outcome="correct")
    wrong = samples.by_label(SCORED, "camera", mode=mode, outcome="wrong")
    return {c: (correct.get(c, 0.0), correct.get(c, 0.0) + wrong.get(c, 0.0)) for c in correct}


def _reading(learning_url: str, static_url: str, mode: str, at: float) -> dict[str, Any]:
    learning, static = scrape([learning_url]), scrape([static_url])
    latency = {
        labels["le"]: value
        for labels, value in learning.values(
            "edgelearn_cloud_end_to_end_latency_seconds_bucket", mode=mode
        )
    }
    return {
        "t": round(at, 1),
        "learning": _scored(learning, mode),
        "static": _scored(static, mode),
        "runs": learning.total("edgelearn_cloud_training_seconds_count", kind=mode),
        "started": learning.total("edgelearn_cloud_trainer_triggers_total", mode=mode),
        "training_seconds": learning.total("edgelearn_cloud_training_seconds_sum", kind=mode),
        "promotions": learning.total("edgelearn_cloud_trainer_promotions_total"),
        "rejections": learning.total("edgelearn_cloud_trainer_rejections_total"),
        "rollbacks": learning.total("edgelearn_cloud_trainer_rollbacks_total"),
        "pushed_bytes": learning.total("edgelearn_cloud_model_pushed_bytes_total"),
        "drops": {
            reason: int(value)
            for reason, value in learning.by_label(
                "edgelearn_cloud_features_dropped_total", "reason"
            ).items()
            if value
        },
        "latency_buckets": latency,
    }


def _windowed(readings: list[dict[str, Any]], arm: str, start: float, end: float) -> Any:
    """Accuracy of ``arm`` over (start, end], per camera and overall, from the readings."""
    first = max((r for r in readings if r["t"] <= start), key=lambda r: r["t"], default=None)
    last = max((r for r in readings if r["t"] <= end), key=lambda r: r["t"], default=None)
    if last is None:
        return None
    base = first[arm] if first else {}
    cameras: dict[str, float | None] = {}
    correct = total = 0.0
    for camera, (c1, n1) in last[arm].items():
        c0, n0 = base.get(camera, (0.0, 0.0))
        cameras[camera] = round((c1 - c0) / (n1 - n0), 4) if n1 > n0 else None
        correct += c1 - c0
        total += n1 - n0
    return {"overall": round(correct / total, 4) if total else None, "cameras": cameras,
            "objects": int(total)}  # fmt: skip


def _quantiles(first: dict[str, float], last: dict[str, float]) -> dict[str, float | None]:
    from stack.up import _quantile

    buckets = sorted(
        ((float(le), last[le] - first.get(le, 0.0)) for le in last), key=lambda b: b[0]
    )
    return {"p50": _quantile(buckets, 0.5), "p99": _quantile(buckets, 0.99),
            "count": buckets[-1][1] if buckets else 0}  # fmt: skip


def summarize(readings: list[dict[str, Any]], budget: Budget) -> dict[str, Any]:
    """Accuracy over time, recovery, final gap, trainer activity, pushes and latency."""
    window = max(3 * budget.interval, 30.0)
    drift = budget.drift_at
    series = []
    for reading in readings[1:]:
        row: dict[str, Any] = {"t": reading["t"]}
        for arm in ("learning", "static"):
            row[arm] = _windowed(readings, arm, reading["t"] - window, reading["t"])
        row["promotions"] = reading["promotions"]
        row["rollbacks"] = reading["rollbacks"]
        series.append(row)
    before = {
        arm: _windowed(readings, arm, drift - window, drift) for arm in ("learning", "static")
    }
    end = readings[-1]["t"]
    final = {arm: _windowed(readings, arm, end - window, end) for arm in ("learning", "static")}
    pre = (before["learning"] or {}).get("overall")
    recovered_at = None
    if pre is not None:
        for row in series:
            overall = (row["learning"] or {}).get("overall")
            if row["t"] > drift + window and overall is not None and overall >= pre - 0.02:
                recovered_at = round(row["t"] - drift, 1)
                break
    lows = [
        (row["learning"] or {}).get("overall")
        for row in series
        if drift < row["t"] <= drift + 2 * window
    ]
    # The intervals a training run overlapped: the one it ended in and, back from there,
    # as many as its duration spans.
    pairs = list(itertools.pairwise(readings))
    busy: set[int] = set()
    for index, (previous, reading) in enumerate(pairs):
        spent = reading["training_seconds"] - previous["training_seconds"]
        if reading["runs"] > previous["runs"]:
            back = int(spent // budget.interval)
            busy.update(range(max(0, index - back), index + 1))
    training = [pairs[index] for index in sorted(busy)]
    during: dict[str, float] = {}
    for previous, reading in training:
        for le, value in reading["latency_buckets"].items():
            during[le] = during.get(le, 0.0) + value - previous["latency_buckets"].get(le, 0.0)
    last = readings[-1]
    gap = None
    if final["learning"] and final["static"] and final["learning"]["overall"] is not None:
        gap = round(final["learning"]["overall"] - (final["static"]["overall"] or 0.0), 4)
    promoted_at = next(
        (
            r["t"]
            for r in readings
            if r["t"] > drift and r["promotions"] > readings[0]["promotions"]
        ),
        None,
    )
    # Whole stretches, thousands of objects: far less noisy than one window
    stretches = {
        "after_drift": (drift, end),
        "since_first_promotion": (promoted_at, end) if promoted_at is not None else None,
    }
    compared: dict[str, Any] = {}
    for name, span in stretches.items():
        if span is None:
            compared[name] = None
            continue
        arms = {arm: _windowed(readings, arm, span[0], span[1]) for arm in ("learning", "static")}
        learning, static = arms["learning"] or {}, arms["static"] or {}
        gain = None
        if learning.get("overall") is not None and static.get("overall") is not None:
            gain = round(learning["overall"] - static["overall"], 4)
        compared[name] = {"from_seconds": span[0], **arms, "learning_minus_static": gain}
    return {
        "window_seconds": window,
        "compared": compared,
        "before_drift": before,
        "after_drift_low": min((v for v in lows if v is not None), default=None),
        "final": final,
        "learning_minus_static_final": gap,
        "recovered_within_2_points_after_seconds": recovered_at,
        "trainer": {
            "started": int(last["started"]),
            "runs": int(last["runs"]),
            "training_seconds": round(last["training_seconds"], 1),
            "promotions": int(last["promotions"]),
            "rejections": int(last["rejections"]),
            "rollbacks": int(last["rollbacks"]),
        },
        "model_pushes": {  # during the run (the start-up push of every deployment before it)
            "bytes": int(last["pushed_bytes"] - readings[0]["pushed_bytes"]),
            "kbps_average": round(
                (last["pushed_bytes"] - readings[0]["pushed_bytes"]) * 8 / 1000 / max(1.0, end), 2
            ),
            "at_start_bytes": int(readings[0]["pushed_bytes"]),
        },
        "latency": {
            "whole_run": _quantiles(readings[0]["latency_buckets"], last["latency_buckets"]),
            "while_training": _quantiles({}, during) if during else None,
        },
        "series": series,
    }


# --- the run ------------------------------------------------------------------------------


def _registry(budget: Budget, work: Path, source: Path | None) -> Path:
    """A copy of the first model set (promotions write to the copy): ``source``, the quick
    bench registry, or (full) the one ``$EDGELEARN_BENCH_REGISTRY`` names or else a cached
    default-budget one, trained here the first time."""
    import os

    if source is not None:
        cached = source
    elif budget.training == "quick":
        cached = bench_registry(BENCH_SPLIT_KS)[0].root
    else:
        from cloud.bootstrap import TrainingPlan, train_plan, with_splits
        from cloud.registry import Registry

        cached = bench_registry_path()
        if not os.environ.get("EDGELEARN_BENCH_REGISTRY"):
            cached = cached.with_name("drift-registry")  # not the quick budget's
        train_plan(Registry(cached), with_splits(TrainingPlan.default(), (2, 6, 8)))
    target = work / "registry"
    shutil.copytree(cached, target, ignore=shutil.ignore_patterns(".staging", "serving.json"))
    return target


def run(
    quick: bool, output_dir: Path | None = None, registry: Path | None = None
) -> dict[str, Any]:
    """``registry``: the first model set to start from (copied; default the cache)."""
    from cloud.service import CloudService, CloudSettings

    budget = Budget.of(quick)
    output_dir = output_dir or Path("out") / "drift"
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="edgelearn-bench-drift-"))
    clients: dict[str, Any] = {}
    try:
        registry = _registry(budget, work, registry)
        static_registry = work / "registry-static"
        shutil.copytree(registry, static_registry)
        with ThreadPoolExecutor(max_workers=1) as renderer:
            rendering = renderer.submit(render_world, budget)
            settings = StackSettings(
                run_dir=work / "run", secrets=work / "secrets", registry=registry, site=SITE,
                edge_port=0, cloud_port=0, prometheus=False, mode=str(budget.mode),
                split_ks=(budget.split_k,), budget=budget.training, labeled_cameras=0,
                video=None, camera_users=budget.cameras + 1, consumers=1, echo=False,
                learn_every=budget.learn_every, grow=False,  # adaptation alone is measured
            )  # fmt: skip
            with launch(settings) as stack:
                secrets_dir = stack.secrets.directory
                cloud_port = stack.cloud_broker.port
                static_settings = CloudSettings(
                    broker=BrokerConfig.for_user("cloud", port=cloud_port, secrets_dir=secrets_dir),
                    registry=static_registry, secrets=stack.secrets, site=SITE, group="static",
                    cloud_id="static", split_ks=(budget.split_k,), training=None, push=False,
                    feature_store=None, keep_features=False, trainer=None,
                )  # fmt: skip

                @asynccontextmanager
                async def static_cloud() -> Any:
                    async with CloudService(static_settings) as service:
                        yield service

                with serve_in_thread(static_cloud, "static cloud", start_timeout=300) as (
                    static,
                    _,
                ):
                    (learning_url,) = stack.cloud.metrics_urls
                    static_url = static.consumers[0].metrics_server.url
                    gateway_urls = list(stack.gateway.metrics_urls)
                    wait_until(
                        lambda: all(
                            scrape([url]).total("edgelearn_gateway_model_swaps_total") >= 1
                            for url in gateway_urls
                        ),
                        180,
                        "the gateway to load its model",
                    )
                    world = rendering.result()
                    for camera in world:
                        config = BrokerConfig.for_user(
                            camera, port=stack.edge_broker.port, secrets_dir=secrets_dir
                        )
                        clients[camera] = mqtt_client(config, f"bench-{camera}")
                    readings, gateway = _measure(
                        world, budget, clients, learning_url, static_url, gateway_urls
                    )
                stack.children.stop()
        cloud_log = (settings.run_dir / "cloud.log").read_text(errors="replace").splitlines()
        report = {
            "benchmark": "drift",
            "quick": quick,
            "machine": machine_info(),
            "budget": budget.__dict__,
            "drift": {
                "at_seconds": budget.drift_at,
                "new_backgrounds_and_lighting": True,
                "item_heights": list(DRIFT_HEIGHTS),
                "classes": list(DRIFT_CLASSES),
                "new_camera": f"cam-{budget.cameras + 1}",
            },
            "mode": str(budget.mode),
            "gateway": gateway,
            **summarize(readings, budget),
            # what the learning cloud's trainer said of each run (promotions, specialised
            # cameras, rollbacks), from its log
            "trainer_log": [line for line in cloud_log if line.startswith("trainer ")],
            "learning_cloud_drops": readings[-1]["drops"],
            "first_training": "TrainingPlan.quick()" if quick else "TrainingPlan.default()",
            "elapsed_seconds": round(time.perf_counter() - started, 1),
        }
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "drift.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
        return report
    finally:
        for client in clients.values():
            close_client(client)
        shutil.rmtree(work, ignore_errors=True)


def _measure(
    world: dict[str, list[Any]],
    budget: Budget,
    clients: dict[str, Any],
    learning_url: str,
    static_url: str,
    gateway_urls: list[str],
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    stop = threading.Event()
    player = threading.Thread(target=_play, args=(world, budget, clients, stop), daemon=True)
    mode = str(budget.mode)
    started = time.monotonic()
    readings = [_reading(learning_url, static_url, mode, 0.0)]
    player.start()
    try:
        while player.is_alive():
            player.join(budget.interval)  # a reading every interval while the cameras play
            readings.append(_reading(learning_url, static_url, mode, time.monotonic() - started))
    finally:
        stop.set()
        player.join(10)

    # Both clouds answer what is still queued: wait until they have scored the same objects
    # and their counts stood still for a second.
    last_counts: list[Any] = [None, 0.0]

    def settled() -> bool:
        reading = _reading(learning_url, static_url, mode, 0.0)
        counts = [{c: n for c, (_, n) in reading[arm].items()} for arm in ("learning", "static")]
        now = time.monotonic()
        if counts[0] != counts[1] or counts[0] != last_counts[0]:
            last_counts[:] = [counts[0], now]
            return False
        return bool(now - float(last_counts[1]) >= 1.0)

    poll_until(settled, 60)
    readings[-1] = _reading(learning_url, static_url, mode, readings[-1]["t"])
    gateway = scrape(gateway_urls)
    raw = gateway.total("edgelearn_gateway_raw_equivalent_bytes_total")
    sent = gateway.total("edgelearn_gateway_uplink_bytes_total")
    return readings, {
        "raw_bytes": int(raw),
        "sent_bytes": int(sent),
        "uplink_reduction": round(1 - sent / raw, 5) if raw else None,
        "frames_dropped": int(gateway.total("edgelearn_gateway_frames_dropped_total")),
    }
