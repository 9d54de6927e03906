"""Camera frames made the way ``edgelearn camera`` makes them, for replay in tests and
benchmarks: 720p JPEG ``wire.Frame`` envelopes of the labeled scenes, with their ground truth."""

from __future__ import annotations

import time
from typing import Any

from edgelearn import preprocess, wire


def scene_frames(
    camera_id: str, count: int, *, seed: int = 0, dwell: int = 30, quality: int = 80
) -> list[wire.Frame]:
    """``count`` 720p JPEG frames of one labeled scene of Fashion-MNIST *test* items, as
    ``edgelearn camera --source fashion-mnist:test`` sends them (an item every ``dwell``
    frames)."""
    from cameras.scene import LabeledScene
    from edgelearn.datasets import load_fashion_mnist

    scene = LabeledScene(load_fashion_mnist("test"), seed=seed, dwell_frames=dwell)
    return [_frame(camera_id, number, scene.render(number), quality) for number in range(count)]


def _frame(camera_id: str, number: int, rendered: Any, quality: int) -> wire.Frame:
    """The Frame a camera sends for ``rendered`` (a :class:`cameras.scene.SourceFrame`)."""
    height, width = rendered.image.shape[:2]
    return wire.Frame(
        camera_id,
        number,
        time.time_ns(),
        width,
        height,
        wire.Encoding.JPEG,
        rendered.label,
        preprocess.encode_jpeg(rendered.image, quality),
        truth_labels=tuple(item.label for item in rendered.objects),
        truth_boxes=tuple(item.box for item in rendered.objects),
        truth_items=tuple(item.item for item in rendered.objects),
        labeled=int(rendered.labeled),
    )


def object_frames(
    camera_id: str, count: int, *, seed: int = 0, quality: int = 80, first: int = 0
) -> list[wire.Frame]:
    """``count`` 720p JPEG frames of an :class:`cameras.scene.ObjectScene` of Fashion-MNIST
    *test* items (0-3 in view, walking in and out), from frame ``first``, with each item's
    label and box, as ``edgelearn camera --source fashion-mnist:test`` sends them."""
    from cameras.scene import ObjectScene
    from edgelearn.datasets import load_fashion_mnist

    scene = ObjectScene(load_fashion_mnist("test"), seed=seed)
    return [
        _frame(camera_id, number, scene.render(number), quality)
        for number in range(first, first + count)
    ]
