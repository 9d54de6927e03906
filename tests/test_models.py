"""cloud.models on real trained models: split, int8 export, profile, feature modes, training
from stored features, fine-tuning, and a real deployment through the registry.

Budget: one CNN trained once per session on ~3,000 rendered Fashion-MNIST items for a few
epochs (well under a minute on 2 cores), cached in module fixtures with everything derived
from it. Accuracy is compared between two paths on the *same* 1,000 held-out items, so the
bounds below are about the paths, not about how good a few-epoch model is.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
import json
import math
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import (
    Ed25519PrivateKey,
    Ed25519PublicKey,
)

from cloud.models import cnn, evaluation, features, profile, release, training
from cloud.models.data import (
    RenderedDataset,
    RenderSettings,
    build_dataset,
    camera_frames,
    render_inputs,
)
from cloud.models.errors import SplitError
from cloud.models.export import LiteRtExport, export_int8
from cloud.registry import Registry
from edgelearn import artifacts, preprocess, signing, wire
from edgelearn.datasets import load_fashion_mnist

pytestmark = [
    pytest.mark.training,
    # Keras converting its own tensors under numpy 2; not ours to fix.
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

SEED = 11
N_TRAIN = 3000
N_HELD_OUT = 1000
EPOCHS = 6
FEATURE_DIM = 32
CLASSES = 10
SIZE = preprocess.DEFAULT_INPUT_SIZE  # the model's input side


@pytest.fixture(scope="module")
def dataset() -> RenderedDataset:
    return build_dataset(N_TRAIN, N_HELD_OUT, seed=SEED)


@pytest.fixture(scope="module")
def raw(dataset: RenderedDataset) -> training.TrainReport:
    """The cloud-only baseline, and the model every split below is cut from."""
    return training.train_cnn(dataset, epochs=EPOCHS, seed=SEED)


@pytest.fixture(scope="module")
def lower_export(
    raw: training.TrainReport, dataset: RenderedDataset
) -> Callable[[int], LiteRtExport]:
    """int8 export of the lower k blocks (k = N: the full model), each made once."""

    @functools.cache
    def export(k: int) -> LiteRtExport:
        part = raw.model if k == cnn.num_blocks(raw.model) else cnn.split(raw.model, k)[0]
        return export_int8(part, dataset.train.inputs)

    return export


@pytest.fixture(scope="module")
def pca(dataset: RenderedDataset) -> artifacts.PcaProjection:
    return features.fit_pca(dataset.train.inputs, FEATURE_DIM, seed=SEED)


@pytest.fixture(scope="module")
def autoencoder(dataset: RenderedDataset) -> tuple[features.AutoencoderFit, LiteRtExport]:
    # Half the items and few epochs: the test is about the artifact and the pipeline.
    fit = features.train_autoencoder(dataset.train.inputs[:1500], FEATURE_DIM, epochs=3, seed=SEED)
    return fit, export_int8(fit.encoder, dataset.train.inputs)


@pytest.fixture(scope="module")
def signing_keys(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Ed25519PrivateKey, Ed25519PublicKey]:
    directory = tmp_path_factory.mktemp("keys")
    signing.generate_key_pair(directory)
    return (
        signing.load_private_key(directory / signing.PRIVATE_KEY_FILE),
        signing.load_public_key(directory / signing.PUBLIC_KEY_FILE),
    )


# ---------------------------------------------------------------------------------------
# Training data and the baseline.


def test_renders_are_a_pure_function_of_seed_and_item(dataset: RenderedDataset) -> None:
    source = load_fashion_mnist("train")
    index = dataset.train.source_index[:5]
    # Training items are stream 1 of build_dataset; rendered alone, they come out the same.
    rendered = render_inputs(source.images, seed=SEED, stream=1, indices=index, workers=1).inputs
    np.testing.assert_array_equal(rendered, dataset.train.inputs[:5])
    other = render_inputs(source.images, seed=SEED + 1, stream=1, indices=index, workers=1).inputs
    assert not np.array_equal(other, rendered)
    assert dataset.train.inputs.shape == (N_TRAIN, SIZE, SIZE, 1)
    assert dataset.train.inputs.dtype == np.uint8
    assert set(np.unique(dataset.train.labels)) == set(range(CLASSES))
    np.testing.assert_array_equal(dataset.train.labels, source.labels[dataset.train.source_index])


def test_baseline_learns(raw: training.TrainReport) -> None:
    # Far above chance (10%) after a few epochs; the exact value is not the point.
    assert raw.held_out_accuracy > 0.4
    assert raw.input_bytes == N_TRAIN * SIZE * SIZE
    assert raw.wall_seconds > 0


# ---------------------------------------------------------------------------------------
# Split.


def test_upper_of_lower_equals_the_full_model_at_every_boundary(
    raw: training.TrainReport, dataset: RenderedDataset
) -> None:
    model = raw.model
    frames = dataset.held_out.inputs[:32].astype(np.float32)
    full = np.asarray(model(frames, training=False))
    rows = profile.profile_cnn(model)
    for k in range(1, cnn.num_blocks(model)):
        lower, upper = cnn.split(model, k)
        middle = np.asarray(lower(frames, training=False))
        assert middle.shape[1:] == rows[k].output_shape
        np.testing.assert_allclose(np.asarray(upper(middle, training=False)), full, atol=1e-5)
        assert cnn.check_split(model, k, dataset.held_out.inputs[:8]) <= 1e-5


def test_boundaries_outside_the_model_are_refused(raw: training.TrainReport) -> None:
    for k in (0, cnn.num_blocks(raw.model), -1):
        with pytest.raises(SplitError) as caught:
            cnn.split(raw.model, k)
        assert caught.value.reason == "bad_boundary"


# ---------------------------------------------------------------------------------------
# int8.

# Budget: 1 point on the same 1,000 held-out items (10 items). Per-tensor int8 activations
# with batch norm folded into ReLU6 convolutions are what MobileNet-style nets are designed
# for; quantisation only flips predictions that were near-ties, a fraction of a percent.
INT8_BUDGET = 0.01


@pytest.mark.parametrize("k", [2, 5, 8])
def test_int8_lower_part_keeps_accuracy(
    raw: training.TrainReport,
    dataset: RenderedDataset,
    lower_export: Callable[[int], LiteRtExport],
    k: int,
) -> None:
    export = lower_export(k)
    assert export.output.dtype == "int8"
    float_accuracy, int8_accuracy = evaluation.split_accuracy(
        raw.model, k, export, dataset.held_out
    )
    assert float_accuracy == pytest.approx(raw.held_out_accuracy, abs=1e-9)
    assert abs(int8_accuracy - float_accuracy) <= INT8_BUDGET


def test_int8_full_model_keeps_accuracy(
    raw: training.TrainReport,
    dataset: RenderedDataset,
    lower_export: Callable[[int], LiteRtExport],
) -> None:
    export = lower_export(cnn.num_blocks(raw.model))
    assert export.output.shape == (CLASSES,)
    assert abs(evaluation.full_accuracy(export, dataset.held_out) - raw.held_out_accuracy) <= (
        INT8_BUDGET
    )


def test_int8_lower_part_is_fast_enough_for_a_gateway(
    raw: training.TrainReport, dataset: RenderedDataset
) -> None:
    latency = evaluation.lower_latency(
        raw.model,
        [2, cnn.num_blocks(raw.model)],
        dataset.train.inputs,
        dataset.held_out.inputs[:50],
    )
    # ~0.1 ms measured on one shared core; 10 ms would mean a float fallback or worse.
    assert all(0 < seconds < 0.010 for seconds in latency.values()), latency


# ---------------------------------------------------------------------------------------
# Profile.


def test_profile_describes_the_real_model(raw: training.TrainReport) -> None:
    model = raw.model
    rows = profile.profile_cnn(model)
    assert [row.k for row in rows] == list(range(cnn.num_blocks(model) + 1))
    assert rows[0].output_shape == (SIZE, SIZE, 1) and rows[0].lower_flops == 0
    assert rows[-1].output_shape == (CLASSES,) and rows[-1].upper_flops == 0
    total = rows[0].upper_flops
    for previous, row in itertools.pairwise(rows):
        assert row.output_elements == math.prod(row.output_shape) == row.output_bytes_int8
        assert row.lower_flops == previous.lower_flops + row.block_flops
        assert row.lower_flops + row.upper_flops == total
    assert rows[-1].lower_params == model.count_params()
    table = profile.format_profile(rows, {2: 0.0001})
    assert len(table.splitlines()) == len(rows) + 1
    assert profile.profile_from_dicts(profile.profile_as_dicts(rows)) == rows


def test_layer_flops_follow_the_layer_configuration(raw: training.TrainReport) -> None:
    stem = raw.model.layers[0]
    conv = stem.get_layer("b1_conv")
    half, filters = SIZE // 2, conv.filters
    assert profile.layer_flops(conv, (SIZE, SIZE, 1), (half, half, filters)) == (
        2 * half * half * filters * conv.kernel_size[0] * conv.kernel_size[1] * 1
    )
    depthwise = raw.model.layers[1].get_layer("b2_dw")
    quarter = half // 2
    assert profile.layer_flops(depthwise, (half, half, filters), (quarter, quarter, filters)) == (
        2 * quarter * quarter * filters * 9
    )
    dense = raw.model.layers[-1].get_layer("b9_dense")
    width = dense.kernel.shape[0]
    # Dense: a multiply-add per weight, a bias add and the softmax per output.
    assert profile.layer_flops(dense, (width,), (10,)) == 2 * width * 10 + 10 + 10


def test_profile_flops_agree_with_tensorflows_own_count(raw: training.TrainReport) -> None:
    """An independent count: TensorFlow's graph profiler on the frozen lower part (it counts
    convolutions and matmuls only, so ours, which adds batch norm and activations, is a few
    percent higher)."""
    import tensorflow as tf
    from tensorflow.python.framework.convert_to_constants import (
        convert_variables_to_constants_v2_as_graph,
    )

    rows = profile.profile_cnn(raw.model)
    for k in (1, 4, 8):
        lower, _ = cnn.split(raw.model, k)
        function = tf.function(lambda x, lower=lower: lower(x, training=False))
        concrete = function.get_concrete_function(tf.TensorSpec([1, SIZE, SIZE, 1], tf.float32))
        _, graph_def = convert_variables_to_constants_v2_as_graph(concrete)
        with tf.Graph().as_default() as graph:
            tf.graph_util.import_graph_def(graph_def, name="")
            options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
            options["output"] = "none"
            counted = tf.compat.v1.profiler.profile(graph=graph, cmd="op", options=options)
        assert counted.total_float_ops <= rows[k].lower_flops <= 1.10 * counted.total_float_ops


# ---------------------------------------------------------------------------------------
# Edge artifacts on the gateway path (no TensorFlow).

_GATEWAY_SCRIPT = textwrap.dedent(
    """
    import json, sys
    # Any attempt to import these on the gateway path fails loudly.
    for name in ("tensorflow", "keras", "sklearn"):
        sys.modules[name] = None
    from pathlib import Path
    from edgelearn.artifacts import load_edge_artifact
    from edgelearn.preprocess import frame_to_input

    directory = Path(sys.argv[1])
    model_input = frame_to_input((directory / "frame.jpg").read_bytes())
    result = {}
    for kind in ("pca", "autoencoder", "split", "full"):
        metadata = json.loads((directory / f"{kind}.json").read_text())
        extractor = load_edge_artifact(kind, (directory / kind).read_bytes(), metadata)
        output = extractor.run(model_input)
        result[kind] = {
            "shape": list(output.shape),
            "dtype": str(output.dtype),
            "values": output.reshape(-1).tolist(),
            "output": extractor.output.to_dict(),
        }
    print(json.dumps(result))
    """
)


def test_edge_artifacts_run_on_the_gateway_without_tensorflow(
    tmp_path: Path,
    raw: training.TrainReport,
    lower_export: Callable[[int], LiteRtExport],
    pca: artifacts.PcaProjection,
    autoencoder: tuple[features.AutoencoderFit, LiteRtExport],
) -> None:
    k = 4
    full_k = cnn.num_blocks(raw.model)
    edge: dict[str, tuple[bytes, artifacts.TensorQuantization]] = {
        "pca": (pca.to_bytes(), pca.output),
        "autoencoder": (autoencoder[1].flatbuffer, autoencoder[1].output),
        "split": (lower_export(k).flatbuffer, lower_export(k).output),
        "full": (lower_export(full_k).flatbuffer, lower_export(full_k).output),
    }
    for kind, (artifact, output) in edge.items():
        (tmp_path / kind).write_bytes(artifact)
        (tmp_path / f"{kind}.json").write_text(json.dumps({"output": output.to_dict()}))
    # The whole-frame path (one item in the middle): the JPEG's model input is a pure
    # function of the JPEG, which the gateway script below can recompute on its own.
    whole_frame = dataclasses.replace(RenderSettings.camera(), objects=False)
    frame = camera_frames(load_fashion_mnist("test"), 1, seed=SEED, settings=whole_frame)
    # camera_frames keeps only the model input; render the JPEG the camera would send.
    from cameras.scene import LabeledScene

    image = LabeledScene(load_fashion_mnist("test"), seed=SEED * 1000, dwell_frames=1).render(0)
    jpeg = preprocess.encode_jpeg(image.image, 85)  # the training renders' quality
    (tmp_path / "frame.jpg").write_bytes(jpeg)
    np.testing.assert_array_equal(preprocess.frame_to_input(jpeg), frame.inputs[0])

    completed = subprocess.run(
        [sys.executable, "-c", _GATEWAY_SCRIPT, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])

    documented = {
        "pca": (FEATURE_DIM,),
        "autoencoder": (FEATURE_DIM,),
        "split": profile.profile_cnn(raw.model)[k].output_shape,
        "full": (CLASSES,),
    }
    model_input = preprocess.frame_to_input(jpeg)
    for kind, shape in documented.items():
        assert tuple(result[kind]["shape"]) == shape, kind
        assert result[kind]["dtype"] == "int8", kind
        assert result[kind]["output"] == edge[kind][1].to_dict(), kind
        # Same numbers as the same artifact run in this (TensorFlow-importing) process.
        here = artifacts.load_edge_artifact(kind, edge[kind][0]).run(model_input)
        assert result[kind]["values"] == here.reshape(-1).tolist(), kind
    probabilities = edge["full"][1].dequantize(np.asarray(result["full"]["values"]))
    assert probabilities.sum() == pytest.approx(1.0, abs=0.05)


# ---------------------------------------------------------------------------------------
# A real deployment through the registry.


def test_split_release_deploys_and_serves_like_the_model(
    tmp_path: Path,
    raw: training.TrainReport,
    dataset: RenderedDataset,
    lower_export: Callable[[int], LiteRtExport],
    signing_keys: tuple[Ed25519PrivateKey, Ed25519PublicKey],
) -> None:
    private_key, public_key = signing_keys
    registry = Registry(tmp_path / "registry")
    k = 5
    export = lower_export(k)
    entry = release.release_split(
        registry, raw.model, k, dataset, name="garments-cnn", lower_export=export
    )
    _, served = evaluation.split_accuracy(raw.model, k, export, dataset.held_out)
    assert entry.accuracy == pytest.approx(served)
    assert entry.split_k == k and entry.kind == "split"
    assert len(entry.metadata["profile"]) == cnn.num_blocks(raw.model) + 1
    assert entry.metadata["quantization"]["output"] == export.output.to_dict()

    model = registry.deployment("garments-cnn", entry.version, private_key)
    received = wire.decode_as(wire.encode(model), wire.Model)
    loaded = artifacts.load_deployment(received, public_key)
    frames = dataset.held_out.inputs[:20]
    at_gateway = np.stack([loaded.extractor.run(frame) for frame in frames])
    np.testing.assert_array_equal(
        at_gateway, artifacts.LiteRtExtractor("split", export.flatbuffer).run_batch(frames)
    )

    # The cloud half from the registry finishes the job like the trained upper part.
    upper = registry.load_cloud_model(entry)
    cloud_side = upper.predict(loaded.extractor.output.dequantize(at_gateway), verbose=0)
    _, trained_upper = cnn.split(raw.model, k)
    expected = trained_upper.predict(loaded.extractor.output.dequantize(at_gateway), verbose=0)
    np.testing.assert_allclose(cloud_side, expected, atol=1e-5)

    flipped = bytearray(received.artifact)
    flipped[len(flipped) // 3] ^= 0x04
    tampered = dataclasses.replace(received, artifact=bytes(flipped))
    with pytest.raises(signing.ModelRejected) as caught:
        artifacts.load_deployment(tampered, public_key)
    assert caught.value.reason == "bad_digest"
    with pytest.raises(signing.ModelRejected) as caught:
        artifacts.load_deployment(received, Ed25519PrivateKey.generate().public_key())
    assert caught.value.reason == "unknown_key"


# ---------------------------------------------------------------------------------------
# Training from stored features vs from raw frames (issue 5 item 5).

# Bound: 5 points on the same 1,000 held-out items. The upper blocks start from scratch on
# features of a lower part trained for this task, so they should match the baseline; 5
# points is ~3.5 standard errors of a paired difference when ~20% of items are predicted
# differently, so a pass is not luck and a broken feature path (wrong dequantisation,
# misaligned labels) fails by far more.
FEATURE_BOUND = 0.05


@pytest.mark.parametrize("k", [6, 8])
def test_upper_trained_from_stored_features_matches_raw_training(
    raw: training.TrainReport,
    dataset: RenderedDataset,
    lower_export: Callable[[int], LiteRtExport],
    k: int,
) -> None:
    extractor = artifacts.LiteRtExtractor("split", lower_export(k).flatbuffer)
    train = evaluation.features_from(extractor, dataset.train)
    held_out = evaluation.features_from(extractor, dataset.held_out)
    config = cnn.CnnConfig()
    report = training.train_upper_from_features(
        train, held_out, config=config, k=k, epochs=EPOCHS, seed=SEED
    )
    assert report.held_out_accuracy >= raw.held_out_accuracy - FEATURE_BOUND
    row = profile.profile_cnn(raw.model)[k]
    assert report.input_bytes == N_TRAIN * row.output_bytes_int8
    # On the 48x48 crop, block 6's 3x3x256 is the crop's own size; the pool (k=8) is 9x less.
    assert report.input_bytes <= raw.input_bytes / (1 if k < 8 else 8)
    # Fewer FLOPs per item and smaller inputs: training the upper part is faster.
    assert report.wall_seconds < raw.wall_seconds


def test_feature_modes_train_a_cloud_classifier_on_tiny_inputs(
    tmp_path: Path,
    raw: training.TrainReport,
    dataset: RenderedDataset,
    pca: artifacts.PcaProjection,
    autoencoder: tuple[features.AutoencoderFit, LiteRtExport],
) -> None:
    """PCA and autoencoder features are 72x smaller than the 48x48 crop. On these scenes (items
    move, backgrounds vary) they lose accuracy against the CNN, unlike on centred MNIST
    digits in papers 000/001: the bound is twice chance, and the gap is reported."""
    registry = Registry(tmp_path / "registry")
    extractors: dict[str, artifacts.EdgeExtractor] = {
        "pca": artifacts.PcaExtractor(pca),
        "autoencoder": artifacts.LiteRtExtractor("autoencoder", autoencoder[1].flatbuffer),
    }
    for kind, extractor in extractors.items():
        train = evaluation.features_from(extractor, dataset.train)
        held_out = evaluation.features_from(extractor, dataset.held_out)
        assert train.values.shape == (N_TRAIN, FEATURE_DIM) and train.values.dtype == np.int8
        report = training.train_feature_classifier(
            train, held_out, classes=CLASSES, epochs=20, seed=SEED
        )
        assert report.held_out_accuracy > 2 / CLASSES, kind
        assert report.input_bytes == N_TRAIN * FEATURE_DIM
        assert report.input_bytes * 70 < raw.input_bytes
        if kind == "pca":
            entry = release.release_pca(registry, pca, report.model, dataset, name="garments-pca")
        else:
            entry = release.release_autoencoder(
                registry, autoencoder[1], report.model, dataset, name="garments-ae"
            )
        assert entry.accuracy == pytest.approx(report.held_out_accuracy)
        assert entry.metadata["extra"]["dim"] == FEATURE_DIM


def test_pca_components_are_orthonormal_and_project_like_sklearn(
    pca: artifacts.PcaProjection, dataset: RenderedDataset
) -> None:
    gram = pca.components @ pca.components.T
    np.testing.assert_allclose(gram, np.eye(FEATURE_DIM), atol=1e-4)
    frames = dataset.held_out.inputs[:10]
    by_hand = (frames.reshape(10, -1) / 255.0 - pca.mean) @ pca.components.T
    np.testing.assert_allclose(pca.project(frames), by_hand, rtol=1e-3, atol=1e-3)
    assert artifacts.PcaProjection.from_bytes(pca.to_bytes()).output == pca.output
    # The leading component carries the most variance.
    projected = pca.project(dataset.held_out.inputs)
    variances = projected.var(axis=0)
    assert variances[0] == variances.max()


# ---------------------------------------------------------------------------------------
# Fine-tuning the upper part while the gateways keep their lower part.


def test_fine_tuning_changes_only_the_upper_part(
    raw: training.TrainReport,
    dataset: RenderedDataset,
    lower_export: Callable[[int], LiteRtExport],
) -> None:
    k = 5
    deployed = lower_export(k)
    extractor = artifacts.LiteRtExtractor("split", deployed.flatbuffer)
    # New items the model has not seen, arriving as features from the deployed lower part.
    source = load_fashion_mnist("train")
    unseen = np.setdiff1d(np.arange(len(source)), dataset.train.source_index)[:1000]
    new_inputs = render_inputs(source.images, seed=SEED, stream=5, indices=unseen).inputs
    new_features = training.StoredFeatures(
        extractor.run_batch(new_inputs), source.labels[unseen].astype(np.int64), extractor.output
    )
    held_out = evaluation.features_from(extractor, dataset.held_out)
    before = [w.copy() for w in raw.model.get_weights()]
    _, served_before = evaluation.split_accuracy(raw.model, k, deployed, dataset.held_out)

    report = training.fine_tune_upper(raw.model, k, new_features, held_out, epochs=2, seed=SEED)

    for original, now in zip(before, raw.model.get_weights(), strict=True):
        np.testing.assert_array_equal(original, now)  # the deployed model is untouched
    old_lower, _ = cnn.split(raw.model, k)
    new_lower, new_upper = cnn.split(report.model, k)
    for original, tuned in zip(old_lower.get_weights(), new_lower.get_weights(), strict=True):
        np.testing.assert_array_equal(original, tuned)  # gateways keep their artifact
    # The old int8 lower part feeds the new upper part: that is the served accuracy.
    served_after = training.accuracy(new_upper, held_out.dequantized(), held_out.labels)
    assert served_after == pytest.approx(report.held_out_accuracy)
    # 1,000 more labelled items should not make the model worse (3 points of slack for
    # the noise of two short trainings on the same held-out items).
    assert served_after >= served_before - 0.03


# ---------------------------------------------------------------------------------------
# Training renders vs real camera frames.


def test_reduced_renders_predict_like_real_720p_camera_frames(
    raw: training.TrainReport,
) -> None:
    """The cloud renders training frames at 320x180 instead of 720p + reduced decode. On the
    same 600 scene frames at both sizes (paired), accuracy must agree: with ~10% of frames
    predicted differently the paired standard error is ~1.3 points, so 4 points is ~3 SE;
    the 1-point claim is measured on a larger run (see the report), not asserted here."""
    comparison = evaluation.compare_render_paths(
        raw.model, load_fashion_mnist("test"), 600, seed=SEED
    )
    assert abs(comparison.camera_accuracy - comparison.reduced_accuracy) <= 0.04
    assert comparison.agreement >= 0.8
    assert comparison.camera_accuracy > 0.4
    # What the uplink carries in cloud-only mode: a 720p JPEG is ~10x the reduced render.
    assert comparison.camera_jpeg_bytes_mean > 5 * comparison.reduced_jpeg_bytes_mean
