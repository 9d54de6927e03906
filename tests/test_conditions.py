"""cloud.conditions: pose heights estimated from arrived boxes, and rows rendered under them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from cameras.scene import render_object
from cloud.conditions import MIN_OBJECTS, estimate_heights, render_rows
from cloud.models.training import StoredFeatures
from cloud.registry import Registry
from cloud.trainer import ContinuousTrainer
from edgelearn import preprocess, roi
from edgelearn.datasets import load_fashion_mnist
from edgelearn.modes import AUTOENCODER, FULL, PCA, RAW, Mode


def gateway_boxes(
    heights: tuple[float, float], count: int, seed: int
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Box heights (720p pixels) of ``count`` test items rendered at ``heights``, as the
    gateway's background model cuts them (1/8 decode against the empty scene's), and labels."""
    data = load_fashion_mnist("test")
    items = np.random.default_rng(seed).choice(len(data.labels), count, replace=False)
    boxes = []
    for item in items:
        rendered = render_object(
            data.images[item], np.random.default_rng([seed, int(item)]), heights=heights
        )
        small, empty = (_small_grey(image) for image in (rendered.image, rendered.empty))
        rows = np.flatnonzero(roi.foreground(small, empty, roi.RoiSettings().pixel_delta).any(1))
        boxes.append((rows[-1] + 1 - rows[0]) * 8)
    return np.asarray(boxes, np.int64), np.asarray(data.labels[items], np.int64)


def _small_grey(image: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    small = roi.small_grey(preprocess.encode_jpeg(image, 85))
    assert small is not None
    return small.astype(np.float32)


@pytest.mark.parametrize("heights", [(0.16, 0.26), (0.28, 0.45)])
def test_estimate_heights_recovers_the_pose_heights_of_rendered_boxes(
    heights: tuple[float, float],
) -> None:
    boxes, labels = gateway_boxes(heights, 150, seed=5)
    for estimate in (estimate_heights(boxes, labels=labels), estimate_heights(boxes)):
        assert estimate is not None
        assert estimate == pytest.approx(heights, abs=0.02)  # each end within 2% of the frame


def test_estimate_heights_needs_enough_known_boxes() -> None:
    assert estimate_heights(np.full(MIN_OBJECTS - 1, 150)) is None
    assert estimate_heights(np.r_[np.full(MIN_OBJECTS - 1, 150), -np.ones(50)]) is None
    assert estimate_heights(np.full(MIN_OBJECTS, 150)) is not None


@pytest.mark.training
def test_render_rows_are_stored_rows_of_the_mode_with_the_class_mix(
    trained_registry: Path,
) -> None:
    registry = Registry(trained_registry)
    mix = [0.5, 0.0, 0.5] + [0.0] * 7  # only T-shirts/tops and pullovers
    for mode in (Mode.split(2), Mode(FULL), Mode(PCA), Mode(AUTOENCODER)):
        entry = registry.serving(mode)
        values, labels = render_rows(entry, (0.16, 0.26), 60, class_mix=mix, seed=1)
        row = ContinuousTrainer._row_quantization(entry)  # what the trainer's rows are
        assert values.dtype == row.numpy_dtype and values.shape == (60, *row.shape), mode
        StoredFeatures(values, labels, row)  # the trainer's own check
        assert set(labels.tolist()) == {0, 2}
    with pytest.raises(ValueError, match="no edge half"):
        render_rows(registry.serving(Mode(RAW)), (0.16, 0.26), 10)
