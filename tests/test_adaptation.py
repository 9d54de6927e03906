"""The class mix each camera shows: estimated from the model's own answers, with no labels
and no training, it moves when the mix shifts and raises accuracy on a fixed set of objects.

The model is the quick registry's PCA cloud half, answering the deployed projection of
rendered Fashion-MNIST *test* items, as a gateway would send them."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloud.adaptation import ClassMix, PriorSettings, estimate_prior
from cloud.registry import Registry
from edgelearn.artifacts import load_edge_artifact
from edgelearn.modes import PCA, Mode

SHOWN = (0, 2, 4)  # T-shirt/top, pullover, coat: the camera now sees only these


def _answers(registry_root: Path) -> tuple[np.ndarray, np.ndarray]:
    from cloud.training_jobs import _held_out_inputs

    registry = Registry(registry_root)
    entry = registry.serving(Mode(PCA))
    extractor = load_edge_artifact(
        entry.kind, entry.read("edge"), entry.metadata.get("quantization")
    )
    size, _, channels = entry.input_shape[:3]
    inputs, labels = _held_out_inputs(1500, size, channels)
    keep = np.isin(labels, SHOWN)
    values = extractor.output.dequantize(extractor.run_batch(inputs[keep]))
    model = registry.load_cloud_model(entry)
    probabilities = np.asarray(model.predict(values, verbose=0), np.float32)
    return probabilities, labels[keep]


def test_a_class_mix_shift_moves_the_prior_and_raises_accuracy_without_training(
    trained_registry: Path,
) -> None:
    probabilities, labels = _answers(trained_registry)
    assert len(labels) >= 300
    half = len(labels) // 2
    clock = [0.0]
    mix = ClassMix(PriorSettings(refit_seconds=1.0), clock=lambda: clock[0])
    # the camera's first objects arrive (their answers are noted, a fit follows)
    for start in range(0, half, 20):
        rows = probabilities[start : start + 20]
        mix.answer("pca", ["cam-1"] * len(rows), list(range(start, start + len(rows))), rows)
        clock[0] += 2.0
    prior = mix.prior("pca", "cam-1")
    assert prior is not None
    assert prior[list(SHOWN)].sum() > 0.6  # most of the mass where the camera's objects are
    # a fixed set of later objects, answered with and without the camera's prior
    later, truth = probabilities[half:], labels[half:]
    before = float(np.mean(later.argmax(axis=1) == truth))
    after = float(
        np.mean(mix.reweighted("pca", ["cam-1"] * len(later), later).argmax(axis=1) == truth)
    )
    assert after > before + 0.02, (before, after)
    # another camera keeps the training prior
    assert mix.prior("pca", "cam-2") is None


def test_em_recovers_a_known_mix_from_calibrated_answers() -> None:
    rng = np.random.default_rng(0)
    truth = np.asarray([0.5, 0.3, 0.2, 0.0])
    labels = rng.choice(4, size=4000, p=truth)
    # a calibrated, uncertain model: what it sees of an object of class y looks like y
    # 60% of the time (and then it says 0.6 for y), like any other class otherwise
    looks = np.where(rng.random(4000) < 0.6, labels, (labels + rng.integers(1, 4, 4000)) % 4)
    probabilities = np.full((4000, 4), 0.4 / 3, np.float32)
    probabilities[np.arange(4000), looks] = 0.6
    estimate = estimate_prior(probabilities)
    assert np.abs(estimate - truth).max() < 0.05
