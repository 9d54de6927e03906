"""Held-out evaluation on the paths that actually serve, and the measurements the scheduler
and the benchmark need.

* :func:`features_from` runs an edge extractor (LiteRT or PCA, exactly the gateway's code)
  over a rendered split and returns :class:`~cloud.models.training.StoredFeatures`;
* :func:`split_accuracy` / :func:`full_accuracy` score the int8 edge part followed by the
  float cloud part, to compare with the float model on the same items;
* :func:`compare_render_paths` checks that training on frames rendered at the reduced size
  predicts real 720p camera frames (``LabeledScene`` -> JPEG -> reduced decode) as well;
* :func:`lower_latency` measures the int8 lower part per frame for each ``k``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.models import cnn
from cloud.models.data import RenderedSplit, RenderSettings, camera_frames
from cloud.models.export import LiteRtExport, export_int8
from cloud.models.training import StoredFeatures, accuracy
from edgelearn import preprocess
from edgelearn.artifacts import EdgeExtractor, LiteRtExtractor, measure_latency
from edgelearn.datasets import LabeledImages

KerasModel = Any


def features_from(extractor: EdgeExtractor, split: RenderedSplit) -> StoredFeatures:
    """What the gateways would have sent for ``split``'s frames, as the cloud stores it."""
    return StoredFeatures(extractor.run_batch(split.inputs), split.labels, extractor.output)


def split_accuracy(
    model: KerasModel, k: int, lower: LiteRtExport, split: RenderedSplit
) -> tuple[float, float]:
    """``(float accuracy, int8-lower accuracy)`` of ``model`` split at ``k`` on ``split``.

    The second runs the int8 lower part in LiteRT, dequantises, and runs the float upper
    part: the served path of ``split:k``.
    """
    _, upper = cnn.split(model, k)
    features = features_from(LiteRtExtractor("split", lower.flatbuffer), split)
    quantised = accuracy(upper, features.dequantized(), split.labels)
    return accuracy(model, split.inputs, split.labels), quantised


def full_accuracy(full: LiteRtExport, split: RenderedSplit) -> float:
    """Accuracy of the int8 ``full`` model (edge inference) on ``split``."""
    probabilities = LiteRtExtractor("full", full.flatbuffer).run_batch(split.inputs)
    return float(np.mean(np.argmax(probabilities, axis=1) == split.labels))


@dataclass(frozen=True)
class RenderPathComparison:
    """The same camera frames taken two ways. ``camera``: 720p, JPEG, the gateway's reduced
    decode (what serves); ``reduced``: rendered at 320x180, JPEG, full decode (how the
    training data is made). Same scenes, items, poses and lighting (``LabeledScene`` frames
    are pure functions of seed and index at any size); only resolution, sensor noise and
    JPEG differ. ``agreement``: share of frames predicted alike."""

    items: int
    camera_accuracy: float
    reduced_accuracy: float
    agreement: float
    camera_jpeg_bytes_mean: float
    reduced_jpeg_bytes_mean: float


def compare_render_paths(
    model: KerasModel,
    source: LabeledImages,
    items: int,
    *,
    seed: int = 0,
    cameras: int = 4,
    settings: RenderSettings | None = None,
) -> RenderPathComparison:
    """Score ``model`` on ``items`` frames of ``cameras`` labeled scenes, at 720p through the
    gateway's path and at the reduced size through the training path (paired by frame)."""
    settings = settings or RenderSettings()
    camera_settings = dataclasses.replace(
        settings, render_size=preprocess.HD_720P, reduced_decode=True
    )
    camera = camera_frames(source, items, seed=seed, cameras=cameras, settings=camera_settings)
    reduced = camera_frames(source, items, seed=seed, cameras=cameras, settings=settings)
    camera_predicted = np.argmax(model.predict(camera.inputs, verbose=0), axis=1)
    reduced_predicted = np.argmax(model.predict(reduced.inputs, verbose=0), axis=1)
    return RenderPathComparison(
        items=items,
        camera_accuracy=float(np.mean(camera_predicted == camera.labels)),
        reduced_accuracy=float(np.mean(reduced_predicted == reduced.labels)),
        agreement=float(np.mean(camera_predicted == reduced_predicted)),
        camera_jpeg_bytes_mean=float(camera.jpeg_bytes.mean()),
        reduced_jpeg_bytes_mean=float(reduced.jpeg_bytes.mean()),
    )


def lower_latency(
    model: KerasModel,
    ks: list[int],
    representative: npt.NDArray[np.uint8],
    frames: npt.NDArray[np.uint8],
    *,
    repeats: int = 3,
) -> dict[int, float]:
    """Median seconds per frame of the int8 lower part for each ``k`` (one LiteRT thread, as
    a gateway worker runs it); ``k == num_blocks`` measures the full model."""
    result: dict[int, float] = {}
    for k in ks:
        part = model if k == cnn.num_blocks(model) else cnn.split(model, k)[0]
        export = export_int8(part, representative)
        result[k] = measure_latency(
            LiteRtExtractor("split", export.flatbuffer), frames, repeats=repeats
        )
    return result
