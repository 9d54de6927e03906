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
      7. per camera with ``specialise_min_rows`` training rows: a copy of the global cloud
         half tuned on that camera's rows alone; the same held-out rows of the camera choose
         between it, the global one and the camera's current one (a specialised cloud half
         must beat both by ``margin``), and the choice is reported (``RunReport.cameras``)

Features of one edge artifact are one feature space whatever version a gateway stamps
(:meth:`cloud.registry.Registry.lineage`), so every promotion keeps training on all of them.

``full`` (the edge runs the whole CNN) learns from the crops its gateways send for a sample
of keyframes (``GatewayConfig.learning_sample``): crops are model-independent, so every
``full`` version's are one training set. The candidate is the whole float CNN tuned on them
and judged as above; promoted, it is exported to int8 (calibrated on the arrivals), saved as
a new version with that edge artifact, signed and pushed to the gateways (``push``), which
hot-swap it. A rollback of ``full`` saves the replaced model again as a new version and
pushes it. ``raw`` (the cloud-only CNN) is not trained here.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.background import BackgroundLoop, TrainingProcess
from cloud.consumer import RegistryModels, Scoreboard
from cloud.feature_store import FeatureStore, LabeledRows
from cloud.metrics import CloudMetrics
from cloud.models.errors import RegistryError
from cloud.registry import CLOUD, ModelEntry, Registry, keras_to_bytes
from edgelearn.artifacts import KIND_FULL, TensorQuantization
from edgelearn.modes import AUTOENCODER, FULL, PCA, Mode

log = logging.getLogger(__name__)

KerasModel = Any
Announce = Callable[[str], None]
Push = Callable[[ModelEntry], int]  # sign and publish an entry to the gateways; bytes sent


@dataclass(frozen=True)
class TrainerSettings:
    every: int = 1500  # new labeled objects of a mode that start a run
    accuracy_drop: float = 0.10  # a camera this far under its level at the last run: a run
    drop_window: int = 100  # scored objects a camera's level is taken over
    min_new: int = 300  # new labeled objects an accuracy-drop run needs at least
    window: int = 3000  # newest rows a run reads
    replay: int = 600  # older rows drawn at random beside them (the model must not forget)
    held_out_fraction: float = 0.25  # newest of each camera's rows, held out
    epochs: int = 5
    learning_rate: float = 1e-3
    margin: float = 0.005  # overall held-out gain a candidate needs
    camera_bound: float = 0.02  # largest held-out loss allowed on any camera
    min_camera_items: int = 30  # cameras with fewer held-out rows are not judged alone
    specialise: bool = True  # also try a cloud half per camera (see ContinuousTrainer)
    specialise_min_rows: int = 400  # a camera's training rows a specialised one needs
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
    rows with id >= ``recent_from`` are held out; rows of an item (or, where the item is not
    known, of an object: camera, track) with a held-out row are trained on by nobody, so
    nothing the candidate trained on is evidence for it."""
    held: list[int] = []
    for camera in sorted(set(rows.cameras)):
        mine = [i for i, c in enumerate(rows.cameras) if c == camera and rows.ids[i] >= recent_from]
        count = int(len(mine) * fraction)
        held.extend(mine[len(mine) - count :] if count else [])
    held_set = set(held)
    objects = rows.objects()
    held_objects = {objects[i] for i in held if objects[i][1] >= 0}
    train = [i for i in range(len(rows)) if i not in held_set and objects[i] not in held_objects]
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


@dataclass(frozen=True, eq=False)
class FitJob:
    """One candidate to train and score, sent to the training process: everything as bytes
    and arrays (picklable), nothing of the cloud's state."""

    model: bytes  # the cloud half to start from (.keras)
    train_values: npt.NDArray[Any]
    train_labels: npt.NDArray[np.int64]
    held_values: npt.NDArray[Any]
    held_labels: npt.NDArray[np.int64]
    quantization: dict[str, Any]  # of a row (TensorQuantization.to_dict)
    settings: TrainerSettings
    fit: Fit
    score: tuple[bytes, ...] = ()  # other models to predict the held-out rows with
    export_int8: bool = False  # full: the candidate as an int8 edge half too


@dataclass(frozen=True, eq=False)
class FitResult:
    candidate: bytes  # .keras
    candidate_predicted: npt.NDArray[np.int64]
    scored_predicted: tuple[npt.NDArray[np.int64], ...]  # of FitJob.score, in order
    edge: bytes | None = None  # full: the int8 flatbuffer
    edge_quantization: dict[str, Any] | None = None


def fit_job(job: FitJob) -> FitResult:
    """Train and score one candidate (in the training process; imports TensorFlow)."""
    from cloud.models.training import StoredFeatures
    from cloud.registry import keras_from_bytes

    quantization = TensorQuantization.from_dict(job.quantization)
    train = StoredFeatures(job.train_values, job.train_labels, quantization)
    held = StoredFeatures(job.held_values, job.held_labels, quantization)
    candidate = job.fit(keras_from_bytes(job.model), train, held, job.settings)
    edge = edge_quantization = None
    if job.export_int8:
        from cloud.models.export import export_int8

        export = export_int8(candidate, job.train_values)
        edge = export.flatbuffer
        edge_quantization = {"input": export.input.to_dict(), "output": export.output.to_dict()}
    return FitResult(
        keras_to_bytes(candidate),
        _predict(candidate, held),
        tuple(_predict(keras_from_bytes(model), held) for model in job.score),
        edge,
        edge_quantization,
    )


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
    # per camera: held-out accuracy of the global and the specialised cloud half, and which
    # one serves the camera now
    cameras: dict[str, dict[str, Any]] = field(default_factory=dict)

    def line(self) -> str:
        outcome = f"promoted {self.promoted}" if self.promoted else f"kept ({self.reason})"
        special = sorted(c for c, row in self.cameras.items() if row["serving"] == "specialised")
        return (
            f"trainer {self.mode} ({self.trigger}): {self.n_train} rows, {self.seconds:.1f} s, "
            f"held-out {self.candidate_scores['overall']:.3f} vs serving "
            f"{self.serving_scores['overall']:.3f} on {self.n_held_out}: {outcome}"
            + (f"; specialised for {', '.join(special)}" if special else "")
        )


class ContinuousTrainer(BackgroundLoop):
    """Trains, judges, promotes and rolls back the cloud halves of ``modes``."""

    thread_name = "trainer"

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
        push: Push | None = None,
        process: TrainingProcess | None = None,
    ) -> None:
        """Candidates train in ``process`` (the cloud's training process, shared with the
        model grower); None: in the calling thread (a caller driving :meth:`run` itself)."""
        self.registry = registry
        self.models = models
        self.store = store
        self.scoreboard = scoreboard
        self.metrics = metrics
        self.modes = [mode for mode in modes if mode.kind in (PCA, AUTOENCODER, "split", FULL)]
        self._push = push
        self.settings = settings or TrainerSettings()
        self._fit = fit
        self._announce = announce
        self._state = {str(mode): _ModeState() for mode in self.modes}
        self.reports: list[RunReport] = []
        self.rollbacks: list[dict[str, Any]] = []
        super().__init__(process)

    # --- lifecycle (BackgroundLoop: leaving abandons a run in progress) ---------------

    def _loop(self) -> None:
        while not self._stop.wait(self.settings.poll_seconds):
            try:
                self.step()
            except Exception:  # a failed run must not stop the trainer or the cloud
                if self._stop.is_set():
                    return  # stopping: the abandoned run's process was stopped
                log.exception("continuous trainer step failed")

    def _train(self, job: FitJob) -> FitResult:
        return self._run_job(fit_job, job)

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
        """The model versions whose stored rows are one training set with ``serving``'s."""
        if serving.kind == KIND_FULL:  # crops: the same for any full model of this input
            return [
                entry.version
                for entry in self.registry.list()
                if entry.kind == KIND_FULL and entry.input_shape == serving.input_shape
            ]
        return [entry.version for entry in self.registry.lineage(serving)]

    @staticmethod
    def _row_quantization(serving: ModelEntry) -> TensorQuantization:
        """What a stored row is: the edge half's output, or (``full``) a uint8 crop."""
        if serving.kind == KIND_FULL:
            return TensorQuantization("uint8", serving.input_shape, 1.0, 0)
        return TensorQuantization.from_dict(serving.metadata["quantization"]["output"])

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
        output = self._row_quantization(serving)
        held_rows = rows.take(held_index)
        serving_bytes = serving.read(CLOUD)
        result = self._train(
            FitJob(
                serving_bytes, rows.values[train_index], rows.labels[train_index],
                held_rows.values, held_rows.labels, output.to_dict(), settings, self._fit,
                score=(serving_bytes,), export_int8=mode.kind == FULL,
            )
        )  # fmt: skip
        serving_scores = CameraScores.of(result.scored_predicted[0], held_rows)
        candidate_scores = CameraScores.of(result.candidate_predicted, held_rows)
        self.metrics.trainer_heldout_accuracy.labels(str(mode), "serving").set(
            serving_scores.overall
        )
        self.metrics.trainer_heldout_accuracy.labels(str(mode), "candidate").set(
            candidate_scores.overall
        )
        promote, reason = judge(serving_scores, candidate_scores, settings)
        promoted = None
        base, base_bytes = serving, serving_bytes
        if promote:
            entry = self._save(serving, result, rows.take(train_index), candidate_scores, trigger)
            self.promote(mode, entry, parent=serving)
            promoted = entry.version
            base, base_bytes = entry, result.candidate
        else:
            self.metrics.trainer_rejections.labels(str(mode), reason).inc()
        cameras = (  # full: one model at the edge for every camera of a gateway
            self._specialise(mode, base, base_bytes, rows, train_index, held_index, output)
            if settings.specialise and mode.kind != FULL
            else {}
        )
        seconds = time.perf_counter() - started
        self.metrics.training_runs.labels(str(mode)).inc()
        self.metrics.training_seconds.labels(str(mode)).observe(seconds)
        return self._finish(
            RunReport(
                str(mode), trigger, serving.version, promoted, reason, len(train_index),
                len(held_index), seconds, serving_scores.as_dict(), candidate_scores.as_dict(),
                cameras,
            )
        )  # fmt: skip

    def _specialise(
        self,
        mode: Mode,
        base: ModelEntry,
        base_bytes: bytes,
        rows: LabeledRows,
        train_index: npt.NDArray[np.int64],
        held_index: npt.NDArray[np.int64],
        output: TensorQuantization,
    ) -> dict[str, dict[str, Any]]:
        """Per camera: a cloud half of its own where that pays on its held-out rows."""
        settings = self.settings
        cameras = np.asarray(rows.cameras)
        choices: dict[str, dict[str, Any]] = {}
        changed = False
        for camera in sorted(set(cameras[held_index].tolist())):
            mine_train = train_index[cameras[train_index] == camera]
            mine_held = held_index[cameras[held_index] == camera]
            if len(mine_train) < settings.specialise_min_rows or (
                len(mine_held) < settings.min_camera_items
            ):
                continue
            current = self.registry.serving_for(mode, camera)
            others = (base_bytes,) if current.camera is None else (base_bytes, current.read(CLOUD))
            result = self._train(
                FitJob(
                    base_bytes, rows.values[mine_train], rows.labels[mine_train],
                    rows.values[mine_held], rows.labels[mine_held], output.to_dict(), settings,
                    self._fit, score=others,
                )
            )  # fmt: skip
            labels = rows.labels[mine_held]
            global_accuracy = float(np.mean(result.scored_predicted[0] == labels))
            current_accuracy = float(np.mean(result.scored_predicted[-1] == labels))
            head_accuracy = float(np.mean(result.candidate_predicted == labels))
            serving = "global" if current.camera is None else "specialised"
            if head_accuracy >= max(global_accuracy, current_accuracy) + settings.margin:
                entry = self._save(
                    base, result, rows.take(mine_train),
                    CameraScores.of(result.candidate_predicted, rows.take(mine_held)),
                    "specialise", camera=camera,
                )  # fmt: skip
                self.models.load(entry)
                self.registry.set_serving(mode, entry.version, camera)
                serving, changed = "specialised", True
            elif current.camera is not None and global_accuracy >= current_accuracy:
                self.registry.set_serving(mode, None, camera)  # the global one does as well
                serving, changed = "global", True
            choices[camera] = {
                "global": round(global_accuracy, 4),
                "specialised": round(head_accuracy, 4),
                "current": round(current_accuracy, 4),
                "held_out": len(mine_held),
                "serving": serving,
            }
        if changed:
            self.models.refresh()
        self.metrics.trainer_specialised.labels(str(mode)).set(
            sum(
                1
                for camera in self.scoreboard.cameras(str(mode))
                if self.registry.serving_for(mode, camera).camera is not None
            )
        )
        return choices

    def _finish(self, report: RunReport) -> RunReport:
        self.reports.append(report)
        log.info("%s", report.line())
        self._announce(report.line())
        return report

    def _save(
        self,
        serving: ModelEntry,
        candidate: FitResult,
        trained: LabeledRows,
        scores: CameraScores,
        trigger: str,
        camera: str | None = None,
    ) -> ModelEntry:
        """A new version: the serving entry's edge half, the candidate's cloud half (for
        one ``camera`` only, when given); for ``full``, the candidate's int8 export (made
        in the training process, calibrated on the arrivals' crops) as the edge half. It
        records the items it (and the models it was tuned from) trained on: they are no
        evidence for it, live or held out."""
        items = set(serving.trained_items) | {int(i) for i in trained.items if i >= 0}
        return self.registry.save_like(
            serving,
            edge_artifact=candidate.edge,  # None: the serving edge half
            cloud_artifact=candidate.candidate,
            quantization=candidate.edge_quantization,
            extra={
                **{k: v for k, v in (serving.metadata.get("extra") or {}).items() if k != "camera"},
                **({"camera": camera} if camera is not None else {}),
                "parent": serving.version,
                "trained_on_arrivals": len(trained),
                "trained_items": sorted(items),
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
        if mode.kind == FULL and self._push is not None:  # a new edge half: to the gateways
            self._push(entry)
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
        restored = watch.parent
        if mode.kind == FULL:  # new edge bytes win over the pointer: the old model again
            parent = self.registry.by_version(watch.parent)
            extra = {**(parent.metadata.get("extra") or {}), "restores": parent.version}
            restored = self.registry.save_like(parent, extra=extra).version
        self.registry.set_serving(mode, restored)
        self.models.refresh()
        if mode.kind == FULL and self._push is not None:
            self._push(self.registry.by_version(restored))
        self.metrics.trainer_rollbacks.labels(str(mode)).inc()
        rollback = {
            "mode": str(mode),
            "from": watch.candidate,
            "to": restored,
            "live": round(live, 4),
            "replaced_live": round(watch.parent_live, 4),
            "at": time.time(),
        }
        self.rollbacks.append(rollback)
        line = (
            f"trainer {mode}: rolled back {watch.candidate} -> {restored} (live "
            f"{live:.3f}, it replaced one at {watch.parent_live:.3f})"
        )
        log.warning("%s", line)
        self._announce(line)


def _predict(model: KerasModel, features: Any) -> npt.NDArray[np.int64]:
    probabilities = np.asarray(model.predict(features.dequantized(), batch_size=256, verbose=0))
    predicted: npt.NDArray[np.int64] = np.argmax(probabilities, axis=1).astype(np.int64)
    return predicted
