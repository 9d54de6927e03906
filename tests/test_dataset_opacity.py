"""Every valid folder renders: what the object is in an image follows the data (its alpha
channel, a bright-on-black sprite, or the whole image), any size and aspect loads, and an
item with nothing to show is skipped and counted, never a crash."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cameras.scene import ObjectScene, Unrenderable, render_object
from cloud.models.data import build_dataset
from edgelearn.datasets import LabeledImages, load_image_folder

KINDS = ("dark", "bright", "full_bleed", "sprite", "cut_out")


def picture(
    kind: str, width: int, height: int, colour: bool, rng: np.random.Generator
) -> np.ndarray:
    """An image of ``kind``: all dark, all bright, a textured photo to its edges, a bright
    shape on black (a sprite), or a shape on a transparent ground (BGRA, a cut-out)."""
    channels = 3 if colour else 1
    if kind == "dark":
        image = rng.integers(0, 30, (height, width, channels))
    elif kind == "bright":
        image = rng.integers(200, 256, (height, width, channels))
    elif kind == "full_bleed":
        small = rng.integers(0, 256, (max(2, height // 8), max(2, width // 8), channels))
        image = cv2.resize(small.astype(np.uint8), (width, height)).reshape(height, width, -1)
    else:
        image = np.zeros((height, width, channels), np.int64)
        shape = np.zeros((height, width), np.uint8)
        cv2.ellipse(shape, (width // 2, height // 2), (max(1, width // 3), max(1, height // 3)),
                    0, 0, 360, 255, -1)  # fmt: skip
        image[shape > 0] = rng.integers(120, 256, channels)
        if kind == "cut_out":
            bgr = np.repeat(image, 3 // channels, axis=2) if channels == 1 else image
            return np.dstack([bgr, shape]).astype(np.uint8)
    return image.astype(np.uint8)


def write_folder(root: Path, kinds: list[str], sizes: list[tuple[int, int]], colour: bool) -> None:
    rng = np.random.default_rng(len(kinds))
    for index, (kind, (width, height)) in enumerate(zip(kinds, sizes, strict=True)):
        folder = root / f"class-{index % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(folder / f"{index:03d}.png"), picture(kind, width, height, colour, rng))


def opaque_anywhere(data: LabeledImages, index: int) -> bool:
    alpha = data.opacity(index)
    if alpha is not None:
        return bool((alpha > 127).any())
    item = data.images[index]
    return bool((item.max(axis=-1) if item.ndim == 3 else item).max() >= 12)  # sprite: >= 0.5


sides = st.integers(8, 1000)


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    kinds=st.lists(st.sampled_from(KINDS), min_size=4, max_size=8),
    sizes=st.lists(st.tuples(sides, sides), min_size=8, max_size=8),
    colour=st.booleans(),
)
def test_any_folder_loads_and_every_item_with_something_opaque_renders(
    tmp_path_factory: pytest.TempPathFactory,
    kinds: list[str],
    sizes: list[tuple[int, int]],
    colour: bool,
) -> None:
    root = tmp_path_factory.mktemp("folder")
    write_folder(root, kinds, sizes[: len(kinds)], colour)
    data = load_image_folder(root, size=(48, 48))
    assert len(data) == len(kinds)
    assert data.images.shape[1:3] == (48, 48)
    if data.alpha is not None:
        assert data.alpha.shape == data.images.shape[:3]
    rng = np.random.default_rng(0)
    for index in range(len(data)):
        try:
            rendered = render_object(data.images[index], rng, (320, 180), data.opacity(index))
        except Unrenderable:
            assert not opaque_anywhere(data, index), f"item {index} ({kinds[index]}) is opaque"
            continue
        x0, y0, x1, y1 = rendered.box
        assert 0 <= x0 < x1 <= 320 and 0 <= y0 < y1 <= 180
    scene = ObjectScene(data, seed=3, size=(320, 180))
    for frame_index in range(0, 150, 10):  # three lanes' items walk in, stand, walk out
        frame = scene.render(frame_index)
        assert frame.image.shape == (180, 320, 3)


def test_grayscale_photos_are_whole_objects_and_keep_their_aspect(tmp_path: Path) -> None:
    # Photos of faces and of other things (scikit-image's lfw_subset is such a folder):
    # grey, full-bleed, some dark. Not sprites: the whole picture is the object.
    rng = np.random.default_rng(1)
    write_folder(tmp_path, ["full_bleed", "dark"] * 6, [(25, 40)] * 12, colour=False)
    data = load_image_folder(tmp_path, size=(48, 48))
    assert data.images.ndim == 3 and data.alpha is not None
    alpha = data.alpha[0]
    rows, cols = np.nonzero(alpha)
    width, height = cols.max() - cols.min() + 1, rows.max() - rows.min() + 1
    assert height == 48 and abs(width - round(48 * 25 / 40)) <= 1  # 25x40 kept its aspect
    assert (alpha[rows.min() : rows.max() + 1, cols.min() : cols.max() + 1] == 255).all()
    dark = data.images[1]  # a dark photo is an object like any other
    rendered = render_object(dark, rng, (320, 180), data.opacity(1))
    assert rendered.box[2] - rendered.box[0] > 10


def test_a_sprite_set_is_keyed_to_brightness_and_a_blank_sprite_is_skipped(
    tmp_path: Path,
) -> None:
    kinds = ["sprite"] * 19 + ["dark"]
    write_folder(tmp_path, kinds, [(28, 28)] * 20, colour=False)
    cv2.imwrite(str(tmp_path / "class-1" / "019.png"), np.zeros((28, 28), np.uint8))
    data = load_image_folder(tmp_path, size=(48, 48))
    assert data.alpha is None  # bright on black, as Fashion-MNIST: brightness is opacity
    dataset = build_dataset(20, 4, train_source=data, task="sprites", workers=1)
    assert dataset.train.skipped + dataset.held_out.skipped == 1  # the black one
    assert len(dataset.train) + len(dataset.held_out) + 1 >= 20


def test_an_alpha_channel_is_the_opacity(tmp_path: Path) -> None:
    write_folder(tmp_path, ["cut_out"] * 12, [(60, 30)] * 12, colour=True)
    data = load_image_folder(tmp_path, size=(48, 48))
    assert data.alpha is not None
    alpha = data.alpha[0]
    assert alpha[24, 24] == 255 and alpha[24, 1] == 0  # the shape, and the ground around it
