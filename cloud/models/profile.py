"""Per-boundary profile of the split CNN: output size and FLOPs at every candidate ``k``.

Where it sits: the scheduler (paper 003) places layers from measured per-layer output sizes
and compute; this module derives them from the *real* Keras model (its layers' configured
kernels, strides and shapes), so a change of architecture changes the table.

One row per boundary ``k = 0..N`` (``k = 0``: the model input, i.e. the ``raw`` extractor
forwarding preprocessed pixels; ``k = N``: the ``full`` model, whose output is the class
probabilities):

``output_shape`` / ``output_elements`` / ``output_bytes_int8``
    what block ``k`` emits per frame; int8 activations are one byte per element, which is
    what a gateway sends for ``split:k`` before entropy coding.
``block_flops`` / ``lower_flops`` / ``upper_flops``
    floating-point operations of block ``k``, of blocks ``1..k`` (the gateway's share) and
    of blocks ``k+1..N`` (the cloud's share). A multiply-add counts 2; batch norm 2 per
    element (the float model runs it; the int8 export folds it into the convolution);
    activations and rescaling 1 per element; pooling 1 per input element.
``block_params`` / ``lower_params``
    weights of block ``k`` and of the lower part (about the int8 artifact size in bytes).

The table is a list of :class:`BoundaryProfile`; :func:`profile_as_dicts` gives the JSON
form stored in the registry's ``metadata.json`` and :func:`format_profile` a text table.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

log = logging.getLogger(__name__)

KerasModel = Any
Shape = tuple[int, ...]


@dataclass(frozen=True)
class BoundaryProfile:
    k: int
    block: str
    output_shape: Shape
    output_elements: int
    output_bytes_int8: int
    block_flops: int
    lower_flops: int
    upper_flops: int
    block_params: int
    lower_params: int


def _activation_flops(layer: KerasModel, elements: int) -> int:
    activation = getattr(layer, "activation", None)
    name = getattr(activation, "__name__", "linear")
    return 0 if name == "linear" else elements


def layer_flops(layer: KerasModel, input_shape: Shape, output_shape: Shape) -> int:
    """FLOPs of one layer for one frame (shapes without batch)."""
    kind = type(layer).__name__
    out_elements = math.prod(output_shape)
    in_elements = math.prod(input_shape)
    if kind == "DepthwiseConv2D":
        kernel_h, kernel_w = layer.kernel_size
        flops = 2 * out_elements * kernel_h * kernel_w
    elif kind == "Conv2D":
        kernel_h, kernel_w = layer.kernel_size
        in_channels = input_shape[-1] // int(getattr(layer, "groups", 1) or 1)
        flops = 2 * out_elements * kernel_h * kernel_w * in_channels
    elif kind == "Conv2DTranspose":
        kernel_h, kernel_w = layer.kernel_size
        # Every input pixel scatters a kernel_h x kernel_w x filters patch.
        flops = 2 * in_elements * kernel_h * kernel_w * int(layer.filters)
    elif kind == "Dense":
        flops = 2 * in_elements * int(layer.units)
    elif kind == "BatchNormalization":
        return 2 * out_elements
    elif kind in ("ReLU", "Activation", "Rescaling", "LeakyReLU", "Softmax"):
        return out_elements
    elif kind in (
        "GlobalAveragePooling2D",
        "GlobalMaxPooling2D",
        "AveragePooling2D",
        "MaxPooling2D",
    ):
        return in_elements
    elif kind in ("Dropout", "Flatten", "Reshape", "InputLayer"):
        return 0
    else:
        log.debug("no FLOP rule for %s; counted as 0", kind)
        return 0
    if getattr(layer, "use_bias", False):
        flops += out_elements
    return int(flops) + _activation_flops(layer, out_elements)


def block_flops(block: KerasModel, input_shape: Shape) -> tuple[int, Shape]:
    """FLOPs of a (nested) block and its output shape, walking its layers in order."""
    total = 0
    shape = input_shape
    for layer in block.layers:
        if hasattr(layer, "layers"):  # a nested Sequential/functional block
            flops, out_shape = block_flops(layer, shape)
        else:
            out_shape = tuple(int(d) for d in layer.compute_output_shape((1, *shape))[1:])
            flops = layer_flops(layer, shape, out_shape)
        total += flops
        shape = out_shape
    return total, shape


def profile_cnn(model: KerasModel) -> list[BoundaryProfile]:
    """Rows ``k = 0..N`` for a model whose top-level layers are its blocks."""
    input_shape: Shape = tuple(int(d) for d in model.input_shape[1:])
    per_block: list[tuple[str, Shape, int, int]] = []
    shape = input_shape
    for block in model.layers:
        flops, shape = block_flops(block, shape)
        per_block.append((block.name, shape, flops, int(block.count_params())))
    total_flops = sum(flops for _, _, flops, _ in per_block)
    rows = [
        BoundaryProfile(
            0,
            "input",
            input_shape,
            math.prod(input_shape),
            math.prod(input_shape),
            0,
            0,
            total_flops,
            0,
            0,
        )
    ]
    lower_flops = lower_params = 0
    for k, (name, out_shape, flops, params) in enumerate(per_block, start=1):
        lower_flops += flops
        lower_params += params
        elements = math.prod(out_shape)
        rows.append(
            BoundaryProfile(
                k=k,
                block=name,
                output_shape=out_shape,
                output_elements=elements,
                output_bytes_int8=elements,
                block_flops=flops,
                lower_flops=lower_flops,
                upper_flops=total_flops - lower_flops,
                block_params=params,
                lower_params=lower_params,
            )
        )
    return rows


def profile_as_dicts(rows: list[BoundaryProfile]) -> list[dict[str, Any]]:
    return [{**asdict(row), "output_shape": list(row.output_shape)} for row in rows]


def profile_from_dicts(rows: list[dict[str, Any]]) -> list[BoundaryProfile]:
    return [BoundaryProfile(**{**row, "output_shape": tuple(row["output_shape"])}) for row in rows]


def format_profile(
    rows: list[BoundaryProfile], latency_seconds: dict[int, float] | None = None
) -> str:
    """A text table (one line per k); ``latency_seconds`` adds a measured column."""
    header = (
        f"{'k':>2} {'block':<14} {'output':<12} {'bytes(int8)':>11} "
        f"{'lower MFLOP':>11} {'upper MFLOP':>11} {'lower params':>12}"
    )
    if latency_seconds is not None:
        header += f" {'lower ms':>8}"
    lines = [header]
    for row in rows:
        line = (
            f"{row.k:>2} {row.block:<14} {'x'.join(map(str, row.output_shape)):<12} "
            f"{row.output_bytes_int8:>11} "
            f"{row.lower_flops / 1e6:>11.2f} {row.upper_flops / 1e6:>11.2f} "
            f"{row.lower_params:>12}"
        )
        if latency_seconds is not None:
            latency = latency_seconds.get(row.k)
            line += f" {latency * 1e3:>8.3f}" if latency is not None else f" {'':>8}"
        lines.append(line)
    return "\n".join(lines)
