"""A cloud half answered in numpy, read from its ``.keras`` archive without TensorFlow.

Where it sits: :class:`cloud.serving.RegistryModels` answers every feature with the cloud half
the registry serves for it. A cloud process that had to import TensorFlow (4-5 s of CPU on
these cores, more on a loaded host) and load each half into Keras before its first answer took
10-14 s from a kill to serving again (issue 24, item 5), and every cloud process in the test
suite paid that import. The halves this project trains are small ``Sequential`` models of a
few layer kinds:

* the split CNN's parts (:mod:`cloud.models.cnn`): a rescaling and convolution stem,
  depthwise-separable blocks (depthwise and pointwise convolutions, batch normalisation,
  ReLU6), global average pooling, a dropout and a dense softmax;
* the ``pca`` and ``autoencoder`` classifiers: normalisation, dense layers and dropout.

:meth:`NumpyHalf.from_archive` reads the archive's ``config.json`` (the architecture) and
``model.weights.h5`` (the weights, through h5py) and runs those layers in numpy, in float32,
with Keras' own arithmetic: the answers agree with Keras' to float rounding
(``tests/test_latency.py``). A half with any other kind of layer, or a setting this does not
run (a dilated convolution, a depth multiplier), gives None, and TensorFlow answers it as
before. :meth:`NumpyHalf.of` does the same from a Keras model already in memory.

It is inference only: training, fine-tuning and export stay with Keras, in the training
process.
"""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]
Step = Callable[[Array], Array]
Weights = Sequence[npt.NDArray[Any]]


def _softmax(x: Array) -> Array:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True), np.float32)


_ACTIVATIONS: dict[str, Step] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, np.float32(0)),
    "softmax": _softmax,
}


def _same_padding(x: Array, kernel: tuple[int, int], strides: tuple[int, int]) -> Array:
    """TensorFlow's ``same``: the output is ceil(input / stride), and the odd pixel of
    padding goes after."""
    pads = [(0, 0)]
    for size, k, s in zip(x.shape[1:3], kernel, strides, strict=True):
        total = max((-(-size // s) - 1) * s + k - size, 0)
        pads.append((total // 2, total - total // 2))
    pads.append((0, 0))
    return np.pad(x, pads) if any(before or after for before, after in pads) else x


def _windows(
    x: Array, kernel: tuple[int, int], strides: tuple[int, int]
) -> tuple[int, int, list[tuple[int, int, Array]]]:
    """The output's height and width, and for each kernel tap (i, j) the input pixels it
    multiplies, as strided views (no copy)."""
    (kh, kw), (sh, sw) = kernel, strides
    out_h = (x.shape[1] - kh) // sh + 1
    out_w = (x.shape[2] - kw) // sw + 1
    taps = [
        (i, j, x[:, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw])
        for i in range(kh)
        for j in range(kw)
    ]
    return out_h, out_w, taps


def _convolution_settings(config: Mapping[str, Any]) -> tuple[tuple[int, int], str] | None:
    strides = tuple(int(s) for s in config.get("strides", (1, 1)))
    dilation = tuple(int(d) for d in config.get("dilation_rate", (1, 1)))
    padding = str(config.get("padding", "valid"))
    if (
        config.get("data_format", "channels_last") != "channels_last"
        or dilation != (1, 1)
        or int(config.get("groups", 1)) != 1
        or padding not in ("same", "valid")
        or len(strides) != 2
    ):
        return None
    return (strides[0], strides[1]), padding


def _bias_and_activation(
    config: Mapping[str, Any], weights: Weights
) -> tuple[Array | None, Step] | None:
    """A layer's bias (after its one kernel, ``weights[0]``) and activation; None for a
    custom activation, or a quantised or LoRA kernel (more weights than these)."""
    activation = _ACTIVATIONS.get(str(config.get("activation", "linear")))
    use_bias = bool(config.get("use_bias"))
    if activation is None or len(weights) != 1 + use_bias:
        return None
    return (np.asarray(weights[1], np.float32) if use_bias else None), activation


def _conv2d(config: Mapping[str, Any], weights: Weights) -> Step | None:
    settings = _convolution_settings(config)
    tail = _bias_and_activation(config, weights)
    if settings is None or tail is None:
        return None
    strides, padding = settings
    (bias, activation) = tail
    kernel = np.asarray(weights[0], np.float32)  # (kh, kw, in, out)
    kh, kw, channels, filters = kernel.shape

    def step(x: Array) -> Array:
        if padding == "same":
            x = _same_padding(x, (kh, kw), strides)
        out_h, out_w, taps = _windows(x, (kh, kw), strides)
        if (kh, kw) == (1, 1):
            columns = np.ascontiguousarray(taps[0][2]).reshape(-1, channels)
        else:  # im2col: each output pixel's kh*kw*in inputs in one row, in the kernel's order
            columns = np.stack([tap for _, _, tap in taps], axis=3).reshape(-1, kh * kw * channels)
        y = (columns @ kernel.reshape(-1, filters)).reshape(x.shape[0], out_h, out_w, filters)
        return activation(y if bias is None else y + bias)

    return step


def _depthwise_conv2d(config: Mapping[str, Any], weights: Weights) -> Step | None:
    settings = _convolution_settings(config)
    tail = _bias_and_activation(config, weights)
    if settings is None or tail is None or int(config.get("depth_multiplier", 1)) != 1:
        return None
    strides, padding = settings
    (bias, activation) = tail
    kernel = np.asarray(weights[0], np.float32)[..., 0]  # (kh, kw, channels)
    kh, kw, _ = kernel.shape

    def step(x: Array) -> Array:
        if padding == "same":
            x = _same_padding(x, (kh, kw), strides)
        _, _, taps = _windows(x, (kh, kw), strides)
        y = np.zeros(taps[0][2].shape, np.float32)
        for i, j, tap in taps:
            y += tap * kernel[i, j]
        return activation(y if bias is None else y + bias)

    return step


def _batch_normalization(config: Mapping[str, Any], weights: Weights) -> Step | None:
    axis = config.get("axis", -1)
    if (axis if isinstance(axis, int) else list(axis)) not in (-1, [-1]):
        return None
    scale, center = bool(config.get("scale", True)), bool(config.get("center", True))
    if len(weights) != 2 + scale + center:
        return None
    values = [np.asarray(w, np.float32) for w in weights]
    gamma = values.pop(0) if scale else np.float32(1)
    beta = values.pop(0) if center else np.float32(0)
    mean, variance = values
    epsilon = np.float32(config.get("epsilon", 1e-3))
    # Keras: (x - mean) / sqrt(variance + epsilon) * gamma + beta, folded into one scale
    factor = np.asarray(gamma / np.sqrt(variance + epsilon), np.float32)
    return lambda x: np.asarray((x - mean) * factor + beta, np.float32)


def _relu(config: Mapping[str, Any], weights: Weights) -> Step | None:
    if float(config.get("negative_slope") or 0) != 0 or float(config.get("threshold") or 0) != 0:
        return None
    maximum = config.get("max_value")
    if maximum is None:
        return _ACTIVATIONS["relu"]
    top = np.float32(maximum)
    return lambda x: np.clip(x, np.float32(0), top)


def _rescaling(config: Mapping[str, Any], weights: Weights) -> Step | None:
    scale = np.asarray(config.get("scale", 1.0), np.float32)
    offset = np.asarray(config.get("offset", 0.0), np.float32)
    return lambda x: np.asarray(x * scale + offset, np.float32)


def _dense(config: Mapping[str, Any], weights: Weights) -> Step | None:
    tail = _bias_and_activation(config, weights)
    if tail is None:
        return None
    bias, activation = tail
    kernel = np.asarray(weights[0], np.float32)
    if bias is None:
        return lambda x: activation(x @ kernel)
    return lambda x: activation(x @ kernel + bias)


def _normalization(config: Mapping[str, Any], weights: Weights) -> Step | None:
    axis = config.get("axis", -1)
    if config.get("invert") or (axis if isinstance(axis, int) else list(axis)) not in (-1, [-1]):
        return None
    if config.get("mean") is not None:  # given in the constructor, not adapted
        mean = np.asarray(config["mean"], np.float32)
        variance = np.asarray(config["variance"], np.float32)
    elif len(weights) == 3:  # adapted: mean, variance, count
        mean, variance = (np.asarray(w, np.float32) for w in weights[:2])
    else:
        return None
    # Keras: (x - mean) / max(sqrt(variance), epsilon)
    scale = np.maximum(np.sqrt(variance), np.float32(1e-7))
    return lambda x: np.asarray((x - mean) / scale, np.float32)


def _pooling(config: Mapping[str, Any], weights: Weights) -> Step | None:
    if config.get("data_format", "channels_last") != "channels_last" or config.get("keepdims"):
        return None
    return lambda x: np.asarray(x.mean(axis=(1, 2)), np.float32)


def _activation(config: Mapping[str, Any], weights: Weights) -> Step | None:
    return _ACTIVATIONS.get(str(config.get("activation")))


_KINDS: dict[str, Callable[[Mapping[str, Any], Weights], Step | None]] = {
    "Activation": _activation,
    "BatchNormalization": _batch_normalization,
    "Conv2D": _conv2d,
    "Dense": _dense,
    "DepthwiseConv2D": _depthwise_conv2d,
    "Dropout": lambda config, weights: lambda x: x,  # inference: the identity
    "Flatten": lambda config, weights: lambda x: x.reshape(x.shape[0], -1),
    "GlobalAveragePooling2D": _pooling,
    "Normalization": _normalization,
    "ReLU": _relu,
    "Rescaling": _rescaling,
}


@dataclass(frozen=True)
class _Layer:
    kind: str
    name: str
    config: Mapping[str, Any]
    inner: tuple[_Layer, ...] | None  # a nested Sequential's layers


def _layer_of(spec: Mapping[str, Any]) -> _Layer:
    config = spec.get("config") or {}
    inner = None
    if spec.get("class_name") == "Sequential":
        inner = tuple(_layer_of(layer) for layer in config.get("layers") or ())
    return _Layer(str(spec.get("class_name")), str(config.get("name")), config, inner)


def _steps(layer: _Layer, weights: Mapping[str, Weights]) -> list[Step] | None:
    """``layer``'s computation as numpy steps (a nested model's, in order); None if any
    layer is of another kind, or its weights are not the ones its kind expects."""
    if layer.inner is not None:
        steps: list[Step] = []
        for sublayer in layer.inner:
            found = _steps(sublayer, weights)
            if found is None:
                return None
            steps += found
        return steps
    if layer.kind == "InputLayer":
        return []
    make = _KINDS.get(layer.kind)
    if make is None or _dtype(layer.config) != "float32":
        return None  # another kind, or mixed precision
    step = make(layer.config, weights.get(layer.name, ()))
    return None if step is None else [step]


def _dtype(config: Mapping[str, Any]) -> str:
    dtype = config.get("dtype") or "float32"
    return str(dtype if isinstance(dtype, str) else (dtype.get("config") or {}).get("name"))


def _archive_weights(data: bytes) -> dict[str, list[npt.NDArray[Any]]] | None:
    """Each layer's variables in the archive's ``model.weights.h5``, by layer name, in the
    order Keras keeps them (``vars/0``, ``vars/1``...). None if two layers share a name."""
    import h5py  # Keras' own weights format; no TensorFlow

    found: dict[str, list[npt.NDArray[Any]]] = {}
    duplicated = False

    def visit(path: str, node: Any) -> None:
        nonlocal duplicated
        if not (isinstance(node, h5py.Group) and path.rsplit("/", 1)[-1] == "vars"):
            return
        name = node.attrs.get("name")
        if name is None or len(node) == 0:
            return
        name = name.decode() if isinstance(name, bytes) else str(name)
        duplicated |= name in found
        found[name] = [np.asarray(node[str(i)]) for i in range(len(node))]

    with h5py.File(io.BytesIO(data), "r") as weights:
        weights.visititems(visit)
    return None if duplicated else found


@dataclass(frozen=True, eq=False)
class NumpyHalf:
    """A Keras ``Sequential`` (nested ones allowed) answered in numpy."""

    steps: tuple[Step, ...]
    input_shape: tuple[int, ...]
    layer_kinds: frozenset[str]

    @classmethod
    def from_archive(cls, archive: bytes) -> NumpyHalf | None:
        """The model saved in ``archive`` (a ``.keras`` zip), or None when it has a layer
        this does not run: TensorFlow answers that one. Raises ValueError for an archive
        that is not a Keras model at all."""
        try:
            with zipfile.ZipFile(io.BytesIO(archive)) as files:
                spec = json.loads(files.read("config.json"))
                weights_file = files.read("model.weights.h5")
        except (zipfile.BadZipFile, KeyError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a .keras archive: {exc}") from exc
        weights = _archive_weights(weights_file)
        if weights is None or spec.get("class_name") != "Sequential":
            return None
        top = _layer_of(spec)
        return cls._build(top, weights, _input_shape(top))

    @classmethod
    def of(cls, model: Any) -> NumpyHalf | None:
        """``model``, a Keras model in memory, or None as :meth:`from_archive`."""
        if type(model).__name__ != "Sequential":
            return None
        weights: dict[str, list[npt.NDArray[Any]]] = {}

        def layer(keras_layer: Any) -> _Layer:
            inner = getattr(keras_layer, "layers", None)
            weights[keras_layer.name] = [np.asarray(w) for w in keras_layer.get_weights()]
            return _Layer(
                type(keras_layer).__name__,
                keras_layer.name,
                {**keras_layer.get_config(), "dtype": str(keras_layer.dtype)},
                None if inner is None else tuple(layer(sub) for sub in inner),
            )

        return cls._build(layer(model), weights, tuple(int(d) for d in model.input_shape[1:]))

    @classmethod
    def _build(
        cls, top: _Layer, weights: Mapping[str, Weights], shape: tuple[int, ...] | None
    ) -> NumpyHalf | None:
        steps = _steps(top, weights)
        if not steps or shape is None:
            return None
        return cls(tuple(steps), shape, frozenset(_kinds(top)))

    def predict(self, batch: npt.ArrayLike) -> Array:
        """``(N, *input_shape)`` -> the model's output, float32."""
        x = np.asarray(batch, np.float32)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"input {x.shape}, expected (N, {self.input_shape})")
        for step in self.steps:
            x = step(x)
        return np.asarray(x, np.float32)


def _input_shape(layer: _Layer) -> tuple[int, ...] | None:
    """A saved model's input shape without the batch: its first InputLayer's."""
    for sublayer in layer.inner or ():
        if sublayer.kind == "InputLayer":
            shape = sublayer.config.get("batch_shape") or sublayer.config.get("batch_input_shape")
            return None if shape is None else tuple(int(d) for d in shape[1:])
        if sublayer.inner is not None:
            return _input_shape(sublayer)
    return None


def _kinds(layer: _Layer) -> list[str]:
    if layer.inner is None:
        return [layer.kind]
    return [kind for sublayer in layer.inner for kind in _kinds(sublayer)]
