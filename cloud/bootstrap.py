"""Train a first set of models for every mode, so a fresh stack has something to run.

Where it sits: ``edgelearn cloud`` (and ``edgelearn up``) call :func:`ensure_models` before
serving; when the registry already holds a model for each mode nothing is trained.

One training run yields every mode (the CNN is trained once and split at each requested k):

========================= ===================================== ==========================
registry name             edge half (gateway)                   cloud half
========================= ===================================== ==========================
``cnn-raw``               none (cloud-only baseline)             the CNN on decoded frames
``cnn-split`` (one per k) int8 lower k blocks                    float upper blocks
``cnn-full``              int8 whole CNN (edge inference)        the float CNN (to fine-tune)
``pca``                   projection ``.npz``                    feature classifier
``autoencoder``           int8 encoder                           feature classifier
========================= ===================================== ==========================

Models are trained on the stack's data set (:class:`edgelearn.datasets.DatasetSpec`):
Fashion-MNIST by default, or a user's folder of class folders, split into training and
held-out items by :func:`edgelearn.datasets.folder_split`. A registry whose models were
trained for another data set (its entries' ``task``) is trained again.

The budget is sized for 2 cores: the default (``TrainingBudget.default``) renders 6,000
training items and trains for about two to four minutes in all; ``quick`` is for tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from cloud.models.errors import ModelNotFound
from cloud.registry import ModelEntry, Registry
from edgelearn.artifacts import EdgeExtractor, LiteRtExtractor, PcaExtractor
from edgelearn.datasets import FASHION_MNIST, DatasetSpec
from edgelearn.modes import AUTOENCODER, FULL, PCA, RAW, Mode

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (step description, step number, total steps)


@dataclass(frozen=True)
class TrainingBudget:
    n_train: int = 6000
    n_held_out: int = 1000
    cnn_epochs: int = 6
    feature_epochs: int = 15
    autoencoder_epochs: int = 4
    pca_dim: int = 32
    autoencoder_dim: int = 32
    split_ks: tuple[int, ...] = (1, 2, 3)
    seed: int = 0

    @classmethod
    def quick(cls) -> TrainingBudget:
        return cls(
            n_train=1500,
            n_held_out=400,
            cnn_epochs=4,
            feature_epochs=10,
            autoencoder_epochs=2,
            split_ks=(2,),
        )


def log_progress(step: str, number: int, total: int) -> None:
    log.info("[%d/%d] %s", number, total, step)


def edge_modes(split_ks: Sequence[int]) -> list[Mode]:
    """Every mode that runs a model at the gateway, with these splits."""
    return [Mode(FULL), Mode(PCA), Mode(AUTOENCODER), *(Mode.split(k) for k in split_ks)]


def missing_modes(
    registry: Registry, split_ks: Sequence[int], dataset: DatasetSpec | None = None
) -> list[Mode]:
    task = (dataset or DatasetSpec(FASHION_MNIST)).task
    missing = []
    for mode in [Mode(RAW), *edge_modes(split_ks)]:
        try:
            entry = registry.serving(mode)
        except ModelNotFound:
            missing.append(mode)
            continue
        if entry.model_input != "objects" or entry.task != task:
            missing.append(mode)  # trained on whole frames (before objects), or other data
    return missing


def ensure_models(
    registry: Registry,
    budget: TrainingBudget | None = None,
    progress: Progress = log_progress,
    dataset: DatasetSpec | None = None,
) -> dict[str, Any]:
    """Train everything when any mode lacks a model for ``dataset`` (default
    Fashion-MNIST); returns what was done and how long. An unusable folder raises
    :class:`edgelearn.datasets.DatasetError` before anything is trained."""
    budget = budget or TrainingBudget()
    dataset = dataset or DatasetSpec(FASHION_MNIST)
    missing = missing_modes(registry, budget.split_ks, dataset)
    if not missing:
        return {"trained": False}
    return train_all(registry, budget, progress, dataset)


def train_all(
    registry: Registry,
    budget: TrainingBudget,
    progress: Progress,
    dataset: DatasetSpec | None = None,
) -> dict[str, Any]:
    from cloud.models.data import build_dataset
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

    total = 6 + len(budget.split_ks)
    step = 0
    timings: dict[str, float] = {}
    entries: dict[Mode, ModelEntry] = {}

    def advance(description: str) -> None:
        nonlocal step
        step += 1
        progress(description, step, total)

    started = time.perf_counter()
    dataset = dataset or DatasetSpec(FASHION_MNIST)
    source = None if dataset.path is None else dataset.load()  # DatasetError: before training
    advance(f"rendering {budget.n_train} + {budget.n_held_out} labeled camera frames of {dataset}")
    data = build_dataset(
        budget.n_train, budget.n_held_out, seed=budget.seed, train_source=source, task=dataset.task
    )
    timings["render"] = time.perf_counter() - started

    advance(f"training the CNN ({budget.cnn_epochs} epochs)")
    report = train_cnn(data, epochs=budget.cnn_epochs, seed=budget.seed)
    timings["cnn"] = report.wall_seconds
    entries[Mode(RAW)] = release_cloud_classifier(registry, report.model, data, name="cnn-raw")

    for k in budget.split_ks:
        advance(f"splitting at k={k}, exporting the int8 lower part")
        entries[Mode.split(k)] = release_split(registry, report.model, k, data, name="cnn-split")

    advance("exporting the whole CNN for the edge (full)")
    entries[Mode(FULL)] = release_full(registry, report.model, data, name="cnn-full")

    def classifier_of(extractor: EdgeExtractor) -> Any:
        """The cloud half of a feature mode: a classifier on what ``extractor`` sends."""
        return train_feature_classifier(
            features_from(extractor, data.train),
            features_from(extractor, data.held_out),
            classes=data.num_classes,
            epochs=budget.feature_epochs,
            seed=budget.seed,
        ).model

    advance(f"fitting PCA ({budget.pca_dim} components) and its classifier")
    projection = fit_pca(data.train.inputs, budget.pca_dim, seed=budget.seed)
    pca_classifier = classifier_of(PcaExtractor(projection))
    entries[Mode(PCA)] = release_pca(registry, projection, pca_classifier, data, name="pca")

    advance(f"training the autoencoder ({budget.autoencoder_dim}-d code) and its classifier")
    fit = train_autoencoder(
        data.train.inputs,
        budget.autoencoder_dim,
        epochs=budget.autoencoder_epochs,
        seed=budget.seed,
    )
    encoder = export_int8(fit.encoder, data.train.inputs)
    ae_classifier = classifier_of(LiteRtExtractor(AUTOENCODER, encoder.flatbuffer))
    entries[Mode(AUTOENCODER)] = release_autoencoder(
        registry, encoder, ae_classifier, data, name="autoencoder"
    )
    advance("done")
    return {
        "trained": True,
        "seconds": round(time.perf_counter() - started, 1),
        "timings": {key: round(value, 1) for key, value in timings.items()},
        "accuracy": {str(mode): entry.accuracy for mode, entry in entries.items()},
        "dataset": {
            "name": str(dataset),
            "classes": list(data.class_names),
            "train_items": len(np.unique(data.train.source_index)),
            "held_out_items": len(data.held_out),
        },
        "versions": {str(mode): entry.version for mode, entry in entries.items()},
    }


def deployable(registry: Registry, split_ks: Sequence[int]) -> list[ModelEntry]:
    """The newest entry of every edge mode, to push to the gateways."""
    found = []
    for mode in edge_modes(split_ks):
        try:
            found.append(registry.serving(mode))
        except ModelNotFound:
            continue
    return found
