"""The split CNN: a small MobileNet-style classifier whose blocks are the split boundaries.

Where it sits: the cloud trains it (:mod:`cloud.models.training`), the scheduler picks a
boundary ``k`` from its profile (:mod:`cloud.models.profile`), :func:`split` cuts it there,
the lower ``k`` blocks go to gateways as int8 LiteRT (:mod:`cloud.models.export`) and the
cloud runs the upper blocks on the dequantised activations (paper 003's split AlexNet, with
a network small enough for a gateway).

The model is a ``keras.Sequential`` of *blocks*, each itself a ``keras.Sequential``, so
``model.layers[k - 1]`` is block ``k`` and a boundary is always between whole blocks:

====  ==========================  =============================================
k     block                       output for the default 48x48x1 input
====  ==========================  =============================================
1     stem: rescale, conv 3x3/2   24x24x32
2..7  depthwise-separable         12x12x64, 12x12x64, 6x6x128, 6x6x128,
      (dw 3x3 + BN + ReLU6,       3x3x256, 3x3x256
      pw 1x1 + BN + ReLU6)
8     global average pool         256
9     classifier: dropout, dense  10 class probabilities
====  ==========================  =============================================

``split:k`` is meaningful for k = 1..N-1 (N = 9 by default); k = N is the ``full`` mode.
ReLU6 and batch norm (folded into the convolutions by the converter) are what keeps
MobileNet accurate in int8. Input is ``uint8`` pixels as float (0..255), see
:mod:`edgelearn.preprocess`; the stem rescales to [0, 1].

TensorFlow is imported inside functions: importing this module is cheap, and nothing on the
gateway's path imports it anyway.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.models.errors import SplitError

# Keras models are untyped; this alias documents where one is expected.
KerasModel = Any

# Keras' default (0.99) leaves the moving statistics far behind the weights during the short
# trainings we run (a few hundred steps), and depthwise blocks then predict at chance in
# inference mode; 0.9 tracks within ~20 steps.
BN_MOMENTUM = 0.9


@dataclass(frozen=True)
class CnnConfig:
    """Architecture of the split CNN. ``widths[0]``/``strides[0]`` are the stem's, the rest
    one depthwise-separable block each."""

    input_size: int = 48
    channels: int = 1
    classes: int = 10
    # Measured on crops of 20,000 items, 6 epochs, 2,000 held out: half these widths at 64
    # px 84.0%, at 48 px 82.2%; these at 48 px 84.6%, 1.5x them 84.8%. Twice the narrow
    # net on a quarter of the pixels of 96 px: 6.3 MFLOPs a crop (7.3 before) and a
    # training step about 3x faster, which the growing plan spends on more distinct items.
    widths: tuple[int, ...] = (32, 64, 64, 128, 128, 256, 256)
    strides: tuple[int, ...] = (2, 2, 1, 2, 1, 2, 1)
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if len(self.widths) != len(self.strides) or not self.widths:
            raise ValueError("widths and strides must be non-empty and the same length")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.input_size, self.input_size, self.channels)

    @property
    def num_blocks(self) -> int:
        """N: convolutional blocks + pooling + classifier."""
        return len(self.widths) + 2

    def to_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "channels": self.channels,
            "classes": self.classes,
            "widths": list(self.widths),
            "strides": list(self.strides),
            "dropout": self.dropout,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CnnConfig:
        return cls(
            input_size=int(data["input_size"]),
            channels=int(data["channels"]),
            classes=int(data["classes"]),
            widths=tuple(int(w) for w in data["widths"]),
            strides=tuple(int(s) for s in data["strides"]),
            dropout=float(data["dropout"]),
        )


def build_blocks(config: CnnConfig) -> list[KerasModel]:
    """Fresh (untrained) blocks 1..N, each a ``keras.Sequential`` with its input shape."""
    import keras
    from keras import layers

    blocks: list[KerasModel] = []
    shape: tuple[int, ...] = config.input_shape
    stem_width, stem_stride = config.widths[0], config.strides[0]
    blocks.append(
        keras.Sequential(
            [
                keras.Input(shape),
                layers.Rescaling(1.0 / 255.0, name="b1_rescale"),
                layers.Conv2D(
                    stem_width,
                    3,
                    strides=stem_stride,
                    padding="same",
                    use_bias=False,
                    name="b1_conv",
                ),
                layers.BatchNormalization(momentum=BN_MOMENTUM, name="b1_bn"),
                layers.ReLU(6.0, name="b1_relu6"),
            ],
            name="b1_stem",
        )
    )
    shape = blocks[-1].output_shape[1:]
    for index, (width, stride) in enumerate(
        zip(config.widths[1:], config.strides[1:], strict=True)
    ):
        k = index + 2
        blocks.append(
            keras.Sequential(
                [
                    keras.Input(shape),
                    layers.DepthwiseConv2D(
                        3, strides=stride, padding="same", use_bias=False, name=f"b{k}_dw"
                    ),
                    layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"b{k}_dw_bn"),
                    layers.ReLU(6.0, name=f"b{k}_dw_relu6"),
                    layers.Conv2D(width, 1, use_bias=False, name=f"b{k}_pw"),
                    layers.BatchNormalization(momentum=BN_MOMENTUM, name=f"b{k}_pw_bn"),
                    layers.ReLU(6.0, name=f"b{k}_pw_relu6"),
                ],
                name=f"b{k}_dws",
            )
        )
        shape = blocks[-1].output_shape[1:]
    k = len(config.widths) + 1
    blocks.append(
        keras.Sequential(
            [keras.Input(shape), layers.GlobalAveragePooling2D(name=f"b{k}_gap")], name=f"b{k}_pool"
        )
    )
    shape = blocks[-1].output_shape[1:]
    k += 1
    blocks.append(
        keras.Sequential(
            [
                keras.Input(shape),
                layers.Dropout(config.dropout, name=f"b{k}_dropout"),
                layers.Dense(config.classes, activation="softmax", name=f"b{k}_dense"),
            ],
            name=f"b{k}_classifier",
        )
    )
    return blocks


def build_cnn(config: CnnConfig | None = None) -> KerasModel:
    """An untrained split CNN (see the module docstring for its blocks)."""
    import keras

    config = config or CnnConfig()
    return keras.Sequential(
        [keras.Input(config.input_shape), *build_blocks(config)], name="split_cnn"
    )


def num_blocks(model: KerasModel) -> int:
    return len(model.layers)


def _check_boundary(model: KerasModel, k: int) -> None:
    if not 1 <= k < num_blocks(model):
        raise SplitError(
            f"k={k}; this model splits at 1..{num_blocks(model) - 1}", reason="bad_boundary"
        )


def block_input_shape(model: KerasModel, k: int) -> tuple[int, ...]:
    """Shape (without batch) of what block ``k + 1`` consumes, i.e. block ``k``'s output."""
    if k == 0:
        return tuple(int(d) for d in model.input_shape[1:])
    return tuple(int(d) for d in model.layers[k - 1].output_shape[1:])


def split(model: KerasModel, k: int) -> tuple[KerasModel, KerasModel]:
    """``(lower, upper)``: blocks 1..k and k+1..N, sharing the full model's weights."""
    import keras

    _check_boundary(model, k)
    blocks = list(model.layers)
    lower = keras.Sequential(
        [keras.Input(block_input_shape(model, 0)), *blocks[:k]], name=f"lower_k{k}"
    )
    upper = keras.Sequential(
        [keras.Input(block_input_shape(model, k)), *blocks[k:]], name=f"upper_k{k}"
    )
    return lower, upper


def check_split(
    model: KerasModel, k: int, inputs: npt.NDArray[np.uint8], *, atol: float = 1e-5
) -> float:
    """Split at ``k`` and confirm ``upper(lower(x)) == model(x)`` on ``inputs``.

    Returns the largest absolute difference of the class probabilities; raises
    :class:`SplitError` if it exceeds ``atol`` (float32 round-off is ~1e-7 here).
    """
    lower, upper = split(model, k)
    batch = np.asarray(inputs, dtype=np.float32)
    full = np.asarray(model(batch, training=False))
    composed = np.asarray(upper(lower(batch, training=False), training=False))
    difference = float(np.max(np.abs(full - composed)))
    if not difference <= atol:
        raise SplitError(
            f"k={k}: upper(lower(x)) differs from the model by {difference:g}", reason="mismatch"
        )
    return difference


def compose(lower: KerasModel, upper: KerasModel) -> KerasModel:
    """The full model from a lower and an upper part (e.g. after fine-tuning the upper)."""
    import keras

    return keras.Sequential(
        [keras.Input(lower.input_shape[1:]), *lower.layers, *upper.layers], name="split_cnn"
    )


def fresh_upper(config: CnnConfig, k: int) -> KerasModel:
    """Newly initialised blocks k+1..N: what the cloud trains from stored block-k features."""
    import keras

    blocks = build_blocks(config)
    if not 1 <= k < len(blocks):
        raise SplitError(f"k={k}; this model splits at 1..{len(blocks) - 1}", reason="bad_boundary")
    shape = tuple(int(d) for d in blocks[k - 1].output_shape[1:])
    return keras.Sequential([keras.Input(shape), *blocks[k:]], name=f"upper_k{k}")


def clone_with_weights(model: KerasModel) -> KerasModel:
    """An independent copy (fine-tuning must not change the deployed model in place)."""
    import keras

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy
