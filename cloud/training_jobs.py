"""Training the cloud half from what the edge actually sent (``edgelearn train``).

Where it sits: consumers fill the :class:`cloud.feature_store.FeatureStore`; this module
reads one kind of stored feature and trains on it:

* ``pca`` / ``autoencoder``: a fresh feature classifier on the stored int8 features;
* ``split:k``: the deployed upper blocks fine-tuned on stored block-k activations, while the
  gateways' int8 lower part stays exactly as deployed;
* ``raw``: the cloud-only baseline, the whole CNN trained on the crops of the objects the
  consumers cut of the camera JPEGs (or on the JPEGs' centre squares, for whole frames).

Every run is scored on the same rendered held-out items (Fashion-MNIST's test split, through
the gateway's own preprocessing and, for feature modes, the deployed edge artifact), and
reports training time, the bytes that crossed the uplink to deliver the training data, and
held-out accuracy, so modes compare side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from cloud.feature_store import FeatureStore
from cloud.registry import EDGE, Registry
from edgelearn import preprocess
from edgelearn.artifacts import TensorQuantization, load_edge_artifact
from edgelearn.datasets import load_fashion_mnist
from edgelearn.modes import RAW, SPLIT


def _held_out_inputs(
    count: int, size: int, channels: int, objects: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    from cloud.models.data import RenderSettings, render_inputs

    test = load_fashion_mnist("test")
    count = min(count, len(test.labels))
    settings = RenderSettings(input_size=size, channels=channels, objects=objects)
    renders = render_inputs(
        test.images, seed=7, stream=3, indices=np.arange(count), settings=settings
    )
    return renders.inputs, test.labels[renders.shown].astype(np.int64)


def train_from_store(
    *,
    registry_root: Path,
    store_root: Path,
    mode: str,
    version: str | None,
    epochs: int,
    n_held_out: int,
    save: bool = False,
) -> dict[str, Any]:
    store = FeatureStore(store_root)
    versions = [v for kind, v in store.kinds() if kind == mode]
    if not versions:
        raise FileNotFoundError(
            f"no stored {mode} features in {store_root}; run the pipeline in {mode} mode first"
        )
    registry = Registry(registry_root)
    version = version or versions[-1]
    loaded = store.load(mode, version)
    report: dict[str, Any] = {
        "mode": mode,
        "features_version": version,
        "n_train": len(loaded.labels),
        "uplink_bytes": loaded.uplink_bytes,
    }
    if mode == RAW:
        from cloud.models.data import RenderedDataset, RenderedSplit
        from cloud.models.training import train_cnn

        if loaded.jpegs:  # whole frames: their centre squares
            inputs = np.stack([preprocess.frame_to_input(jpeg) for jpeg in loaded.jpegs])
            sizes = np.asarray([len(jpeg) for jpeg in loaded.jpegs], np.int64)
        else:  # objects: the crops the consumer cut, and each one's share of its JPEG
            inputs = np.asarray(loaded.values, np.uint8)
            sizes = np.full(len(inputs), loaded.uplink_bytes // max(1, len(inputs)), np.int64)
        held_inputs, held_labels = _held_out_inputs(
            n_held_out, inputs.shape[1], inputs.shape[3], objects=not loaded.jpegs
        )
        data = RenderedDataset(
            train=RenderedSplit(inputs, loaded.labels, sizes, np.arange(len(sizes))),
            held_out=RenderedSplit(
                held_inputs,
                held_labels,
                np.zeros(len(held_labels), np.int64),
                np.arange(len(held_labels)),
            ),
            class_names=load_fashion_mnist("test").class_names,
        )
        trained = train_cnn(data, epochs=epochs)
        report["training_seconds"] = round(trained.wall_seconds, 2)
        report["held_out_accuracy"] = trained.held_out_accuracy
        return report

    entry = registry.by_version(version)
    extractor = load_edge_artifact(entry.kind, entry.read(EDGE), entry.metadata.get("quantization"))
    size, _, channels = entry.input_shape[:3]
    held_inputs, held_labels = _held_out_inputs(n_held_out, size, channels)
    from cloud.models.training import StoredFeatures, fine_tune, train_feature_classifier

    output: TensorQuantization = extractor.output
    train = StoredFeatures(loaded.values, loaded.labels, output)
    held_out = StoredFeatures(extractor.run_batch(held_inputs), held_labels, output)
    report["deployed_accuracy"] = entry.accuracy
    if entry.mode.kind == SPLIT:  # the deployed upper blocks, tuned; the lower part stays
        trained = fine_tune(registry.load_cloud_model(entry), train, held_out, epochs=epochs)
    else:  # a fresh classifier on the features
        classes = len(entry.metadata.get("class_names") or range(10))
        trained = train_feature_classifier(train, held_out, classes=classes, epochs=max(epochs, 15))
    model = trained.model
    report["training_seconds"] = round(trained.wall_seconds, 2)
    report["held_out_accuracy"] = trained.held_out_accuracy
    if save:
        from cloud.registry import keras_to_bytes

        saved = registry.save(
            name=entry.name,
            kind=entry.kind,
            task=entry.task,
            input_shape=entry.input_shape,
            edge_artifact=entry.read(EDGE),
            cloud_artifact=keras_to_bytes(model),
            split_k=entry.split_k,
            accuracy=report["held_out_accuracy"],
            quantization=entry.metadata.get("quantization"),
            profile=entry.metadata.get("profile"),
            class_names=entry.metadata.get("class_names"),
            extra={"trained_from_features": version, "n_train": len(loaded.labels)},
        )
        report["saved_version"] = saved.version
        report["next"] = f"edgelearn model push {saved.name} {saved.version}"
    return report
