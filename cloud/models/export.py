"""Keras models to int8 LiteRT flatbuffers for the gateways (split lower part, full model,
encoder).

Where it sits: after training and splitting (:mod:`cloud.models.cnn`), before the registry
stores and signs the artifact. Full-integer quantisation is calibrated on a
``representative`` batch of *real model inputs* (rendered frames through
:mod:`edgelearn.preprocess`, not random noise), because activation ranges calibrated on noise
would waste most of the int8 range on values real frames never produce.

The exported model has int8 ops only and int8 input and output tensors. The output's scale
and zero point are what the gateway puts into each :class:`edgelearn.wire.Feature` and the
cloud uses to dequantise; :class:`LiteRtExport` reads them back from the flatbuffer itself
(through the same ``ai_edge_litert`` interpreter the gateway uses), so the metadata can never
disagree with the artifact.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.models.errors import ExportError
from edgelearn.artifacts import LiteRtExtractor, TensorQuantization

log = logging.getLogger(__name__)

KerasModel = Any
DEFAULT_CALIBRATION_SAMPLES = 256


@dataclass(frozen=True)
class LiteRtExport:
    """A flatbuffer and the quantisation of its (single) input and output tensors."""

    flatbuffer: bytes
    input: TensorQuantization
    output: TensorQuantization

    @classmethod
    def from_flatbuffer(cls, flatbuffer: bytes, kind: str = "split") -> LiteRtExport:
        runner = LiteRtExtractor(kind, flatbuffer)
        return cls(flatbuffer, runner.model_input, runner.output)


def _converter(model: KerasModel) -> Any:
    import tensorflow as tf

    return tf.lite.TFLiteConverter.from_keras_model(model)


def _convert(converter: Any, model: KerasModel) -> bytes:
    # The converter prints where it saved a temporary SavedModel: noise in a trainer's log,
    # but not hidden with redirect_stdout, which swaps sys.stdout for the whole process and
    # swallowed what the cloud's other threads printed meanwhile (its "serving" line).
    try:
        with warnings.catch_warnings():
            # The calibrated input range replaces the "statistics" this warns about.
            warnings.filterwarnings("ignore", message="Statistics for quantized inputs")
            return bytes(converter.convert())
    except Exception as exc:  # the converter raises many unrelated types
        raise ExportError(f"{model.name}: {exc}") from exc


def export_int8(
    model: KerasModel,
    representative: npt.ArrayLike,
    *,
    samples: int = DEFAULT_CALIBRATION_SAMPLES,
    seed: int = 0,
) -> LiteRtExport:
    """Full-integer int8 LiteRT model, calibrated on up to ``samples`` items of
    ``representative`` (model inputs, e.g. ``uint8`` frames; a seeded sample if more)."""
    import tensorflow as tf

    data = np.asarray(representative, dtype=np.float32)
    expected = tuple(int(d) for d in model.input_shape[1:])
    if data.ndim != len(expected) + 1 or tuple(data.shape[1:]) != expected or data.shape[0] == 0:
        raise ExportError(
            f"representative data {data.shape}, model input {expected}", reason="bad_calibration"
        )
    if data.shape[0] > samples:
        chosen = np.random.default_rng(seed).choice(data.shape[0], samples, replace=False)
        data = data[np.sort(chosen)]

    def calibration() -> Iterator[list[npt.NDArray[np.float32]]]:
        for index in range(data.shape[0]):
            yield [data[index : index + 1]]

    converter = _converter(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = calibration
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.int8
    converter.inference_output_type = tf.int8
    flatbuffer = _convert(converter, model)
    export = LiteRtExport.from_flatbuffer(flatbuffer)
    log.debug(
        "exported %s to int8 LiteRT: %d bytes, output %s",
        model.name,
        len(flatbuffer),
        export.output,
    )
    return export
