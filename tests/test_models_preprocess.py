"""edgelearn.preprocess: the one definition of model input (numpy + OpenCV only, fast)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgelearn import preprocess


def _frame(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth BGR frame with a bright square in the centre (JPEG-friendly, recognisable)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
    import cv2

    frame = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)
    side = height // 3
    top, left = (height - side) // 2, (width - side) // 2
    frame[top : top + side, left : left + side] = 250
    return np.ascontiguousarray(frame)


def test_reduced_decode_of_a_720p_jpeg_is_a_quarter_size() -> None:
    jpeg = preprocess.encode_jpeg(_frame(1280, 720), 85)
    assert preprocess.decode_reduced(jpeg, 1).shape == (180, 320)
    assert preprocess.decode_reduced(jpeg, 3).shape == (180, 320, 3)
    assert preprocess.decode_full(jpeg, 1).shape == (720, 1280)


@pytest.mark.parametrize("channels", [1, 3])
def test_frame_to_input_is_the_reduced_decode_then_centre_crop(channels: int) -> None:
    jpeg = preprocess.encode_jpeg(_frame(1280, 720, seed=3), 85)
    model_input = preprocess.frame_to_input(jpeg, 96, channels)
    assert model_input.shape == (96, 96, channels)
    assert model_input.dtype == np.uint8
    expected = preprocess.to_model_input(preprocess.decode_reduced(jpeg, channels), 96, channels)
    np.testing.assert_array_equal(model_input, expected)
    # The bright centre square fills the middle of the input, the textured border does not.
    grey = model_input.mean(axis=2) if channels == 3 else model_input[:, :, 0]
    assert grey[40:56, 40:56].mean() > 240
    assert grey[:8, :8].mean() < 240


def test_reduced_decode_matches_rendering_at_the_reduced_size() -> None:
    """Why the cloud may render training frames at 320x180: a 720p frame through the
    gateway's reduced decode and the same picture made at 320x180 give nearly the same input."""
    import cv2

    frame = _frame(1280, 720, seed=5)
    small = cv2.resize(frame, (320, 180), interpolation=cv2.INTER_AREA)
    via_camera = preprocess.frame_to_input(preprocess.encode_jpeg(frame, 85))
    via_training = preprocess.to_model_input(
        preprocess.decode_full(preprocess.encode_jpeg(small, 85))
    )
    difference = np.abs(via_camera.astype(int) - via_training.astype(int))
    # JPEG at two resolutions differs by a few grey levels, not by content.
    assert difference.mean() < 3.0


def test_colour_frames_feed_grayscale_models_and_back() -> None:
    bgr = _frame(320, 180)
    assert preprocess.to_model_input(bgr, 64, 1).shape == (64, 64, 1)
    grey = bgr[:, :, 1]
    assert preprocess.to_model_input(grey, 64, 3).shape == (64, 64, 3)
    assert preprocess.to_model_input(grey[:, :, None], 64, 1).shape == (64, 64, 1)


@pytest.mark.parametrize("payload", [b"", b"not a jpeg", b"\xff\xd8\xff" + bytes(100)])
def test_garbage_is_refused_with_a_reason(payload: bytes) -> None:
    with pytest.raises(preprocess.PreprocessError) as caught:
        preprocess.frame_to_input(payload)
    assert caught.value.reason == "undecodable"


def test_bad_arguments_are_refused() -> None:
    with pytest.raises(preprocess.PreprocessError) as caught:
        preprocess.decode_reduced(b"x", channels=2)
    assert caught.value.reason == "bad_channels"
    with pytest.raises(preprocess.PreprocessError):
        preprocess.to_model_input(np.zeros((10, 10), np.float32))
    with pytest.raises(preprocess.PreprocessError):
        preprocess.to_model_input(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(preprocess.PreprocessError):
        preprocess.to_model_input(np.zeros((10, 10), np.uint8), input_size=0)


@settings(max_examples=40, deadline=None)
@given(
    height=st.integers(1, 300),
    width=st.integers(1, 300),
    size=st.integers(1, 128),
    channels=st.sampled_from([1, 3]),
    colour=st.booleans(),
)
def test_any_frame_becomes_a_square_uint8_input(
    height: int, width: int, size: int, channels: int, colour: bool
) -> None:
    shape = (height, width, 3) if colour else (height, width)
    frame = np.full(shape, 77, np.uint8)
    model_input = preprocess.to_model_input(frame, size, channels)
    assert model_input.shape == (size, size, channels)
    assert model_input.dtype == np.uint8
    # A flat frame stays flat whatever the crop and resize (grey 77 survives BGR<->grey).
    assert int(model_input.min()) == int(model_input.max()) == 77


def test_the_gateway_path_does_not_import_tensorflow() -> None:
    code = (
        "import sys\n"
        "import edgelearn.preprocess, edgelearn.artifacts, cloud.models.data\n"
        "bad = [m for m in ('tensorflow', 'keras', 'sklearn') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert result.stdout.strip() == ""
