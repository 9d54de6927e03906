"""Feature codec: how an extractor's output array becomes a compact payload and back.

Where it sits: gateway extractor -> :func:`encode_array` -> ``wire.Feature`` -> cloud
:func:`decode_array` -> upper layers. Two steps, each optional:

1. **Quantisation.** ``int8`` with an affine scale and zero point (``real = scale * (q -
   zero_point)``, the TFLite convention, so a LiteRT lower part's int8 output passes through
   untouched with its own parameters), ``float16``, or ``float32`` as is.
2. **Entropy coding** of the bytes: ``zstd`` or ``zlib``. Activations after ReLU are full of
   zeros and small values, which both compress well; which one wins on real features is
   measured (``edgelearn bench gateway``), zstd being the default for its speed.

Decoding a corrupt payload raises :class:`CodecError` with a bounded ``reason``. The cloud
reads a feature envelope with :func:`unpack_feature` (the array as sent, which it stores) and
:func:`dequantize`; nothing else unpacks a feature payload.
"""

from __future__ import annotations

import sys
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

if sys.version_info >= (3, 14):
    from compression import zstd
else:  # the same module, backported (PEP 784): 1.4 MB where python-zstandard takes 23
    from backports import zstd

from edgelearn.wire import Codec, DType, Feature

_ZSTD_LEVEL = 3
_ZLIB_LEVEL = 6
# Decompression bombs: no real feature is larger than this.
MAX_DECODED_BYTES = 16 * 1024 * 1024

_NUMPY_DTYPES: dict[DType, type[np.generic]] = {
    DType.UINT8: np.uint8,
    DType.INT8: np.int8,
    DType.FLOAT16: np.float16,
    DType.FLOAT32: np.float32,
}


class CodecError(ValueError):
    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(frozen=True)
class EncodedArray:
    payload: bytes
    dtype: DType
    shape: tuple[int, ...]
    scale: float
    zero_point: int
    codec: Codec

    @classmethod
    def jpeg(cls, data: bytes) -> EncodedArray:
        """A camera's JPEG as it is (the ``raw`` mode's payload)."""
        return cls(data, DType.UINT8, (len(data),), 1.0, 0, Codec.JPEG)

    def feature(self, **identity: Any) -> Feature:
        """The ``wire.Feature`` that carries this payload; ``identity`` holds the other
        fields (the frame's camera, seq, capture time and label, the gateway, the mode,
        the model version, the raw bytes and the held-back counts)."""
        return Feature(
            dtype=self.dtype,
            shape=self.shape,
            scale=self.scale,
            zero_point=self.zero_point,
            codec=self.codec,
            payload=self.payload,
            **identity,
        )


def quantize_int8(values: npt.NDArray[np.floating]) -> tuple[npt.NDArray[np.int8], float, int]:
    """Affine per-tensor int8 over the array's range (which always includes 0, so that
    ReLU zeros stay exact)."""
    low = min(float(values.min(initial=0.0)), 0.0)
    high = max(float(values.max(initial=0.0)), 0.0)
    scale = (high - low) / 255.0 or 1.0
    zero_point = round(-128 - low / scale)
    zero_point = max(-128, min(127, zero_point))
    quantized = np.clip(np.round(values / scale) + zero_point, -128, 127).astype(np.int8)
    return quantized, scale, zero_point


def dequantize(
    values: npt.NDArray[np.generic], scale: float, zero_point: int
) -> npt.NDArray[np.float32]:
    return ((values.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(
        np.float32
    )


def compress(data: bytes, codec: Codec) -> bytes:
    if codec is Codec.ZSTD:
        return zstd.compress(data, level=_ZSTD_LEVEL)
    if codec is Codec.ZLIB:
        return zlib.compress(data, _ZLIB_LEVEL)
    if codec is Codec.NONE:
        return data
    raise CodecError("bad_codec", f"{codec.name} is not an entropy coder")


def decompress(data: bytes, codec: Codec, expected_size: int) -> bytes:
    if expected_size > MAX_DECODED_BYTES:
        raise CodecError("too_large", f"{expected_size} bytes")
    try:
        # Both decode at most the shape's bytes: longer, cut or followed by more is corrupt.
        if codec is Codec.ZSTD:
            frame = zstd.ZstdDecompressor()
            raw = frame.decompress(data, max_length=expected_size)
            complete = frame.eof and not frame.unused_data
        elif codec is Codec.ZLIB:
            stream = zlib.decompressobj()
            raw = stream.decompress(data, expected_size)
            complete = stream.eof and not stream.unconsumed_tail and not stream.unused_data
        elif codec is Codec.NONE:
            raw, complete = data, True
        else:
            raise CodecError("bad_codec", f"{codec.name} payloads are not arrays")
    except (zstd.ZstdError, zlib.error) as exc:
        raise CodecError("corrupt", str(exc)) from exc
    if not complete:
        raise CodecError("corrupt", f"{codec.name.lower()} data longer than its shape, or cut")
    if len(raw) != expected_size:
        raise CodecError("bad_length", f"decoded {len(raw)} bytes, shape needs {expected_size}")
    return raw


def encode_array(
    values: npt.NDArray[np.generic],
    *,
    dtype: DType = DType.INT8,
    codec: Codec = Codec.ZSTD,
    scale: float | None = None,
    zero_point: int | None = None,
) -> EncodedArray:
    """Pack ``values``. An int8/uint8 array with ``scale``/``zero_point`` given is taken as
    already quantised (a LiteRT output); a float array is quantised here when ``dtype`` is
    INT8."""
    shape = tuple(int(dim) for dim in values.shape)
    if values.dtype in (np.int8, np.uint8):
        if scale is None or zero_point is None:
            scale, zero_point = 1.0, 0
        packed = values
        dtype = DType.INT8 if values.dtype == np.int8 else DType.UINT8
    elif dtype is DType.INT8:
        packed, scale, zero_point = quantize_int8(values.astype(np.float32))
    elif dtype in (DType.FLOAT16, DType.FLOAT32):
        packed = values.astype(_NUMPY_DTYPES[dtype])
        scale, zero_point = 1.0, 0
    else:
        raise CodecError("bad_dtype", f"cannot quantise floats to {dtype.name}")
    payload = compress(np.ascontiguousarray(packed).tobytes(), codec)
    return EncodedArray(payload, dtype, shape, float(scale), int(zero_point), codec)


def numpy_dtype(dtype: DType) -> type[np.generic]:
    return _NUMPY_DTYPES[dtype]


def unpack_array(
    payload: bytes, *, dtype: DType, shape: tuple[int, ...], codec: Codec
) -> npt.NDArray[np.generic]:
    """The array as it was sent (still quantised), checking every size on the way; float
    arrays must hold finite values."""
    array_dtype = _NUMPY_DTYPES[dtype]
    expected = int(np.prod(shape, dtype=np.int64)) * np.dtype(array_dtype).itemsize
    values = np.frombuffer(decompress(payload, codec, expected), dtype=array_dtype).reshape(shape)
    if dtype in (DType.FLOAT16, DType.FLOAT32) and not np.isfinite(values).all():
        raise CodecError("not_finite", "feature holds NaN or infinity")
    return values


def decode_array(
    payload: bytes,
    *,
    dtype: DType,
    shape: tuple[int, ...],
    scale: float,
    zero_point: int,
    codec: Codec,
) -> npt.NDArray[np.float32]:
    """Unpack to float32 (dequantised)."""
    values = unpack_array(payload, dtype=dtype, shape=shape, codec=codec)
    if dtype in (DType.INT8, DType.UINT8):
        return dequantize(values, scale, zero_point)
    return values.astype(np.float32)


def unpack_feature(feature: Feature) -> npt.NDArray[np.generic]:
    """A feature envelope's array as the gateway sent it (what the cloud stores)."""
    return unpack_array(
        feature.payload, dtype=feature.dtype, shape=feature.shape, codec=feature.codec
    )
