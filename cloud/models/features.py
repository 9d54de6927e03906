"""The feature modes of papers 000/001: PCA or an autoencoder at the edge, a classifier in
the cloud on what they send.

Where it sits: the cloud fits the extractor here (PCA with scikit-learn, the autoencoder with
Keras), ships its edge half to gateways (:class:`edgelearn.artifacts.PcaProjection` as
``.npz``; the encoder as int8 LiteRT via :mod:`cloud.models.export`) and trains the
*feature classifier* (:func:`build_feature_classifier`, a small dense network) on the int8
features gateways forward, dequantised. The feature dimension is the knob of paper 001's
Fig. 5 (accuracy vs dimension).

Both extractors see the same model input as the CNN (``uint8 (96, 96, 1)`` from
:mod:`edgelearn.preprocess`) and scale pixels to [0, 1] first.
TensorFlow and scikit-learn are imported inside functions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from edgelearn.artifacts import PcaProjection, TensorQuantization

KerasModel = Any
DEFAULT_PCA_FIT_ITEMS = 10_000


def fit_pca(
    inputs: npt.NDArray[np.uint8],
    dim: int,
    *,
    seed: int = 0,
    max_fit_items: int = DEFAULT_PCA_FIT_ITEMS,
) -> PcaProjection:
    """Fit ``dim`` principal components of ``inputs / 255`` (randomised SVD) and calibrate
    the int8 output range on the projected fit items.

    At most ``max_fit_items`` (a seeded sample) are used: 60,000 frames of 9,216 pixels
    would be 2 GB of float32 for no better components.
    """
    from sklearn.decomposition import PCA

    if inputs.ndim != 4 or inputs.dtype != np.uint8:
        raise ValueError(f"inputs must be uint8 (N,H,W,C), got {inputs.dtype} {inputs.shape}")
    count = inputs.shape[0]
    if not 0 < dim <= min(count, int(np.prod(inputs.shape[1:]))):
        raise ValueError(f"dim {dim} for {count} items of {inputs.shape[1:]}")
    if count > max_fit_items:
        chosen = np.sort(np.random.default_rng(seed).choice(count, max_fit_items, replace=False))
        inputs = inputs[chosen]
    flat = inputs.reshape(inputs.shape[0], -1).astype(np.float32) / np.float32(255.0)
    pca = PCA(n_components=dim, svd_solver="randomized", random_state=seed).fit(flat)
    shape = (int(inputs.shape[1]), int(inputs.shape[2]), int(inputs.shape[3]))
    placeholder = TensorQuantization("int8", (dim,))
    projection = PcaProjection(
        np.asarray(pca.mean_, np.float32),
        np.asarray(pca.components_, np.float32),
        shape,
        placeholder,
    )
    output = TensorQuantization.calibrated(projection.project(inputs), (dim,))
    return PcaProjection(projection.mean, projection.components, shape, output)


def build_autoencoder(input_shape: tuple[int, int, int], dim: int) -> tuple[KerasModel, KerasModel]:
    """``(autoencoder, encoder)``: four stride-2 convolutions down to a linear ``dim`` code,
    mirrored by transposed convolutions back to ``input_shape`` in [0, 1].

    The encoder is its own model (shared layers) so it exports alone to LiteRT.
    """
    import keras
    from keras import layers

    height, width, channels = input_shape
    if height % 16 or width % 16:
        raise ValueError(
            f"input {input_shape}: sides must be multiples of 16 (four stride-2 steps)"
        )
    encoder = keras.Sequential(
        [
            keras.Input(input_shape),
            layers.Rescaling(1.0 / 255.0, name="enc_rescale"),
            layers.Conv2D(16, 3, strides=2, padding="same", activation="relu", name="enc_conv1"),
            layers.Conv2D(32, 3, strides=2, padding="same", activation="relu", name="enc_conv2"),
            layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="enc_conv3"),
            layers.Conv2D(64, 3, strides=2, padding="same", activation="relu", name="enc_conv4"),
            layers.Flatten(name="enc_flatten"),
            layers.Dense(dim, name="enc_code"),
        ],
        name=f"encoder_{dim}",
    )
    small_h, small_w = height // 16, width // 16
    decoder = keras.Sequential(
        [
            keras.Input((dim,)),
            layers.Dense(small_h * small_w * 64, activation="relu", name="dec_dense"),
            layers.Reshape((small_h, small_w, 64), name="dec_reshape"),
            layers.Conv2DTranspose(
                64, 3, strides=2, padding="same", activation="relu", name="dec_up1"
            ),
            layers.Conv2DTranspose(
                32, 3, strides=2, padding="same", activation="relu", name="dec_up2"
            ),
            layers.Conv2DTranspose(
                16, 3, strides=2, padding="same", activation="relu", name="dec_up3"
            ),
            layers.Conv2DTranspose(
                channels, 3, strides=2, padding="same", activation="sigmoid", name="dec_up4"
            ),
        ],
        name=f"decoder_{dim}",
    )
    autoencoder = keras.Sequential(
        [keras.Input(input_shape), encoder, decoder], name=f"autoencoder_{dim}"
    )
    return autoencoder, encoder


@dataclass(frozen=True)
class AutoencoderFit:
    autoencoder: KerasModel
    encoder: KerasModel
    wall_seconds: float
    final_loss: float


def train_autoencoder(
    inputs: npt.NDArray[np.uint8],
    dim: int,
    *,
    labels: npt.NDArray[np.int64] | None = None,
    classes: int = 0,
    class_weight: float = 0.5,
    epochs: int = 5,
    batch_size: int = 64,
    learning_rate: float = 2e-3,
    seed: int = 0,
) -> AutoencoderFit:
    """Fit the autoencoder to reconstruct ``inputs / 255`` (mean squared error). With
    ``labels``, a small classifier head on the code learns the ``classes`` beside it
    (cross-entropy, weighted ``class_weight``): the code then keeps what tells the classes
    apart, which pixels alone do not ask for (on crops, a pixel-only code of 32 numbers
    left the cloud's classifier 10 points under the CNN). Only the encoder goes to the
    gateways; the head is dropped, the cloud trains its own on what the gateways send."""
    import keras
    import tensorflow as tf
    from keras import layers

    keras.utils.set_random_seed(seed)
    shape = (int(inputs.shape[1]), int(inputs.shape[2]), int(inputs.shape[3]))
    autoencoder, encoder = build_autoencoder(shape, dim)
    optimizer = keras.optimizers.Adam(learning_rate)
    if labels is None:
        model = autoencoder
        model.compile(optimizer=optimizer, loss="mse")
        slices: Any = inputs

        def targets(x: Any) -> Any:
            return tf.cast(x, tf.float32), tf.cast(x, tf.float32) / 255.0
    else:
        if classes < 2 or labels.shape != (len(inputs),):
            raise ValueError(f"{classes} classes, labels {labels.shape} for {len(inputs)} inputs")
        pixels = keras.Input(shape)
        code = encoder(pixels)
        head = layers.Dense(64, activation="relu", name="head_hidden")(code)
        head = layers.Dense(classes, activation="softmax", name="head_classes")(head)
        model = keras.Model(pixels, {"pixels": autoencoder.layers[-1](code), "classes": head})
        model.compile(
            optimizer=optimizer,
            loss={"pixels": "mse", "classes": "sparse_categorical_crossentropy"},
            loss_weights={"pixels": 1.0, "classes": class_weight},
        )
        slices = (inputs, labels)

        def targets(x: Any, y: Any) -> Any:  # type: ignore[misc]
            x = tf.cast(x, tf.float32)
            return x, {"pixels": x / 255.0, "classes": y}

    # Targets are made per batch: a float copy of 60,000 frames would be 2 GB.
    dataset = (
        tf.data.Dataset.from_tensor_slices(slices)
        .shuffle(min(len(inputs), 10_000), seed=seed)
        .batch(batch_size)
        .map(targets)
        .prefetch(2)
    )
    start = time.perf_counter()
    history = model.fit(dataset, epochs=epochs, shuffle=False, verbose=0)  # shuffled above
    wall = time.perf_counter() - start
    return AutoencoderFit(autoencoder, encoder, wall, float(history.history["loss"][-1]))


def build_feature_classifier(
    feature_shape: tuple[int, ...],
    classes: int,
    *,
    hidden: tuple[int, ...] = (256, 128),
    dropout: float = 0.3,
    normalize_on: npt.NDArray[np.float32] | None = None,
) -> KerasModel:
    """The cloud-side classifier for ``pca``/``autoencoder`` features (dequantised floats).

    A normalisation layer (fitted on ``normalize_on``, the training features) first, because
    the leading principal components are orders of magnitude larger than the last ones.
    """
    import keras
    from keras import layers

    normalization = layers.Normalization(name="feature_norm")
    if normalize_on is not None:
        normalization.adapt(np.asarray(normalize_on, np.float32).reshape(len(normalize_on), -1))
    stack: list[Any] = [keras.Input(feature_shape)]
    if len(feature_shape) > 1:
        stack.append(layers.Flatten(name="feature_flatten"))
    stack.append(normalization)
    for index, units in enumerate(hidden):
        stack.append(layers.Dense(units, activation="relu", name=f"hidden{index + 1}"))
        stack.append(layers.Dropout(dropout, name=f"dropout{index + 1}"))
    stack.append(layers.Dense(classes, activation="softmax", name="classes"))
    return keras.Sequential(stack, name="feature_classifier")
