"""Artifact formats of every model kind, and the TensorFlow-free loader gateways run them with.

Where it sits: the cloud's trainer packs a model into an artifact (bytes), the registry stores
it and signs a :class:`edgelearn.wire.Model` deployment around it, and a gateway that has
verified the deployment calls :func:`load_deployment` to get an :class:`EdgeExtractor`:
a callable from model input (see :mod:`edgelearn.preprocess`) to the feature it forwards.
The cloud runs the same extractors on data sets to train and score the served path. This
module imports numpy, ai_edge_litert and the floor only: it is what a gateway installs.

Kinds and their artifacts (``wire.Model.kind`` / ``metadata.json`` ``kind``):

``pca``
    edge artifact: ``.npz`` (numpy, loaded with ``allow_pickle=False``) holding
    ``mean (D,)`` and ``components (dim, D)`` float32 (fitted on pixels / 255),
    ``input_shape (3,)``, ``output_scale ()`` and ``output_zero_point ()``.
    Extractor output: int8 ``(dim,)``, the projection quantised with those parameters
    (calibrated on the training features).
``autoencoder``
    edge artifact: LiteRT flatbuffer of the encoder (int8 ops, int8 input and output; a
    float32 encoder also loads). Output: int8 ``(dim,)`` bottleneck code.
``split``
    edge artifact: LiteRT flatbuffer of the lower ``k`` blocks (int8). Output: int8
    activations of block ``k``, ``(H, W, C)`` (or ``(C,)`` after pooling).
``full``
    edge artifact: LiteRT flatbuffer of the whole CNN (int8). Output: int8 class
    probabilities ``(classes,)``; dequantise, then arg-max.
``cloud-classifier``
    no edge artifact; the cloud half only (``.keras`` zip of the float Keras model). Every
    registry entry's cloud half uses the same format: the upper blocks (``split``), the
    feature classifier (``pca``/``autoencoder``), the float CNN (``full``, to fine-tune
    from) or the raw-mode CNN (``cloud-classifier``).

Every edge extractor takes a ``uint8 (H, W, C)`` frame from
:func:`edgelearn.preprocess.to_model_input` and returns a quantised tensor described by its
:attr:`EdgeExtractor.output` (:class:`TensorQuantization`: dtype, shape, scale, zero point),
which is exactly what goes into a :class:`edgelearn.wire.Feature` envelope. The cloud
dequantises ``(q - zero_point) * scale`` before its half of the model.

``metadata_json`` of a deployment (:func:`cloud.registry.deployment_metadata`) carries the
same facts: ``output`` (the :class:`TensorQuantization` as a dict), ``model_input`` (the
LiteRT input tensor's quantisation, applied by the extractor itself), ``input_shape``,
``class_names``, ``task``, ``accuracy``; :func:`load_deployment` checks the artifact agrees.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt
from ai_edge_litert.interpreter import Interpreter
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from edgelearn import modes, signing, wire
from edgelearn.codec import EncodedArray, encode_array

KIND_PCA: Final = modes.PCA
KIND_AUTOENCODER: Final = modes.AUTOENCODER
KIND_SPLIT: Final = modes.SPLIT
KIND_FULL: Final = modes.FULL
KIND_CLOUD_CLASSIFIER: Final = "cloud-classifier"  # the cloud half of raw: no edge artifact
EDGE_KINDS: Final = frozenset({KIND_PCA, KIND_AUTOENCODER, KIND_SPLIT, KIND_FULL})
ALL_KINDS: Final = EDGE_KINDS | {KIND_CLOUD_CLASSIFIER}
LITERT_KINDS: Final = frozenset({KIND_AUTOENCODER, KIND_SPLIT, KIND_FULL})

_DTYPES: Final = {"int8": np.int8, "uint8": np.uint8, "float32": np.float32}
_QUANTISED_RANGE: Final = {"int8": (-128, 127), "uint8": (0, 255)}

FloatArray = npt.NDArray[np.float32]
Pixels = npt.NDArray[np.uint8]


class ArtifactError(ValueError):
    """An artifact that does not match its kind's format. ``reason`` is a bounded metric
    label (``bad_litert``, ``bad_pca``, ``metadata_mismatch``, ...); ``detail`` says more."""

    def __init__(self, detail: str, *, reason: str = "bad_artifact") -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TensorQuantization:
    """A tensor's dtype, shape (without batch) and affine quantisation.

    ``real = (q - zero_point) * scale``. Float tensors have ``scale=1.0, zero_point=0``.
    """

    dtype: str
    shape: tuple[int, ...]
    scale: float = 1.0
    zero_point: int = 0

    def __post_init__(self) -> None:
        if self.dtype not in _DTYPES:
            raise ArtifactError(f"dtype {self.dtype!r}", reason="bad_dtype")
        if not self.shape or any(int(d) <= 0 for d in self.shape):
            raise ArtifactError(f"shape {self.shape}", reason="bad_shape")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ArtifactError(f"scale {self.scale}", reason="bad_quantization")
        if self.dtype in _QUANTISED_RANGE:
            low, high = _QUANTISED_RANGE[self.dtype]
            if not low <= self.zero_point <= high:
                raise ArtifactError(f"zero point {self.zero_point}", reason="bad_quantization")

    @property
    def numpy_dtype(self) -> np.dtype[Any]:
        return np.dtype(_DTYPES[self.dtype])

    @property
    def elements(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.elements * self.numpy_dtype.itemsize

    def quantize(self, real: npt.ArrayLike) -> npt.NDArray[Any]:
        """Real values to this tensor's dtype (rounded, clipped to the dtype's range)."""
        values = np.asarray(real, dtype=np.float32)
        if self.dtype == "float32":
            return values
        low, high = _QUANTISED_RANGE[self.dtype]
        quantised = np.rint(values / np.float32(self.scale)) + self.zero_point
        result: npt.NDArray[Any] = np.clip(quantised, low, high).astype(self.numpy_dtype)
        return result

    def encode(self, quantised: npt.ArrayLike, coder: wire.Codec = wire.Codec.ZSTD) -> EncodedArray:
        """A tensor of this quantisation packed for the wire (what a gateway forwards)."""
        return encode_array(
            np.asarray(quantised), codec=coder, scale=self.scale, zero_point=self.zero_point
        )

    def dequantize(self, quantised: npt.ArrayLike) -> FloatArray:
        values = np.asarray(quantised)
        if self.dtype == "float32":
            return values.astype(np.float32)
        return (
            (values.astype(np.float32) - np.float32(self.zero_point)) * np.float32(self.scale)
        ).astype(np.float32)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dtype": self.dtype,
            "shape": list(self.shape),
            "scale": float(self.scale),
            "zero_point": int(self.zero_point),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TensorQuantization:
        try:
            return cls(
                dtype=str(data["dtype"]),
                shape=tuple(int(d) for d in data["shape"]),
                scale=float(data["scale"]),
                zero_point=int(data["zero_point"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"quantisation {data!r}", reason="bad_metadata") from exc

    @classmethod
    def calibrated(cls, values: npt.ArrayLike, shape: tuple[int, ...]) -> TensorQuantization:
        """int8 parameters covering ``values``' range (min/max, as LiteRT calibrates)."""
        array = np.asarray(values, dtype=np.float32)
        low = min(float(array.min()), 0.0)
        high = max(float(array.max()), 0.0)
        scale = (high - low) / 255.0 if high > low else 1.0
        zero_point = int(np.clip(round(-128 - low / scale), -128, 127))
        return cls("int8", shape, scale, zero_point)


class EdgeExtractor(Protocol):
    """What a gateway runs per (key)frame. Not thread-safe: one per worker."""

    kind: str
    input_shape: tuple[int, int, int]
    output: TensorQuantization

    def run(self, model_input: Pixels) -> npt.NDArray[Any]:
        """One ``uint8 input_shape`` frame -> ``output.dtype`` array of ``output.shape``."""
        ...

    def run_batch(self, inputs: Pixels) -> npt.NDArray[Any]:
        """``(N, *input_shape)`` -> ``(N, *output.shape)``; the cloud uses it on data sets."""
        ...


def _check_input(model_input: npt.NDArray[Any], shape: tuple[int, ...], batched: bool) -> None:
    expected = shape if not batched else (model_input.shape[0], *shape)
    if model_input.dtype != np.uint8 or tuple(model_input.shape) != tuple(expected):
        raise ArtifactError(
            f"input {model_input.dtype} {model_input.shape}, expected uint8 {expected}",
            reason="bad_input",
        )


# ---------------------------------------------------------------------------------------
# LiteRT kinds (autoencoder encoder, split lower part, full model).


class LiteRtExtractor:
    """A LiteRT flatbuffer with one ``(1, H, W, C)`` image input and one output.

    The model's own input quantisation (calibrated by the converter, about 1 grey level per
    step) is applied here, so callers pass plain ``uint8`` pixels.
    """

    def __init__(self, kind: str, flatbuffer: bytes, *, num_threads: int = 1) -> None:
        self.kind = kind
        self._flatbuffer = flatbuffer
        self._num_threads = num_threads
        try:
            self._interpreter = Interpreter(model_content=flatbuffer, num_threads=num_threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            raise ArtifactError(
                f"LiteRT refused the {kind} model: {exc}", reason="bad_litert"
            ) from exc
        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ArtifactError(
                f"{len(inputs)} inputs, {len(outputs)} outputs; expected 1 and 1",
                reason="bad_litert",
            )
        self._model_input = _tensor_quantization(inputs[0])
        self.output = _tensor_quantization(outputs[0])
        if len(self._model_input.shape) != 3:
            raise ArtifactError(f"input shape {self._model_input.shape}", reason="bad_litert")
        height, width, channels = self._model_input.shape
        self.input_shape = (height, width, channels)
        self._input_index = int(inputs[0]["index"])
        self._output_index = int(outputs[0]["index"])
        self._batch_interpreter: Interpreter | None = None
        self._batch_size = 0

    @property
    def model_input(self) -> TensorQuantization:
        """The flatbuffer's own input tensor (after this class quantises the pixels)."""
        return self._model_input

    def _prepare(self, pixels: Pixels) -> npt.NDArray[Any]:
        # Pixels are the real values the Keras model saw (it rescales internally).
        return self._model_input.quantize(pixels)

    def run(self, model_input: Pixels) -> npt.NDArray[Any]:
        _check_input(model_input, self.input_shape, batched=False)
        self._interpreter.set_tensor(self._input_index, self._prepare(model_input)[np.newaxis])
        self._interpreter.invoke()
        return np.array(self._interpreter.get_tensor(self._output_index)[0])

    def run_batch(self, inputs: Pixels, batch_size: int = 64) -> npt.NDArray[Any]:
        _check_input(inputs, self.input_shape, batched=True)
        count = int(inputs.shape[0])
        result = np.empty((count, *self.output.shape), dtype=self.output.numpy_dtype)
        if count == 0:
            return result
        batch_size = max(1, min(batch_size, count))
        interpreter = self._batched(batch_size)
        for start in range(0, count, batch_size):
            chunk = self._prepare(inputs[start : start + batch_size])
            used = chunk.shape[0]
            if used < batch_size:  # pad the last batch rather than re-allocating tensors
                pad = np.zeros((batch_size - used, *chunk.shape[1:]), dtype=chunk.dtype)
                chunk = np.concatenate([chunk, pad])
            interpreter.set_tensor(self._input_index, chunk)
            interpreter.invoke()
            result[start : start + used] = interpreter.get_tensor(self._output_index)[:used]
        return result

    def _batched(self, batch_size: int) -> Interpreter:
        if self._batch_interpreter is None or self._batch_size != batch_size:
            interpreter = Interpreter(model_content=self._flatbuffer, num_threads=self._num_threads)
            interpreter.resize_tensor_input(self._input_index, [batch_size, *self.input_shape])
            interpreter.allocate_tensors()
            self._batch_interpreter, self._batch_size = interpreter, batch_size
        return self._batch_interpreter


def _tensor_quantization(details: Mapping[str, Any]) -> TensorQuantization:
    dtype = np.dtype(details["dtype"]).name
    shape = tuple(int(d) for d in details["shape"][1:])
    scale, zero_point = details["quantization"]
    if dtype == "float32" or not scale:
        return TensorQuantization(dtype, shape)
    return TensorQuantization(dtype, shape, float(scale), int(zero_point))


# ---------------------------------------------------------------------------------------
# PCA: a projection numpy runs.


@dataclass(frozen=True, eq=False)
class PcaProjection:
    """Principal components fitted in the cloud (on pixels / 255), run on the gateway."""

    mean: FloatArray
    components: FloatArray
    input_shape: tuple[int, int, int]
    output: TensorQuantization

    def __post_init__(self) -> None:
        size = math.prod(self.input_shape)
        if self.mean.shape != (size,) or self.components.ndim != 2:
            raise ArtifactError(
                f"mean {self.mean.shape}, components {self.components.shape}", reason="bad_pca"
            )
        if self.components.shape[1] != size or self.output.shape != (self.components.shape[0],):
            raise ArtifactError(
                f"components {self.components.shape} vs input {self.input_shape}, "
                f"output {self.output.shape}",
                reason="bad_pca",
            )

    @property
    def dim(self) -> int:
        return int(self.components.shape[0])

    def project(self, inputs: Pixels) -> FloatArray:
        """``(N, H, W, C)`` or one ``(H, W, C)`` uint8 frame -> float32 ``(N, dim)``/``(dim,)``."""
        single = inputs.ndim == len(self.input_shape)
        batch = inputs.reshape(1 if single else inputs.shape[0], -1).astype(np.float32)
        # (x/255 - mean) @ C.T, with 1/255 folded into the weights once.
        weights = self.components.T * np.float32(1.0 / 255.0)
        offset = self.mean @ self.components.T
        projected: FloatArray = (batch @ weights - offset).astype(np.float32)
        return projected[0] if single else projected

    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(
            buffer,
            mean=self.mean.astype(np.float32),
            components=self.components.astype(np.float32),
            input_shape=np.asarray(self.input_shape, dtype=np.int64),
            output_scale=np.float64(self.output.scale),
            output_zero_point=np.int64(self.output.zero_point),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> PcaProjection:
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as archive:
                mean = np.asarray(archive["mean"], dtype=np.float32)
                components = np.asarray(archive["components"], dtype=np.float32)
                shape = tuple(int(d) for d in archive["input_shape"])
                scale = float(archive["output_scale"])
                zero_point = int(archive["output_zero_point"])
        except (OSError, KeyError, ValueError, EOFError) as exc:
            raise ArtifactError(f"not a PCA npz: {exc}", reason="bad_pca") from exc
        if len(shape) != 3:
            raise ArtifactError(f"input shape {shape}", reason="bad_pca")
        output = TensorQuantization("int8", (int(components.shape[0]),), scale, zero_point)
        return cls(mean, components, (shape[0], shape[1], shape[2]), output)


class PcaExtractor:
    """The ``pca`` kind: project, then quantise to int8 with the calibrated parameters."""

    kind = KIND_PCA

    def __init__(self, projection: PcaProjection) -> None:
        self.projection = projection
        self.input_shape = projection.input_shape
        self.output = projection.output

    def run(self, model_input: Pixels) -> npt.NDArray[Any]:
        _check_input(model_input, self.input_shape, batched=False)
        return self.output.quantize(self.projection.project(model_input))

    def run_batch(self, inputs: Pixels) -> npt.NDArray[Any]:
        _check_input(inputs, self.input_shape, batched=True)
        return self.output.quantize(self.projection.project(inputs))


# ---------------------------------------------------------------------------------------
# Loading a deployment.


def load_edge_artifact(
    kind: str, artifact: bytes, metadata: Mapping[str, Any] | None = None, *, num_threads: int = 1
) -> EdgeExtractor:
    """Turn an edge artifact into a runnable extractor; checks it against ``metadata``
    (``output`` quantisation) when given. Raises :class:`ArtifactError`."""
    extractor: EdgeExtractor
    if kind == KIND_PCA:
        extractor = PcaExtractor(PcaProjection.from_bytes(artifact))
    elif kind in LITERT_KINDS:
        extractor = LiteRtExtractor(kind, artifact, num_threads=num_threads)
    else:
        raise ArtifactError(f"kind {kind!r} does not run on a gateway", reason="not_edge_kind")
    if metadata and "output" in metadata:
        promised = TensorQuantization.from_dict(metadata["output"])
        actual = extractor.output
        if (
            promised.dtype != actual.dtype
            or promised.shape != actual.shape
            or promised.zero_point != actual.zero_point
            or not math.isclose(promised.scale, actual.scale, rel_tol=1e-6)
        ):
            raise ArtifactError(
                f"metadata says {promised}, artifact has {actual}", reason="metadata_mismatch"
            )
    return extractor


@dataclass(frozen=True)
class LoadedDeployment:
    """A verified deployment, ready to run."""

    name: str
    version: str
    kind: str
    split_k: int
    metadata: dict[str, Any]
    extractor: EdgeExtractor

    @property
    def mode(self) -> modes.Mode:
        """The gateway mode this deployment serves."""
        return modes.Mode.of(self.kind, self.split_k)


def parse_metadata(model: wire.Model) -> dict[str, Any]:
    try:
        metadata = json.loads(model.metadata_json)
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"metadata_json: {exc}", reason="bad_metadata") from exc
    if not isinstance(metadata, dict):
        raise ArtifactError("metadata_json is not an object", reason="bad_metadata")
    return metadata


def load_deployment(
    model: wire.Model, trusted: Ed25519PublicKey, *, num_threads: int = 1
) -> LoadedDeployment:
    """Verify ``model`` (raises :class:`edgelearn.signing.ModelRejected`), then load it.

    Verification comes first and is not optional: nothing from an unverified artifact is
    parsed. Raises :class:`ArtifactError` if a verified artifact still does not fit its kind.
    """
    signing.verify_model(model, trusted)
    metadata = parse_metadata(model)
    extractor = load_edge_artifact(model.kind, model.artifact, metadata, num_threads=num_threads)
    if tuple(model.input_shape) != extractor.input_shape:
        raise ArtifactError(
            f"envelope input {model.input_shape}, artifact {extractor.input_shape}",
            reason="metadata_mismatch",
        )
    return LoadedDeployment(
        model.name, model.version, model.kind, model.split_k, metadata, extractor
    )


def top_classes(
    probabilities: npt.NDArray[Any],
) -> tuple[tuple[int, ...], tuple[float, ...]]:
    """Each row's most likely class and its probability (clipped to 0..1): what a Result
    carries, at the edge (``full``) and in the cloud."""
    classes = tuple(int(np.argmax(row)) for row in probabilities)
    scores = tuple(
        float(np.clip(row[c], 0.0, 1.0)) for row, c in zip(probabilities, classes, strict=True)
    )
    return classes, scores


def measure_latency(extractor: EdgeExtractor, frames: Pixels, *, repeats: int = 3) -> float:
    """Median seconds per frame of :meth:`EdgeExtractor.run` over ``frames`` (after one
    warm-up run): what a gateway reports as its per-frame cost."""
    if frames.shape[0] == 0:
        raise ValueError("need at least one frame")
    extractor.run(frames[0])
    timings = []
    for _ in range(max(1, repeats)):
        for frame in frames:
            start = time.perf_counter()
            extractor.run(frame)
            timings.append(time.perf_counter() - start)
    return float(np.median(timings))
