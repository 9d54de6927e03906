"""Model generations: a first model set within seconds, better ones in the background.

Where it sits: ``edgelearn cloud`` (and so ``edgelearn up``) calls
:func:`ensure_first_generation` before serving. When the registry holds no model of the
data set's task, it trains the plan's first generation, small and quick, in the cloud's own
process (nothing else runs yet: it has the machine), so a fresh stack answers within a
minute. :class:`cloud.grower.ModelGrower` then trains the plan's next generations in a niced
process of its own, each on more distinct items and on from the one before, and promotes
each family of models the judge (:mod:`cloud.judge`) finds better.

One generation yields every mode (the CNN is trained once and split at each requested k):

========================= ===================================== ==========================
registry name             edge half (gateway)                   cloud half
========================= ===================================== ==========================
``cnn-raw``               none (cloud-only baseline)             the CNN on decoded frames
``cnn-split`` (one per k) int8 lower k blocks                    float upper blocks
``cnn-full``              int8 whole CNN (edge inference)        the float CNN (to fine-tune)
``pca``                   projection ``.npz``                    feature classifier
``autoencoder``           int8 encoder                           feature classifier
========================= ===================================== ==========================

They form three families, judged and promoted each on its own: the CNN's modes, PCA, the
autoencoder. A generation may leave the autoencoder out (the first does: it would double
the wait for a first result), and the grower trains it with the next.

Generation ``n`` trains on the first ``items`` items of one seeded order of the data set's
training items, so each generation's items include the one before's; every generation is
judged on the same held-out items (Fashion-MNIST's test split, or a folder's held-out fifth:
what the cameras show), which none ever trains on. Every entry records its ``generation``
and how many distinct items it was trained on.

Models are trained on the stack's data set (:class:`edgelearn.datasets.DatasetSpec`): a
registry whose models were trained for another data set (its entries' ``task``), or cut
with another crop rule (``preprocessing``), is trained again.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cloud.judge import Verdict, paired
from cloud.models.errors import ModelNotFound
from cloud.registry import CLOUD, EDGE, ModelEntry, Registry
from cloud.serving import edge_modes
from edgelearn import roi
from edgelearn.artifacts import EdgeExtractor, load_edge_artifact
from edgelearn.datasets import FASHION_MNIST, DatasetSpec
from edgelearn.modes import AUTOENCODER, FULL, PCA, RAW, SPLIT, Mode

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (step description, step number, total steps)

BUDGETS: Final = ("default", "quick", "smoke")  # TrainingPlan's classmethods of these names
CNN: Final = "cnn"
FAMILIES: Final = (CNN, PCA, AUTOENCODER)


def family_of(mode: Mode) -> str:
    """``cnn`` for the CNN's modes (raw, split:k, full), else the mode's kind."""
    return CNN if mode.kind in (RAW, SPLIT, FULL) else mode.kind


@dataclass(frozen=True)
class Generation:
    """One step of a plan: ``items`` distinct training items, ``epochs`` over them, on from
    the previous generation's CNN; the autoencoder too for ``autoencoder_epochs`` (0: not
    this generation)."""

    items: int
    epochs: int
    autoencoder_epochs: int = 0

    @property
    def autoencoder(self) -> bool:
        return self.autoencoder_epochs > 0


@dataclass(frozen=True)
class TrainingPlan:
    """The generations a cloud trains, first to last, and what they share."""

    generations: tuple[Generation, ...]
    n_held_out: int = 2000  # what the judge compares two generations on
    first_held_out: int = 500  # the first generation's accuracy (seconds count there)
    feature_epochs: int = 15
    # 64 components: 79.1% held out against 78.0% for 32 (20,000 items); 64 bytes an object
    pca_dim: int = 64
    autoencoder_dim: int = 32
    split_ks: tuple[int, ...] = (1, 2, 3)
    seed: int = 0
    max_passes: int = 20  # renders of one item at most (a small folder: in new scenes)

    @classmethod
    def default(cls) -> TrainingPlan:
        """Sized for 2 cores. The first generation (2,000 items) takes about 25 s on an idle
        machine; the others train in the background, where ``edgelearn up``'s cameras,
        gateway and consumers leave about half a core (each takes some 2.6 times its idle
        time): 10,000 items (3 minutes idle), 25,000 (2.5 more), every one of Fashion-MNIST's
        60,000 training items (6 more), then two more epochs over them. Few, large steps:
        each also pays for its renders, exports and judge (half its time at 10,000 items);
        the autoencoder, the costliest family for what it adds, trains only twice."""
        return cls(
            generations=(
                Generation(2_000, 3),
                Generation(10_000, 3, autoencoder_epochs=4),
                Generation(25_000, 2),
                Generation(60_000, 2),
                Generation(60_000, 2, autoencoder_epochs=2),
            )
        )

    @classmethod
    def quick(cls) -> TrainingPlan:
        """For tests: two small generations, the second clearly better."""
        return cls(
            generations=(Generation(1_500, 3), Generation(4_000, 3, autoencoder_epochs=2)),
            n_held_out=400,
            feature_epochs=10,
            split_ks=(2,),
        )

    @classmethod
    def smoke(cls) -> TrainingPlan:
        """Two tiny generations, the second still clearly better: a check that the whole
        climb works (an install, the test suite), in about two thirds of the quick plan's
        time (its exports and renders cost what they cost; only the fits shrink)."""
        return cls(
            generations=(Generation(1_000, 3), Generation(2_000, 2, autoencoder_epochs=1)),
            n_held_out=300,
            first_held_out=300,
            feature_epochs=5,
            split_ks=(2,),
        )

    @classmethod
    def named(cls, name: str) -> TrainingPlan:
        if name not in BUDGETS:
            raise ValueError(f"unknown training budget {name!r}: {', '.join(BUDGETS)}")
        plan: TrainingPlan = getattr(cls, name)()  # each budget is a classmethod
        return plan

    def generation(self, number: int) -> Generation:
        """Generation ``number`` (1 is the first)."""
        return self.generations[number - 1]

    def __len__(self) -> int:
        return len(self.generations)


def log_progress(step: str, number: int, total: int) -> None:
    log.info("[%d/%d] %s", number, total, step)


def all_modes(split_ks: Sequence[int]) -> list[Mode]:
    return [Mode(RAW), *edge_modes(split_ks)]


def generation_of(entry: ModelEntry) -> int:
    """The generation an entry belongs to (0: trained before generations were recorded)."""
    return int((entry.metadata.get("extra") or {}).get("generation", 0))


def serving_entries(
    registry: Registry, split_ks: Sequence[int], dataset: DatasetSpec | None = None
) -> dict[Mode, ModelEntry]:
    """What serves each mode for ``dataset``'s task with the current crop rule; modes
    without such a model are missing."""
    task = (dataset or DatasetSpec(FASHION_MNIST)).task
    found: dict[Mode, ModelEntry] = {}
    for mode in all_modes(split_ks):
        try:
            entry = registry.serving(mode)
        except ModelNotFound:
            continue
        if entry.model_input == roi.CROP_RULE and entry.task == task:
            found[mode] = entry
    return found


def missing_modes(
    registry: Registry, split_ks: Sequence[int], dataset: DatasetSpec | None = None
) -> list[Mode]:
    present = serving_entries(registry, split_ks, dataset)
    return [mode for mode in all_modes(split_ks) if mode not in present]


def serving_generation(
    registry: Registry, split_ks: Sequence[int], dataset: DatasetSpec
) -> dict[str, int]:
    """The generation serving each family (0: none serves)."""
    found = {family: 0 for family in FAMILIES}
    for mode, entry in serving_entries(registry, split_ks, dataset).items():
        family = family_of(mode)
        found[family] = max(found[family], generation_of(entry))
    return found


def ensure_first_generation(
    registry: Registry,
    plan: TrainingPlan,
    progress: Progress = log_progress,
    dataset: DatasetSpec | None = None,
    first_ready: Callable[[list[ModelEntry]], None] = lambda entries: None,
) -> dict[str, Any]:
    """Train the plan's first generation when no CNN model serves ``dataset`` (default
    Fashion-MNIST); what was done and how long. ``first_ready`` is called with the entries
    a fresh stack needs first (the cloud-only CNN, and the deepest split, the mode a
    gateway starts in) as soon as they are saved: they can serve while the other edge halves
    are exported. An unusable folder raises :class:`edgelearn.datasets.DatasetError` before
    anything is trained."""
    dataset = dataset or DatasetSpec(FASHION_MNIST)
    missing = missing_modes(registry, plan.split_ks, dataset)
    if not any(family_of(mode) == CNN for mode in missing):
        return {"trained": False}
    report = train_generation(
        registry, plan, 1, dataset, progress=progress, first_ready=first_ready
    )
    return {"trained": True, **report.summary()}


# --- one generation -----------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Judged:
    """One family's candidate and serving model on the same held-out items: whether each
    answered each item right (``serving`` None: nothing of that family serves)."""

    candidate: npt.NDArray[np.bool_]
    serving: npt.NDArray[np.bool_] | None


@dataclass(frozen=True, eq=False)
class GenerationReport:
    """What one generation trained, saved (in ``registry``) and measured; picklable."""

    number: int
    registry: Path  # where its entries are
    dataset: str
    classes: tuple[str, ...]
    items: int  # distinct training items
    renders: int  # training renders (an item of a small folder in several scenes)
    skipped: int  # items that could not be rendered
    epochs: int
    seconds: float
    timings: dict[str, float]
    versions: dict[str, str]  # mode -> version, in ``registry``
    accuracy: dict[str, float | None]  # mode -> held-out accuracy of its served path
    held_out: npt.NDArray[np.int64]  # the held-out items the judge's outcomes belong to
    judged: dict[str, Judged] = field(default_factory=dict)  # family -> outcomes
    cnn: bytes = b""  # the float CNN (.keras): where the next generation starts from

    def summary(self) -> dict[str, Any]:
        return {
            "generation": self.number,
            "seconds": round(self.seconds, 1),
            "timings": {key: round(value, 1) for key, value in self.timings.items()},
            "accuracy": self.accuracy,
            "dataset": {
                "name": self.dataset,
                "classes": list(self.classes),
                "train_items": self.items,
                "held_out_items": len(self.held_out),
                "skipped_items": self.skipped,
            },
            "versions": self.versions,
        }


_renders: dict[tuple[Any, ...], Any] = {}  # the last generation's renders, by data set


def train_generation(
    target: Registry,
    plan: TrainingPlan,
    number: int,
    dataset: DatasetSpec,
    *,
    progress: Progress = log_progress,
    start_from: bytes | None = None,
    serving: Mapping[str, ModelEntry] | None = None,
    first_ready: Callable[[list[ModelEntry]], None] = lambda entries: None,
) -> GenerationReport:
    """Train generation ``number`` of ``plan`` and save every mode's entry in ``target``;
    the CNN on from ``start_from`` (a float CNN's ``.keras``) when given. For each family
    with an entry in ``serving``, both models' outcomes on the held-out items (the judge's
    evidence) are in the report."""
    from cloud.models import cnn
    from cloud.models.data import RenderSettings, build_dataset
    from cloud.models.evaluation import features_from
    from cloud.models.export import export_int8
    from cloud.models.features import fit_pca, train_autoencoder
    from cloud.models.release import (
        release_autoencoder,
        release_cloud_classifier,
        release_full,
        release_pca,
        release_split,
    )
    from cloud.models.training import train_cnn, train_feature_classifier
    from cloud.registry import keras_from_bytes, keras_to_bytes
    from edgelearn.artifacts import LiteRtExtractor, PcaExtractor

    generation = plan.generation(number)
    serving = serving or {}
    total = 5 + len(plan.split_ks) + int(generation.autoencoder)
    step = 0
    timings: dict[str, float] = {}  # seconds of each step: where a generation's time goes
    entries: dict[Mode, ModelEntry] = {}
    current: list[tuple[str, float]] = []

    def advance(description: str, key: str = "") -> None:
        nonlocal step
        now = time.perf_counter()
        if current:
            name, since = current.pop()
            timings[name] = round(now - since, 1)
        if key:
            current.append((key, now))
        step += 1
        progress(f"generation {number}: {description}", step, total)

    started = time.perf_counter()
    source = None if dataset.path is None else dataset.load()  # DatasetError: before training
    items = generation.items
    if source is not None:  # a small folder: each item in at most max_passes scenes
        items = min(items, plan.max_passes * len(source))
    settings = RenderSettings()
    # The held-out items of a smaller set are the first of a larger one's (one seeded order)
    held_out = min(plan.n_held_out, plan.first_held_out) if number == 1 else plan.n_held_out
    key = (dataset.task, plan.seed, settings)
    advance(f"rendering {items} + {held_out} items of {dataset}", "render")
    data = build_dataset(
        items, held_out, seed=plan.seed, settings=settings, train_source=source,
        task=dataset.task, reuse=_renders.get(key),
    )  # fmt: skip
    _renders.clear()
    _renders[key] = data
    extra = {
        "generation": number,
        "train_item_count": len(np.unique(data.train.source_index)),
        "train_renders": len(data.train),
        "epochs": generation.epochs,
    }

    advance(f"training the CNN ({generation.epochs} epochs)", "cnn")
    previous = None if start_from is None else keras_from_bytes(start_from)
    config = cnn.CnnConfig(
        input_size=settings.input_size, channels=settings.channels, classes=data.num_classes
    )
    if previous is not None and tuple(previous.input_shape[1:]) != config.input_shape:
        previous = None  # another input: start afresh
    report = train_cnn(
        data, config=config, epochs=generation.epochs, seed=plan.seed + number, start_from=previous
    )
    model = report.model
    entries[Mode(RAW)] = release_cloud_classifier(target, model, data, name="cnn-raw", extra=extra)
    deepest_first = sorted(plan.split_ks, reverse=True)
    for k in deepest_first:
        advance(f"splitting at k={k}, exporting the int8 lower part", f"split:{k}")
        entries[Mode.split(k)] = release_split(
            target, model, k, data, name="cnn-split", extra=extra
        )
        if k == deepest_first[0]:  # the mode a gateway starts in: with raw, it can serve now
            first_ready([entries[Mode(RAW)], entries[Mode.split(k)]])
    advance("exporting the whole CNN for the edge (full)", "full")
    entries[Mode(FULL)] = release_full(target, model, data, name="cnn-full", extra=extra)
    predicted = np.argmax(model.predict(data.held_out.inputs, batch_size=256, verbose=0), axis=1)
    judged = {CNN: _judged(predicted == data.held_out.labels, serving.get(CNN), data)}

    def classifier_of(extractor: EdgeExtractor) -> Any:
        """The cloud half of a feature mode: a classifier on what ``extractor`` sends."""
        return train_feature_classifier(
            features_from(extractor, data.train),
            features_from(extractor, data.held_out),
            classes=data.num_classes,
            epochs=plan.feature_epochs,
            seed=plan.seed,
        ).model

    advance(f"fitting PCA ({plan.pca_dim} components) and its classifier", "pca")
    projection = fit_pca(data.train.inputs, plan.pca_dim, seed=plan.seed)
    pca_classifier = classifier_of(PcaExtractor(projection))
    entries[Mode(PCA)] = release_pca(
        target, projection, pca_classifier, data, name="pca", extra=extra
    )
    judged[PCA] = _judged(_served_correct(entries[Mode(PCA)], data), serving.get(PCA), data)

    if generation.autoencoder:
        advance(
            f"training the autoencoder ({plan.autoencoder_dim}-d code, pixel and class losses) "
            "and its classifier",
            "autoencoder",
        )
        fit = train_autoencoder(
            data.train.inputs,
            plan.autoencoder_dim,
            labels=data.train.labels,
            classes=data.num_classes,
            epochs=generation.autoencoder_epochs,
            seed=plan.seed,
        )
        encoder = export_int8(fit.encoder, data.train.inputs)
        ae_classifier = classifier_of(LiteRtExtractor(AUTOENCODER, encoder.flatbuffer))
        entries[Mode(AUTOENCODER)] = release_autoencoder(
            target, encoder, ae_classifier, data, name="autoencoder", extra=extra
        )
        judged[AUTOENCODER] = _judged(
            _served_correct(entries[Mode(AUTOENCODER)], data), serving.get(AUTOENCODER), data
        )
    advance("done")
    return GenerationReport(
        number=number,
        registry=target.root,
        dataset=str(dataset),
        classes=data.class_names,
        items=int(extra["train_item_count"]),
        renders=len(data.train),
        skipped=data.train.skipped + data.held_out.skipped,
        epochs=generation.epochs,
        seconds=time.perf_counter() - started,
        timings=timings,
        versions={str(mode): entry.version for mode, entry in entries.items()},
        accuracy={str(mode): entry.accuracy for mode, entry in entries.items()},
        held_out=data.held_out.source_index,
        judged=judged,
        cnn=keras_to_bytes(model),
    )


def _served_correct(entry: ModelEntry, data: Any) -> npt.NDArray[np.bool_]:
    """Whether ``entry``'s served path (its edge half, then its cloud half) answers each
    held-out item of ``data`` right."""
    from cloud.registry import keras_from_bytes

    extractor = load_edge_artifact(entry.kind, entry.read(EDGE), entry.metadata.get("quantization"))
    classifier = keras_from_bytes(entry.read(CLOUD))
    features = extractor.output.dequantize(extractor.run_batch(data.held_out.inputs))
    predicted = np.argmax(classifier.predict(features, batch_size=256, verbose=0), axis=1)
    return np.asarray(predicted == data.held_out.labels)


def _judged(candidate: npt.NDArray[np.bool_], serving: ModelEntry | None, data: Any) -> Judged:
    """The candidate's outcomes and the serving model's on the same items (None when
    nothing serves, or it takes another input: it cannot be compared)."""
    from cloud.registry import keras_from_bytes

    if serving is None or tuple(serving.input_shape) != tuple(data.input_shape):
        return Judged(candidate, None)
    if serving.kind in (PCA, AUTOENCODER):
        return Judged(candidate, _served_correct(serving, data))
    model = keras_from_bytes(serving.read(CLOUD))  # a full entry's cloud half: the float CNN
    predicted = np.argmax(model.predict(data.held_out.inputs, batch_size=256, verbose=0), axis=1)
    return Judged(candidate, np.asarray(predicted == data.held_out.labels))


# --- the grower's job, in its training process ------------------------------------------


@dataclass(frozen=True)
class GenerationJob:
    """Everything the training process needs for one generation (picklable)."""

    registry: Path  # the serving registry (read only)
    plan: TrainingPlan
    number: int
    dataset: DatasetSpec
    start_from: bytes | None  # the CNN to go on from (.keras)
    serving: dict[str, str]  # family -> the serving version to judge against


def run_generation_job(job: GenerationJob) -> GenerationReport:
    """Train generation ``job.number`` into a candidate registry beside the serving one
    (a hidden folder: nothing there serves until the grower promotes it)."""
    registry = Registry(job.registry)
    candidates = job.registry / ".candidates"
    candidates.mkdir(exist_ok=True)
    target = Registry(Path(tempfile.mkdtemp(prefix=f"generation-{job.number}-", dir=candidates)))
    serving = {family: registry.by_version(version) for family, version in job.serving.items()}
    return train_generation(
        target, job.plan, job.number, job.dataset, start_from=job.start_from, serving=serving
    )


# --- promotion ----------------------------------------------------------------------------


def judge_family(report: GenerationReport, family: str) -> Verdict | None:
    """The judge's verdict on ``family``'s candidate of ``report`` against the model that
    served when it was trained (None: nothing of the family served, nothing to compare)."""
    judged = report.judged[family]
    if judged.serving is None:
        return None
    return paired(judged.candidate, judged.serving, report.held_out.tolist())


def save_family(registry: Registry, report: GenerationReport, family: str) -> list[ModelEntry]:
    """Copy ``family``'s entries of ``report`` (its candidate registry) into ``registry``,
    where, being the newest, they serve."""
    candidates = Registry(report.registry)
    return [
        registry.save_like(candidates.by_version(version))
        for mode, version in report.versions.items()
        if family_of(Mode.parse(mode)) == family
    ]


def train_plan(
    registry: Registry,
    plan: TrainingPlan,
    dataset: DatasetSpec | None = None,
    progress: Progress = log_progress,
) -> list[dict[str, Any]]:
    """Every generation of ``plan`` not yet serving, here and now, each promoted family by
    family through the judge as the grower would (benchmarks that need the last
    generation's models use this); what became of each family."""
    dataset = dataset or DatasetSpec(FASHION_MNIST)
    ensure_first_generation(registry, plan, progress, dataset)
    outcomes = []
    start_from = None
    for number in range(max(serving_generation(registry, plan.split_ks, dataset).values()) + 1,
                        len(plan) + 1):  # fmt: skip
        serving = serving_entries(registry, plan.split_ks, dataset)
        against = {family_of(m): e.version for m, e in serving.items() if m.kind in JUDGED}
        report = run_generation_job(
            GenerationJob(registry.root, plan, number, dataset, start_from, against)
        )
        start_from = report.cnn
        try:
            for family in report.judged:
                verdict = judge_family(report, family)
                if verdict is None or verdict.better:
                    save_family(registry, report, family)
                outcomes.append(
                    {"generation": number, "family": family,
                     "promoted": verdict is None or verdict.better,
                     "verdict": None if verdict is None else verdict.as_dict()}
                )  # fmt: skip
        finally:
            shutil.rmtree(report.registry, ignore_errors=True)
    return outcomes


JUDGED: Final = (FULL, PCA, AUTOENCODER)
"""The mode of each family whose serving entry a candidate is judged against."""


def with_splits(plan: TrainingPlan, split_ks: Sequence[int]) -> TrainingPlan:
    return replace(plan, split_ks=tuple(split_ks))
