"""Students: the cloud's answer for cameras whose objects the teacher names, trained from the
teacher's labels, judged and rolled back like the data set's models.

Where it sits::

    gateway teacher --labels on Features (task "teacher")--> consumers --> FeatureStore
        (rows of task "teacher:<name>": the edge half's output per object, the label)
    StudentTrainer.step(), every poll_seconds, in its own thread: rows -> split by track
    -> candidate -> paired judge -> StudentBoard
    consumers: StudentBoard.student_for(mode, version) answers the teacher task's objects;
        UNKNOWN where it is unsure, and where there is no student yet

**A task per camera.** A labeled camera's objects are named by the data set the models learned;
a video's or a real camera's by its gateway's teacher (``wire.TEACHER_CLASSES`` for the
packaged person detector; a user's detector names its own). The two share
the gateways' lower layers (the edge half every mode already runs) and nothing above them: a
student is a softmax layer on the edge half's output, per object, so the classes of one task
never answer the other's objects. A logistic layer is what a few hundred labeled tracks can
fit without overfitting, and it answers a batch in microseconds (numpy). It is standardised
per feature and L2-regularised. It trains in the trainer's own thread, not in the cloud's
training process: that one process runs the model grower's generations, minutes each, and a
student waiting behind them would leave a new video camera on ``unknown`` for as long. A fit
on 6,000 rows of split:8's 256 features takes 1.0 s of CPU here (0.1 s on 800).

**Open set.** A student answers ``wire.UNKNOWN`` when its top probability is under
``threshold`` (0.75): it is not made to pick the nearer of two classes for something that is
neither. The judge counts an ``unknown`` answer as a disagreement, so a candidate that hedges
is not promoted for it; the run reports how many held-out objects it left unknown and how
many of the rest it got right. Measured on the test's two-class naming of rendered items
(PCA features, 400 tracks to train on, 800 held out): at ``C`` = 1, 87% answered, 92% of
those right; at ``C`` = 0.05, only 69% answered (96% right): strong regularisation pulls
every probability toward a half, so it is kept light.

**Evidence, as for the data set's models** (:mod:`cloud.trainer`, :mod:`cloud.judge`). A
track is one piece of evidence however many features of it arrived. Per camera the newest
``held_out_fraction`` of the tracks (by when they were first labeled) are held out, with
every row of theirs (:func:`track_split`); held-out tracks the serving student trained on
are not evidence for it. The candidate is promoted only
when :func:`cloud.judge.judge_by_camera` finds it significantly better overall and
significantly worse on no camera (the first student is judged against answering ``unknown``
to everything, which is what the cameras get without one). A promotion is watched: the
consumers answer each newly labeled track with the replaced student too, and after
``rollback_items`` tracks the paired test rolls back a promotion the replaced one beats.

Students are kept beside the registry (``<registry>/students``, one ``.npz`` each and
``serving.json``), so a restarted cloud serves its last one. The serving student is also
pushed to the gateways, signed with the edge half it reads (:mod:`edgelearn.student`): a
gateway in ``full`` sends no features, so it answers its video cameras itself. Students
train only on what gateways in a feature mode send: a site whose gateways all run ``full``
has none to train.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.background import BackgroundLoop
from cloud.feature_store import FeatureStore, LabeledRows
from cloud.judge import judge_by_camera, paired
from cloud.metrics import CloudMetrics
from cloud.models.errors import RegistryError
from cloud.registry import ModelEntry, Registry
from edgelearn import codec, wire
from edgelearn.artifacts import TensorQuantization
from edgelearn.evidence import SameObjects
from edgelearn.modes import Mode
from edgelearn.student import Student

log = logging.getLogger(__name__)

Announce = Callable[[str], None]


# --- fitting -------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class StudentJob:
    values: npt.NDArray[np.float32]  # (N, D)
    labels: npt.NDArray[np.int64]
    weights: npt.NDArray[np.float32]
    classes: int
    regularisation: float


@dataclass(frozen=True, eq=False)
class StudentFit:
    coef: npt.NDArray[np.float32]
    intercept: npt.NDArray[np.float32]
    mean: npt.NDArray[np.float32]
    std: npt.NDArray[np.float32]


def fit_student(job: StudentJob) -> StudentFit:
    """A multinomial logistic layer on standardised features (scikit-learn's L-BFGS)."""
    from sklearn.linear_model import LogisticRegression

    mean = job.values.mean(axis=0)
    std = job.values.std(axis=0) + 1e-3
    model = LogisticRegression(C=job.regularisation, max_iter=500)
    model.fit((job.values - mean) / std, job.labels, sample_weight=job.weights)
    coef = np.zeros((job.classes, job.values.shape[1]), np.float32)
    intercept = np.zeros(job.classes, np.float32)
    present = [int(c) for c in model.classes_]
    if len(present) == 2:  # scikit-learn keeps one row for two classes: the second's logit
        coef[present[1]] = model.coef_[0]
        intercept[present[1]] = model.intercept_[0]
    else:
        for row, label in enumerate(present):
            coef[label] = model.coef_[row]
            intercept[label] = model.intercept_[row]
    return StudentFit(coef, intercept, mean.astype(np.float32), std.astype(np.float32))


def track_split(
    rows: LabeledRows, fraction: float
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(train, held-out) indices of ``rows``: per camera and per label, every row of the
    newest ``fraction`` of its objects (ordered by their first row; a looped video's twin
    tracks are one, :meth:`LabeledRows.objects`) is held out. A person walking through the
    scene gives a hundred rows; holding out by row would leave a handful of objects to
    judge on, holding out by object keeps a quarter of them. Stratified by label: a class
    with few objects (vtest.avi shows one that is not a person) is trained on first, so a
    student knows every class the camera has shown before it is judged."""
    objects = rows.objects()
    first: dict[tuple[str, int], int] = {}
    for index, key in enumerate(objects):
        first.setdefault(key, index)
    held_keys: set[tuple[str, int]] = set()
    strata = sorted({(rows.cameras[i], int(rows.labels[i])) for i in first.values()})
    for camera, label in strata:
        mine = sorted(
            (i, key)
            for key, i in first.items()
            if rows.cameras[i] == camera and int(rows.labels[i]) == label
        )
        count = int(len(mine) * fraction)
        held_keys.update(key for _, key in mine[len(mine) - count :] if count)
    held = [i for i, key in enumerate(objects) if key in held_keys]
    train = [i for i, key in enumerate(objects) if key not in held_keys]
    return np.asarray(train, np.int64), np.asarray(held, np.int64)


def track_weights(rows: LabeledRows) -> npt.NDArray[np.float32]:
    """Each row's weight: a track counts once however many of its features arrived."""
    keys = rows.objects()
    counts = collections.Counter(keys)
    weights = np.asarray([1.0 / counts[key] for key in keys], np.float32)
    result: npt.NDArray[np.float32] = weights / weights.mean()
    return result


# --- serving, shared by the consumers and the trainer -------------------------------------


@dataclass
class _Watch:
    """A promotion under watch: per newly labeled track, were the promoted and the replaced
    student right."""

    replaced: Student | None
    keys: list[Hashable] = field(default_factory=list)
    promoted_right: list[bool] = field(default_factory=list)
    replaced_right: list[bool] = field(default_factory=list)


class StudentBoard:
    """The serving student of each mode, kept in ``root`` (None: in memory only); what the
    consumers' answers to teacher-labeled tracks show (agreement per camera), and a
    promotion's watch."""

    def __init__(
        self,
        root: Path | None,
        window: int = 100,
        *,
        classes: tuple[str, ...] = wire.TEACHER_CLASSES,
        source: str = "teacher:teacher-person",
    ) -> None:
        self.root = root
        self.window = window
        # the teacher the cloud pushes: its task's classes, and its labels' source
        self.classes, self.source = classes, source
        # called with the student that serves a mode from now on (a promotion, a rollback),
        # outside the lock: the service pushes it to the gateways in ``full``
        self.on_serving: Callable[[Student], None] = lambda student: None
        self._serving: dict[str, Student] = {}
        self._watch: dict[str, _Watch] = {}
        self._agreement: dict[str, collections.deque[bool]] = {}
        self._seen: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
        self._same = SameObjects()
        self._lock = threading.Lock()
        if root is not None:
            self._load()

    def _load(self) -> None:
        assert self.root is not None
        pointer = self.root / "serving.json"
        if not pointer.exists():
            return
        for mode, version in json.loads(pointer.read_text()).items():
            path = self.root / f"{Mode.parse(mode).slot}-{version}.npz"
            try:
                self._serving[mode] = Student.from_bytes(path.read_bytes())
            except (OSError, ValueError, KeyError) as exc:
                log.warning("student %s %s not loaded: %s", mode, version, exc)

    def _save(self) -> None:
        if self.root is None:
            return
        self.root.mkdir(parents=True, exist_ok=True)
        for student in self._serving.values():
            path = self.root / f"{Mode.parse(student.mode).slot}-{student.version}.npz"
            if not path.exists():
                path.write_bytes(student.to_bytes())
        pointer = self.root / "serving.json"
        staged = pointer.with_suffix(".tmp")
        staged.write_text(json.dumps({m: s.version for m, s in sorted(self._serving.items())}))
        os.replace(staged, pointer)

    def serving_students(self) -> list[Student]:
        """The serving student of each mode, of the current teacher's classes."""
        with self._lock:
            return [s for s in self._serving.values() if s.classes == self.classes]

    def serving(self, mode: str) -> Student | None:
        with self._lock:
            return self._serving.get(mode)

    def student_for(self, mode: str, model_version: str) -> Student | None:
        """The student answering features of this mode and edge version (None: none yet,
        the edge half changed since it trained, or it learned another teacher's classes)."""
        with self._lock:
            student = self._serving.get(mode)
        if student is None or student.classes != self.classes:
            return None
        return student if model_version in student.versions else None

    def replaced(self, mode: str) -> Student | None:
        """The student a watched promotion replaced (None: no watch, or the first)."""
        with self._lock:
            watch = self._watch.get(mode)
            return None if watch is None else watch.replaced

    def promote(self, student: Student) -> None:
        """``student`` serves its mode; the one it replaces is watched beside it, if it
        reads the same features (one of another edge half could not answer them)."""
        with self._lock:
            replaced = self._serving.get(student.mode)
            if replaced is not None and (
                not set(replaced.versions) & set(student.versions)
                or replaced.classes != student.classes
            ):
                replaced = None
            self._watch[student.mode] = _Watch(replaced)
            self._serving[student.mode] = student
            self._save()
        self.on_serving(student)

    def roll_back(self, mode: str) -> Student | None:
        """The watched promotion undone: the replaced student serves again."""
        with self._lock:
            watch = self._watch.pop(mode, None)
            if watch is None or watch.replaced is None:
                return None
            self._serving[mode] = watch.replaced
            self._save()
        self.on_serving(watch.replaced)
        return watch.replaced

    def end_watch(self, mode: str) -> None:
        with self._lock:
            self._watch.pop(mode, None)

    def same_objects(
        self, camera: str, tracks: Sequence[int], rows: npt.NDArray[Any]
    ) -> list[tuple[str, int]]:
        """The objects a feature's tracks are (:class:`edgelearn.evidence.SameObjects`: a
        looped video's twin tracks are one), given each track's feature row."""
        with self._lock:
            return [
                self._same.add(camera, int(track), [row])
                for track, row in zip(tracks, rows, strict=True)
            ]

    def record(
        self,
        mode: str,
        camera: str,
        key: tuple[str, int],
        label: int,
        answered: int,
        replaced_answer: int | None,
    ) -> bool:
        """A teacher-labeled object (``key``: :meth:`same_objects`) the consumers answered;
        only its first answer counts (one object is one piece of evidence). Whether it was
        the first."""
        with self._lock:
            if key in self._seen:
                return False
            self._seen[key] = None
            while len(self._seen) > 20_000:
                self._seen.popitem(last=False)
            self._agreement.setdefault(camera, collections.deque(maxlen=self.window)).append(
                answered == label
            )
            watch = self._watch.get(mode)
            if watch is not None and replaced_answer is not None:
                watch.keys.append(key)
                watch.promoted_right.append(answered == label)
                watch.replaced_right.append(replaced_answer == label)
            return True

    def agreement(self, camera: str) -> tuple[float | None, int]:
        """Share of the camera's latest labeled tracks its answers agreed with, and how
        many tracks that is."""
        with self._lock:
            recent = list(self._agreement.get(camera, ()))
        return (sum(recent) / len(recent) if recent else None), len(recent)

    def cameras(self) -> list[str]:
        with self._lock:
            return sorted(self._agreement)

    def watched(self, mode: str) -> tuple[list[bool], list[bool], list[Hashable]] | None:
        with self._lock:
            watch = self._watch.get(mode)
            if watch is None:
                return None
            return list(watch.promoted_right), list(watch.replaced_right), list(watch.keys)


# --- the trainer --------------------------------------------------------------------------


@dataclass(frozen=True)
class StudentSettings:
    every: int = 150  # new teacher-labeled objects of a mode that start a run
    window: int = 6000  # newest rows a run reads
    held_out_fraction: float = 0.25
    # distinct held-out objects a run needs to judge at all: six, all agreeing, beat unknown
    # at p = 0.016; vtest.avi shows about 30 distinct people, a quarter of them held out
    min_items: int = 6
    min_camera_items: int = 10
    significance: float = 0.05
    regularisation: float = 1.0  # scikit-learn's C: smaller is more regularised
    rollback_items: int = 40  # newly labeled tracks a promotion is watched for
    poll_seconds: float = 5.0


@dataclass(frozen=True)
class StudentRun:
    mode: str
    trigger: str
    outcome: str  # promoted | rejected | too_few_items | one_class
    rows: int
    tracks: int  # distinct objects (a looped video's twin tracks are one)
    held_out_tracks: int
    judgement: dict[str, Any] | None = None
    version: str = ""
    unknown: float = 0.0  # share of held-out objects the candidate answered UNKNOWN
    answered_agreement: float | None = None  # agreement on the ones it did answer

    def line(self) -> str:
        judged = ""
        if self.judgement is not None:
            j = self.judgement
            judged = (
                f": {j['candidate']:.1%} vs {j['serving']:.1%} on {j['items']} held-out objects"
                f" ({(j['gain']) * 100:+.1f} points, {j['low'] * 100:+.1f} to"
                f" {j['high'] * 100:+.1f}, p={j['p_value']:.3g}); unknown {self.unknown:.0%}"
            )
        return (
            f"student {self.mode} {self.outcome}{' ' + self.version if self.version else ''}"
            f" on {self.tracks} teacher-labeled objects{judged}"
        )


class StudentTrainer(BackgroundLoop):
    """Trains, judges, promotes and rolls back the teacher task's students of ``modes``."""

    name = "students"

    def __init__(
        self,
        registry: Registry,
        store: FeatureStore,
        board: StudentBoard,
        metrics: CloudMetrics,
        modes: Sequence[Mode],
        settings: StudentSettings | None = None,
        *,
        announce: Announce = lambda line: None,
    ) -> None:
        self.registry = registry
        self.store = store
        self.board = board
        self.metrics = metrics
        self.modes = [mode for mode in modes if mode.kind in ("split", "pca", "autoencoder")]
        self.settings = settings or StudentSettings()
        self._announce = announce
        self._trained_up_to: dict[str, int] = {}
        self.runs: list[StudentRun] = []
        self.rollbacks: list[dict[str, Any]] = []
        super().__init__(None)  # fits here: see the module docstring

    def _loop(self) -> None:
        self._every(self.settings.poll_seconds, self.step, "student trainer")

    def _lineage(self, serving: ModelEntry) -> tuple[str, ...]:
        """The versions whose features are one space with ``serving``'s (its edge half)."""
        return tuple(entry.version for entry in self.registry.lineage(serving))

    def step(self) -> list[StudentRun]:
        runs = []
        for mode in self.modes:
            if self._stop.is_set():
                break
            try:
                serving = self.registry.serving(mode)
            except RegistryError:
                continue
            self.check_watch(str(mode))
            since = self._trained_up_to.get(str(mode), 0)
            new, _ = self.store.count(
                str(mode), self._lineage(serving), since, task=self.board.source
            )
            if new >= self.settings.every:
                runs.append(self.run(mode, serving, "new_labels"))
        return runs

    def run(self, mode: Mode, serving: ModelEntry, trigger: str = "manual") -> StudentRun:
        settings = self.settings
        versions = self._lineage(serving)
        source = self.board.source
        _, newest = self.store.count(str(mode), versions, task=source)
        rows = self.store.labeled_rows(
            str(mode), versions, newest=settings.window, up_to_id=newest, task=source
        )
        objects = rows.objects()  # a looped video's twin tracks are one object
        tracks = len(set(objects))
        # What answers these features now: the serving student if it reads them (a new
        # edge half, a new generation's, makes it stale), else nothing (unknown to all).
        current = self.board.serving(str(mode))
        if current is not None and (
            not set(current.versions) & set(versions) or current.classes != self.board.classes
        ):
            current = None
        train, held = track_split(rows, settings.held_out_fraction)
        if current is not None:  # what the serving student trained on is no evidence
            trained = {
                objects[i]
                for i, key in enumerate(zip(rows.cameras, rows.tracks.tolist(), strict=True))
                if key in current.trained_on
            }
            held = np.asarray([i for i in held if objects[i] not in trained], np.int64)
        held_objects = [objects[i] for i in held]
        base = StudentRun(
            mode=str(mode), trigger=trigger, outcome="", rows=len(rows), tracks=tracks,
            held_out_tracks=len(set(held_objects)),
        )  # fmt: skip
        if len(set(held_objects)) < settings.min_items:
            # its rows stay: the next run, `every` rows on, holds out more tracks
            return self._finish(dataclasses.replace(base, outcome="too_few_items"), newest)
        train_rows, held_rows = rows.take(train), rows.take(held)
        if len(set(train_rows.labels.tolist())) < 2:
            return self._finish(dataclasses.replace(base, outcome="one_class"), newest)
        quantization = TensorQuantization.from_dict(serving.metadata["quantization"]["output"])

        def values(part: LabeledRows) -> npt.NDArray[np.float32]:
            real = codec.dequantize(part.values, quantization.scale, quantization.zero_point)
            return real.reshape(len(part), -1)

        fit = fit_student(
            StudentJob(
                values(train_rows),
                train_rows.labels,
                track_weights(train_rows),
                len(self.board.classes),
                settings.regularisation,
            )
        )
        candidate = Student(
            version=f"s{int(time.time() * 1000)}",
            mode=str(mode),
            versions=versions,
            coef=fit.coef,
            intercept=fit.intercept,
            mean=fit.mean,
            std=fit.std,
            classes=self.board.classes,
            trained_on=frozenset(
                (camera, int(track))
                for camera, track in zip(train_rows.cameras, train_rows.tracks, strict=True)
            ),
        )
        held_values = values(held_rows)
        answered, _ = candidate.answer(held_values)
        candidate_right = np.asarray(answered) == held_rows.labels
        if current is None:  # without a student every object is answered UNKNOWN
            serving_right = np.zeros(len(held_rows), bool)
        else:
            serving_right = np.asarray(current.answer(held_values)[0]) == held_rows.labels
        judgement = judge_by_camera(
            candidate_right, serving_right, held_objects, list(held_rows.cameras),
            level=settings.significance, min_items=settings.min_camera_items,
        )  # fmt: skip
        known = np.asarray(answered) != wire.UNKNOWN
        report = dataclasses.replace(
            base,
            outcome="promoted" if judgement.promote else "rejected",
            judgement=judgement.as_dict(),
            version=candidate.version if judgement.promote else "",
            unknown=float(1 - known.mean()),
            answered_agreement=float(candidate_right[known].mean()) if known.any() else None,
        )
        if judgement.promote:
            self.board.promote(
                dataclasses.replace(candidate, report={"judgement": judgement.as_dict()})
            )
        return self._finish(report, newest)

    def _finish(self, report: StudentRun, newest: int) -> StudentRun:
        """The next run waits for ``every`` rows after row ``newest``."""
        self._trained_up_to[report.mode] = newest
        self.runs.append(report)
        self.metrics.student_runs.labels(report.mode, report.outcome).inc()
        self._announce(report.line())
        return report

    def check_watch(self, mode: str) -> dict[str, Any] | None:
        """Settle a watched promotion with ``rollback_items`` newly labeled tracks: roll it
        back if the replaced student is significantly better on them (paired)."""
        watched = self.board.watched(mode)
        if watched is None:
            return None
        promoted_right, replaced_right, keys = watched
        if self.board.replaced(mode) is None:
            self.board.end_watch(mode)  # the first student: nothing to go back to
            return None
        if len(set(keys)) < self.settings.rollback_items:
            return None
        verdict = paired(replaced_right, promoted_right, keys, level=self.settings.significance)
        outcome = {"mode": mode, "verdict": verdict.as_dict(), "rolled_back": verdict.better}
        if verdict.better:
            back = self.board.roll_back(mode)
            self.metrics.student_runs.labels(mode, "rolled_back").inc()
            self._announce(
                f"student {mode} rolled back to {back.version if back else '?'}: {verdict.line()}"
            )
        else:
            self.board.end_watch(mode)
        self.rollbacks.append(outcome)
        return outcome
