"""A cloud half that is only dense layers, answered in numpy.

Where it sits: :class:`cloud.serving.RegistryModels` loads each cloud half as a Keras model;
when its layers are all of the few kinds below, :meth:`DenseHead.of` copies their weights
out and the consumers answer with a few numpy products instead of a TensorFlow call. Those
halves are tiny: ``split:8``'s upper part is one dense layer (1,290 to 2,570 weights, by the
CNN's width), ``split:7``'s a pooling before it, the ``pca`` and ``autoencoder`` classifiers
three dense layers. A TensorFlow graph call costs 0.5-2 ms a batch on these cores and wakes
TensorFlow's thread pools, which the gateway and brokers share; numpy answers the same batch
in tens of microseconds, in the calling thread. Halves with convolutions (``split:2`` to
``split:6``, the cloud-only CNN) stay with TensorFlow.

The arithmetic is Keras' own, in float32, so the answers agree with the Keras model's to
float rounding: the same classes, probabilities within about 1e-6
(``tests/test_latency.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]
Step = Callable[[Array], Array]


def _softmax(x: Array) -> Array:
    shifted = np.exp(x - x.max(axis=-1, keepdims=True))
    return np.asarray(shifted / shifted.sum(axis=-1, keepdims=True), np.float32)


_ACTIVATIONS: dict[str, Step] = {
    "linear": lambda x: x,
    "relu": lambda x: np.maximum(x, np.float32(0)),
    "softmax": _softmax,
}


def _dense(layer: Any) -> Step | None:
    config = layer.get_config()
    activation = _ACTIVATIONS.get(str(config.get("activation")))
    weights = [np.asarray(w, np.float32) for w in layer.get_weights()]
    if activation is None or len(weights) != (2 if config.get("use_bias") else 1):
        return None  # a custom activation, or a quantised or LoRA kernel
    kernel = weights[0]
    bias = weights[1] if len(weights) == 2 else np.zeros(kernel.shape[1], np.float32)
    return lambda x: activation(x @ kernel + bias)


def _normalization(layer: Any) -> Step | None:
    if layer.invert:
        return None
    mean = np.asarray(layer.mean, np.float32)
    # Keras: (x - mean) / max(sqrt(variance), epsilon)
    scale = np.maximum(np.sqrt(np.asarray(layer.variance, np.float32)), np.float32(1e-7))
    return lambda x: np.asarray((x - mean) / scale, np.float32)


def _pooling(layer: Any) -> Step | None:
    if layer.data_format != "channels_last" or layer.keepdims:
        return None
    return lambda x: np.asarray(x.mean(axis=(1, 2)), np.float32)


_KINDS: dict[str, Callable[[Any], Step | None]] = {
    "Dense": _dense,
    "Dropout": lambda layer: lambda x: x,  # inference: the identity
    "GlobalAveragePooling2D": _pooling,
    "Normalization": _normalization,
}


def _steps(layer: Any) -> list[Step] | None:
    """``layer``'s computation as numpy steps (a nested model's, in order); None if any
    layer is of another kind."""
    inner = getattr(layer, "layers", None)
    if inner is not None:  # a Sequential, possibly of Sequentials (the split CNN's blocks)
        steps: list[Step] = []
        for sublayer in inner:
            found = _steps(sublayer)
            if found is None:
                return None
            steps += found
        return steps
    make = _KINDS.get(type(layer).__name__)
    step = make(layer) if make is not None else None
    return None if step is None else [step]


@dataclass(frozen=True, eq=False)
class DenseHead:
    """A Keras model's dense layers, answered in numpy."""

    steps: tuple[Step, ...]
    input_shape: tuple[int, ...]

    @classmethod
    def of(cls, model: Any) -> DenseHead | None:
        """``model`` (a Keras ``Sequential``, nested ones allowed) in numpy, or None when
        it has a layer of a kind this does not run (a convolution: TensorFlow answers)."""
        if type(model).__name__ != "Sequential":
            return None
        steps = _steps(model)
        if not steps:
            return None
        return cls(tuple(steps), tuple(int(d) for d in model.input_shape[1:]))

    def predict(self, batch: npt.ArrayLike) -> Array:
        """``(N, *input_shape)`` -> the model's output, float32."""
        x = np.asarray(batch, np.float32)
        if x.shape[1:] != self.input_shape:
            raise ValueError(f"input {x.shape}, expected (N, {self.input_shape})")
        for step in self.steps:
            x = step(x)
        return np.asarray(x, np.float32)
