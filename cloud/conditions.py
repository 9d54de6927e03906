"""The cameras' conditions, estimated from what arrived, and training rows rendered under them.

Where it sits: beside the continuous trainer (:mod:`cloud.trainer`). After a drift the
trainer has only the few hundred objects that arrived since; the cloud can render more of
its own base data set (Fashion-MNIST's *train* split) with its own renderer
(:mod:`cloud.models.data`), but only under conditions it can see in the arrivals, never the
settings a camera was configured with::

    stored rows (box heights, labels) --estimate_heights--> pose-height range
    base data set --render_rows(entry, heights, mix)--> crops --entry's edge half--> rows

:func:`estimate_heights` turns the box heights of arrived objects (what the gateway's
background model cut, in the camera frame's pixels) into the range of *pose heights*
(:attr:`cameras.scene.ItemPose.height`, a fraction of the frame height) under which the
cloud's renders show boxes like those. :func:`render_rows` renders items at pose heights in
such a range, with a class mix, cuts them as a gateway does and runs them through a registry
entry's edge half exactly as a gateway runs it: its rows have the dtype and shape of the
stored rows of that entry's mode (:meth:`cloud.feature_store.FeatureStore.labeled_rows`), so
the trainer can train on both at once.

numpy, OpenCV and LiteRT only (no TensorFlow); every argument and result is picklable, so
both run in the cloud's training process.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cloud.models.data import RenderSettings, render_inputs
from cloud.registry import EDGE, ModelEntry
from edgelearn import preprocess, roi
from edgelearn.artifacts import KIND_CLOUD_CLASSIFIER, KIND_FULL, load_edge_artifact
from edgelearn.datasets import LabeledImages, load_fashion_mnist

MIN_OBJECTS: Final = 30
"""Objects with a known box height that :func:`estimate_heights` needs to say anything."""

BOX_RATIO_QUANTILES: Final[Mapping[int, tuple[float, ...]]] = {
    0: (1.04, 1.08, 1.10, 1.13, 1.17),  # T-shirt/top
    1: (0.99, 1.06, 1.09, 1.11, 1.15),  # Trouser
    2: (1.03, 1.08, 1.10, 1.12, 1.18),  # Pullover
    3: (1.02, 1.07, 1.10, 1.12, 1.17),  # Dress
    4: (1.01, 1.06, 1.10, 1.13, 1.16),  # Coat
    5: (0.41, 0.53, 0.64, 0.81, 1.00),  # Sandal
    6: (1.02, 1.07, 1.10, 1.12, 1.18),  # Shirt
    7: (0.45, 0.53, 0.57, 0.62, 0.72),  # Sneaker
    8: (0.69, 0.81, 0.95, 1.08, 1.14),  # Bag
    9: (0.68, 0.77, 0.83, 0.92, 1.06),  # Ankle boot
}
"""Per Fashion-MNIST class, the 10/30/50/70/90th percentiles of (box height a gateway
reports) / (pose height x frame height). Measured on 200 train items per class, each rendered
once by :func:`cameras.scene.render_object` at 1280x720 with its pose height drawn uniformly
from 0.12-0.45, JPEG-encoded (quality 85); the box is the one the gateway's background
model cuts: :func:`edgelearn.roi.foreground` of the 1/8 decode
(:func:`edgelearn.roi.small_grey`) against the empty scene's, its rows times 8.

The visible box (:attr:`cameras.scene.RenderedObject.box`) of most classes is 1.03 times the
pose height (the item fills its 28 rows, the turn adds a little); sandals (0.58), sneakers
(0.50), bags (0.92) and ankle boots (0.77) leave transparent rows above and below. The
gateway's box is coarser: its 1/8-scale mask is blurred and closed, which adds 10-20 px at
720p (so 1.10 for most classes)."""


def estimate_heights(
    box_heights_px: npt.ArrayLike,
    frame_height: int = 720,
    labels: npt.ArrayLike | None = None,
) -> tuple[float, float] | None:
    """The range of pose heights (fractions of the frame height, as
    :attr:`cameras.scene.ItemPose.height`) under which the cloud's renders show boxes like
    ``box_heights_px`` (the heights of the arrived objects' boxes, in the camera frame's
    pixels; -1 or 0: not known, left out), or None with fewer than :data:`MIN_OBJECTS`.

    A box is the pose height times its item's ratio (:data:`BOX_RATIO_QUANTILES`), so the
    boxes' distribution is the pose heights' (taken as uniform over the range) mixed over the
    items' ratios. The range is the one whose mixture's distribution best matches the
    boxes' 10th to 90th percentiles (robust to a few boxes of two items merged or cut
    short). With ``labels`` (each object's class) the mixture weighs each class as often as
    it arrived: sandals and sneakers are half as tall as tops for one pose height, so the
    class mix matters; without, every class alike (the data set's own mix).
    """
    heights = np.asarray(box_heights_px, dtype=np.float64).reshape(-1)
    known = heights > 0
    if int(known.sum()) < MIN_OBJECTS:
        return None
    classes = None if labels is None else np.asarray(labels, np.int64).reshape(-1)[known]
    ratios, weights = _ratio_mixture(classes)
    probabilities = np.linspace(0.1, 0.9, 17)
    observed = np.quantile(heights[known] / frame_height, probabilities)
    coarse = _fit_uniform(observed, probabilities, ratios, weights, np.arange(0.01, 1.0, 0.01))
    fine = np.arange(max(0.001, coarse[0] - 0.015), coarse[1] + 0.015, 0.001)
    low, high = _fit_uniform(observed, probabilities, ratios, weights, fine)
    return round(low, 3), round(high, 3)


def _ratio_mixture(
    classes: npt.NDArray[np.int64] | None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Box/pose ratios and their weights: each class's quantiles, weighted by how often the
    class is in ``classes`` (None, or a class without a measured ratio: every class alike)."""
    table = np.asarray([BOX_RATIO_QUANTILES[c] for c in sorted(BOX_RATIO_QUANTILES)])
    counts = np.ones(len(table))
    if classes is not None and np.isin(classes, list(BOX_RATIO_QUANTILES)).all():
        counts = np.bincount(classes, minlength=len(table)).astype(np.float64)
    weights = np.repeat(counts / counts.sum() / table.shape[1], table.shape[1])
    return table.reshape(-1), weights


def _fit_uniform(
    observed: npt.NDArray[np.float64],
    probabilities: npt.NDArray[np.float64],
    ratios: npt.NDArray[np.float64],
    weights: npt.NDArray[np.float64],
    grid: npt.NDArray[np.float64],
) -> tuple[float, float]:
    """The (low, high) on ``grid`` (low < high) whose pose heights, uniform over it, times
    ``ratios`` (with ``weights``) put ``probabilities`` of the boxes under ``observed``: the
    least squares over the percentiles of the mixture's distribution function."""
    poses = observed[:, None] / ratios[None, :]  # (percentile, ratio): the pose it needs
    best, best_error = (float(grid[0]), float(grid[-1])), np.inf
    for i, low in enumerate(grid[:-1]):
        highs = grid[i + 1 :]
        under = np.clip((poses[None] - low) / (highs - low)[:, None, None], 0.0, 1.0)
        errors = ((under @ weights - probabilities[None]) ** 2).sum(axis=1)
        j = int(np.argmin(errors))
        if errors[j] < best_error:
            best, best_error = (float(low), float(highs[j])), float(errors[j])
    return best


CONDITIONS_STREAM: Final = 7
"""The renders' stream (:func:`cloud.models.data.render_inputs`): other scenes than the
first training's (streams 1, 2, 17, ...) for the same items."""


def render_rows(
    entry: ModelEntry,
    heights: tuple[float, float],
    count: int,
    *,
    class_mix: Sequence[float] | None = None,
    seed: int = 0,
    source: LabeledImages | None = None,
    workers: int = 2,
) -> tuple[npt.NDArray[Any], npt.NDArray[np.int64]]:
    """``count`` distinct items of ``source`` (Fashion-MNIST's train split by default) as
    rows of ``entry``'s mode: ``(values, labels)``, ``values`` ``(N, *row shape)`` with the
    stored rows' dtype (the edge half's output; for ``full`` the uint8 crops themselves).

    Each item's class is drawn from ``class_mix`` (probabilities over the classes; None:
    uniform), the item from that class without repeats; it is rendered as the cloud's
    training renders are (:func:`cloud.models.data.render_inputs`, the settings of
    ``entry``'s input), standing ``heights`` of the frame height (pose heights, e.g. from
    :func:`estimate_heights`), cut as a gateway cuts an object, and run through ``entry``'s
    edge half (:func:`edgelearn.artifacts.load_edge_artifact`, as a gateway loads it). An
    item that cannot be rendered is left out (Fashion-MNIST has none). ``seed`` chooses
    items and scenes.
    """
    if not 0 < heights[0] <= heights[1] < 1:
        raise ValueError(f"pose heights {heights}: within (0, 1), low <= high")
    if entry.kind == KIND_CLOUD_CLASSIFIER:
        raise ValueError(f"{entry.name} {entry.version} has no edge half (raw rows are JPEGs)")
    if entry.model_input != roi.CROP_RULE:
        raise ValueError(
            f"{entry.name} {entry.version} takes {entry.model_input!r} inputs, not object crops "
            f"({roi.CROP_RULE}): an object's size means nothing to it"
        )
    source = source or load_fashion_mnist("train")
    names = entry.metadata.get("class_names")
    if names is not None and tuple(names) != source.class_names:
        raise ValueError(f"{entry.name} {entry.version} knows other classes than the source")
    size, _, channels = entry.input_shape
    indices = _choose_items(source.labels, len(source.class_names), count, class_mix, seed)
    renders = render_inputs(
        source.images,
        seed=seed,
        stream=CONDITIONS_STREAM,
        indices=indices,
        settings=RenderSettings(
            input_size=size, channels=channels, render_size=render_size(heights, size)
        ),
        workers=workers,
        opacity=source.alpha,
        heights=heights,
    )
    labels = np.asarray(source.labels[renders.shown], np.int64)
    return edge_rows(entry, renders.inputs), labels


def render_size(heights: tuple[float, float], input_size: int) -> tuple[int, int]:
    """The frame size renders at these pose heights are drawn at, decoded in full: what a
    gateway's decode of a 720p frame is for objects of that size (1/4, or 1/2 for small
    ones: :func:`edgelearn.roi.crop_reduction`)."""
    tall = round(sum(heights) / 2 * preprocess.HD_720P[1])
    reduction = roi.crop_reduction([(0, 0, tall, tall)], input_size)
    return (preprocess.HD_720P[0] // reduction, preprocess.HD_720P[1] // reduction)


def _choose_items(
    labels: npt.NDArray[Any],
    classes: int,
    count: int,
    class_mix: Sequence[float] | None,
    seed: int,
) -> npt.NDArray[np.int64]:
    """``count`` distinct item indices, each one's class drawn from ``class_mix``."""
    mix = np.full(classes, 1.0 / classes) if class_mix is None else np.asarray(class_mix, float)
    if mix.shape != (classes,) or (mix < 0).any() or mix.sum() <= 0:
        raise ValueError(f"class mix {class_mix}: {classes} probabilities, not all 0")
    rng = np.random.default_rng([seed, CONDITIONS_STREAM])
    drawn = rng.choice(classes, size=count, p=mix / mix.sum())
    chosen = np.empty(count, np.int64)
    for label in range(classes):
        rows = np.flatnonzero(drawn == label)
        pool = np.flatnonzero(labels == label)
        if rows.size > pool.size:
            raise ValueError(f"{rows.size} items of class {label} asked for, {pool.size} exist")
        chosen[rows] = rng.choice(pool, size=rows.size, replace=False)
    return chosen


def edge_rows(entry: ModelEntry, inputs: npt.NDArray[np.uint8]) -> npt.NDArray[Any]:
    """Model inputs ``(N, H, W, C)`` as rows of ``entry``'s mode: its edge half's outputs,
    or (``full``, whose gateways send their crops to learn from) the inputs themselves."""
    if entry.kind == KIND_FULL:
        return inputs
    extractor = load_edge_artifact(entry.kind, entry.read(EDGE), entry.metadata["quantization"])
    return extractor.run_batch(inputs)
