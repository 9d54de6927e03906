"""Per-split output ratios ``r_k`` and cumulative compute ``l_k`` of real Keras CNNs.

Paper 003 measured ten Caffe CNNs (its Fig. 3); we measure our own. ``build_profiles`` builds six
architectures of different shapes with random weights (nothing is downloaded; weights do not change
shapes or FLOPs) and profiles them from the layers alone:

* a split point ("layer" ``k`` in the paper) is the end of a block: a convolution or dense layer
  with its normalisation, activation and pooling, or a whole residual block, so exactly one tensor
  crosses every split;
* ``r_k`` = elements of the block-``k`` output / elements of the input. Both sides are one byte per
  element: camera frames are uint8 and our gateways run int8-quantised lower layers (LiteRT), so
  the element ratio is the byte ratio;
* ``l_k`` = FLOPs of blocks ``1..k`` / input elements, i.e. FLOPs per input byte, counted from the
  layer configuration (a multiply-add is two FLOPs; convolution, depthwise convolution, dense,
  pooling, and one or two FLOPs per element for bias, batch-norm, activations and residual adds).

Ratios per input byte let the simulator scale a profile to any frame size, which is the paper's
own assumption ("the reduced data size is near an average value for each task").

The table is cached in ``data/cnn_profiles.json`` so that the simulator, the benchmark and the tests
never import TensorFlow; ``regenerate_profiles()`` rebuilds it (a few seconds plus the TensorFlow
import). TensorFlow/Keras is imported lazily inside the builders only.
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from cloud.scheduling.errors import ProfileError

PROFILE_FORMAT = 1
INPUT_SHAPE = (224, 224, 3)
"""Every architecture is profiled at a 224x224 RGB frame (150,528 bytes, inside the paper's
100 kB-1 MB input range)."""

_PACKAGED_TABLE = "cnn_profiles.json"


@dataclass(frozen=True)
class SplitPoint:
    """The end of one block: where the edge server may hand the tensor to the cloud."""

    name: str
    last_layer: str
    output_shape: tuple[int, ...]
    output_ratio: float
    block_flops: float
    cumulative_flops_per_input: float


@dataclass(frozen=True)
class CnnProfile:
    """One architecture's split points, ``r_k`` and ``l_k`` for ``k = 1..layer_count``."""

    architecture: str
    input_shape: tuple[int, ...]
    parameter_count: int
    splits: tuple[SplitPoint, ...]

    def __post_init__(self) -> None:
        if not self.splits:
            raise ProfileError(self.architecture, "has no split points")
        flops = self.cumulative_flops
        if any(b < a for a, b in itertools.pairwise(flops)):
            raise ProfileError(self.architecture, "cumulative FLOPs decrease")
        if any(not (r > 0 and math.isfinite(r)) for r in self.output_ratios):
            raise ProfileError(self.architecture, "output ratios must be positive and finite")

    @property
    def layer_count(self) -> int:
        return len(self.splits)

    @property
    def output_ratios(self) -> tuple[float, ...]:
        return tuple(s.output_ratio for s in self.splits)

    @property
    def cumulative_flops(self) -> tuple[float, ...]:
        return tuple(s.cumulative_flops_per_input for s in self.splits)

    @property
    def total_flops(self) -> float:
        return sum(s.block_flops for s in self.splits)


# --- loading the cached table (no TensorFlow) -------------------------------------------------


def _profile_from_json(entry: dict[str, Any]) -> CnnProfile:
    name = str(entry.get("architecture", "?"))
    try:
        splits = tuple(
            SplitPoint(
                name=str(s["name"]),
                last_layer=str(s["last_layer"]),
                output_shape=tuple(int(v) for v in s["output_shape"]),
                output_ratio=float(s["output_ratio"]),
                block_flops=float(s["block_flops"]),
                cumulative_flops_per_input=float(s["cumulative_flops_per_input"]),
            )
            for s in entry["splits"]
        )
        return CnnProfile(
            architecture=name,
            input_shape=tuple(int(v) for v in entry["input_shape"]),
            parameter_count=int(entry["parameter_count"]),
            splits=splits,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise ProfileError(name, f"malformed profile entry: {exc!r}") from exc


def profiles_from_json(text: str) -> tuple[CnnProfile, ...]:
    """Parse a profile table written by ``profiles_to_json``."""
    try:
        document = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProfileError("<table>", f"not JSON: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != PROFILE_FORMAT:
        raise ProfileError("<table>", f"expected a format-{PROFILE_FORMAT} profile table")
    entries = document.get("profiles")
    if not isinstance(entries, list) or not entries:
        raise ProfileError("<table>", "no profiles")
    return tuple(_profile_from_json(entry) for entry in entries)


def profiles_to_json(profiles: Sequence[CnnProfile], keras_version: str = "") -> str:
    document = {
        "format": PROFILE_FORMAT,
        "description": (
            "Split-point output ratios r_k (elements out / elements in; 1 byte per element on both"
            " sides) and cumulative FLOPs per input element l_k of randomly initialised Keras CNNs."
            " Regenerate with cloud.scheduling.profiles.regenerate_profiles()."
        ),
        "keras_version": keras_version,
        "profiles": [
            {
                "architecture": p.architecture,
                "input_shape": list(p.input_shape),
                "parameter_count": p.parameter_count,
                "splits": [
                    {
                        "name": s.name,
                        "last_layer": s.last_layer,
                        "output_shape": list(s.output_shape),
                        "output_ratio": s.output_ratio,
                        "block_flops": s.block_flops,
                        "cumulative_flops_per_input": s.cumulative_flops_per_input,
                    }
                    for s in p.splits
                ],
            }
            for p in profiles
        ],
    }
    return json.dumps(document, indent=1) + "\n"


def default_table_path() -> Path:
    """The packaged table in the source tree (the file ``regenerate_profiles`` writes)."""
    return Path(__file__).resolve().parent / "data" / _PACKAGED_TABLE


def load_profiles(path: Path | None = None) -> tuple[CnnProfile, ...]:
    """The cached profile table (the packaged one unless ``path`` is given)."""
    if path is None:
        text = resources.files("cloud.scheduling").joinpath("data", _PACKAGED_TABLE).read_text()
    else:
        try:
            text = path.read_text()
        except OSError as exc:
            raise ProfileError("<table>", f"cannot read {path}: {exc}") from exc
    return profiles_from_json(text)


# --- measuring Keras models (TensorFlow imported lazily) ---------------------------------------


def _elements(shape: Sequence[int | None]) -> int:
    return math.prod(int(d) for d in shape[1:] if d is not None)


def _activation_flops(layer: Any, elements: int) -> float:
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", "linear")
    return 0.0 if name == "linear" else float(elements)


def layer_flops(layer: Any) -> float:
    """FLOPs of one Keras layer for one input, from its configuration and tensor shapes."""
    kind = type(layer).__name__
    out_shape = tuple(layer.output.shape)
    out = _elements(out_shape)
    if kind in {"InputLayer", "Flatten", "Dropout", "Reshape", "ZeroPadding2D"}:
        return 0.0
    if kind == "Conv2D":
        in_channels = int(layer.input.shape[-1])
        kernel_h, kernel_w = (int(v) for v in layer.kernel_size)
        per_output = kernel_h * kernel_w * in_channels // int(layer.groups)
        bias = out if layer.use_bias else 0
        return 2.0 * out * per_output + bias + _activation_flops(layer, out)
    if kind == "DepthwiseConv2D":
        kernel_h, kernel_w = (int(v) for v in layer.kernel_size)
        bias = out if layer.use_bias else 0
        return 2.0 * out * kernel_h * kernel_w + bias + _activation_flops(layer, out)
    if kind == "Dense":
        in_features = int(layer.input.shape[-1])
        bias = out if layer.use_bias else 0
        return 2.0 * out * in_features + bias + _activation_flops(layer, out)
    if kind in {"MaxPooling2D", "AveragePooling2D"}:
        pool_h, pool_w = (int(v) for v in layer.pool_size)
        return float(out * pool_h * pool_w)
    if kind in {"GlobalAveragePooling2D", "GlobalMaxPooling2D"}:
        return float(_elements(tuple(layer.input.shape)))
    if kind == "BatchNormalization":
        return 2.0 * out  # folded to one scale and one shift at inference
    if kind in {"ReLU", "LeakyReLU", "Activation", "Softmax"}:
        return float(out)
    if kind == "Add":
        return float(out * (len(layer.input) - 1))
    raise ProfileError(layer.name, f"no FLOP rule for layer type {kind}")


def profile_model(model: Any, architecture: str) -> CnnProfile:
    """Profile a functional Keras model whose layers are named ``b<n>_...`` by block.

    The split after block ``n`` is the output of the last layer of that block in topological
    order; the builders below keep every block single-output so that tensor is the only one
    crossing the split.
    """
    input_shape = tuple(int(d) for d in model.inputs[0].shape[1:])
    input_elements = math.prod(input_shape)
    block_flops: dict[str, float] = {}
    block_last: dict[str, Any] = {}
    for layer in model.layers:
        if type(layer).__name__ == "InputLayer":
            continue
        block = layer.name.split("_", 1)[0]
        if not (block.startswith("b") and block[1:].isdigit()):
            raise ProfileError(architecture, f"layer {layer.name} is not named b<n>_...")
        block_flops[block] = block_flops.get(block, 0.0) + layer_flops(layer)
        block_last[block] = layer
    order = sorted(block_flops, key=lambda b: int(b[1:]))
    if order != [f"b{n}" for n in range(1, len(order) + 1)]:
        raise ProfileError(architecture, f"blocks are not numbered 1..n: {order}")
    splits = []
    cumulative = 0.0
    for block in order:
        cumulative += block_flops[block]
        last = block_last[block]
        out_shape = tuple(int(d) for d in last.output.shape[1:])
        splits.append(
            SplitPoint(
                name=block,
                last_layer=str(last.name),
                output_shape=out_shape,
                output_ratio=math.prod(out_shape) / input_elements,
                block_flops=block_flops[block],
                cumulative_flops_per_input=cumulative / input_elements,
            )
        )
    return CnnProfile(
        architecture=architecture,
        input_shape=input_shape,
        parameter_count=int(model.count_params()),
        splits=tuple(splits),
    )


def _architecture_builders(keras: Any) -> dict[str, Callable[[], Any]]:
    """Six edge-sized CNNs of different shapes; depths span the paper's 5-10 layers."""
    layers = keras.layers

    def conv_bn(x: Any, block: str, filters: int, kernel: int, strides: int = 1) -> Any:
        x = layers.Conv2D(
            filters, kernel, strides=strides, padding="same", use_bias=False, name=f"{block}_conv"
        )(x)
        x = layers.BatchNormalization(name=f"{block}_bn")(x)
        return layers.ReLU(name=f"{block}_relu")(x)

    def lenet_like() -> Any:
        inputs = keras.Input(INPUT_SHAPE, name="input")
        x = layers.Conv2D(6, 5, activation="relu", name="b1_conv")(inputs)
        x = layers.MaxPooling2D(2, name="b1_pool")(x)
        x = layers.Conv2D(16, 5, activation="relu", name="b2_conv")(x)
        x = layers.MaxPooling2D(2, name="b2_pool")(x)
        x = layers.Flatten(name="b3_flatten")(x)
        x = layers.Dense(120, activation="relu", name="b3_dense")(x)
        x = layers.Dense(84, activation="relu", name="b4_dense")(x)
        x = layers.Dense(10, activation="softmax", name="b5_dense")(x)
        return keras.Model(inputs, x, name="lenet_like")

    def alexnet_like() -> Any:
        inputs = keras.Input(INPUT_SHAPE, name="input")
        x = layers.Conv2D(64, 11, strides=4, activation="relu", name="b1_conv")(inputs)
        x = layers.MaxPooling2D(3, strides=2, name="b1_pool")(x)
        x = layers.Conv2D(192, 5, padding="same", activation="relu", name="b2_conv")(x)
        x = layers.MaxPooling2D(3, strides=2, name="b2_pool")(x)
        x = layers.Conv2D(384, 3, padding="same", activation="relu", name="b3_conv")(x)
        x = layers.Conv2D(256, 3, padding="same", activation="relu", name="b4_conv")(x)
        x = layers.Conv2D(256, 3, padding="same", activation="relu", name="b5_conv")(x)
        x = layers.MaxPooling2D(3, strides=2, name="b5_pool")(x)
        x = layers.Flatten(name="b6_flatten")(x)
        # 2048-wide classifier instead of 4096: same shape, a quarter of the weights to build.
        x = layers.Dense(2048, activation="relu", name="b6_dense")(x)
        x = layers.Dense(2048, activation="relu", name="b7_dense")(x)
        x = layers.Dense(1000, activation="softmax", name="b8_dense")(x)
        return keras.Model(inputs, x, name="alexnet_like")

    def vgg_like() -> Any:
        # VGG-11's layout at a quarter of its width, split after every convolution.
        inputs = keras.Input(INPUT_SHAPE, name="input")
        x = inputs
        plan = [(16, True), (32, True), (64, False), (64, True)]
        plan += [(128, False), (128, True), (128, False), (128, True)]
        for n, (filters, pool) in enumerate(plan, start=1):
            x = layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"b{n}_conv")(x)
            if pool:
                x = layers.MaxPooling2D(2, name=f"b{n}_pool")(x)
        x = layers.Flatten(name="b9_flatten")(x)
        x = layers.Dense(256, activation="relu", name="b9_dense")(x)
        x = layers.Dense(10, activation="softmax", name="b10_dense")(x)
        return keras.Model(inputs, x, name="vgg_like")

    def mobilenet_like() -> Any:
        # MobileNet v1 at width multiplier 0.5, fewer repeats of the 14x14 stage.
        inputs = keras.Input(INPUT_SHAPE, name="input")
        x = conv_bn(inputs, "b1", 16, 3, strides=2)
        plan = [(32, 1), (64, 2), (128, 2), (256, 2), (256, 1), (512, 2)]
        for n, (filters, strides) in enumerate(plan, start=2):
            x = layers.DepthwiseConv2D(
                3, strides=strides, padding="same", use_bias=False, name=f"b{n}_dw"
            )(x)
            x = layers.BatchNormalization(name=f"b{n}_dw_bn")(x)
            x = layers.ReLU(name=f"b{n}_dw_relu")(x)
            x = conv_bn(x, f"b{n}_pw", filters, 1)
        x = layers.GlobalAveragePooling2D(name="b8_gap")(x)
        x = layers.Dense(1000, activation="softmax", name="b9_dense")(x)
        return keras.Model(inputs, x, name="mobilenet_like")

    def resnet_like() -> Any:
        inputs = keras.Input(INPUT_SHAPE, name="input")
        x = conv_bn(inputs, "b1", 32, 7, strides=2)
        x = layers.MaxPooling2D(3, strides=2, padding="same", name="b1_pool")(x)
        plan = [(32, 1), (64, 2), (128, 2), (128, 1), (256, 2)]
        for n, (filters, strides) in enumerate(plan, start=2):
            block = f"b{n}"
            shortcut = x
            if strides != 1 or int(x.shape[-1]) != filters:
                shortcut = layers.Conv2D(
                    filters, 1, strides=strides, use_bias=False, name=f"{block}_proj"
                )(x)
                shortcut = layers.BatchNormalization(name=f"{block}_proj_bn")(shortcut)
            y = conv_bn(x, f"{block}_a", filters, 3, strides=strides)
            y = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"{block}_b_conv")(y)
            y = layers.BatchNormalization(name=f"{block}_b_bn")(y)
            x = layers.Add(name=f"{block}_add")([shortcut, y])
            x = layers.ReLU(name=f"{block}_out")(x)
        x = layers.GlobalAveragePooling2D(name="b7_gap")(x)
        x = layers.Dense(1000, activation="softmax", name="b8_dense")(x)
        return keras.Model(inputs, x, name="resnet_like")

    def tiny_yolo_like() -> Any:
        # Tiny-YOLO-v2-shaped detector: the camera network's own kind of model.
        inputs = keras.Input(INPUT_SHAPE, name="input")
        x = inputs
        for n, filters in enumerate([16, 32, 64, 128, 256], start=1):
            x = layers.Conv2D(filters, 3, padding="same", use_bias=False, name=f"b{n}_conv")(x)
            x = layers.BatchNormalization(name=f"b{n}_bn")(x)
            x = layers.LeakyReLU(0.1, name=f"b{n}_leaky")(x)
            x = layers.MaxPooling2D(2, name=f"b{n}_pool")(x)
        for n in (6, 7):
            x = layers.Conv2D(512, 3, padding="same", use_bias=False, name=f"b{n}_conv")(x)
            x = layers.BatchNormalization(name=f"b{n}_bn")(x)
            x = layers.LeakyReLU(0.1, name=f"b{n}_leaky")(x)
        x = layers.Conv2D(125, 1, name="b8_head")(x)  # 5 anchors x (5 + 20 classes)
        return keras.Model(inputs, x, name="tiny_yolo_like")

    return {
        "lenet_like": lenet_like,
        "alexnet_like": alexnet_like,
        "vgg_like": vgg_like,
        "mobilenet_like": mobilenet_like,
        "resnet_like": resnet_like,
        "tiny_yolo_like": tiny_yolo_like,
    }


def build_profiles() -> tuple[tuple[CnnProfile, ...], str]:
    """Build and profile every architecture (random weights); also returns the Keras version."""
    try:
        import keras
    except ImportError as exc:  # pragma: no cover - TensorFlow is a project dependency
        raise ProfileError("<all>", "Keras/TensorFlow is needed to rebuild profiles") from exc
    profiles = []
    for name, build in _architecture_builders(keras).items():
        model = build()
        profiles.append(profile_model(model, name))
        del model
        keras.backend.clear_session()
    return tuple(profiles), str(keras.__version__)


def regenerate_profiles(path: Path | None = None) -> tuple[CnnProfile, ...]:
    """Rebuild the profile table from Keras models and write it (default: the packaged file)."""
    profiles, keras_version = build_profiles()
    target = default_table_path() if path is None else path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(profiles_to_json(profiles, keras_version))
    return profiles
