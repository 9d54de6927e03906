"""cloud.models.data: seeded rendered data sets (numpy + OpenCV only, fast)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from cloud.models.data import (
    RenderedDataset,
    RenderSettings,
    build_dataset,
    camera_frames,
    render_inputs,
)
from edgelearn.datasets import load_fashion_mnist, load_image_folder


def test_same_seed_same_data_other_seed_other_data() -> None:
    first = build_dataset(40, 20, seed=4)
    again = build_dataset(40, 20, seed=4, workers=1)
    other = build_dataset(40, 20, seed=5)
    np.testing.assert_array_equal(first.train.inputs, again.train.inputs)
    np.testing.assert_array_equal(first.held_out.labels, again.held_out.labels)
    assert not np.array_equal(first.train.source_index, other.train.source_index)
    assert first.task == "fashion-mnist" and first.num_classes == 10
    assert first.train.inputs.shape == (40, *RenderSettings().input_shape)
    assert (first.train.jpeg_bytes > 0).all()


def test_parallel_rendering_does_not_change_the_renders() -> None:
    images = np.zeros((600, 28, 28), np.uint8)
    images[:, 8:20, 8:20] = np.arange(600, dtype=np.uint8)[:, None, None] | 64
    serial, serial_bytes, *_ = render_inputs(images, seed=1, workers=1)
    parallel, parallel_bytes, *_ = render_inputs(images, seed=1, workers=3)
    np.testing.assert_array_equal(serial, parallel)
    np.testing.assert_array_equal(serial_bytes, parallel_bytes)


def test_save_and_load_round_trip(tmp_path: Path) -> None:
    dataset = build_dataset(12, 6, seed=2, settings=RenderSettings(input_size=64))
    dataset.save(tmp_path / "set.npz")
    loaded = RenderedDataset.load(tmp_path / "set.npz")
    assert loaded.settings == dataset.settings
    assert loaded.class_names == dataset.class_names and loaded.seed == 2
    for name in ("train", "held_out"):
        for part in ("inputs", "labels", "jpeg_bytes", "source_index"):
            np.testing.assert_array_equal(
                getattr(getattr(loaded, name), part), getattr(getattr(dataset, name), part)
            )


def test_a_folder_of_classes_is_split_without_overlap(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for name in ("circle", "square", "triangle"):
        folder = tmp_path / name
        folder.mkdir()
        for index in range(10):
            image = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            cv2.imwrite(str(folder / f"{index}.png"), image)
    source = load_image_folder(tmp_path, size=(32, 32))
    dataset = build_dataset(20, 10, seed=1, train_source=source, task="shapes")
    assert dataset.class_names == ("circle", "square", "triangle")
    assert dataset.task == "shapes"
    assert not np.intersect1d(dataset.train.source_index, dataset.held_out.source_index).size
    np.testing.assert_array_equal(dataset.train.labels, source.labels[dataset.train.source_index])
    # more renders than training items: items come back in other scenes, never held-out ones
    more = build_dataset(50, 10, seed=1, train_source=source)
    assert len(more.train) == 50
    assert not np.intersect1d(more.train.source_index, more.held_out.source_index).size


def test_camera_frames_are_the_same_scenes_at_both_sizes() -> None:
    test = load_fashion_mnist("test")
    camera = camera_frames(test, 8, seed=2, cameras=2, settings=RenderSettings.camera())
    reduced = camera_frames(test, 8, seed=2, cameras=2, settings=RenderSettings())
    np.testing.assert_array_equal(camera.labels, reduced.labels)
    np.testing.assert_array_equal(camera.source_index, reduced.source_index)
    np.testing.assert_array_equal(camera.labels, test.labels[camera.source_index])
    # Same picture, two resolutions and JPEGs: close, not equal. Object crops differ more
    # than centre squares did (about 7 grey levels against 1 on average): the mask and box
    # come from a 1/8-scale foreground, whose edge moves by a pixel (8 at 720p) between the
    # two JPEGs. What that costs is measured where it matters, in predictions
    # (test_models.py::test_reduced_renders_predict_like_real_720p_camera_frames).
    difference = np.abs(camera.inputs.astype(int) - reduced.inputs.astype(int)).mean()
    assert 0 < difference < 10
    assert camera.jpeg_bytes.mean() > 5 * reduced.jpeg_bytes.mean()
