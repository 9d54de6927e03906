"""``edgelearn bench drift``: the world changes; a static model against the continuous
trainer, on the same features, in one run.

The setup is the real stack (:func:`stack.launcher.launch`, as ``edgelearn up`` starts it):
an edge broker bridged to a cloud broker, ``edgelearn cloud`` with its continuous trainer on
(the *learning* cloud), and one gateway pinned to ``--mode`` with keyframes. Beside it, in
this process, a second cloud (the *static* one) joins the cloud broker in a shared-
subscription group of its own, with a copy of the same registry and no trainer: both groups
get every feature the gateway sends, answer it and score it against the ground truth, so the
two accuracies are of the same objects.

The benchmark plays the cameras: :class:`cameras.scene.ObjectScene` scenes of Fashion-MNIST
*test* items, rendered before the run and paced at ``fps``; every frame carries each
object's label and item (its index in the test set). At ``drift_at`` seconds the world
changes, all at once, as ``--drift SPEC`` says (:class:`DriftSpec`), a ``+``-separated list:

* ``backgrounds``: every camera's scene is drawn from a new seed (new background and light);
* ``light=F``: the scenes' light times ``F`` (0.6: darker);
* ``noise=F``: sensor noise of ``F`` grey levels at 720 rows (the cameras' own is 3);
* ``size=LO-HI``: items are ``LO``-``HI`` of the frame's height (the cameras moved back;
  before, 28-45%);
* ``classes=I,J,...``: only these classes from then on;
* ``new-camera``: a camera joins, with a scene never seen before;
* ``none``: nothing changes (the control).

The default, :data:`DEFAULT_DRIFT`, is all at once: new backgrounds, items at 16-26% of the
height, only tops (T-shirt/top, pullover, coat, shirt) and footwear (sandal, sneaker, ankle
boot), the classes most confused with one another, and a new camera. A camera that keeps its
scene (no ``backgrounds``) goes on from the frame it was at, and no scene shows after the
drift an item any camera showed before it (``none`` aside: the same scenes simply go on).

Every ``interval`` seconds both clouds' ``edgelearn_cloud_frames_scored_total{camera}`` are
read: accuracy over time per camera and overall, for static and learning (``series``).
The figures the verdict rests on come from the results themselves: the static cloud
publishes its answers on a site of its own (``<site>-static``), and two
:class:`stack.observer.ResultsObserver` on the cloud broker keep every scored object of each
arm (camera, frame, track, item, label, class, arrival). An object's time is its frame's
moment in the play (its number over ``fps``), the same for both arms, so a window holds the
same objects in each. Reported per arm (``objects``): over the last five minutes (quick:
the last third of the time after the drift), on objects of items the learning cloud never
trained on (the union of every registry entry's ``trained_items`` at the end) and on all,
per camera and overall, each with its distinct items and a 95% interval resampling items,
and the learning-minus-static difference paired on the same objects; the accuracy before the
drift, what the drift cost and how many minutes the learning arm took to win back half of it.
With them: the learning cloud's training runs and their time, promotions (and the trainer's
line on each), rejections and rollbacks, model bytes pushed to the gateways, and the latency
of the gateway's mode (p50/p99 from its histogram) over the whole run and over the intervals
in which a training run started or ended. ``edgelearn report`` draws the accuracy over time
(``drift.png``).

``--mode``: the gateway's mode, ``split:2`` by default. In ``full`` the gateway answers and
both clouds relay its answers, but for every ``learning_sample``-th labeled keyframe (10th by
default), which goes up as crops that each cloud answers itself: the arms differ only
there, and the learning cloud's promotions reach both through the gateway. The static arm
is then no static model (``static_arm_is_static`` is false); what ``full`` measures is the
trainer's pushes of new edge models (``model_pushes``).
"""

from __future__ import annotations

import itertools
import json
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Set
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from bench.clients import close_client, mqtt_client
from bench.registry import BENCH_SPLIT_KS, bench_registry, bench_registry_path
from bench.runs import poll_until, wait_until
from bench.workload import paced
from edgelearn import preprocess, wire
from edgelearn.config import BrokerConfig, ConfigError
from edgelearn.datasets import LabeledImages, load_fashion_mnist, subset
from edgelearn.metrics import Samples, histogram_quantile, machine_info, scrape
from edgelearn.modes import FULL, Mode, ModeError
from edgelearn.service import serve_in_thread
from stack.launcher import StackSettings, launch
from stack.observer import ResultsObserver, Scored, accuracies, evidence_of

if TYPE_CHECKING:
    from cloud.judge import Verdict

SITE = "drift"
STATIC_SITE = f"{SITE}-static"  # where the static cloud's results go
FIRST_SEED = 2000  # of the scenes before the drift
DRIFT_SEED = 3000  # of the scenes after it (new backgrounds, a new camera)
SCORED = "edgelearn_cloud_frames_scored_total"
JPEG_QUALITY = 80
DEFAULT_MODE = Mode.split(2)
RECENT_SECONDS = 300.0  # "the last five minutes" of a full run
RECOVERY_MIN_ITEMS = 10  # a rolling window on fewer items says nothing either way
CLASS_COUNT = 10  # Fashion-MNIST's
# full: every 3rd labeled keyframe goes up as its crops (the gateway's default, 10, sends
# about 220 crops in the 7.5 minutes after the drift: too few for a run)
FULL_LEARNING_SAMPLE = 3


class DriftSpecError(ConfigError):
    """A ``--drift`` text that names no drift."""


@dataclass(frozen=True)
class DriftSpec:
    """What changes at the drift; every field at its default: nothing (``none``)."""

    backgrounds: bool = False  # every camera's scene from a new seed
    light: float | None = None  # a gain on the scenes' light
    noise: float | None = None  # the sensor noise, grey levels at 720 rows
    heights: tuple[float, float] | None = None  # items' heights, fractions of the frame's
    classes: tuple[int, ...] | None = None  # only these classes
    new_camera: bool = False  # a camera joins, with a scene never seen

    FLAGS: ClassVar[tuple[str, ...]] = ("backgrounds", "new-camera", "none")
    VALUED: ClassVar[tuple[str, ...]] = ("light", "noise", "size", "classes")

    @classmethod
    def parse(cls, text: str) -> DriftSpec:
        """``backgrounds+light=0.6+noise=8+size=0.16-0.26+classes=0,2,4+new-camera`` (any
        subset, any order) or ``none``; raises :class:`DriftSpecError` saying what is wrong."""
        parts = [part.strip() for part in text.split("+")]
        if not text.strip() or "" in parts:
            raise DriftSpecError(f"drift {text!r}: an empty change; {_DRIFT_SYNTAX}")
        fields: dict[str, Any] = {}
        seen: set[str] = set()
        for part in parts:
            name, equals, value = (piece.strip() for piece in part.partition("="))
            if name in seen:
                raise DriftSpecError(f"drift {text!r}: {name} twice")
            seen.add(name)
            if name in cls.FLAGS and not equals:
                fields[name.replace("-", "_")] = True
            elif name in cls.VALUED and equals:
                fields.update(_drift_value(name, value, text))
            elif name in cls.FLAGS or name in cls.VALUED:
                wanted = "takes no value" if name in cls.FLAGS else "needs a value"
                raise DriftSpecError(f"drift {text!r}: {name} {wanted}; {_DRIFT_SYNTAX}")
            else:
                raise DriftSpecError(f"drift {text!r}: no change {name!r}; {_DRIFT_SYNTAX}")
        if fields.pop("none", False) and fields:
            raise DriftSpecError(f"drift {text!r}: none is alone or not at all")
        return cls(**fields)

    @property
    def changes_nothing(self) -> bool:
        return self == DriftSpec()

    def __str__(self) -> str:
        """The canonical text (what :meth:`parse` reads back)."""
        parts = ["backgrounds"] if self.backgrounds else []
        if self.light is not None:
            parts.append(f"light={self.light:g}")
        if self.noise is not None:
            parts.append(f"noise={self.noise:g}")
        if self.heights is not None:
            parts.append(f"size={self.heights[0]:g}-{self.heights[1]:g}")
        if self.classes is not None:
            parts.append(f"classes={','.join(map(str, self.classes))}")
        if self.new_camera:
            parts.append("new-camera")
        return "+".join(parts) or "none"


_DRIFT_SYNTAX = (
    "a drift is none, or changes joined by +: backgrounds, light=F, noise=F, size=LO-HI, "
    "classes=I,J,..., new-camera"
)


def _drift_value(name: str, value: str, text: str) -> dict[str, Any]:
    """The field of one ``name=value`` change of the drift ``text``."""
    from cameras.scene import OBJECT_HEIGHTS

    def number(piece: str) -> float:
        try:
            parsed = float(piece)
        except ValueError:
            parsed = math.nan
        if not math.isfinite(parsed):
            raise DriftSpecError(f"drift {text!r}: {name}: {piece!r} is not a number")
        return parsed

    if name == "light":
        gain = number(value)
        if gain <= 0:
            raise DriftSpecError(f"drift {text!r}: light is a gain > 0 (0.6: darker)")
        return {"light": gain}
    if name == "noise":
        sigma = number(value)
        if sigma < 0:
            raise DriftSpecError(f"drift {text!r}: noise is grey levels >= 0")
        return {"noise": sigma}
    if name == "size":
        low, dash, high = value.partition("-")
        if not dash:
            raise DriftSpecError(f"drift {text!r}: size is LO-HI, e.g. size=0.16-0.26")
        heights = (number(low), number(high))
        if not 0 < heights[0] <= heights[1] <= OBJECT_HEIGHTS[1]:
            raise DriftSpecError(
                f"drift {text!r}: size LO-HI with 0 < LO <= HI <= {OBJECT_HEIGHTS[1]}"
            )
        return {"heights": heights}
    pieces = [piece.strip() for piece in value.split(",")]
    if not all(piece.isdigit() for piece in pieces):
        raise DriftSpecError(f"drift {text!r}: classes are numbers, e.g. classes=0,2,4")
    classes = tuple(int(piece) for piece in pieces)
    if len(set(classes)) != len(classes) or max(classes) >= CLASS_COUNT:
        raise DriftSpecError(f"drift {text!r}: classes are distinct, each 0..{CLASS_COUNT - 1}")
    return {"classes": classes}


DEFAULT_DRIFT = DriftSpec.parse("backgrounds+size=0.16-0.26+classes=0,2,4,6,5,7,9+new-camera")
"""Today's drift: new backgrounds and light, the cameras moved back, only tops and footwear
(the classes most confused with one another), and a new camera."""


def parse_mode(text: str | Mode) -> Mode:
    """The gateway's mode, or a :class:`ConfigError` saying why not."""
    if isinstance(text, Mode):
        return text
    try:
        return Mode.parse(text)
    except ModeError as exc:
        raise ConfigError(f"--mode: {exc}") from exc


@dataclass(frozen=True)
class Budget:
    cameras: int  # before the drift (with ``new-camera``, one more joins at it)
    fps: float
    drift_at: float  # seconds
    duration: float  # seconds in all
    interval: float  # seconds between two readings
    split_k: int  # the split the stack serves (the gateway's, in split:k)
    training: str  # the first model set's budget
    learn_every: int
    recent: float  # seconds at the end the "recent" accuracies are over
    mode: Mode = DEFAULT_MODE  # the gateway's
    # full: every Nth labeled keyframe goes up as crops (the cloud learns from those alone);
    # the trigger is scaled to match
    learning_sample: int | None = None

    @classmethod
    def of(cls, quick: bool, mode: Mode = DEFAULT_MODE) -> Budget:
        split_k = mode.split_k or DEFAULT_MODE.split_k  # full: a split is served, unused
        sample = FULL_LEARNING_SAMPLE if mode.kind == FULL else None
        every = 100 if quick else 600
        every = every // FULL_LEARNING_SAMPLE if sample else every
        if quick:
            return cls(3, 5.0, 20.0, 65.0, 5.0, split_k, "quick", every, (65.0 - 20.0) / 3, mode,
                       sample)  # fmt: skip
        return cls(4, 6.0, 150.0, 600.0, 10.0, split_k, "default", every, RECENT_SECONDS, mode,
                   sample)  # fmt: skip

    @property
    def window(self) -> float:
        """Seconds a rolling accuracy is over."""
        return max(3 * self.interval, 30.0)


# --- the cameras' frames ----------------------------------------------------------------


@dataclass(frozen=True)
class SceneRun:
    """Frames ``first`` to ``first + count - 1`` of one camera's
    :class:`cameras.scene.ObjectScene` of the seed ``seed``, and how it looks (None: as
    the scene looks by default)."""

    seed: int
    first: int
    count: int
    heights: tuple[float, float] | None = None
    classes: tuple[int, ...] | None = None  # None: every class
    light: float | None = None
    noise: float | None = None


def plan_cameras(
    drift: DriftSpec, cameras: int, before: int, after: int
) -> dict[str, tuple[SceneRun | None, SceneRun]]:
    """Per camera, what it shows in the ``before`` frames before the drift (None: it is not
    there yet) and in the ``after`` frames after it."""
    look = SceneRun(0, 0, after, drift.heights, drift.classes, drift.light, drift.noise)
    plan: dict[str, tuple[SceneRun | None, SceneRun]] = {}
    for index in range(cameras):
        if drift.backgrounds:
            later = replace(look, seed=DRIFT_SEED + index)
        else:  # the same scene goes on from the frame it was at: it replays nothing
            later = replace(look, seed=FIRST_SEED + index, first=before)
        plan[f"cam-{index + 1}"] = (SceneRun(FIRST_SEED + index, 0, before), later)
    if drift.new_camera:
        plan[f"cam-{cameras + 1}"] = (None, replace(look, seed=DRIFT_SEED + cameras))
    return plan


Shot = tuple[bytes, tuple[int, ...], tuple[wire.Box, ...], tuple[int, ...]]
"""One frame as a camera sends it: its JPEG and each object's label, box and item (its
index in the test set)."""


def render_run(run: SceneRun, test: LabeledImages, leave_out: Set[int] = frozenset()) -> list[Shot]:
    """The frames of ``run``, drawing on the items of ``test`` of its classes but those in
    ``leave_out``; an object's item is its index in ``test``."""
    from cameras.scene import NOISE_SIGMA_720P, OBJECT_HEIGHTS, ObjectScene

    keep = np.ones(len(test), dtype=bool)
    if run.classes is not None:
        keep &= np.isin(test.labels, run.classes)
    keep[sorted(leave_out)] = False
    items = np.flatnonzero(keep).astype(np.int64)
    data = test if keep.all() else subset(test, items)
    scene = ObjectScene(
        data,
        seed=run.seed,
        heights=run.heights or OBJECT_HEIGHTS,
        light_gain=1.0 if run.light is None else run.light,
        noise_sigma=NOISE_SIGMA_720P if run.noise is None else run.noise,
    )
    rendered = []
    for number in range(run.first, run.first + run.count):
        frame = scene.render(number)
        rendered.append(
            (
                preprocess.encode_jpeg(frame.image, JPEG_QUALITY),
                tuple(item.label for item in frame.objects),
                tuple(item.box for item in frame.objects),
                tuple(int(items[item.item]) for item in frame.objects),
            )
        )
    return rendered


def render_world(budget: Budget, drift: DriftSpec) -> dict[str, list[Shot | None]]:
    """Per camera, each of its frames: ``None`` while a camera is not there yet (a new
    one, before the drift)."""
    test = load_fashion_mnist("test")
    before = int(budget.drift_at * budget.fps)
    plan = plan_cameras(drift, budget.cameras, before, int(budget.duration * budget.fps) - before)
    earlier = {camera: runs[0] for camera, runs in plan.items() if runs[0] is not None}
    world: dict[str, list[Shot | None]] = {}
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="render") as pool:
        shots = pool.map(lambda camera: render_run(earlier[camera], test), earlier)
        world.update(zip(earlier, map(list, shots), strict=True))
        # No easier than it says: after a drift no scene shows an item any camera showed
        # before it (a scene drawing on other items would meet some again by chance).
        shown: set[int] = set()
        if not drift.changes_nothing:
            shown = {
                item for frames in world.values() for shot in frames if shot for item in shot[3]
            }
        later = pool.map(lambda camera: render_run(plan[camera][1], test, shown), plan)
        for camera, frames in zip(plan, later, strict=True):
            world.setdefault(camera, [None] * before).extend(frames)
    return world


def _play(
    world: dict[str, list[Shot | None]],
    budget: Budget,
    clients: dict[str, Any],
    stop: threading.Event,
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
        jpeg, labels, boxes, items = shot
        frame = wire.Frame(
            camera, tick.number, time.time_ns(), 1280, 720, wire.Encoding.JPEG, None, jpeg,
            truth_labels=labels, truth_boxes=boxes, truth_items=items, labeled=1,
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
    buckets = {float(le): last[le] - first.get(le, 0.0) for le in last}
    return {"p50": histogram_quantile(buckets, 0.5), "p99": histogram_quantile(buckets, 0.99),
            "count": max(buckets.values(), default=0)}  # fmt: skip


def summarize(readings: list[dict[str, Any]], budget: Budget) -> dict[str, Any]:
    """Accuracy over time, recovery, final gap, trainer activity, pushes and latency.

    These figures come from the clouds' counters, as a dashboard reads them. A window starts
    at a reading of two processes taken moments apart, so the arms' object counts in it may
    differ by what was in flight at that moment. The paired figures on the very same objects
    are ``objects_report``'s."""
    window = budget.window
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


# --- per object: both arms on the same objects --------------------------------------------

ObjectKey = tuple[str, int, int]
"""An object of a frame: camera, frame number, track (-1: a whole-frame result)."""


def by_object(scored: Iterable[Scored], mode: str) -> dict[ObjectKey, Scored]:
    """Each scored object of ``mode`` once (its first answer, should one come twice)."""
    objects: dict[ObjectKey, Scored] = {}
    for one in scored:
        if one.mode == mode:
            track = -1 if one.track is None else one.track
            objects.setdefault((one.camera, one.seq, track), one)
    return objects


def _picked(
    objects: dict[ObjectKey, Scored], fps: float, span: tuple[float, float], trained: Set[int]
) -> dict[ObjectKey, Scored]:
    """The objects of frames due in [start, end) seconds into the play whose item is not in
    ``trained``."""
    start, end = span
    return {
        key: one
        for key, one in objects.items()
        if start <= key[1] / fps < end and (one.item is None or one.item not in trained)
    }


def compare(
    learning: dict[ObjectKey, Scored],
    static: dict[ObjectKey, Scored],
    fps: float,
    span: tuple[float, float],
    trained: Set[int] = frozenset(),
) -> dict[str, Any]:
    """Both arms on the objects of frames due in ``span`` (of items not in ``trained``):
    each arm's accuracy overall and per camera (objects, items, 95% interval by item),
    whether the two counted the same objects, and learning minus static paired on the
    objects both answered (interval resampling items)."""
    mine = _picked(learning, fps, span, trained)
    theirs = _picked(static, fps, span, trained)
    verdict = _paired_on(mine, theirs)
    difference = None
    if verdict.objects:
        difference = {
            "gain": round(verdict.gain, 4),
            "low": round(verdict.low, 4),
            "high": round(verdict.high, 4),
            "p_value": round(verdict.p_value, 6),
            "items_learning_better": verdict.wins,
            "items_static_better": verdict.losses,
            "items": verdict.items,
            "objects": verdict.objects,
        }
    return {
        "from_seconds": round(span[0], 1),
        "to_seconds": round(span[1], 1),
        "learning": accuracies(list(mine.values())),
        "static": accuracies(list(theirs.values())),
        "same_objects": mine.keys() == theirs.keys(),
        "objects_only_learning": len(mine.keys() - theirs.keys()),
        "objects_only_static": len(theirs.keys() - mine.keys()),
        "learning_minus_static": difference,
    }


def _paired_on(mine: dict[ObjectKey, Scored], theirs: dict[ObjectKey, Scored]) -> Verdict:
    """Learning (``mine``) against static (``theirs``) on the objects both answered."""
    from cloud.judge import paired

    both = sorted(mine.keys() & theirs.keys())
    return paired(
        [mine[key].correct for key in both],
        [theirs[key].correct for key in both],
        [mine[key].key() for key in both],
    )


def recovery(
    learning: dict[ObjectKey, Scored],
    static: dict[ObjectKey, Scored],
    budget: Budget,
    trained: Set[int],
) -> dict[str, Any]:
    """What the drift cost and how soon the learning arm won half of it back, on objects of
    items it never trained on. The loss: the learning arm's accuracy before the drift (all
    of it) minus the static arm's after it. Won half back: the end of the first rolling
    window (on at least :data:`RECOVERY_MIN_ITEMS` items) in which the learning arm beat the
    static one on the same objects by half the loss or more, its 95% interval (resampled
    by item) above zero, in minutes after the drift
    (None: never, or nothing was lost). Against the static arm on the same objects, not
    against a fixed mark, so that a window of easier items is no recovery."""
    drift, end, window = budget.drift_at, budget.duration, budget.window

    def picked(
        objects: dict[ObjectKey, Scored], span: tuple[float, float]
    ) -> dict[ObjectKey, Scored]:
        return _picked(objects, budget.fps, span, trained)

    pre = evidence_of(list(picked(learning, (0.0, drift)).values()))
    after = evidence_of(list(picked(static, (drift, end)).values()))
    loss = None
    recovered: float | None = None
    at: dict[str, Any] | None = None
    if pre.accuracy is not None and after.accuracy is not None:
        loss = pre.accuracy - after.accuracy
        for step in range(int((end - drift - window) // budget.interval) + 1):
            until = drift + window + step * budget.interval
            mine, theirs = (
                picked(learning, (until - window, until)),
                picked(static, (until - window, until)),
            )
            if loss <= 0:
                break
            verdict = _paired_on(mine, theirs)
            if verdict.items < RECOVERY_MIN_ITEMS:
                continue
            if verdict.gain >= loss / 2 and verdict.low > 0:  # and not a lucky window
                both = sorted(mine.keys() & theirs.keys())
                recovered = round((until - drift) / 60, 2)
                at = {
                    "to_seconds": round(until, 1),
                    "learning": evidence_of([mine[key] for key in both]).as_dict(),
                    "static": evidence_of([theirs[key] for key in both]).as_dict(),
                    "learning_minus_static": round(verdict.gain, 4),
                }
                break
    return {
        "objects": "never_trained",
        "window_seconds": window,
        "before_drift_learning": pre.as_dict(),
        "after_drift_static": after.as_dict(),
        "loss": None if loss is None else round(loss, 4),
        "half_recovered_after_minutes": recovered,
        "recovered_window": at,
    }


def objects_report(
    learning: dict[ObjectKey, Scored],
    static: dict[ObjectKey, Scored],
    budget: Budget,
    trained: Set[int],
) -> dict[str, Any]:
    """The per-object figures of the run (see the module docstring), each stretch on objects
    of items the learning cloud never trained on and on all objects."""
    drift, end = budget.drift_at, budget.duration
    stretches = {
        "recent": (end - budget.recent, end),
        "after_drift": (drift, end),
        "before_drift": (0.0, drift),  # all of it: 30 s held about 20 items
    }
    report: dict[str, Any] = {
        "recent_seconds": round(budget.recent, 1),
        "trained_items": len(trained),
        "objects": {"learning": len(learning), "static": len(static)},
        "items": {
            arm: len({one.key() for one in objects.values()})
            for arm, objects in (("learning", learning), ("static", static))
        },
        "same_objects": learning.keys() == static.keys(),
    }
    for name, span in stretches.items():
        report[name] = {
            "never_trained": compare(learning, static, budget.fps, span, trained),
            "all_objects": compare(learning, static, budget.fps, span),
        }
    report["recovery"] = recovery(learning, static, budget, trained)
    return report


class _LogTail:
    """The lines a growing log file (the learning cloud's) gained since the last call."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = 0
        self._partial = b""

    def lines(self) -> list[str]:
        try:
            with self.path.open("rb") as log:
                log.seek(self._offset)
                data = log.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        *complete, self._partial = (self._partial + data).split(b"\n")
        return [line.decode(errors="replace") for line in complete]


# --- the run ------------------------------------------------------------------------------


def _registry(budget: Budget, work: Path, source: Path | None) -> Path:
    """A copy of the first model set (promotions write to the copy): ``source`` or the one
    ``$EDGELEARN_BENCH_REGISTRY`` names, as they are; else the quick bench registry, or
    (full) a cached default-budget one, trained here the first time."""
    import os

    source = source or (
        Path(os.environ["EDGELEARN_BENCH_REGISTRY"])
        if os.environ.get("EDGELEARN_BENCH_REGISTRY")
        else None
    )
    if source is not None:
        cached = source
    elif budget.training == "quick":
        cached = bench_registry(BENCH_SPLIT_KS)[0].root
    else:
        from cloud.bootstrap import TrainingPlan, train_plan, with_splits
        from cloud.registry import Registry

        cached = bench_registry_path().with_name("drift-registry")  # not the quick budget's
        train_plan(Registry(cached), with_splits(TrainingPlan.default(), (2, 6, 8)))
    target = work / "registry"
    shutil.copytree(cached, target, ignore=shutil.ignore_patterns(".staging", "serving.json"))
    return target


def run(
    quick: bool,
    output_dir: Path | None = None,
    registry: Path | None = None,
    drift: DriftSpec | str | None = None,
    mode: Mode | str = DEFAULT_MODE,
    budget: Budget | None = None,
) -> dict[str, Any]:
    """``registry``: the first model set to start from (copied; default the cache);
    ``drift``: what changes (a :class:`DriftSpec` or its text; default
    :data:`DEFAULT_DRIFT`); ``mode``: the gateway's; ``budget``: a shorter run than
    ``--quick``'s, for the test suite (its mode wins over ``mode``)."""
    from cloud.registry import Registry
    from cloud.service import CloudService, CloudSettings

    if drift is None:
        drift = DEFAULT_DRIFT
    elif isinstance(drift, str):
        drift = DriftSpec.parse(drift)
    budget = budget or Budget.of(quick, parse_mode(mode))
    output_dir = output_dir or Path("out") / "drift"
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="edgelearn-bench-drift-"))
    clients: dict[str, Any] = {}
    try:
        registry = _registry(budget, work, registry)
        static_registry = work / "registry-static"
        shutil.copytree(registry, static_registry)
        with ThreadPoolExecutor(max_workers=1) as renderer:
            rendering = renderer.submit(render_world, budget, drift)
            settings = StackSettings(
                run_dir=work / "run", secrets=work / "secrets", registry=registry, site=SITE,
                edge_port=0, cloud_port=0, prometheus=False, mode=str(budget.mode),
                split_ks=(budget.split_k,), budget=budget.training, labeled_cameras=0,
                videos=(), camera_users=budget.cameras + 1, consumers=1, echo=False,
                learn_every=budget.learn_every, grow=False,  # adaptation alone is measured
                gateway=(
                    {} if budget.learning_sample is None
                    else {"learning_sample": budget.learning_sample}
                ),
            )  # fmt: skip
            with launch(settings) as stack:
                secrets_dir = stack.secrets.directory
                cloud_port = stack.cloud_broker.port
                static_settings = CloudSettings(
                    broker=BrokerConfig.for_user("cloud", port=cloud_port, secrets_dir=secrets_dir),
                    registry=static_registry, secrets=stack.secrets, site=SITE, group="static",
                    cloud_id="static", split_ks=(budget.split_k,), training=None, push=False,
                    feature_store=None, keep_features=False, trainer=None,
                    results_site=STATIC_SITE,  # its answers apart from the learning one's
                )  # fmt: skip

                @asynccontextmanager
                async def static_cloud() -> Any:
                    async with CloudService(static_settings) as service:
                        yield service

                observer = stack.observer_config()
                with (
                    serve_in_thread(static_cloud, "static cloud", start_timeout=300) as (
                        static,
                        _,
                    ),
                    ResultsObserver(observer, site=SITE) as learning_results,
                    ResultsObserver(observer, site=STATIC_SITE) as static_results,
                ):
                    (learning_url,) = stack.cloud.metrics_urls
                    static_url = static.metrics_server.url
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
                    arms = {"learning": learning_results, "static": static_results}
                    log = _LogTail(settings.run_dir / "cloud.log")
                    measured = _measure(
                        world, budget, clients, (learning_url, static_url, gateway_urls), arms,
                        log,
                    )  # fmt: skip
                stack.children.stop()
        # what the learning cloud logged after the last reading, until it stopped
        trainer_lines = measured.trainer_lines + [
            (measured.readings[-1]["t"], line)
            for line in log.lines()
            if line.startswith("trainer ")
        ]
        # No evidence: every item any version of the learning cloud trained on.
        trained = {item for entry in Registry(registry).list() for item in entry.trained_items}
        mode_text = str(budget.mode)
        learning_objects = by_object(learning_results.scored(), mode_text)
        static_objects = by_object(static_results.scored(), mode_text)
        readings = measured.readings
        report = {
            "benchmark": "drift",
            "quick": quick,
            "machine": machine_info(),
            "budget": budget.__dict__,
            "drift": {
                "spec": str(drift),
                "at_seconds": budget.drift_at,
                "new_backgrounds_and_lighting": drift.backgrounds,
                "light_gain": drift.light,
                "noise_sigma": drift.noise,
                "item_heights": None if drift.heights is None else list(drift.heights),
                "classes": None if drift.classes is None else list(drift.classes),
                "new_camera": f"cam-{budget.cameras + 1}" if drift.new_camera else None,
            },
            "mode": mode_text,
            # full: the gateway answers, both clouds relay the same answers
            "static_arm_is_static": budget.mode.kind != FULL,
            "gateway": measured.gateway,
            **summarize(readings, budget),
            "objects": objects_report(learning_objects, static_objects, budget, trained),
            # what the learning cloud's trainer said of each run (promotions, specialised
            # cameras, rollbacks), from its log
            "trainer_log": [line for _, line in trainer_lines],
            # each promotion's line (the judge's evidence), by when it was in the log: the
            # reading at ``seen_by_seconds`` was the first to find it
            "promotions_log": [
                {"seen_by_seconds": at, "line": line}
                for at, line in trainer_lines
                if "promoted" in line
            ],
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


@dataclass(frozen=True)
class Measured:
    readings: list[dict[str, Any]]
    gateway: dict[str, Any]
    trainer_lines: list[tuple[float, str]]  # (seconds by which it was logged, line)


def _agreed_and_still(read: Callable[[], list[Any]]) -> Callable[[], bool]:
    """A condition to poll: true once every value ``read`` gives (one per arm) is the same
    and none has changed for a second."""
    last: list[Any] = [None, 0.0]  # the values, since when

    def check() -> bool:
        values, now = read(), time.monotonic()
        if any(value != values[0] for value in values) or values != last[0]:
            last[:] = [values, now]
            return False
        return now - float(last[1]) >= 1.0

    return check


def _measure(
    world: dict[str, list[Shot | None]],
    budget: Budget,
    clients: dict[str, Any],
    urls: tuple[str, str, list[str]],
    arms: dict[str, ResultsObserver],
    log: _LogTail,
) -> Measured:
    """Play ``world``, read both clouds every interval, and wait for both to answer what
    is still queued."""
    learning_url, static_url, gateway_urls = urls
    stop = threading.Event()
    player = threading.Thread(target=_play, args=(world, budget, clients, stop), daemon=True)
    mode = str(budget.mode)
    trainer_lines: list[tuple[float, str]] = []

    def note_log(at: float) -> None:
        trainer_lines.extend(
            (round(at, 1), line) for line in log.lines() if line.startswith("trainer ")
        )

    started = time.monotonic()
    readings = [_reading(learning_url, static_url, mode, 0.0)]
    note_log(0.0)
    player.start()
    try:
        while player.is_alive():
            player.join(budget.interval)  # a reading every interval while the cameras play
            readings.append(_reading(learning_url, static_url, mode, time.monotonic() - started))
            note_log(readings[-1]["t"])
    finally:
        stop.set()
        player.join(10)

    # Both clouds answer what is still queued: wait until they have scored the same objects
    # and their counts stood still for a second ...
    def scored_counts() -> list[Any]:
        reading = _reading(learning_url, static_url, mode, 0.0)
        return [{c: n for c, (_, n) in reading[arm].items()} for arm in ("learning", "static")]

    poll_until(_agreed_and_still(scored_counts), 60)
    # ... and until both observers have seen as many objects, still for a second (a result
    # the broker never delivered shows as objects of one arm only).
    poll_until(
        _agreed_and_still(lambda: [len(by_object(arm.scored(), mode)) for arm in arms.values()]),
        30,
    )
    readings[-1] = _reading(learning_url, static_url, mode, readings[-1]["t"])
    note_log(time.monotonic() - started)
    gateway = scrape(gateway_urls)
    raw = gateway.total("edgelearn_gateway_raw_equivalent_bytes_total")
    sent = gateway.total("edgelearn_gateway_uplink_bytes_total")
    return Measured(
        readings,
        {
            "raw_bytes": int(raw),
            "sent_bytes": int(sent),
            "uplink_reduction": round(1 - sent / raw, 5) if raw else None,
            "frames_dropped": int(gateway.total("edgelearn_gateway_frames_dropped_total")),
        },
        trainer_lines,
    )
