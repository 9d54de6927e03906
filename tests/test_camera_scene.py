"""The pure core of the cameras: data set loaders, the labeled scene, sources, JPEG, pacing."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from cameras.encoding import BitrateController, FixedQuality, encode_jpeg
from cameras.errors import SourceError
from cameras.pacing import Pacer
from cameras.scene import (
    NOISE_SIGMA_720P,
    LabeledScene,
    ObjectScene,
    compose,
    make_background,
    render_item,
)
from cameras.sources import SyntheticScene, VideoSource, fit_to, parse_source
from edgelearn.datasets import (
    DEFAULT_ROOT,
    DatasetError,
    LabeledImages,
    load_fashion_mnist,
    load_image_folder,
)

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
needs_fashion_mnist = pytest.mark.skipif(
    not (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed",
)


def unique_label_items(count: int = 5) -> LabeledImages:
    """Distinct synthetic 28x28 items, one per class, so a label change = an item change."""
    images = np.zeros((count, 28, 28), np.uint8)
    for index in range(count):
        cv2.rectangle(images[index], (4 + index, 4), (23, 23 - index), 200 + index, -1)
    return LabeledImages(
        images=images,
        labels=np.arange(count, dtype=np.int64),
        class_names=tuple(f"class-{i}" for i in range(count)),
    )


# --- data sets --------------------------------------------------------------------------


@needs_fashion_mnist
def test_fashion_mnist_test_split_has_10000_images_with_all_ten_labels() -> None:
    data = load_fashion_mnist("test")
    assert data.images.shape == (10000, 28, 28)
    assert data.images.dtype == np.uint8
    assert sorted(set(data.labels.tolist())) == list(range(10))
    assert len(data.class_names) == 10
    assert not data.images.flags.writeable  # shared between scenes: read-only


def test_fashion_mnist_rejects_unknown_split_and_missing_files(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("validation")
    with pytest.raises(DatasetError, match="not found"):
        load_fashion_mnist("test", root=tmp_path)


def test_image_folder_sorts_classes_and_skips_unreadable_files(tmp_path: Path) -> None:
    for name, value in (("zebra", 50), ("apple", 200)):
        (tmp_path / name).mkdir()
        for index in range(3):
            image = np.full((40 + index, 30, 3), value, np.uint8)
            cv2.imwrite(str(tmp_path / name / f"{index}.png"), image)
    (tmp_path / "apple" / "broken.jpg").write_bytes(b"not a jpeg")
    (tmp_path / "notes.txt").write_text("ignored: not a class folder")
    data = load_image_folder(tmp_path, size=(32, 32))
    assert data.class_names == ("apple", "zebra")
    assert data.images.shape == (6, 32, 32)  # grey pictures load as grayscale items
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert data.images[0][16, 16] == 200 and data.images[5][16, 16] == 50
    # Letterboxed keeping the aspect: a 40x30 picture fills the height and leaves black bars
    # at the sides, never stretched.
    assert (data.images[0][:, :3] == 0).all() and (data.images[0][:, 29:] == 0).all()
    assert (data.images[0][:, 5:27] == 200).all()


def test_empty_image_folder_is_a_dataset_error(tmp_path: Path) -> None:
    (tmp_path / "cats").mkdir()
    with pytest.raises(DatasetError, match="no readable images") as caught:
        load_image_folder(tmp_path)
    assert caught.value.reason == "empty"
    with pytest.raises(DatasetError, match="not found"):
        load_image_folder(tmp_path / "missing")


# --- labeled scene ------------------------------------------------------------------------


def test_labeled_scene_is_deterministic_given_a_seed() -> None:
    data = unique_label_items()
    first = LabeledScene(data, seed=3, dwell_frames=4)
    second = LabeledScene(data, seed=3, dwell_frames=4)
    other = LabeledScene(data, seed=4, dwell_frames=4)
    frames_a = [first.read() for _ in range(10)]
    frames_b = [second.read() for _ in range(10)]
    for a, b in zip(frames_a, frames_b, strict=True):
        assert a.label == b.label
        assert np.array_equal(a.image, b.image)
    assert not np.array_equal(frames_a[6].image, other.render(6).image)
    # Frames are a pure function of (seed, index): skipping does not change what follows.
    third = LabeledScene(data, seed=3, dwell_frames=4)
    third.skip(7)
    assert np.array_equal(third.read().image, frames_a[7].image)


def test_label_changes_exactly_at_dwell_boundaries() -> None:
    dwell = 6
    scene = LabeledScene(unique_label_items(5), seed=11, dwell_frames=dwell)
    labels = [frame.label for frame in (scene.read() for _ in range(dwell * 23))]
    for index in range(1, len(labels)):
        changed = labels[index] != labels[index - 1]
        # Items carry unique labels and never repeat back to back (also across epochs).
        assert changed == (index % dwell == 0), f"frame {index}: {labels[index - 1 : index + 1]}"
    # Every item is shown once per epoch of five slots.
    assert sorted(labels[0 : 5 * dwell : dwell]) == [0, 1, 2, 3, 4]


def test_scene_frames_are_720p_bgr_and_show_the_item() -> None:
    data = unique_label_items()
    scene = LabeledScene(data, seed=1, dwell_frames=30)
    frame = scene.render(15)  # mid-dwell, the item is in place
    assert frame.image.shape == (720, 1280, 3) and frame.image.dtype == np.uint8
    assert frame.label == scene.label_at(15)
    # The item (bright, ~60% of the height) dominates the centre; the empty scene does not.
    empty = compose(scene._background, None, *_neutral(), np.random.default_rng(0))
    centre = (slice(260, 460), slice(540, 740))
    difference = np.abs(frame.image[centre].astype(int) - empty[centre].astype(int)).mean()
    assert difference > 30


def _neutral():  # type: ignore[no-untyped-def]
    from cameras.scene import ItemPose, Lighting

    return ItemPose(), Lighting(), (1.0, 1.0, 1.0)


def test_render_item_looks_the_same_at_a_small_size() -> None:
    item = unique_label_items().images[2]
    small = render_item(item, np.random.default_rng(5), (128, 72))
    large = render_item(item, np.random.default_rng(5), (1280, 720))
    assert small.shape == (72, 128, 3) and large.shape == (720, 1280, 3)
    # Same draws from the same seed: downscaling the 720p render gives about the small one.
    reduced = cv2.resize(large, (128, 72), interpolation=cv2.INTER_AREA)
    assert np.abs(reduced.astype(int) - small.astype(int)).mean() < 12


def test_render_item_handles_colour_items_and_checks_background_size() -> None:
    item = np.zeros((64, 48, 3), np.uint8)
    item[:, :, 2] = 255  # a red picture
    image = render_item(item, np.random.default_rng(0), (320, 180))
    centre = image[70:110, 140:180].astype(int)
    assert centre[:, :, 2].mean() > centre[:, :, 0].mean() + 60
    with pytest.raises(ValueError, match="background"):
        render_item(
            item,
            np.random.default_rng(0),
            (320, 180),
            background=make_background(np.random.default_rng(0), (160, 90)),
        )


# --- other sources ------------------------------------------------------------------------


def test_object_scene_light_and_noise_change_only_when_asked() -> None:
    data = unique_label_items()
    plain = ObjectScene(data, seed=5).render(40)
    assert plain.objects  # something in view
    same = ObjectScene(data, seed=5, light_gain=1.0, noise_sigma=NOISE_SIGMA_720P).render(40)
    assert np.array_equal(plain.image, same.image) and plain.objects == same.objects
    dark = ObjectScene(data, seed=5, light_gain=0.6).render(40)
    assert dark.image.mean() < 0.75 * plain.image.mean()
    assert dark.objects == plain.objects  # the same items in the same places

    def grain(image: np.ndarray) -> float:
        return float(np.std(image.astype(np.int16) - cv2.GaussianBlur(image, (5, 5), 0)))

    clean = ObjectScene(data, seed=5, noise_sigma=0.0).render(40)
    noisy = ObjectScene(data, seed=5, noise_sigma=9.0).render(40)
    assert grain(clean.image) < grain(plain.image) < grain(noisy.image)
    assert noisy.objects == plain.objects
    with pytest.raises(ValueError, match="light_gain"):
        ObjectScene(data, light_gain=0.0)
    with pytest.raises(ValueError, match="noise_sigma"):
        ObjectScene(data, noise_sigma=-1.0)


@pytest.mark.skipif(not VTEST.exists(), reason="opencv-doc sample videos not installed")
def test_video_source_scales_to_720p_loops_and_starts_at_an_offset() -> None:
    source = VideoSource(VTEST)
    assert source.frame_count == 795
    first = source.read()
    assert first.image.shape == (720, 1280, 3) and first.label is None
    source.skip(source.frame_count - 1)  # back at the start after one loop
    again = source.read()
    assert np.abs(again.image.astype(int) - first.image.astype(int)).mean() < 1.0
    source.close()
    offset = VideoSource(VTEST, start_frame=400)
    assert np.abs(offset.read().image.astype(int) - first.image.astype(int)).mean() > 1.0
    offset.close()


def test_video_source_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        VideoSource(tmp_path / "missing.mp4")
    bad = tmp_path / "bad.avi"
    bad.write_bytes(b"\x00" * 1000)
    with pytest.raises(SourceError, match="cannot read video"):
        VideoSource(bad)


def test_fit_to_crops_4_3_to_16_9_without_bars() -> None:
    image = np.zeros((480, 640, 3), np.uint8)
    image[:60] = 255  # rows the 16:9 crop cuts off
    fitted = fit_to(image, (1280, 720))
    assert fitted.shape == (720, 1280, 3)
    assert fitted.mean() == 0


def test_synthetic_scene_moves_and_is_deterministic() -> None:
    a, b = SyntheticScene(seed=2), SyntheticScene(seed=2)
    first, second = a.read(), a.read()
    assert first.image.shape == (720, 1280, 3)
    assert not np.array_equal(first.image, second.image)
    assert np.array_equal(b.render(1).image, second.image)


def test_parse_source_specs() -> None:
    assert parse_source("synthetic").kind == "synthetic"
    assert parse_source("fashion-mnist").split == "train"
    assert parse_source("fashion-mnist:test").split == "test"
    assert parse_source("video:/x.mp4").path == Path("/x.mp4")
    assert parse_source("folder:/data").kind == "folder"
    for bad in ("video", "fashion-mnist:val", "webcam:0", "synthetic:1"):
        with pytest.raises(ValueError, match="unknown source"):
            parse_source(bad)


# --- JPEG ---------------------------------------------------------------------------------


def test_fixed_quality_jpeg_decodes_to_720p_and_quality_orders_size() -> None:
    image = SyntheticScene(seed=1).read().image
    sizes = [len(encode_jpeg(image, quality)) for quality in (30, 60, 90)]
    assert sizes == sorted(sizes) and sizes[0] < 0.75 * sizes[2]
    decoded = cv2.imdecode(
        np.frombuffer(FixedQuality(80).encode(image), np.uint8), cv2.IMREAD_COLOR
    )
    assert decoded.shape == (720, 1280, 3)


def test_bitrate_controller_holds_3000_kbps_at_15_fps() -> None:
    scene = LabeledScene(unique_label_items(), seed=0, dwell_frames=10)
    controller = BitrateController(kbps=3000, fps=15)
    sizes = [len(controller.encode(scene.read().image)) for _ in range(90)]
    budget = 3000 * 1000 / 8 / 15
    steady = sizes[30:]
    assert abs(sum(steady) / len(steady) - budget) < 0.1 * budget
    assert controller.quality != 60  # it did adapt


# --- pacing -------------------------------------------------------------------------------


def test_pacer_deadlines_are_absolute_and_do_not_drift() -> None:
    pacer = Pacer(15.0, start=100.0)
    for index in range(9000):
        deadline = pacer.next_deadline()
        # Wake up a little late every time: lateness must not accumulate.
        tick = pacer.take(deadline + 0.01)
        assert tick.index == index and tick.skipped == 0
    assert math.isclose(pacer.next_deadline(), 100.0 + 600.0)
    assert pacer.frames_before(100.0 + 600.0) == 9000


def test_pacer_skips_frames_whose_time_has_passed() -> None:
    pacer = Pacer(10.0, start=0.0)
    assert pacer.take(0.0).index == 0
    tick = pacer.take(0.55)  # frames 1..4 are past; 5 is due
    assert (tick.index, tick.skipped) == (5, 4)
    assert pacer.take(0.6).index == 6
    unpaced = Pacer(None, start=0.0)
    assert [unpaced.take(1e9).skipped for _ in range(3)] == [0, 0, 0]


def test_pacer_frame_count_for_a_duration() -> None:
    assert Pacer(15.0, start=5.0).frames_before(15.0) == 150
    assert Pacer(30.0, start=0.0).frames_before(10.0) == 300  # speed 2 at 15 fps
    assert Pacer(15.0, start=0.0).frames_before(0.01) == 1
