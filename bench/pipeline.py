"""``edgelearn bench pipeline``: every mode side by side on the same frames, in one run.

The setup is the real stack, started by :func:`stack.launcher.launch` as ``edgelearn up``
starts it: an edge broker bridged to a cloud broker, ``edgelearn cloud`` (consumers,
registry; it trains the whole training plan first if the registry is empty, so every mode
is its last generation) and a gateway pool, each its own process. The benchmark process
plays the cameras: it renders labeled Fashion-MNIST *test* items (never seen in training)
as 720p scenes like ``edgelearn up``'s (0-3 items at a time, lanes cycling every 150
frames), once, then replays exactly those JPEGs for every mode, paced at the cameras' fps
with the cameras out of step (evenly spread over a frame interval, as free-running cameras
are). Between runs a retained plan switches the gateway's mode and keyframe filter, live.

For each mode, with keyframes on (what runs: every frame of the scenes, some 500 distinct
items in the full run) and off (every object of every frame: the first ``frames_off``
frames of each camera, which is what two cores can carry):

* bytes per frame and per second **crossing the bridge**: counted by a subscriber on the
  cloud broker (what arrived there is what crossed), and the reduction against the
  cloud-only mode (``raw`` without keyframes) on the same frames;
* accuracy per object, as that subscriber sees the results: each object's true label and
  item travel with it, so each figure says how many distinct items it rests on and has a
  95% interval from resampling items (:mod:`edgelearn.evidence`); per camera too;
* end-to-end latency p50/p99, capture at the camera to the result published by the cloud
  (or by the gateway in ``full`` mode), from the results themselves; and where it goes, p50
  and p99 per hop (:func:`hop_figures`): from the gateway's and the cloud's hop histograms,
  read before and after each run, and the results' own timestamps as the subscriber gets
  them;
* gateway and cloud CPU seconds per frame (``process_cpu_seconds_total`` of each process);
* cloud training time on what arrived: the cloud half retrained on the features stored
  during that run (``edgelearn train``'s code), with its held-out accuracy.

Then, offline on the same scenes, where each mode's accuracy goes (:mod:`bench.losses`):
the model on ideal crops, what the gateway's box and its background model cost, the finder's
missed and merged objects, and accuracy by how long an item had stood in view.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import shutil
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.clients import close_client, mqtt_client, publish_retained
from bench.runs import poll_until, quantile, wait_until
from bench.workload import GATEWAY_ID, items_shown, paced, render_object_cameras
from edgelearn import wire
from edgelearn.config import BrokerConfig
from edgelearn.detection import BoxScore, score_boxes
from edgelearn.evidence import Evidence
from edgelearn.metrics import Samples, histogram_quantile, machine_info, scrape
from edgelearn.modes import AUTOENCODER, FULL, PCA, RAW, Mode
from stack.launcher import RunningStack, StackSettings, launch
from stack.observer import Scored, accuracies, scored_objects

SITE = "bench"
FIRST_SEED = 1000  # of the cameras' scenes


@dataclass(frozen=True)
class Budget:
    cameras: int
    frames_per_camera: int  # keyframes on (what runs): the accuracy's items
    frames_off: int  # keyframes off: every object of every frame, the cloud-only baseline
    fps: float
    split_ks: tuple[int, ...]
    training: str  # the training plan's name
    retrain_epochs: int

    @classmethod
    def of(cls, quick: bool) -> Budget:
        if quick:
            return cls(
                cameras=4,
                frames_per_camera=240,
                frames_off=90,
                fps=15,
                split_ks=(2,),
                training="quick",
                retrain_epochs=3,
            )
        # 10 cameras x 2,500 frames: about 500 distinct items wholly in view, an interval
        # of about +-3 points at 85% (the items, not the frames, are the evidence).
        return cls(
            cameras=10,
            frames_per_camera=2500,
            frames_off=300,
            fps=15,
            split_ks=(2, 6, 8),
            training="default",
            retrain_epochs=5,
        )

    def modes(self) -> list[Mode]:
        """Cloud-only first, then by the work done at the edge."""
        return [
            Mode(RAW),
            Mode(PCA),
            Mode(AUTOENCODER),
            *map(Mode.split, self.split_ks),
            Mode(FULL),
        ]


class CloudWatch:
    """A subscriber on the cloud broker: what crossed the bridge, and every result."""

    def __init__(self, config: BrokerConfig, trained_items: frozenset[int] = frozenset()) -> None:
        self.lock = threading.Lock()
        self.trained_items = trained_items  # no evidence: a model trained on them
        self.feature_bytes = 0
        self.feature_messages = 0
        self.frame_messages = 0
        self.latencies: list[float] = []
        self.deliveries: list[float] = []  # result made -> here
        self.results = 0
        self.boxes: dict[tuple[str, int], tuple[wire.Box, ...]] = {}  # results' objects
        self.scored: list[Scored] = []  # each labeled object, as a subscriber scores it
        self.client = mqtt_client(config, "bench-watch")
        self.client.on_message = self._on_message
        topics = wire.Topics(SITE)
        self.client.subscribe(
            [
                (f"{topics.base}/features/#", 0),
                (topics.all_results(), 0),
                (f"{topics.base}/frames/#", 0),
            ]
        )

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        kind = wire.topic_level(message.topic, 3)
        with self.lock:
            if kind == "features":
                # The bytes of the PUBLISH that crossed: topic, payload, fixed header.
                self.feature_bytes += len(message.payload) + len(message.topic) + 5
                self.feature_messages += 1
            elif kind == "frames":
                self.frame_messages += 1
            elif kind == "results":
                result = wire.decode_as(message.payload, wire.Result)
                self.results += 1
                self.latencies.append((result.result_ns - result.capture_ns) / 1e9)
                self.deliveries.append((time.time_ns() - result.result_ns) / 1e9)
                self.boxes[(result.camera_id, result.seq)] = result.boxes
                self.scored += [
                    scored
                    for scored in scored_objects(result, time.monotonic())
                    if scored.item not in self.trained_items
                ]

    def reset(self) -> dict[str, Any]:
        with self.lock:
            snapshot = {
                "feature_bytes": self.feature_bytes,
                "feature_messages": self.feature_messages,
                "frame_messages": self.frame_messages,
                "results": self.results,
                "latencies": self.latencies,
                "deliveries": self.deliveries,
                "boxes": self.boxes,
                "scored": self.scored,
            }
            self.feature_bytes = self.feature_messages = self.frame_messages = 0
            self.results = 0
            self.latencies = []
            self.deliveries = []
            self.boxes = {}
            self.scored = []
        return snapshot


def run(
    quick: bool,
    output_dir: Path | None = None,
    registry: Path | None = None,
    budget: Budget | None = None,
) -> dict[str, Any]:
    """Every mode, keyframes off and on, on the same frames (``budget``: a smaller one than
    ``--quick``'s, for the test suite)."""
    budget = budget or Budget.of(quick)
    output_dir = output_dir or Path("out") / "pipeline"
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="edgelearn-bench-"))
    brought = registry or os.environ.get("EDGELEARN_BENCH_REGISTRY")
    registry = Path(brought) if brought else work / "registry"
    # Every mode runs the same models from first to last frame, and nothing trains while
    # it is measured: a fresh registry gets the plan's every generation; a registry you
    # bring (one an ``up`` run grew) is measured as it is, its missing modes trained.
    training_seconds = _train_the_plan(registry, budget, whole_plan=not brought)
    trained_items = _trained_items(registry)
    settings = StackSettings(
        run_dir=work,
        secrets=work / "secrets",
        registry=registry,
        site=SITE,
        edge_port=0,
        cloud_port=0,
        prometheus=False,
        mode=str(Mode(RAW)),
        split_ks=budget.split_ks,
        budget=budget.training,
        learn=False,
        grow=False,
        feature_store=work / "features",
        gateway={"queue_depth": 8},
        workers=2,  # one per core: every object of every frame (keyframes off) needs both
        labeled_cameras=0,  # the benchmark plays the cameras itself
        videos=(),
        camera_users=budget.cameras,
        consumers=1,  # one /metrics endpoint, and one background model per raw camera
        echo=False,
    )
    clients: list[Any] = []
    try:
        with launch(settings) as stack:
            result = _run_modes(stack, budget, clients, trained_items)
            stack.children.stop()  # the consumers flush the feature store as they stop
        # Each item is scored in many frames: the accuracies rest on the items shown.
        result["distinct_items"] = items_shown(
            budget.cameras, budget.frames_per_camera, first_seed=FIRST_SEED
        )
        result["models_trained_seconds"] = training_seconds
        result["models"] = _models(registry, budget)
        result["trained_items_left_out"] = len(trained_items)
        result["losses"] = _losses(registry, budget)
        result["training_on_what_arrived"] = _retrain(registry, work / "features", budget)
        result["elapsed_seconds"] = round(time.perf_counter() - started, 1)
        _write_outputs(result, output_dir)
        return result
    finally:
        for client in clients:
            close_client(client)
        shutil.rmtree(work, ignore_errors=True)


def _run_modes(
    stack: RunningStack, budget: Budget, clients: list[Any], trained_items: set[int]
) -> dict[str, Any]:
    (cloud_url,) = stack.cloud.metrics_urls
    gateway_urls = list(stack.gateway.metrics_urls)  # one per worker
    slots = [mode.slot for mode in budget.modes() if mode.needs_model]
    wait_until(
        lambda: all(
            scrape([url]).total("edgelearn_gateway_model_swaps_total", slot=slot) >= 1
            for url in gateway_urls
            for slot in slots
        ),
        180,
        "the gateway to load every model",
    )
    secrets_dir = stack.secrets.directory
    cloud_port, edge_port = stack.cloud_broker.port, stack.edge_broker.port
    watch = CloudWatch(
        BrokerConfig.for_user("observer", port=cloud_port, secrets_dir=secrets_dir),
        frozenset(trained_items),
    )
    clients.append(watch.client)
    frames = render_object_cameras(budget.cameras, budget.frames_per_camera, first_seed=FIRST_SEED)
    # One connection per camera: each publishes as its own broker user (the ACL holds).
    cameras = {}
    for camera in frames:
        config = BrokerConfig.for_user(camera, port=edge_port, secrets_dir=secrets_dir)
        cameras[camera] = mqtt_client(config, f"bench-{camera}")
        clients.append(cameras[camera])
    cloud_config = BrokerConfig.for_user("cloud", port=cloud_port, secrets_dir=secrets_dir)
    rows: dict[str, Any] = {}
    plan_version = int(time.time())
    # One unmeasured pass first: the gateway's background models learn each camera's empty
    # scene (they start from a frame with items in it), as a running gateway has.
    plan = wire.Plan(GATEWAY_ID, plan_version, str(Mode(RAW)), 0, 0.02, 45)
    publish_retained(cloud_config, wire.Topics(SITE).plan(GATEWAY_ID), wire.encode(plan))
    wait_until(functools.partial(_gateway_runs, gateway_urls, Mode(RAW)), 30, "raw for warm-up")
    warm_up = {camera: sequence[: budget.frames_off] for camera, sequence in frames.items()}
    _measure(Mode(RAW), False, warm_up, budget, cameras, watch, gateway_urls, cloud_url)
    detection: dict[str, Any] = {}
    for mode in budget.modes():
        for keyframes in (False, True):
            # Every object of every frame is more than two cores carry for long: keyframes
            # off plays the first frames of each camera, keyframes on all of them.
            played = frames if keyframes else warm_up
            plan_version += 1
            plan = wire.Plan(GATEWAY_ID, plan_version, str(mode), int(keyframes), 0.02, 45)
            publish_retained(cloud_config, wire.Topics(SITE).plan(GATEWAY_ID), wire.encode(plan))
            wait_until(
                functools.partial(_gateway_runs, gateway_urls, mode),
                30,
                f"the gateway to switch to {mode}",
            )
            rows[_key(mode, keyframes)] = _measure(
                mode, keyframes, played, budget, cameras, watch, gateway_urls, cloud_url
            )
            if mode.kind == RAW and not keyframes:  # every frame, every object found
                detection = _detection(played, rows[_key(mode, keyframes)].pop("boxes"))
            rows[_key(mode, keyframes)].pop("boxes", None)
    baseline = rows[_key(Mode(RAW), False)]  # cloud-only: every frame's JPEG
    for row in rows.values():
        row["reduction"] = (
            1 - row["uplink_bytes_per_frame"] / baseline["uplink_bytes_per_frame"]
            if baseline["uplink_bytes_per_frame"]
            else None
        )
    return {
        "machine": machine_info(),
        "budget": budget.__dict__,
        "modes": rows,
        "detection": detection,
        "raw_frames_on_cloud_broker": watch.frame_messages,
        "camera_jpeg_bytes_per_frame": statistics.mean(
            len(f.payload) for sequence in frames.values() for f in sequence
        ),
    }


def _detection(
    frames: dict[str, list[wire.Frame]], found: dict[tuple[str, int], tuple[wire.Box, ...]]
) -> dict[str, Any]:
    """The gateway's boxes (as the cloud-only run's results carry them, every frame) against
    the rendered ground truth (:func:`edgelearn.detection.score_boxes`); true items cut by the
    frame's edge are ignored: the gateway attaches no box for them. A frame without a
    result had no object found in it (delivery loses nothing)."""
    score = BoxScore()
    for camera, sequence in frames.items():
        for frame in sequence:
            boxes = found.get((camera, frame.seq), ())
            size = (frame.width, frame.height)
            score += score_boxes(frame.truth_boxes, boxes, size, ignore_cut=True)
    return {
        "true_objects": score.hits + score.misses,
        "recall": score.recall(),
        "precision": score.precision(),
    }


def _gateway_runs(gateway_urls: list[str], mode: Mode) -> bool:
    labels = {"mode": str(mode), "effective": str(mode)}
    return all(
        scrape([url]).total("edgelearn_gateway_mode_info", **labels) == 1 for url in gateway_urls
    )


def _key(mode: Mode, keyframes: bool) -> str:
    return f"{mode} keyframes" if keyframes else str(mode)


def _measure(
    mode: Mode,
    keyframes: bool,
    frames: dict[str, list[wire.Frame]],
    budget: Budget,
    cameras: dict[str, Any],
    watch: CloudWatch,
    gateway_urls: list[str],
    cloud_url: str,
) -> dict[str, Any]:
    def read() -> tuple[Samples, Samples]:
        return scrape(gateway_urls), scrape([cloud_url])

    def counters(gateway: Samples, cloud: Samples) -> dict[str, float]:
        processed = "edgelearn_gateway_frames_processed_total"
        scored = "edgelearn_cloud_frames_scored_total"
        return {
            "gateway_cpu": gateway.total("process_cpu_seconds_total"),
            "cloud_cpu": cloud.total("process_cpu_seconds_total"),
            "forwarded": gateway.total(processed, outcome="forwarded"),
            "held": gateway.total(processed, outcome="held_back"),
            "dropped": gateway.total("edgelearn_gateway_frames_dropped_total"),
            "received": gateway.total("edgelearn_gateway_frames_received_total"),
            "correct": cloud.total(scored, mode=str(mode), outcome="correct"),
            "wrong": cloud.total(scored, mode=str(mode), outcome="wrong"),
            # forwarded with nothing whole in view: answered with no result
            "empty": cloud.total("edgelearn_cloud_frames_without_objects_total"),
        }

    watch.reset()
    read_before = read()
    before = counters(*read_before)
    topics = wire.Topics(SITE)
    order = list(frames.items())
    per_camera = len(order[0][1])
    started = time.monotonic()
    for tick in paced(len(order), budget.fps, frames_per_camera=per_camera):
        camera, sequence = order[tick.camera]
        frame = dataclasses.replace(sequence[tick.number], capture_ns=time.time_ns())
        cameras[camera].publish(topics.frame(camera), wire.encode(frame), qos=0)
    duration = time.monotonic() - started
    sent = per_camera * len(frames)

    def settled() -> bool:
        now = counters(*read())
        handled = sum(now[key] - before[key] for key in ("forwarded", "held", "dropped"))
        answered = watch.results + now["empty"] - before["empty"]
        return handled >= sent and answered >= now["forwarded"] - before["forwarded"]

    poll_until(settled, 60)  # what has not arrived by then is missing from the row
    read_after = read()
    after = counters(*read_after)
    seen = watch.reset()
    delta = {key: after[key] - before[key] for key in after}
    frames_handled = delta["forwarded"] + delta["held"]
    scored = delta["correct"] + delta["wrong"]
    objects: list[Scored] = seen["scored"]
    figures = accuracies(objects)
    evidence = Evidence.from_dict(figures)
    return {
        "mode": str(mode),
        "keyframes": keyframes,
        "frames_published": sent,
        "frames_dropped": int(delta["dropped"]),
        "keyframe_ratio": delta["forwarded"] / frames_handled if frames_handled else None,
        "uplink_bytes": seen["feature_bytes"],
        "uplink_bytes_per_frame": seen["feature_bytes"] / sent,
        "uplink_bytes_per_second": seen["feature_bytes"] / duration,
        "messages_over_bridge": seen["feature_messages"],
        "results": seen["results"],
        # per object, as a subscriber of the results scores them; the consumer's own count
        # of the same objects beside it
        "accuracy": evidence.accuracy,
        "evidence": evidence.as_dict(),
        "cameras": figures["cameras"],
        "consumer_accuracy": delta["correct"] / scored if scored else None,
        "objects_scored": int(scored),
        "boxes": seen["boxes"],
        "latency_p50_seconds": quantile(seen["latencies"], 0.5),
        "latency_p99_seconds": quantile(seen["latencies"], 0.99),
        "hops": hop_figures(mode, read_before, read_after, seen["deliveries"]),
        "gateway_cpu_seconds_per_frame": delta["gateway_cpu"] / sent,
        "cloud_cpu_seconds_per_frame": delta["cloud_cpu"] / sent,
    }


# The hops of a frame that gets a result, camera to subscriber, in order: (key, role, hop).
# The gateway's and the cloud's are their ``..._hop_seconds`` histograms (each frame's own
# time in that hop); ``outbox_and_uplink`` has no histogram of its own, see :func:`hop_figures`.
HOPS = (
    ("camera_to_gateway", "gateway", "camera"),
    ("gateway_queue", "gateway", "queue"),
    ("gateway_processing", "gateway", "processing"),
    ("outbox_and_uplink", "", ""),
    ("cloud_queue", "cloud", "queue"),
    ("cloud_prepare", "cloud", "prepare"),
    ("cloud_inference", "cloud", "inference"),
    ("result", "", ""),
)
# Parts of the hops above, reported beside them: the outbox alone (pipeline done -> publish
# starts), the publish to the edge broker (-> its acknowledgement; the bridge carries the
# feature meanwhile) and the cloud's share of ``result`` (result made -> published).
HOP_PARTS = (
    ("gateway_outbox", "gateway", "outbox"),
    ("gateway_publish", "gateway", "publish"),
    ("cloud_publish", "cloud", "publish"),
)


def hop_figures(
    mode: Mode,
    before: tuple[Samples, Samples],
    after: tuple[Samples, Samples],
    deliveries: list[float],
) -> dict[str, dict[str, float | int | None]]:
    """p50 and p99 per hop of one run, in seconds (None: nothing went through it).

    Each process times the hops it holds, frame by frame, into its histograms (what an
    operator's Prometheus gets too); their bucket counts before and after the run give the
    run's own distribution, interpolated within buckets of 1-50 ms. Two hops cross a process
    boundary: ``result`` (the result made -> this subscriber has it) comes exactly from each
    result's ``result_ns``; ``outbox_and_uplink`` (the gateway's pipeline done -> a consumer
    received the feature) is the difference of the two ages measured there (time since
    capture, on one host's clock), quantile by quantile: exact for a hop that adds a steady
    time, an estimate of its p99 otherwise (``estimated``).
    """
    roles = {"gateway": 0, "cloud": 1}

    def delta(role: int, name: str, **match: str) -> dict[float, float]:
        later = after[role].buckets(name, **match)
        earlier = before[role].buckets(name, **match)
        return {bound: later[bound] - earlier.get(bound, 0.0) for bound in later}

    def figures(buckets: dict[float, float]) -> dict[str, float | int | None]:
        return {
            "p50_seconds": histogram_quantile(buckets, 0.5),
            "p99_seconds": histogram_quantile(buckets, 0.99),
            "count": int(max(buckets.values(), default=0)),
        }

    def of(role: str, hop: str) -> dict[float, float]:
        name = f"edgelearn_{role}_hop_seconds"
        if role == "cloud":
            return delta(roles[role], name, mode=str(mode), hop=hop)
        return delta(roles[role], name, hop=hop)

    processed = figures(delta(0, "edgelearn_gateway_processed_age_seconds"))
    arrival = figures(delta(1, "edgelearn_cloud_arrival_age_seconds", mode=str(mode)))
    hops: dict[str, dict[str, float | int | None]] = {}
    for key, role, hop in HOPS + HOP_PARTS:
        if role:
            hops[key] = figures(of(role, hop))
    uplink: dict[str, float | int | None] = {"count": arrival["count"], "estimated": True}
    for q in ("p50_seconds", "p99_seconds"):
        at_cloud, done = arrival[q], processed[q]
        uplink[q] = (
            max(0.0, float(at_cloud) - float(done))
            if at_cloud is not None and done is not None
            else None
        )
    hops["outbox_and_uplink"] = uplink
    hops["result"] = {
        "p50_seconds": quantile(deliveries, 0.5),
        "p99_seconds": quantile(deliveries, 0.99),
        "count": len(deliveries),
    }
    ordered = {key: hops[key] for key, _, _ in HOPS + HOP_PARTS}
    return ordered | {"gateway_processed_age": processed, "cloud_arrival_age": arrival}


def _train_the_plan(registry: Path, budget: Budget, whole_plan: bool) -> float:
    """Every generation of the budget's training plan, as the cloud's grower would train
    them (promoted through the judge), or with ``whole_plan`` False only the first where
    a mode is missing; the seconds it took (0: the registry had them)."""
    from cloud.bootstrap import TrainingPlan, ensure_first_generation, train_plan, with_splits
    from cloud.registry import Registry

    started = time.perf_counter()
    plan = with_splits(TrainingPlan.named(budget.training), budget.split_ks)
    if whole_plan:
        trained = bool(train_plan(Registry(registry), plan))
    else:
        trained = bool(ensure_first_generation(Registry(registry), plan)["trained"])
    return round(time.perf_counter() - started, 1) if trained else 0.0


def _trained_items(registry: Path) -> set[int]:
    """The camera items (Fashion-MNIST test items) a model of this registry trained on, as
    the continuous trainer of an ``up`` run records them: no evidence, left out."""
    from cloud.registry import Registry
    from edgelearn.datasets import FASHION_MNIST, DatasetSpec

    return Registry(registry).trained_items(DatasetSpec(FASHION_MNIST).task)


def _models(registry: Path, budget: Budget) -> dict[str, Any]:
    """What each mode ran: its generation and its held-out accuracy."""
    from cloud.bootstrap import generation_of, serving_entries
    from cloud.registry import Registry

    serving = serving_entries(Registry(registry), budget.split_ks)
    return {
        str(mode): {
            "version": entry.version,
            "generation": generation_of(entry),
            "held_out_accuracy": entry.accuracy,
        }
        for mode, entry in serving.items()
    }


def _losses(registry: Path, budget: Budget) -> dict[str, Any]:
    """Where each mode's accuracy goes on the same scenes (:mod:`bench.losses`), offline."""
    from bench import losses
    from cloud.registry import Registry

    served = Registry(registry)
    size = served.serving(Mode(RAW)).input_shape[0]
    replay = losses.replay(
        budget.cameras, budget.frames_per_camera, first_seed=FIRST_SEED, input_size=size
    )
    return {
        str(mode): losses.account(replay, losses.served(served, mode)) for mode in budget.modes()
    }


def _retrain(registry: Path, store: Path, budget: Budget) -> dict[str, Any]:
    """The cloud half retrained on what arrived in each mode (keyframes on and off pooled)."""
    from cloud.training_jobs import train_from_store

    results: dict[str, Any] = {}
    for mode in budget.modes():
        if mode.kind == FULL:
            continue  # trained once in the cloud, answered at the edge: nothing arrives
        try:
            results[str(mode)] = train_from_store(
                registry_root=registry,
                store_root=store,
                mode=str(mode),
                version=None,
                epochs=budget.retrain_epochs,
                n_held_out=500 if budget.training == "quick" else 1000,
            )
        except FileNotFoundError as exc:
            results[str(mode)] = {"error": str(exc)}
    return results


def _hop_table(rows: dict[str, Any]) -> list[str]:
    """Where each mode's time goes: p50 / p99 per hop (:func:`hop_figures`), in ms."""
    names = {
        "camera_to_gateway": "camera -> gateway",
        "gateway_queue": "gateway queue",
        "gateway_processing": "gateway processing",
        "outbox_and_uplink": "outbox + uplink ~",
        "cloud_queue": "cloud queue",
        "cloud_prepare": "cloud decode",
        "cloud_inference": "cloud inference",
        "result": "result",
    }

    def cell(figures: dict[str, Any] | None) -> str:
        if not figures or figures.get("p50_seconds") is None:
            return "-"
        return f"{figures['p50_seconds'] * 1000:.1f} / {figures['p99_seconds'] * 1000:.1f}"

    lines = [
        "",
        "Where the time goes, p50 / p99 ms per hop (each hop's own distribution; `~`: the "
        "difference of the ages since capture at the gateway's end and the cloud's receipt, "
        "an estimate at p99; `result`: made -> this subscriber has it, so for `full`, whose "
        "results the gateway makes, it holds their uplink too; `capture -> result` is the "
        "latency column above, to the result's making):",
        "",
        "| mode | keyframes | " + " | ".join(names.values()) + " | capture -> result |",
        "|---|---|" + "---|" * (len(names) + 1),
    ]
    for row in rows.values():
        hops = row.get("hops") or {}
        total = {
            "p50_seconds": row["latency_p50_seconds"],
            "p99_seconds": row["latency_p99_seconds"],
        }
        lines.append(
            f"| {row['mode']} | {'on' if row['keyframes'] else 'off'} | "
            + " | ".join(cell(hops.get(key)) for key in names)
            + f" | {cell(total)} |"
        )
    return lines


def _write_outputs(result: dict[str, Any], output_dir: Path) -> None:
    from stack.report import render_from_json

    (output_dir / "pipeline.json").write_text(json.dumps(result, indent=2, default=str))
    lines = [
        "| mode | keyframes | uplink B/frame | reduction vs cloud-only | keyframe % | "
        "accuracy | latency p50 / p99 ms | gateway / cloud CPU ms/frame |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value * 1000:.0f}"

    def pct(value: float | None) -> str:
        return "-" if value is None else f"{value * 100:.1f}%"

    for row in result["modes"].values():
        accuracy = Evidence.from_dict(row["evidence"]).text() if row.get("evidence") else "-"
        lines.append(
            f"| {row['mode']} | {'on' if row['keyframes'] else 'off'} | "
            f"{row['uplink_bytes_per_frame']:.0f} | {pct(row.get('reduction'))} | "
            f"{pct(row['keyframe_ratio'])} | {accuracy} | "
            f"{ms(row['latency_p50_seconds'])} / {ms(row['latency_p99_seconds'])} | "
            f"{row['gateway_cpu_seconds_per_frame'] * 1000:.1f} / "
            f"{row['cloud_cpu_seconds_per_frame'] * 1000:.1f} |"
        )
    lines += _hop_table(result["modes"])
    lines += [
        "",
        "| mode | cloud training s | uplink bytes of training set | held-out accuracy |",
        "|---|---|---|---|",
    ]
    for mode, row in result["training_on_what_arrived"].items():
        if "error" in row:
            lines.append(f"| {mode} | - | - | {row['error']} |")
            continue
        lines.append(
            f"| {mode} | {row['training_seconds']} | {row['uplink_bytes']} | "
            f"{row['held_out_accuracy'] * 100:.1f}% (n={row['n_train']}) |"
        )
    if result.get("models"):
        lines += ["", "| mode | model | generation | held-out accuracy |", "|---|---|---|---|"]
        for mode, model in result["models"].items():
            lines.append(
                f"| {mode} | {model['version']} | {model['generation']} | "
                f"{pct(model['held_out_accuracy'])} |"
            )
    lines += [
        "",
        "Accuracy is per object as a subscriber of the results scores it, with its 95% "
        "interval from resampling the distinct items it rests on (each is seen in many "
        "frames). Modes see the same frames, so their differences are surer than that.",
    ]
    if result.get("losses"):
        lines += [
            "",
            "| mode | ideal crops | gateway box | + gateway mask (sent) | box loss | background "
            "model loss | items missed / in view | objects unlabeled | sent, stood 0-19 / "
            "60+ frames |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for mode, account in result["losses"].items():
            figures = account["accuracy"]
            stood = account["by_stood_frames"]
            finder = account["finder"]
            loss = list(account["losses"].values())
            lines.append(
                f"| {mode} | {Evidence.from_dict(figures['ideal']).text()} | "
                f"{pct(figures['ideal_mask']['accuracy'])} | {pct(figures['sent']['accuracy'])} | "
                f"{loss[0] * 100:+.1f} | {loss[1] * 100:+.1f} | "
                f"{finder['items_missed']} / {finder['items_in_view']} | "
                f"{finder['objects_unlabeled']} | {pct(stood['0-19']['sent']['accuracy'])} / "
                f"{pct(stood['60+']['sent']['accuracy'])} |"
            )
    (output_dir / "pipeline.md").write_text("\n".join(lines) + "\n")
    render_from_json(result, output_dir)
