"""Feature codec: round trips within the quantisation bound; corrupt payloads raise CodecError."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgelearn import codec
from edgelearn.wire import Codec, DType

float_arrays = hnp.arrays(
    np.float32,
    hnp.array_shapes(min_dims=1, max_dims=4, min_side=1, max_side=12),
    elements=st.floats(-1000, 1000, width=32),
)
coders = st.sampled_from([Codec.NONE, Codec.ZLIB, Codec.ZSTD])


@given(float_arrays, coders)
@settings(max_examples=200)
def test_int8_round_trip_within_half_a_step(values: np.ndarray, coder: Codec) -> None:
    encoded = codec.encode_array(values, dtype=DType.INT8, codec=coder)
    decoded = codec.decode_array(
        encoded.payload,
        dtype=encoded.dtype,
        shape=encoded.shape,
        scale=encoded.scale,
        zero_point=encoded.zero_point,
        codec=encoded.codec,
    )
    assert decoded.shape == values.shape
    # Rounding to the nearest step: error at most half a step (plus float slack).
    assert np.max(np.abs(decoded - values), initial=0) <= encoded.scale * 0.5 + 1e-3


@given(float_arrays, coders)
@settings(max_examples=100)
def test_float16_round_trip_within_relative_precision(values: np.ndarray, coder: Codec) -> None:
    encoded = codec.encode_array(values, dtype=DType.FLOAT16, codec=coder)
    decoded = codec.decode_array(
        encoded.payload,
        dtype=encoded.dtype,
        shape=encoded.shape,
        scale=encoded.scale,
        zero_point=encoded.zero_point,
        codec=encoded.codec,
    )
    assert np.allclose(decoded, values, rtol=2**-10, atol=2**-14)


def test_int8_zero_is_exact_and_litert_parameters_pass_through() -> None:
    activations = np.maximum(np.random.default_rng(0).normal(size=(12, 12, 8)), 0).astype(
        np.float32
    )
    encoded = codec.encode_array(activations)
    decoded = codec.decode_array(
        encoded.payload,
        dtype=encoded.dtype,
        shape=encoded.shape,
        scale=encoded.scale,
        zero_point=encoded.zero_point,
        codec=encoded.codec,
    )
    assert np.all(decoded[activations == 0] == 0)

    already = np.array([-128, 0, 5, 127], dtype=np.int8)
    passed = codec.encode_array(already, scale=0.05, zero_point=-3)
    assert (passed.dtype, passed.scale, passed.zero_point) == (DType.INT8, 0.05, -3)


def test_entropy_coding_shrinks_sparse_activations() -> None:
    rng = np.random.default_rng(1)
    sparse = np.where(rng.random((24, 24, 16)) < 0.7, 0, rng.random((24, 24, 16))).astype(
        np.float32
    )
    plain = codec.encode_array(sparse, codec=Codec.NONE)
    for coder in (Codec.ZLIB, Codec.ZSTD):
        assert len(codec.encode_array(sparse, codec=coder).payload) < 0.6 * len(plain.payload)


@pytest.mark.parametrize("coder", [Codec.ZLIB, Codec.ZSTD])
def test_corrupt_or_mis_sized_payloads_raise_codec_error(coder: Codec) -> None:
    values = np.arange(64, dtype=np.float32)
    encoded = codec.encode_array(values, codec=coder)
    arguments = dict(
        dtype=encoded.dtype, scale=encoded.scale, zero_point=encoded.zero_point, codec=coder
    )
    with pytest.raises(codec.CodecError):
        codec.decode_array(encoded.payload[:-3], shape=(64,), **arguments)  # type: ignore[arg-type]
    with pytest.raises(codec.CodecError):
        codec.decode_array(encoded.payload, shape=(65,), **arguments)  # type: ignore[arg-type]
    with pytest.raises(codec.CodecError):
        codec.decode_array(encoded.payload, shape=(63,), **arguments)  # type: ignore[arg-type]
    with pytest.raises(codec.CodecError):
        codec.decode_array(b"garbage" * 4, shape=(64,), **arguments)  # type: ignore[arg-type]
    with pytest.raises(codec.CodecError):  # a whole stream, then more
        codec.decode_array(encoded.payload * 2, shape=(64,), **arguments)  # type: ignore[arg-type]


@given(st.binary(max_size=512), st.sampled_from([Codec.ZLIB, Codec.ZSTD]))
@settings(max_examples=300)
def test_arbitrary_bytes_raise_nothing_but_codec_error(payload: bytes, coder: Codec) -> None:
    try:
        values = codec.unpack_array(payload, dtype=DType.INT8, shape=(16,), codec=coder)
    except codec.CodecError:
        return
    assert values.shape == (16,)  # what decodes at all decodes to exactly its shape
