"""From a trained model to a registry entry: export, score the served path, profile, save.

Where it sits: the last step of the cloud's trainer. Each ``release_*`` function produces
the edge half (int8 LiteRT or PCA ``.npz``) and the cloud half (``.keras``) of one
deployment, measures held-out accuracy on the path that will serve (int8 edge part, then the
float cloud part), and saves both with their quantisation and, for CNNs, the per-boundary
profile the scheduler reads. :meth:`cloud.registry.Registry.deployment` then signs the edge
half for the gateways.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cloud.models import cnn
from cloud.models.data import RenderedDataset
from cloud.models.evaluation import features_from, full_accuracy, split_accuracy
from cloud.models.export import LiteRtExport, export_int8
from cloud.models.profile import profile_as_dicts, profile_cnn
from cloud.models.training import accuracy
from cloud.registry import ModelEntry, Registry, keras_to_bytes
from edgelearn import roi
from edgelearn.artifacts import (
    KIND_AUTOENCODER,
    KIND_CLOUD_CLASSIFIER,
    KIND_FULL,
    KIND_PCA,
    KIND_SPLIT,
    LiteRtExtractor,
    PcaExtractor,
    PcaProjection,
)

KerasModel = Any
# Items of the split's own data the split-equality check runs on before anything is saved.
_SPLIT_CHECK_ITEMS = 16


def _quantization(export: LiteRtExport) -> dict[str, Any]:
    return {"input": export.input.to_dict(), "output": export.output.to_dict()}


def _save(
    registry: Registry,
    data: RenderedDataset,
    *,
    name: str,
    kind: str,
    cloud_model: KerasModel,
    extra: Mapping[str, Any],
    **fields: Any,
) -> ModelEntry:
    """One entry for ``data``'s task: what every kind records (the data set's task, input
    shape, classes, held-out size and the ``.keras`` cloud half) and ``fields``."""
    return registry.save(
        name=name,
        kind=kind,
        task=data.task,
        input_shape=data.input_shape,
        cloud_artifact=keras_to_bytes(cloud_model),
        class_names=data.class_names,
        extra={
            "held_out_items": len(data.held_out),
            "preprocessing": roi.CROP_RULE if data.settings.objects else "frame",
            **extra,
        },
        **fields,
    )


def release_split(
    registry: Registry,
    model: KerasModel,
    k: int,
    data: RenderedDataset,
    *,
    name: str,
    lower_export: LiteRtExport | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ModelEntry:
    """Save ``split:k``: the int8 lower ``k`` blocks (edge) and the float upper blocks
    (cloud). ``accuracy`` is the int8-lower + float-upper accuracy on the held-out set."""
    cnn.check_split(model, k, data.held_out.inputs[:_SPLIT_CHECK_ITEMS])
    lower, upper = cnn.split(model, k)
    export = lower_export or export_int8(lower, data.train.inputs)
    float_accuracy, served_accuracy = split_accuracy(model, k, export, data.held_out)
    return _save(
        registry,
        data,
        name=name,
        kind=KIND_SPLIT,
        cloud_model=upper,
        extra={"float_accuracy": float_accuracy, **(extra or {})},
        edge_artifact=export.flatbuffer,
        split_k=k,
        accuracy=served_accuracy,
        quantization=_quantization(export),
        profile=profile_as_dicts(profile_cnn(model)),
    )


def release_full(
    registry: Registry,
    model: KerasModel,
    data: RenderedDataset,
    *,
    name: str,
    full_export: LiteRtExport | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ModelEntry:
    """Save ``full``: the whole CNN as int8 LiteRT for edge inference (the float model is
    kept as the cloud half, to fine-tune from)."""
    export = full_export or export_int8(model, data.train.inputs)
    float_accuracy = accuracy(model, data.held_out.inputs, data.held_out.labels)
    return _save(
        registry,
        data,
        name=name,
        kind=KIND_FULL,
        cloud_model=model,
        extra={"float_accuracy": float_accuracy, **(extra or {})},
        edge_artifact=export.flatbuffer,
        split_k=cnn.num_blocks(model),
        accuracy=full_accuracy(export, data.held_out),
        quantization=_quantization(export),
        profile=profile_as_dicts(profile_cnn(model)),
    )


def release_cloud_classifier(
    registry: Registry,
    model: KerasModel,
    data: RenderedDataset,
    *,
    name: str,
    extra: Mapping[str, Any] | None = None,
) -> ModelEntry:
    """Save the cloud-only (``raw`` mode) CNN: runs in the cloud on decoded camera frames."""
    return _save(
        registry,
        data,
        name=name,
        kind=KIND_CLOUD_CLASSIFIER,
        cloud_model=model,
        extra=dict(extra or {}),
        accuracy=accuracy(model, data.held_out.inputs, data.held_out.labels),
        profile=profile_as_dicts(profile_cnn(model)),
    )


def release_pca(
    registry: Registry,
    projection: PcaProjection,
    classifier: KerasModel,
    data: RenderedDataset,
    *,
    name: str,
    extra: Mapping[str, Any] | None = None,
) -> ModelEntry:
    """Save ``pca``: the projection (edge ``.npz``) and the feature classifier (cloud)."""
    held_out = features_from(PcaExtractor(projection), data.held_out)
    return _save(
        registry,
        data,
        name=name,
        kind=KIND_PCA,
        cloud_model=classifier,
        extra={"dim": projection.dim, **(extra or {})},
        edge_artifact=projection.to_bytes(),
        accuracy=accuracy(classifier, held_out.dequantized(), held_out.labels),
        quantization={"output": projection.output.to_dict()},
    )


def release_autoencoder(
    registry: Registry,
    encoder_export: LiteRtExport,
    classifier: KerasModel,
    data: RenderedDataset,
    *,
    name: str,
    extra: Mapping[str, Any] | None = None,
) -> ModelEntry:
    """Save ``autoencoder``: the int8 encoder (edge) and the feature classifier (cloud),
    which must have been trained on features of this very export."""
    held_out = features_from(
        LiteRtExtractor(KIND_AUTOENCODER, encoder_export.flatbuffer), data.held_out
    )
    return _save(
        registry,
        data,
        name=name,
        kind=KIND_AUTOENCODER,
        cloud_model=classifier,
        extra={"dim": encoder_export.output.elements, **(extra or {})},
        edge_artifact=encoder_export.flatbuffer,
        accuracy=accuracy(classifier, held_out.dequantized(), held_out.labels),
        quantization=_quantization(encoder_export),
    )
