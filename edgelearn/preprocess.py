"""Camera frames as JPEG and as model input: the one definition, shared by every role.

Where it sits in the flow of a frame::

    camera image --encode_jpeg--> JPEG (720p) --decode_reduced--> 320x180
        --to_model_input--> 96x96xC uint8 --> extractor (gateway) or upper layers (cloud, raw)

The gateway decodes with OpenCV's *reduced* decode (``IMREAD_REDUCED_*_4``): libjpeg scales
the inverse DCT, so a 1280x720 JPEG comes out as 320x180 for a fraction of the cost of a full
decode followed by a resize. The model never needs more: the item fills the centre of the
frame, and the centre square of the reduced frame is resized to ``input_size``.

:func:`encode_jpeg` is the one JPEG encoder: cameras encode what they send with it, and the
cloud trains on exactly this path (:mod:`cloud.models.data`): it renders items, JPEG
round-trips them and calls :func:`to_model_input` on the decoded frame. When it renders at the
reduced size directly (to save time) it decodes with :func:`decode_full` instead, which is
what :func:`decode_reduced` would have produced from the 4x larger frame.

**Model input format** (every extractor, every model): ``uint8`` array of shape
``(input_size, input_size, channels)`` holding pixel values 0..255, grayscale (``channels=1``)
or BGR (``channels=3``). uint8 rather than float because it is 4x smaller to queue and copy,
it is what the int8 LiteRT models quantise from without loss (their input scale is about one
grey level), and the Keras models rescale to [0, 1] in their own first layer, so no caller
has to remember a normalisation.

numpy + OpenCV only: the gateway imports this module, and it must not pull in TensorFlow.
"""

from __future__ import annotations

from typing import Final

import cv2
import numpy as np
import numpy.typing as npt

HD_720P: Final = (1280, 720)
"""(width, height) of every camera frame, as OpenCV orders sizes."""
DEFAULT_INPUT_SIZE: Final = 48  # an item is 28 px in its data set; 96 bought nothing
DEFAULT_CHANNELS: Final = 1
# libjpeg's DCT scaling factor used by the gateway (IMREAD_REDUCED_*_4).
REDUCTION: Final = 4
REDUCED_720P: Final = (HD_720P[0] // REDUCTION, HD_720P[1] // REDUCTION)
"""What :func:`decode_reduced` makes of a 720p frame: (320, 180)."""

FINE_REDUCTION: Final = 2
"""The finer decode small objects' crops are cut from (:func:`edgelearn.roi.crop_reduction`)."""

_REDUCED_FLAGS: Final = {1: cv2.IMREAD_REDUCED_GRAYSCALE_4, 3: cv2.IMREAD_REDUCED_COLOR_4}
_FINE_FLAGS: Final = {1: cv2.IMREAD_REDUCED_GRAYSCALE_2, 3: cv2.IMREAD_REDUCED_COLOR_2}
_FULL_FLAGS: Final = {1: cv2.IMREAD_GRAYSCALE, 3: cv2.IMREAD_COLOR}

Image = npt.NDArray[np.uint8]


def sequential_opencv() -> None:
    """Run OpenCV's functions in the calling thread, for a process whose work is many small
    images: a gateway worker, the simulated cameras.

    OpenCV's default pool (one thread per core) splits each resize, blur and decode across
    the cores, and on images this size the hand-offs cost more than they save. Measured on
    a 2-core host: the gateway's pipeline spent 3.64 ms of CPU per frame with the pool and
    2.10 ms without it, at the same wall time (split:6 on the gateway benchmark's frames);
    a simulated camera 12.8 against 9.5 ms per 720p frame rendered and encoded. Both scale
    by processes (a gateway's pool) or by cameras instead."""
    cv2.setNumThreads(0)


class PreprocessError(ValueError):
    """A frame that cannot become model input. ``reason`` is a bounded metric label:
    ``bad_channels``, ``undecodable``, ``bad_shape``, ``bad_size``."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


def _check_channels(channels: int) -> None:
    if channels not in _REDUCED_FLAGS:
        raise PreprocessError("bad_channels", f"{channels} (1 = grayscale, 3 = BGR)")


def _decode(jpeg: bytes, flag: int) -> Image:
    buffer = np.frombuffer(jpeg, dtype=np.uint8)
    if buffer.size == 0:
        raise PreprocessError("undecodable", "empty buffer")
    image = cv2.imdecode(buffer, flag)
    if image is None:
        raise PreprocessError("undecodable", f"{len(jpeg)} bytes are not a JPEG OpenCV reads")
    return np.asarray(image, dtype=np.uint8)


def decode_reduced(
    jpeg: bytes, channels: int = DEFAULT_CHANNELS, reduction: int = REDUCTION
) -> Image:
    """Decode at 1/4 scale (720p -> 320x180), or 1/2 (``reduction`` :data:`FINE_REDUCTION`,
    640x360): ``HxW`` for grayscale, ``HxWx3`` BGR for colour. libjpeg scales in the DCT,
    so 1/2 costs little more than 1/4 (1.00 against 0.93 ms for a 720p frame here)."""
    _check_channels(channels)
    if reduction not in (REDUCTION, FINE_REDUCTION):
        raise PreprocessError(
            "bad_size", f"reduction 1/{reduction}: 1/{REDUCTION} or 1/{FINE_REDUCTION}"
        )
    flags = _REDUCED_FLAGS if reduction == REDUCTION else _FINE_FLAGS
    return _decode(jpeg, flags[channels])


def decode_full(jpeg: bytes, channels: int = DEFAULT_CHANNELS) -> Image:
    """Decode at full scale; for frames already rendered at the reduced size (training)."""
    _check_channels(channels)
    return _decode(jpeg, _FULL_FLAGS[channels])


def to_model_input(
    reduced: npt.NDArray[np.uint8],
    input_size: int = DEFAULT_INPUT_SIZE,
    channels: int = DEFAULT_CHANNELS,
) -> Image:
    """Centre square crop, resize to ``input_size``, as ``uint8 (input_size, input_size, C)``.

    Accepts ``HxW`` or ``HxWx1`` (grayscale) and ``HxWx3`` (BGR) frames; converts between
    grayscale and colour when the frame and ``channels`` disagree, so a colour decode can
    feed a grayscale model.
    """
    _check_channels(channels)
    if input_size <= 0:
        raise PreprocessError("bad_size", f"input_size {input_size}")
    frame: npt.NDArray[np.uint8] = np.asarray(reduced)
    if frame.dtype != np.uint8:
        raise PreprocessError("bad_shape", f"dtype {frame.dtype}, expected uint8")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim not in (2, 3) or (frame.ndim == 3 and frame.shape[2] != 3):
        raise PreprocessError("bad_shape", f"shape {frame.shape}")
    if frame.ndim == 3 and channels == 1:
        frame = np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), np.uint8)
    elif frame.ndim == 2 and channels == 3:
        frame = np.asarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), np.uint8)
    height, width = frame.shape[:2]
    side = min(height, width)
    if side == 0:
        raise PreprocessError("bad_shape", f"shape {frame.shape}")
    top, left = (height - side) // 2, (width - side) // 2
    square = frame[top : top + side, left : left + side]
    # INTER_AREA averages when shrinking (no aliasing of the background noise into the
    # item); when a tiny frame must be enlarged, it behaves like bilinear.
    resized = cv2.resize(square, (input_size, input_size), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(resized.reshape(input_size, input_size, channels), np.uint8)


def frame_to_input(
    jpeg: bytes,
    input_size: int = DEFAULT_INPUT_SIZE,
    channels: int = DEFAULT_CHANNELS,
) -> Image:
    """A camera's JPEG to model input, the way the gateway does it (reduced decode)."""
    return to_model_input(decode_reduced(jpeg, channels), input_size, channels)


def encode_jpeg(image: npt.NDArray[np.uint8], quality: int) -> bytes:
    """Baseline JPEG of a BGR (or grayscale) image at ``quality`` (1-100)."""
    ok, buffer = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise PreprocessError("bad_shape", f"cannot JPEG-encode shape {image.shape}")
    return bytes(buffer.tobytes())
