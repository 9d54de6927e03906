"""The continuous trainer: the cloud keeps learning from the labeled features that arrive.

Where it sits::

    consumers --> FeatureStore (labeled rows per mode, camera, model version, item)
                     |                      Scoreboard (rolling accuracy per camera)
                     v                      ShadowBoard (a replaced model's answers beside
                                                         the promoted one's: cloud.shadow)
    ContinuousTrainer.step(), every poll_seconds, in its own thread:
      1. a watched promotion with enough shadow evidence -> settle it (roll back if the
         replaced model is significantly better on the same objects)
      2. trigger: ``every`` new labeled objects of a mode, or a camera's rolling accuracy
         ``accuracy_drop`` under its level at the last run
      3. rows: the newest ``window`` + ``replay`` older ones drawn at random (so the model
         does not forget); per camera, the newest ``held_out_fraction`` are held out (a
         time split); no item held out is trained on, and no item the serving model
         trained on is held out (it is no evidence for the serving model nor for anything
         tuned from it). Too few held-out items: the run stops and its rows stay new.
      4. candidate: the serving cloud half fine-tuned on the rest (upper blocks of
         ``split:k``; the feature classifier of ``pca``/``autoencoder``), each item
         weighing one however many crops of it arrived, replay at most ``replay_weight``
      5. judge (:func:`cloud.judge.judge_by_camera`): paired per distinct held-out item,
         a randomisation test; promote only if significantly better overall and
         significantly worse on no camera. A near miss (ahead, p < ``near_miss_p``) waits for
         ``fresh_items`` distinct items that arrive after its run and is judged once more on
         them and its held-out items pooled; no run starts meanwhile. Each look is at half
         of ``significance``, so an equal model is promoted at most that often in all
         (a held-out slice of 30-80 items cannot prove a 4-point gain; 60 more can)
      6. promote: a registry version with the same edge artifact and the new cloud half,
         loaded, then ``serving.json`` points at it and consumers resolve again between
         two batches (no feature waits); the gateways change nothing. The replaced model
         answers in shadow (1.) until ``rollback_items`` distinct items are in.
      7. per camera with ``specialise_min_rows`` training rows: a copy of the global cloud
         half tuned on that camera's rows alone; the same paired judge on the camera's
         held-out items chooses it only if it beats the global one (and the camera's
         current one) significantly; after a global promotion every specialised camera is
         judged again against the new global model (``RunReport.cameras``)

Beside it the consumers re-weight every answer to the class mix each camera now shows
(:mod:`cloud.adaptation`, ``class_prior``): no training, every few seconds.

A run trains on more than the arrivals: ``render`` items of the base data set rendered by
the cloud's own renderer under the conditions the arrivals show (:mod:`cloud.conditions`:
item sizes from the boxes that arrived, the class mix of their labels), ``render_share`` of
the training weight. Never the scene settings a camera was configured with.

What is tuned, per mode, and why:

* ``split:k``: the cloud half (the upper blocks). The gateways keep their int8 lower part,
  so nothing goes down the link, and the stored rows are exactly that part's output.
* ``pca`` / ``autoencoder``: the feature classifier. The projection is the edge's; a new one
  would make every stored row and every gateway's artifact stale at once.
* ``full``: the whole CNN, exported to int8 and pushed signed (the edge answers: only a new
  edge model changes what it says); bytes pushed are counted (bench drift's ``model_pushes``).
* every mode the cloud answers: the class prior (free, per camera, in the consumers).

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

import collections
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.background import BackgroundLoop, TrainingProcess
from cloud.feature_store import FeatureStore, LabeledRows
from cloud.judge import Judgement, Verdict, judge_by_camera, paired
from cloud.metrics import CloudMetrics
from cloud.models.errors import RegistryError
from cloud.registry import CLOUD, ModelEntry, Registry, keras_to_bytes
from cloud.serving import RegistryModels, Scoreboard
from cloud.shadow import Shadow, ShadowBoard
from edgelearn import roi
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
    replay_weight: float = 0.3  # at most this share of the training weight is replay
    held_out_fraction: float = 0.25  # newest of each camera's rows, held out
    epochs: int = 5
    learning_rate: float = 1e-3
    significance: float = 0.05  # the judge's level: promotions, cameras, rollbacks
    # distinct items arriving after a run on which a near miss (not significant on its
    # held-out items, but ahead) is judged once more, pooled with them; each of the two
    # looks then has half the level (0: one look, held out only)
    fresh_items: int = 60
    near_miss_p: float = 0.3  # ... a near miss is a candidate ahead with p under this
    min_items: int = 20  # distinct held-out items a run needs to judge at all
    min_camera_items: int = 10  # a camera with fewer distinct held-out items is not judged alone
    specialise: bool = True  # also try a cloud half per camera (see ContinuousTrainer)
    specialise_min_rows: int = 400  # a camera's training rows a specialised one needs
    rollback_items: int = 100  # distinct items answered in shadow that settle a watch
    # items of the base data set rendered per run under the conditions estimated from the
    # arrivals (cloud.conditions), and their share of the training weight; 0: none
    render: int = 2000
    render_share: float = 0.5
    class_prior: bool = True  # answers re-weighted to each camera's class mix
    poll_seconds: float = 2.0

    @classmethod
    def quick(cls) -> TrainerSettings:
        return cls(
            every=300, min_new=100, window=1200, replay=400, rollback_items=40, fresh_items=30
        )

    @property
    def look_level(self) -> float:
        """The level of each look at a candidate: with a second look on fresh items, half
        of ``significance`` each, so the whole procedure promotes an equal model at most
        ``significance`` of the time (the union bound)."""
        return self.significance / 2 if self.fresh_items > 0 else self.significance


# --- the pure part: splitting, weighting ------------------------------------------------


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
    held_objects = {objects[i] for i in held}
    train = [i for i in range(len(rows)) if i not in held_set and objects[i] not in held_objects]
    return np.asarray(train, np.int64), np.asarray(sorted(held), np.int64)


def never_trained(
    rows: LabeledRows, index: npt.NDArray[np.int64], trained: Collection[int]
) -> npt.NDArray[np.int64]:
    """``index`` without the rows of items in ``trained`` (what the serving model, and so
    any candidate tuned from it, trained on: no evidence for either)."""
    return np.asarray([i for i in index if int(rows.items[i]) not in trained], np.int64)


def item_weights(
    rows: LabeledRows, recent_from: int, replay_weight: float
) -> npt.NDArray[np.float32]:
    """Each row's training weight: an item (or object) counts once however many near-
    identical crops of it arrived, and the replayed older rows together weigh at most
    ``replay_weight`` of the whole. Mean 1 (the learning rate means what it says)."""
    keys = rows.objects()
    counts = collections.Counter(keys)
    weights = np.asarray([1.0 / counts[key] for key in keys], np.float64)
    old = rows.ids < recent_from
    if old.any() and (~old).any():
        share = weights[old].sum() / weights.sum()
        if share > replay_weight:
            scale = replay_weight * weights[~old].sum() / ((1 - replay_weight) * weights[old].sum())
            weights[old] *= scale
    result: npt.NDArray[np.float32] = (weights / weights.mean()).astype(np.float32)
    return result


def outcomes(rows: LabeledRows, predicted: npt.NDArray[np.int64]) -> npt.NDArray[np.bool_]:
    return np.asarray(predicted == rows.labels, bool)


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
    train_weights: npt.NDArray[np.float32] | None = None  # per row (item_weights)
    render: RenderJob | None = None  # more rows to render and train on beside these


@dataclass(frozen=True)
class RenderJob:
    """Items of the base data set to render under the arrivals' conditions
    (:func:`cloud.conditions.render_rows`)."""

    entry: ModelEntry  # whose edge half makes the rows
    heights: tuple[float, float]  # pose heights, estimated from the arrivals' boxes
    class_mix: tuple[float, ...]  # of the arrivals' items
    count: int
    share: float  # of the training weight
    seed: int


def render_job(
    serving: ModelEntry, rows: LabeledRows, settings: TrainerSettings, seed: int
) -> RenderJob | None:
    """What to render beside ``rows`` (the recent training rows): their items' sizes and
    class mix, as the boxes and labels that arrived show them; None when they cannot say
    (too few boxes, whole frames) or the run renders nothing."""
    from cloud.conditions import estimate_heights

    if settings.render <= 0 or serving.model_input != roi.CROP_RULE:
        return None
    heights = estimate_heights(rows.heights, labels=rows.labels)
    classes = len(serving.metadata.get("class_names") or ())
    if heights is None or not classes:
        return None
    first = {key: i for i, key in reversed(list(enumerate(rows.objects())))}
    counts = np.bincount(rows.labels[sorted(first.values())], minlength=classes)[:classes]
    mix = (counts + 0.5) / (counts + 0.5).sum()  # a class that stopped arriving keeps a little
    return RenderJob(
        serving, heights, tuple(float(v) for v in mix), settings.render, settings.render_share,
        seed,
    )  # fmt: skip


def _with_renders(job: FitJob, train: Any) -> Any:
    """``train`` and the rows ``job.render`` asks for, weighted to their share."""
    from cloud.conditions import render_rows
    from cloud.models.training import StoredFeatures

    spec = job.render
    assert spec is not None
    try:
        values, labels = render_rows(
            spec.entry, spec.heights, spec.count, class_mix=spec.class_mix, seed=spec.seed
        )
    except ValueError as exc:  # a data set the renderer does not know: the arrivals alone
        log.warning("no renders under the arrivals' conditions: %s", exc)
        return train
    if not len(labels):
        return train
    arrivals = np.ones(len(train.labels), np.float32) if train.weights is None else train.weights
    rendered = np.full(
        len(labels), spec.share * arrivals.sum() / ((1 - spec.share) * len(labels)), np.float32
    )
    weights = np.concatenate([arrivals, rendered])
    return StoredFeatures(
        np.concatenate([train.values, values.astype(train.values.dtype)]),
        np.concatenate([train.labels, labels]),
        train.quantization,
        (weights / weights.mean()).astype(np.float32),
    )


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
    train = StoredFeatures(job.train_values, job.train_labels, quantization, job.train_weights)
    if job.render is not None:
        train = _with_renders(job, train)
    held = StoredFeatures(job.held_values, job.held_labels, quantization)
    candidate = job.fit(keras_from_bytes(job.model), train, held, job.settings)
    edge = edge_quantization = None
    if job.export_int8:
        from cloud.models.export import export_int8

        export = export_int8(candidate, job.train_values)  # calibrated on arrivals alone
        edge = export.flatbuffer
        edge_quantization = {"input": export.input.to_dict(), "output": export.output.to_dict()}
    return FitResult(
        keras_to_bytes(candidate),
        _predict(candidate, held),
        tuple(_predict(keras_from_bytes(model), held) for model in job.score),
        edge,
        edge_quantization,
    )


@dataclass(frozen=True, eq=False)
class ScoreJob:
    """Models to answer stored rows with, in the training process."""

    models: tuple[bytes, ...]  # .keras
    values: npt.NDArray[Any]
    quantization: dict[str, Any]  # of a row


def score_job(job: ScoreJob) -> tuple[npt.NDArray[np.int64], ...]:
    """Each model's classes for the rows (in the training process; imports TensorFlow)."""
    from cloud.models.training import StoredFeatures
    from cloud.registry import keras_from_bytes

    rows = StoredFeatures(
        job.values, np.zeros(len(job.values), np.int64),
        TensorQuantization.from_dict(job.quantization),
    )  # fmt: skip
    return tuple(_predict(keras_from_bytes(model), rows) for model in job.models)


@dataclass(frozen=True, eq=False)
class _NearMiss:
    """A candidate its held-out items did not prove, though it was ahead on them: it waits
    for ``fresh_items`` distinct items that arrive after its run (none of which it or the
    serving model trained on) and is judged once more on those and the held-out ones
    pooled. One more look, never a third."""

    serving: ModelEntry  # what it was tuned from and judged against
    result: FitResult
    trained: LabeledRows  # its training rows (their items are no evidence for it)
    trigger: str
    after_id: int  # the newest row its run read: later rows are fresh
    held_keys: tuple[Any, ...]  # the held-out objects and both models' outcomes on them
    held_cameras: tuple[str, ...]
    held_candidate: npt.NDArray[np.bool_]
    held_serving: npt.NDArray[np.bool_]
    specialise: Callable[[ModelEntry, bytes], dict[str, dict[str, Any]]]  # after promotion

    @property
    def trained_items(self) -> set[int]:
        return _trained_items(self.serving, self.trained)


def _trained_items(serving: ModelEntry, trained: LabeledRows) -> set[int]:
    """What a candidate tuned from ``serving`` on ``trained`` has seen: no evidence for it."""
    return set(serving.trained_items) | {int(i) for i in trained.items if i >= 0}


@dataclass
class _ModeState:
    trained_up_to: int = 0  # the newest row id the last run that trained saw
    skipped_at: int = 0  # the newest row id when a run last found too few items
    levels: dict[str, float] = field(default_factory=dict)  # camera -> accuracy at last run
    near_miss: _NearMiss | None = None  # waiting for fresh items (no run starts meanwhile)
    fresh_checked: int = 0  # fresh rows when the near miss's items were last counted


@dataclass(frozen=True)
class RunReport:
    mode: str
    trigger: str
    serving: str
    promoted: str | None
    reason: str
    n_train: int
    n_held_out: int  # objects; judgement["items"]: the distinct items they show
    seconds: float
    judgement: dict[str, Any]  # cloud.judge.Judgement.as_dict(): the evidence
    # per camera: held-out accuracy of the global and the specialised cloud half, the
    # paired verdict, and which one serves the camera now
    cameras: dict[str, dict[str, Any]] = field(default_factory=dict)

    def line(self) -> str:
        outcome = f"promoted {self.promoted}" if self.promoted else f"kept ({self.reason})"
        special = sorted(c for c, row in self.cameras.items() if row["serving"] == "specialised")
        evidence = self.judgement.get("line", "no evidence")
        return (
            f"trainer {self.mode} ({self.trigger}): {self.n_train} rows, {self.seconds:.1f} s, "
            f"candidate vs serving {evidence}: {outcome}"
            + (f"; specialised for {', '.join(special)}" if special else "")
        )


class ContinuousTrainer(BackgroundLoop):
    """Trains, judges, promotes and rolls back the cloud halves of ``modes``."""

    name = "trainer"

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
        shadows: ShadowBoard | None = None,
    ) -> None:
        """Candidates train in ``process`` (the cloud's training process, shared with the
        model grower); None: in the calling thread (a caller driving :meth:`run` itself).
        ``shadows``: where the consumers answer with a replaced model beside a promoted one
        (None: promotions are not watched)."""
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
        self.shadows = shadows
        self._state = {str(mode): _ModeState() for mode in self.modes}
        self.reports: list[RunReport] = []
        self.rollbacks: list[dict[str, Any]] = []
        self.watches: list[dict[str, Any]] = []  # every watch that ended, and how
        super().__init__(process)

    # --- lifecycle (BackgroundLoop: stopping the process abandons a run) --------------

    def _loop(self) -> None:
        self._every(self.settings.poll_seconds, self.step, "continuous trainer")

    def _train(self, job: FitJob) -> FitResult:
        return self._run_job(fit_job, job)

    # --- one pass --------------------------------------------------------------------

    def step(self) -> list[RunReport]:
        """Check every mode once: settle a watched promotion, then train if triggered."""
        reports = []
        for mode in self.modes:
            if self._stop.is_set():
                break
            try:
                serving = self.registry.serving(mode)
            except RegistryError:
                continue
            self.check_watch(mode)
            judged = self.check_near_miss(mode)
            if judged is not None:
                reports.append(judged)
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
        if state.near_miss is not None:  # its fresh items first: they are this run's rows
            return None
        versions = self._versions(serving)
        if state.skipped_at > state.trained_up_to:  # too few items then: wait for more
            since, _ = self.store.count(str(mode), versions, state.skipped_at)
            if since < self.settings.min_new // 3:
                return None
        new, _ = self.store.count(str(mode), versions, state.trained_up_to)
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
        held_index = never_trained(rows, held_index, set(serving.trained_items))
        held_rows = rows.take(held_index)
        held_items = len(set(held_rows.objects()))
        if held_items < settings.min_items or len(train_index) < settings.min_new:
            # the rows stay new: they count toward the next run, once more have come
            state.skipped_at = newest_id
            return self._finish(
                RunReport(str(mode), trigger, serving.version, None, "too_few",
                          len(train_index), len(held_index), time.perf_counter() - started,
                          {"items": held_items}),
            )  # fmt: skip
        state.trained_up_to = newest_id
        state.levels = {
            camera: level
            for camera in self.scoreboard.cameras(str(mode))
            if (level := self.scoreboard.accuracy(camera, str(mode), settings.drop_window))
            is not None
        }
        output = self._row_quantization(serving)
        train_rows = rows.take(train_index)
        serving_bytes = serving.read(CLOUD)
        result = self._train(
            FitJob(
                serving_bytes, train_rows.values, train_rows.labels, held_rows.values,
                held_rows.labels, output.to_dict(), settings, self._fit,
                score=(serving_bytes,), export_int8=mode.kind == FULL,
                train_weights=item_weights(train_rows, recent_from, settings.replay_weight),
                render=render_job(
                    serving, train_rows.take(np.flatnonzero(train_rows.ids >= recent_from)),
                    settings, newest_id,
                ),
            )
        )  # fmt: skip
        candidate_correct = outcomes(held_rows, result.candidate_predicted)
        serving_correct = outcomes(held_rows, result.scored_predicted[0])
        judgement = judge_by_camera(
            candidate_correct, serving_correct, held_rows.objects(), held_rows.cameras,
            level=settings.look_level, min_items=settings.min_camera_items,
        )  # fmt: skip
        self.metrics.trainer_heldout_accuracy.labels(str(mode), "serving").set(
            judgement.overall.serving
        )
        self.metrics.trainer_heldout_accuracy.labels(str(mode), "candidate").set(
            judgement.overall.candidate
        )
        promoted = None
        base, base_bytes = serving, serving_bytes
        reason = judgement.reason
        if judgement.promote:
            # an earlier promotion still on watch is settled first, on what it has; if
            # that (or anything else) changed what serves, this candidate's base is gone
            self.check_watch(mode, final=True)
            if self.registry.serving(mode).version != serving.version:
                reason = "serving_changed"
        if reason == "better":
            entry = self._save(serving, result, train_rows, judgement, trigger)
            self.promote(mode, entry, parent=serving)
            promoted = entry.version
            base, base_bytes = entry, result.candidate
        elif settings.fresh_items and reason == "not_significant" and self._near(judgement):
            reason = "near_miss"  # judged again once fresh items are in (check_near_miss)
            state.near_miss = _NearMiss(
                serving, result, train_rows, trigger, newest_id,
                tuple(held_rows.objects()), held_rows.cameras, candidate_correct, serving_correct,
                lambda base, data: self._specialise(
                    mode, base, data, rows, train_index, held_index, output, recent_from,
                    revisit=True,
                ),
            )  # fmt: skip
            state.fresh_checked = 0
        else:
            self.metrics.trainer_rejections.labels(str(mode), reason).inc()
        cameras = (  # full: one model at the edge for every camera of a gateway
            self._specialise(
                mode, base, base_bytes, rows, train_index, held_index, output, recent_from,
                revisit=promoted is not None,
            )
            if settings.specialise and mode.kind != FULL
            else {}
        )  # fmt: skip
        seconds = time.perf_counter() - started
        self.metrics.training_runs.labels(str(mode)).inc()
        self.metrics.training_seconds.labels(str(mode)).observe(seconds)
        return self._finish(
            RunReport(
                str(mode), trigger, serving.version, promoted, reason,
                len(train_index), len(held_index), seconds,
                {**judgement.as_dict(), "line": judgement.line()}, cameras,
            )
        )  # fmt: skip

    def _near(self, judgement: Judgement) -> bool:
        """Ahead, and likely enough to be better to wait for fresh items (no run starts
        meanwhile): whatever the rule, the second look keeps the union bound."""
        overall = judgement.overall
        return overall.gain > 0 and overall.p_value < self.settings.near_miss_p

    def check_near_miss(self, mode: Mode) -> RunReport | None:
        """Judge ``mode``'s near miss a second and last time, once ``fresh_items`` distinct
        items have arrived after its run: on them and its held-out items pooled, at
        ``look_level``. It is dropped unjudged when what serves changed, or when ``every``
        rows came with too few items (dropping unseen costs no error rate). A report when
        it was judged, else None."""
        settings = self.settings
        state = self._state[str(mode)]
        near = state.near_miss
        if near is None:
            return None
        if self.registry.serving(mode).version != near.serving.version:
            state.near_miss = None  # a rollback or an operator: its base is gone
            return None
        versions = self._versions(near.serving)
        count, newest = self.store.count(str(mode), versions, near.after_id)
        if count < state.fresh_checked + settings.fresh_items:  # an item is several rows
            return None
        state.fresh_checked = count
        started = time.perf_counter()
        rows = self.store.labeled_rows(str(mode), versions, newest=count, up_to_id=newest)
        rows = rows.take(np.flatnonzero(rows.ids > near.after_id))
        fresh = rows.take(never_trained(rows, np.arange(len(rows)), near.trained_items))
        if len(set(fresh.objects())) < settings.fresh_items:
            if count >= settings.every:  # the items do not come: let a new run start
                state.near_miss = None
            return None
        state.near_miss = None
        output = self._row_quantization(near.serving)
        serving_bytes = near.serving.read(CLOUD)
        candidate_predicted, serving_predicted = self._run_job(
            score_job,
            ScoreJob((near.result.candidate, serving_bytes), fresh.values, output.to_dict()),
        )
        judgement = judge_by_camera(
            np.concatenate([near.held_candidate, outcomes(fresh, candidate_predicted)]),
            np.concatenate([near.held_serving, outcomes(fresh, serving_predicted)]),
            [*near.held_keys, *fresh.objects()], [*near.held_cameras, *fresh.cameras],
            level=settings.look_level, min_items=settings.min_camera_items,
        )  # fmt: skip
        promoted, reason, cameras = None, judgement.reason, {}
        if judgement.promote:
            self.check_watch(mode, final=True)
            if self.registry.serving(mode).version != near.serving.version:
                reason = "serving_changed"
        if reason == "better":
            entry = self._save(near.serving, near.result, near.trained, judgement, near.trigger)
            self.promote(mode, entry, parent=near.serving)
            promoted = entry.version
            if settings.specialise and mode.kind != FULL:
                cameras = near.specialise(entry, near.result.candidate)
        else:
            self.metrics.trainer_rejections.labels(str(mode), reason).inc()
        return self._finish(
            RunReport(
                str(mode), f"{near.trigger}, fresh items", near.serving.version, promoted,
                reason, len(near.trained), len(near.held_keys) + len(fresh),
                time.perf_counter() - started,
                {**judgement.as_dict(), "line": judgement.line()}, cameras,
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
        recent_from: int,
        *,
        revisit: bool,
    ) -> dict[str, dict[str, Any]]:
        """Per camera: a cloud half of its own where that pays on its held-out items, by
        the same paired judge. A specialised one must beat the global model significantly
        (and the camera's current one, if it has one); a global promotion (``revisit``)
        sends every specialised camera back to the global one unless its own still beats
        the new global one significantly."""
        settings = self.settings
        cameras = np.asarray(rows.cameras)
        choices: dict[str, dict[str, Any]] = {}
        changed = False
        for camera in sorted(set(cameras[held_index].tolist())):
            mine_train = train_index[cameras[train_index] == camera]
            mine_held = held_index[cameras[held_index] == camera]
            held = rows.take(mine_held)
            answering = self.registry.serving_for(mode, camera)
            current = answering if answering.camera is not None else None
            if (
                len(mine_train) < settings.specialise_min_rows
                or len(set(held.objects())) < settings.min_camera_items
            ):
                if current is not None and revisit:  # too little to say it still pays
                    self.registry.set_serving(mode, None, camera)
                    changed = True
                continue
            others = (base_bytes,) if current is None else (base_bytes, current.read(CLOUD))
            train = rows.take(mine_train)
            result = self._train(
                FitJob(
                    base_bytes, train.values, train.labels, held.values, held.labels,
                    output.to_dict(), settings, self._fit, score=others,
                    train_weights=item_weights(train, recent_from, settings.replay_weight),
                )
            )  # fmt: skip
            head = outcomes(held, result.candidate_predicted)
            global_ = outcomes(held, result.scored_predicted[0])
            kept = outcomes(held, result.scored_predicted[-1])
            keys = held.objects()
            level = settings.significance
            over_global = paired(head, global_, keys, level=level)
            over_current = paired(head, kept, keys, level=level) if current else over_global
            current_over_global = paired(kept, global_, keys, level=level) if current else None
            serving = "global" if current is None else "specialised"
            if over_global.better and over_current.better:
                entry = self._save(
                    base, result, train,
                    judge_by_camera(head, global_, keys, held.cameras, level=level),
                    "specialise", camera=camera,
                )  # fmt: skip
                self.models.load(entry)
                self.registry.set_serving(mode, entry.version, camera)
                serving, changed = "specialised", True
            elif current is not None and not (current_over_global and current_over_global.better):
                self.registry.set_serving(mode, None, camera)  # its own no longer pays
                serving, changed = "global", True
            choices[camera] = {
                "global": round(over_global.serving, 4),
                "specialised": round(over_global.candidate, 4),
                "current": round(float(np.mean(kept)), 4),
                "held_out": len(mine_held),
                "items": over_global.items,
                "verdict": over_global.as_dict(),
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
        judgement: Judgement,
        trigger: str,
        camera: str | None = None,
    ) -> ModelEntry:
        """A new version: the serving entry's edge half, the candidate's cloud half (for
        one ``camera`` only, when given); for ``full``, the candidate's int8 export (made
        in the training process, calibrated on the arrivals' crops) as the edge half. It
        records the items it (and the models it was tuned from) trained on: they are no
        evidence for it, live or held out."""
        items = _trained_items(serving, trained)
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
                "arrivals_held_out": judgement.as_dict(),
            },
        )

    # --- promotion and its watch ----------------------------------------------------------

    def promote(self, mode: Mode, entry: ModelEntry, parent: ModelEntry) -> None:
        """Serve ``entry`` for ``mode`` from the next batch on; ``parent``, the model it
        replaces (what serves now), answers beside it in shadow until :meth:`check_watch`
        settles the watch (a watch still open is replaced: :meth:`run` settles it first)."""
        self.models.load(entry)  # loaded before the switch: the swap itself costs nothing
        if self.shadows is not None:
            self.shadows.start(
                Shadow(str(mode), entry.version, parent.version, self.models.prepare(parent),
                       frozenset(entry.trained_items))
            )  # fmt: skip
        self.registry.set_serving(mode, entry.version)
        self.models.refresh()
        if mode.kind == FULL and self._push is not None:  # a new edge half: to the gateways
            self._push(entry)
        self.metrics.trainer_promotions.labels(str(mode)).inc()

    def check_watch(self, mode: Mode, *, final: bool = False) -> dict[str, Any] | None:
        """Settle ``mode``'s watched promotion once ``rollback_items`` distinct items were
        answered by both models (or now, when ``final``): roll back if the replaced model
        is significantly better on them. One look per watch, so equal models roll back at
        the test's level at most. What ended the watch, or None while it goes on."""
        if self.shadows is None:
            return None
        pairs = self.shadows.pairs(str(mode))
        if pairs is None:  # nothing on watch
            return None
        shadow = self.shadows.shadow_for(str(mode), self.registry.serving(mode).version)
        if shadow is None:  # something else changed what serves: the watch is moot
            self.shadows.stop(str(mode))
            return None
        if len(pairs.keys):
            self.metrics.trainer_live_accuracy.labels(str(mode), "serving").set(
                float(pairs.candidate_correct.mean())
            )
            self.metrics.trainer_live_accuracy.labels(str(mode), "replaced").set(
                float(pairs.replaced_correct.mean())
            )
        if pairs.items < self.settings.rollback_items and not final:
            return None
        self.shadows.stop(str(mode))
        verdict = paired(
            pairs.replaced_correct, pairs.candidate_correct, pairs.keys,
            level=self.settings.significance,
        )  # fmt: skip
        ended = {
            "mode": str(mode),
            "promoted": shadow.candidate,
            "replaced": shadow.replaced,
            "rolled_back": verdict.better,
            "replaced_minus_promoted": verdict.as_dict(),
            "at": time.time(),
        }
        self.watches.append(ended)
        if verdict.better:
            self._roll_back(mode, shadow, verdict)
        return ended

    def _roll_back(self, mode: Mode, shadow: Shadow, verdict: Verdict) -> None:
        restored = shadow.replaced
        if mode.kind == FULL:  # new edge bytes win over the pointer: the old model again
            parent = self.registry.by_version(shadow.replaced)
            extra = {**(parent.metadata.get("extra") or {}), "restores": parent.version}
            restored = self.registry.save_like(parent, extra=extra).version
        self.registry.set_serving(mode, restored)
        self.models.refresh()
        if mode.kind == FULL and self._push is not None:
            self._push(self.registry.by_version(restored))
        self.metrics.trainer_rollbacks.labels(str(mode)).inc()
        self.rollbacks.append(
            {
                "mode": str(mode),
                "from": shadow.candidate,
                "to": restored,
                "live": round(verdict.serving, 4),
                "replaced_live": round(verdict.candidate, 4),
                "evidence": verdict.as_dict(),
                "at": time.time(),
            }
        )
        line = (
            f"trainer {mode}: rolled back {shadow.candidate} -> {restored} (in shadow on the "
            f"same objects, the replaced model vs the promoted one: {verdict.line()})"
        )
        log.warning("%s", line)
        self._announce(line)


def _predict(model: KerasModel, features: Any) -> npt.NDArray[np.int64]:
    probabilities = np.asarray(model.predict(features.dequantized(), batch_size=256, verbose=0))
    predicted: npt.NDArray[np.int64] = np.argmax(probabilities, axis=1).astype(np.int64)
    return predicted
