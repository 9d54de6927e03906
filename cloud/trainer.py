"""The continuous trainer: the cloud keeps learning from the labeled features that arrive.

Where it sits::

    consumers --> FeatureStore (labeled rows per mode, camera, model version)
                     |                      Scoreboard (rolling accuracy per camera, and
                     v                                  live accuracy per serving version)
    ContinuousTrainer.step(), every poll_seconds, in its own thread:
      1. a promotion on watch whose live accuracy fell -> roll back (registry pointer)
      2. trigger: ``every`` new labeled objects of a mode, or a camera's rolling accuracy
         ``accuracy_drop`` under its level at the last run
      3. rows: the newest ``window`` + ``replay`` older ones drawn at random (so the model
         does not forget); per camera, the newest ``held_out_fraction`` are held out (a
         time split), and no object (camera, track) held out is trained on
      4. candidate: the serving cloud half fine-tuned on the rest (upper blocks of
         ``split:k``; the feature classifier of ``pca``/``autoencoder``)
      5. judge on the held-out rows, per camera: promote if better overall by ``margin``
         and worse on no camera (with ``min_camera_items``) by more than ``camera_bound``
      6. promote: a registry version with the same edge artifact and the new cloud half,
         loaded, then ``serving.json`` points at it and consumers resolve again between
         two batches (no feature waits); the gateways change nothing

Features of one edge artifact are one feature space whatever version a gateway stamps
(:meth:`cloud.registry.Registry.lineage`), so every promotion keeps training on all of them.
``full`` (the edge answers) and ``raw`` (the cloud-only CNN) are not trained here.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.consumer import RegistryModels, Scoreboard
from cloud.feature_store import FeatureStore, LabeledRows
from cloud.metrics import CloudMetrics
from cloud.models.errors import RegistryError
from cloud.registry import EDGE, ModelEntry, Registry, keras_to_bytes
from edgelearn.artifacts import TensorQuantization
from edgelearn.modes import AUTOENCODER, PCA, Mode

log = logging.getLogger(__name__)

KerasModel = Any
Announce = Callable[[str], None]


@dataclass(frozen=True)
class TrainerSettings:
    every: int = 1500  # new labeled objects of a mode that start a run
    accuracy_drop: float = 0.10  # a camera this far under its level at the last run: a run
    drop_window: int = 200  # scored objects a camera's level is taken over
    min_new: int = 300  # new labeled objects an accuracy-drop run needs at least
    window: int = 3000  # newest rows a run reads
    replay: int = 1500  # older rows drawn at random beside them
    held_out_fraction: float = 0.25  # newest of each camera's rows, held out
    epochs: int = 3
    learning_rate: float = 1e-3
    margin: float = 0.005  # overall held-out gain a candidate needs
    camera_bound: float = 0.02  # largest held-out loss allowed on any camera
    min_camera_items: int = 30  # cameras with fewer held-out rows are not judged alone
    rollback_window: int = 300  # live scored objects that judge a promotion
    rollback_drop: float = 0.05  # live accuracy this far under the replaced one: roll back
    poll_seconds: float = 2.0

    @classmethod
    def quick(cls) -> TrainerSettings:
        return cls(every=300, min_new=100, window=1200, replay=400, rollback_window=100)


# --- the pure part: splitting, scoring, judging ------------------------------------------


def time_split(
    rows: LabeledRows, fraction: float, recent_from: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """(train, held-out) indices of ``rows``: per camera, the newest ``fraction`` of the
    rows with id >= ``recent_from`` are held out; rows of an object (camera, track) with a
    held-out row are trained on by nobody."""
    held: list[int] = []
    for camera in sorted(set(rows.cameras)):
        mine = [i for i, c in enumerate(rows.cameras) if c == camera and rows.ids[i] >= recent_from]
        count = int(len(mine) * fraction)
        held.extend(mine[len(mine) - count :] if count else [])
    held_set = set(held)
    held_objects = {(rows.cameras[i], int(rows.tracks[i])) for i in held if rows.tracks[i] >= 0}
    train = [
        i
        for i in range(len(rows))
        if i not in held_set and (rows.cameras[i], int(rows.tracks[i])) not in held_objects
    ]
    return np.asarray(train, np.int64), np.asarray(sorted(held), np.int64)


@dataclass(frozen=True)
class CameraScores:
    """Held-out (correct, items) per camera of one model."""

    counts: dict[str, tuple[int, int]]

    @classmethod
    def of(cls, predicted: npt.NDArray[np.int64], rows: LabeledRows) -> CameraScores:
        counts: dict[str, tuple[int, int]] = {}
        for camera, label, guess in zip(rows.cameras, rows.labels, predicted, strict=True):
            correct, total = counts.get(camera, (0, 0))
            counts[camera] = (correct + int(label == guess), total + 1)
        return cls(counts)

    @property
    def overall(self) -> float:
        correct = sum(c for c, _ in self.counts.values())
        total = sum(n for _, n in self.counts.values())
        return correct / total if total else 0.0

    def camera(self, camera: str) -> float:
        correct, total = self.counts[camera]
        return correct / total

    def as_dict(self) -> dict[str, Any]:
        return {
            "overall": round(self.overall, 4),
            "cameras": {camera: round(self.camera(camera), 4) for camera in sorted(self.counts)},
            "items": sum(n for _, n in self.counts.values()),
        }


def judge(
    serving: CameraScores, candidate: CameraScores, settings: TrainerSettings
) -> tuple[bool, str]:
    """Whether ``candidate`` may replace ``serving``, and why (a metric label)."""
    if candidate.overall < serving.overall + settings.margin:
        return False, "not_better"
    for camera, (_, total) in candidate.counts.items():
        if total >= settings.min_camera_items and (
            candidate.camera(camera) < serving.camera(camera) - settings.camera_bound
        ):
            return False, "camera_worse"
    return True, "better"


# --- the trainer ------------------------------------------------------------------------


Fit = Callable[[KerasModel, Any, Any, TrainerSettings], KerasModel]


def fine_tune_cloud_half(
    serving: KerasModel, train: Any, held_out: Any, settings: TrainerSettings
) -> KerasModel:
    """The default candidate: a copy of the serving cloud half tuned on ``train``."""
    from cloud.models.training import fine_tune

    return fine_tune(
        serving, train, held_out, epochs=settings.epochs, learning_rate=settings.learning_rate
    ).model


@dataclass
class _Watch:
    """A promotion whose live accuracy is still being judged."""

    candidate: str
    parent: str
    parent_live: float


@dataclass
class _ModeState:
    trained_up_to: int = 0  # the newest row id the last run saw
    levels: dict[str, float] = field(default_factory=dict)  # camera -> accuracy at last run
    watch: _Watch | None = None


@dataclass(frozen=True)
class RunReport:
    mode: str
    trigger: str
    serving: str
    promoted: str | None
    reason: str
    n_train: int
    n_held_out: int
    seconds: float
    serving_scores: dict[str, Any]
    candidate_scores: dict[str, Any]

    def line(self) -> str:
        outcome = f"promoted {self.promoted}" if self.promoted else f"kept ({self.reason})"
        return (
            f"trainer {self.mode} ({self.trigger}): {self.n_train} rows, {self.seconds:.1f} s, "
            f"held-out {self.candidate_scores['overall']:.3f} vs serving "
            f"{self.serving_scores['overall']:.3f} on {self.n_held_out}: {outcome}"
        )


class ContinuousTrainer:
    """Trains, judges, promotes and rolls back the cloud halves of ``modes``."""

    def __init__(
        self,
        registry: Registry,
        models: RegistryModels,
        store: FeatureStore,
        scoreboard: Scoreboard,
        metrics: CloudMetrics,
        modes: Sequence[Mode],
        settings: TrainerSettings | None = None,
        *,
        fit: Fit = fine_tune_cloud_half,
        announce: Announce = lambda line: None,
    ) -> None:
        self.registry = registry
        self.models = models
        self.store = store
        self.scoreboard = scoreboard
        self.metrics = metrics
        self.modes = [mode for mode in modes if mode.kind in (PCA, AUTOENCODER, "split")]
        self.settings = settings or TrainerSettings()
        self._fit = fit
        self._announce = announce
        self._state = {str(mode): _ModeState() for mode in self.modes}
        self.reports: list[RunReport] = []
        self.rollbacks: list[dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # --- lifecycle -------------------------------------------------------------------

    def __enter__(self) -> ContinuousTrainer:
        self._thread = threading.Thread(target=self._loop, name="trainer", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(60)

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.poll_seconds):
            try:
                self.step()
            except Exception:  # a failed run must not stop the trainer or the cloud
                log.exception("continuous trainer step failed")

    # --- one pass --------------------------------------------------------------------

    def step(self) -> list[RunReport]:
        """Check every mode once: roll back, then train if triggered."""
        reports = []
        for mode in self.modes:
            if self._stop.is_set():
                break
            try:
                serving = self.registry.serving(mode)
            except RegistryError:
                continue
            self._check_watch(mode, serving)
            trigger = self._trigger(mode, serving)
            if trigger is not None:
                reports.append(self.run(mode, trigger))
        return reports

    def _versions(self, serving: ModelEntry) -> list[str]:
        return [entry.version for entry in self.registry.lineage(serving)]

    def _trigger(self, mode: Mode, serving: ModelEntry) -> str | None:
        state = self._state[str(mode)]
        new, _ = self.store.count(str(mode), self._versions(serving), state.trained_up_to)
        if new >= self.settings.every:
            return "new_objects"
        if new < self.settings.min_new:
            return None
        for camera in self.scoreboard.cameras(str(mode)):
            now = self.scoreboard.accuracy(camera, str(mode), self.settings.drop_window)
            if now is None:
                continue
            level = state.levels.setdefault(camera, now)  # the first level a camera reaches
            if now < level - self.settings.accuracy_drop:
                return "accuracy_drop"
        return None

    def run(self, mode: Mode, trigger: str = "manual") -> RunReport:
        """One run on ``mode``: rows, candidate, judgement, promotion."""
        settings = self.settings
        state = self._state[str(mode)]
        started = time.perf_counter()
        serving = self.registry.serving(mode)
        versions = self._versions(serving)
        _, newest_id = self.store.count(str(mode), versions)
        self.metrics.trainer_triggers.labels(str(mode), trigger).inc()
        rows = self.store.labeled_rows(
            str(mode),
            versions,
            newest=settings.window,
            replay=settings.replay,
            up_to_id=newest_id,
            seed=newest_id,
        )
        recent_from = int(rows.ids[-min(len(rows), settings.window)]) if len(rows) else 0
        train_index, held_index = time_split(rows, settings.held_out_fraction, recent_from)
        state.trained_up_to = newest_id
        state.levels = {
            camera: level
            for camera in self.scoreboard.cameras(str(mode))
            if (level := self.scoreboard.accuracy(camera, str(mode), settings.drop_window))
            is not None
        }
        if len(held_index) < settings.min_camera_items or len(train_index) < settings.min_new:
            return self._finish(
                RunReport(str(mode), trigger, serving.version, None, "too_few",
                          len(train_index), len(held_index), time.perf_counter() - started,
                          {"overall": 0.0}, {"overall": 0.0}),
            )  # fmt: skip
        from cloud.models.training import StoredFeatures

        output = TensorQuantization.from_dict(serving.metadata["quantization"]["output"])
        train = StoredFeatures(rows.values[train_index], rows.labels[train_index], output)
        held_rows = rows.take(held_index)
        held_out = StoredFeatures(held_rows.values, held_rows.labels, output)
        serving_model = self.registry.load_cloud_model(serving)
        candidate = self._fit(serving_model, train, held_out, settings)
        serving_scores = CameraScores.of(_predict(serving_model, held_out), held_rows)
        candidate_scores = CameraScores.of(_predict(candidate, held_out), held_rows)
        self.metrics.trainer_heldout_accuracy.labels(str(mode), "serving").set(
            serving_scores.overall
        )
        self.metrics.trainer_heldout_accuracy.labels(str(mode), "candidate").set(
            candidate_scores.overall
        )
        promote, reason = judge(serving_scores, candidate_scores, settings)
        promoted = None
        if promote:
            entry = self._save(serving, candidate, len(train_index), candidate_scores, trigger)
            self.promote(mode, entry, parent=serving)
            promoted = entry.version
        else:
            self.metrics.trainer_rejections.labels(str(mode), reason).inc()
        seconds = time.perf_counter() - started
        self.metrics.training_runs.labels(str(mode)).inc()
        self.metrics.training_seconds.labels(str(mode)).observe(seconds)
        return self._finish(
            RunReport(
                str(mode), trigger, serving.version, promoted, reason, len(train_index),
                len(held_index), seconds, serving_scores.as_dict(), candidate_scores.as_dict(),
            )
        )  # fmt: skip

    def _finish(self, report: RunReport) -> RunReport:
        self.reports.append(report)
        log.info("%s", report.line())
        self._announce(report.line())
        return report

    def _save(
        self,
        serving: ModelEntry,
        candidate: KerasModel,
        n_train: int,
        scores: CameraScores,
        trigger: str,
    ) -> ModelEntry:
        """A new version: the serving entry's edge half, the candidate's cloud half."""
        metadata = serving.metadata
        return self.registry.save(
            name=serving.name,
            kind=serving.kind,
            task=serving.task,
            input_shape=serving.input_shape,
            edge_artifact=serving.read(EDGE),
            cloud_artifact=keras_to_bytes(candidate),
            split_k=serving.split_k,
            accuracy=serving.accuracy,  # the rendered held-out figure of the edge half
            quantization=metadata.get("quantization"),
            profile=metadata.get("profile"),
            class_names=metadata.get("class_names"),
            extra={
                **(metadata.get("extra") or {}),
                "parent": serving.version,
                "trained_on_arrivals": n_train,
                "trigger": trigger,
                "arrivals_held_out": scores.as_dict(),
            },
        )

    def promote(self, mode: Mode, entry: ModelEntry, parent: ModelEntry) -> None:
        """Serve ``entry`` for ``mode`` from the next batch on, and watch its live
        accuracy against ``parent``'s."""
        self.models.load(entry)  # loaded before the switch: the swap itself costs nothing
        parent_live, seen = self.scoreboard.served_accuracy(
            str(mode), parent.version, self.settings.rollback_window
        )
        self.registry.set_serving(mode, entry.version)
        self.models.refresh()
        self.metrics.trainer_promotions.labels(str(mode)).inc()
        state = self._state[str(mode)]
        state.watch = None  # nothing to compare with: the replaced one was barely scored
        if parent_live is not None and seen >= self.settings.rollback_window // 2:
            state.watch = _Watch(entry.version, parent.version, parent_live)
            self.metrics.trainer_live_accuracy.labels(str(mode), "replaced").set(parent_live)

    def _check_watch(self, mode: Mode, serving: ModelEntry) -> None:
        state = self._state[str(mode)]
        watch = state.watch
        if watch is None:
            return
        if serving.version != watch.candidate:  # something else changed what serves
            state.watch = None
            return
        live, seen = self.scoreboard.served_accuracy(
            str(mode), watch.candidate, self.settings.rollback_window
        )
        if live is not None:
            self.metrics.trainer_live_accuracy.labels(str(mode), "serving").set(live)
        if live is None or seen < self.settings.rollback_window:
            return
        state.watch = None
        if live >= watch.parent_live - self.settings.rollback_drop:
            return  # it holds up: confirmed
        self.registry.set_serving(mode, watch.parent)
        self.models.refresh()
        self.metrics.trainer_rollbacks.labels(str(mode)).inc()
        rollback = {
            "mode": str(mode),
            "from": watch.candidate,
            "to": watch.parent,
            "live": round(live, 4),
            "replaced_live": round(watch.parent_live, 4),
            "at": time.time(),
        }
        self.rollbacks.append(rollback)
        line = (
            f"trainer {mode}: rolled back {watch.candidate} -> {watch.parent} (live "
            f"{live:.3f}, it replaced one at {watch.parent_live:.3f})"
        )
        log.warning("%s", line)
        self._announce(line)


def _predict(model: KerasModel, features: Any) -> npt.NDArray[np.int64]:
    probabilities = np.asarray(model.predict(features.dequantized(), batch_size=256, verbose=0))
    predicted: npt.NDArray[np.int64] = np.argmax(probabilities, axis=1).astype(np.int64)
    return predicted
