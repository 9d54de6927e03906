"""Training for the papers' comparison: cloud-only (raw frames) vs edge features.

Where it sits: issue 5's benchmark trains the same task two ways and compares wall time,
bytes of training input and held-out accuracy (papers 000/001: "65-69% less training time at
nearly the same accuracy"):

* :func:`train_cnn` — the cloud-only baseline: the full CNN on preprocessed frames that the
  cloud had to receive as camera JPEGs;
* :func:`train_upper_from_features` — the split mode: gateways ran the fixed int8 lower
  ``k`` blocks, the cloud trains fresh upper blocks on the stored int8 activations;
* :func:`train_feature_classifier` — the PCA / autoencoder modes: a dense classifier on the
  stored int8 features;
* :func:`fine_tune` — new features arrive: adjust a copy of a deployed cloud half (upper
  blocks or feature classifier) while the gateways' part stays exactly as deployed (no new
  edge artifact needed); :func:`fine_tune_upper` does it to the upper blocks of a whole CNN.

Every trainer returns a :class:`TrainReport`. ``wall_seconds`` is the time in ``fit`` only
(data preparation happens at cameras/gateways or once, not per training). ``input_bytes`` is
the size of the arrays the trainer consumed (uint8 frames, or int8 features); ``uplink_bytes``
is what crossed the uplink to deliver them: for raw, the JPEGs of the rendered frames (at
``RenderSettings.render_size``; rendered at the reduced 320x180 these are ~1/10 of a real
720p camera JPEG, see :class:`~cloud.models.evaluation.RenderPathComparison`), otherwise the
uncoded int8 features (the entropy codec shrinks them further). Held-out accuracy is measured on the
path that serves: int8 features from the gateway's LiteRT model into the float upper part.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from cloud.models import cnn
from cloud.models.data import RenderedDataset
from cloud.models.features import build_feature_classifier
from edgelearn.artifacts import TensorQuantization

KerasModel = Any


@dataclass(frozen=True)
class TrainReport:
    model: KerasModel
    wall_seconds: float
    input_bytes: int
    uplink_bytes: int
    held_out_accuracy: float
    epochs: int
    n_train: int
    history: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The numbers, without the model (for logs and benchmark tables)."""
        return {
            "wall_seconds": self.wall_seconds,
            "input_bytes": self.input_bytes,
            "uplink_bytes": self.uplink_bytes,
            "held_out_accuracy": self.held_out_accuracy,
            "epochs": self.epochs,
            "n_train": self.n_train,
        }


@dataclass(frozen=True, eq=False)
class StoredFeatures:
    """Features as the cloud stores them: int8 as the gateways sent them, with their
    quantisation, and the labels that travelled with the frames."""

    values: npt.NDArray[Any]
    labels: npt.NDArray[np.int64]
    quantization: TensorQuantization
    # per row, its weight in the loss (None: 1 each): the continuous trainer gives an item
    # seen in eight near-identical crops the weight of one
    weights: npt.NDArray[np.float32] | None = None

    def __post_init__(self) -> None:
        if tuple(self.values.shape[1:]) != self.quantization.shape:
            raise ValueError(
                f"features {self.values.shape[1:]}, quantisation {self.quantization.shape}"
            )
        if self.values.dtype != self.quantization.numpy_dtype:
            raise ValueError(
                f"features {self.values.dtype}, quantisation {self.quantization.dtype}"
            )
        if self.labels.shape != (self.values.shape[0],):
            raise ValueError(f"{self.values.shape[0]} features, labels {self.labels.shape}")
        if self.weights is not None and self.weights.shape != self.labels.shape:
            raise ValueError(f"{self.values.shape[0]} features, weights {self.weights.shape}")

    @property
    def nbytes(self) -> int:
        return int(self.values.nbytes)

    def dequantized(self) -> npt.NDArray[np.float32]:
        return self.quantization.dequantize(self.values)


def accuracy(
    model: KerasModel, inputs: npt.ArrayLike, labels: npt.NDArray[np.int64], batch_size: int = 256
) -> float:
    """Fraction of ``inputs`` whose arg-max class equals the label."""
    # uint8 frames are passed as they are: Keras casts each batch, a float copy of a large
    # held-out set would be 4x its size.
    probabilities = model.predict(np.asarray(inputs), batch_size=batch_size, verbose=0)
    return float(np.mean(np.argmax(probabilities, axis=1) == labels))


def _fit(
    model: KerasModel,
    inputs: npt.NDArray[Any],
    labels: npt.NDArray[np.int64],
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
    mirror: bool = False,
    weights: npt.NDArray[np.float32] | None = None,
) -> tuple[float, dict[str, list[float]]]:
    """Compile and fit; ``mirror`` flips half of each batch left-right (frames only: a
    mirrored garment is the same garment, a mirrored activation map is not a valid feature);
    ``weights``: each row's weight in the loss."""
    import keras
    import tensorflow as tf

    steps = epochs * max(1, math.ceil(len(labels) / batch_size))
    # Cosine decay to a small rate: with a constant rate, a short run ends wherever the
    # last noisy steps left it (held-out accuracy swung by 10+ points between epochs).
    schedule = keras.optimizers.schedules.CosineDecay(learning_rate, steps, alpha=0.05)
    model.compile(
        optimizer=keras.optimizers.Adam(schedule),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
        jit_compile=False,  # XLA compiles for minutes on CPU for no gain at these sizes
    )

    def prepare(x: Any, y: Any, *w: Any) -> tuple[Any, ...]:
        x = tf.cast(x, tf.float32)
        if mirror:
            flip = tf.random.uniform([tf.shape(x)[0], 1, 1, 1], seed=seed) < 0.5
            x = tf.where(flip, tf.reverse(x, axis=[2]), x)
        return (x, y, *w)

    tensors = (inputs, labels) if weights is None else (inputs, labels, weights)
    dataset = (
        tf.data.Dataset.from_tensor_slices(tensors)
        .shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
        .batch(batch_size)
        .map(prepare)
        .prefetch(2)
    )
    start = time.perf_counter()
    history = model.fit(dataset, epochs=epochs, shuffle=False, verbose=0)  # shuffled above
    wall = time.perf_counter() - start
    return wall, {name: [float(v) for v in values] for name, values in history.history.items()}


def train_cnn(
    data: RenderedDataset,
    *,
    config: cnn.CnnConfig | None = None,
    epochs: int = 5,
    batch_size: int = 64,
    learning_rate: float = 1e-2,
    seed: int = 0,
    mirror: bool = True,
    start_from: KerasModel | None = None,
) -> TrainReport:
    """The full CNN trained on preprocessed frames (``mirror``: random left-right flips, a
    free doubling of a small training set); from scratch, or on from a copy of
    ``start_from`` (a model of the same architecture: the previous generation)."""
    import keras

    keras.utils.set_random_seed(seed)
    config = config or cnn.CnnConfig(
        input_size=data.settings.input_size,
        channels=data.settings.channels,
        classes=data.num_classes,
    )
    model = cnn.build_cnn(config) if start_from is None else cnn.clone_with_weights(start_from)
    wall, history = _fit(
        model,
        data.train.inputs,
        data.train.labels,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        mirror=mirror,
    )
    return TrainReport(
        model=model,
        wall_seconds=wall,
        input_bytes=int(data.train.inputs.nbytes),
        uplink_bytes=int(data.train.jpeg_bytes.sum()),
        held_out_accuracy=accuracy(model, data.held_out.inputs, data.held_out.labels),
        epochs=epochs,
        n_train=len(data.train),
        history=history,
    )


def _fit_features(
    model: KerasModel,
    train: StoredFeatures,
    held_out: StoredFeatures,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    seed: int,
) -> TrainReport:
    """Fit ``model`` on ``train``'s dequantised features; score it on ``held_out``'s."""
    wall, history = _fit(
        model,
        train.dequantized(),
        train.labels,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
        weights=train.weights,
    )
    return TrainReport(
        model=model,
        wall_seconds=wall,
        input_bytes=train.nbytes,
        uplink_bytes=train.nbytes,
        held_out_accuracy=accuracy(model, held_out.dequantized(), held_out.labels),
        epochs=epochs,
        n_train=len(train.labels),
        history=history,
    )


def train_upper_from_features(
    train: StoredFeatures,
    held_out: StoredFeatures,
    *,
    config: cnn.CnnConfig,
    k: int,
    epochs: int = 5,
    batch_size: int = 64,
    learning_rate: float = 1e-2,
    seed: int = 0,
) -> TrainReport:
    """Fresh upper blocks ``k+1..N`` trained on dequantised block-``k`` features."""
    import keras

    keras.utils.set_random_seed(seed)
    upper = cnn.fresh_upper(config, k)
    expected = tuple(int(d) for d in upper.input_shape[1:])
    if expected != train.quantization.shape:
        raise ValueError(f"features {train.quantization.shape}, upper part expects {expected}")
    return _fit_features(
        upper,
        train,
        held_out,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
    )


def train_feature_classifier(
    train: StoredFeatures,
    held_out: StoredFeatures,
    *,
    classes: int,
    epochs: int = 20,
    batch_size: int = 64,
    learning_rate: float = 3e-3,
    seed: int = 0,
) -> TrainReport:
    """The cloud half of the ``pca``/``autoencoder`` modes, trained on stored features."""
    import keras

    keras.utils.set_random_seed(seed)
    model = build_feature_classifier(
        train.quantization.shape, classes, normalize_on=train.dequantized()
    )
    return _fit_features(
        model,
        train,
        held_out,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
    )


def fine_tune(
    part: KerasModel,
    train: StoredFeatures,
    held_out: StoredFeatures,
    *,
    epochs: int = 3,
    batch_size: int = 64,
    learning_rate: float = 5e-4,
    seed: int = 0,
) -> TrainReport:
    """Continue training a copy of a cloud half (upper blocks, or a feature classifier) on
    new features; ``part`` itself is not modified, ``report.model`` is the tuned copy."""
    import keras

    keras.utils.set_random_seed(seed)
    return _fit_features(
        cnn.clone_with_weights(part),
        train,
        held_out,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
    )


def fine_tune_upper(
    model: KerasModel,
    k: int,
    train: StoredFeatures,
    held_out: StoredFeatures,
    *,
    epochs: int = 3,
    batch_size: int = 64,
    learning_rate: float = 5e-4,
    seed: int = 0,
) -> TrainReport:
    """:func:`fine_tune` the upper blocks of ``model`` split at ``k`` on new block-``k``
    features.

    The lower blocks are copied unchanged, so the returned full model's lower part is
    bit-identical to the deployed one (gateways keep their artifact); ``model`` itself is
    not modified. ``report.model`` is the new *full* model; ``cnn.split(report.model, k)[1]``
    is the new upper part the cloud serves.
    """
    lower, upper = cnn.split(model, k)
    lower_copy = cnn.clone_with_weights(lower)
    lower_copy.trainable = False
    report = fine_tune(
        upper,
        train,
        held_out,
        epochs=epochs,
        batch_size=batch_size,
        learning_rate=learning_rate,
        seed=seed,
    )
    return dataclasses.replace(report, model=cnn.compose(lower_copy, report.model))
