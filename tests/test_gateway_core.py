"""Gateway core without sockets: keyframe filter, queues, pipeline modes."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cameras.replay import scene_frames
from cameras.scene import LabeledScene, make_background
from edgelearn import codec, preprocess, roi, signing, wire
from edgelearn import config as config_module
from edgelearn.artifacts import load_deployment
from edgelearn.datasets import load_fashion_mnist
from edgelearn.keyframes import KeyframeFilter, KeyframeSettings
from edgelearn.modes import PCA, RAW, Mode, ModeError
from gateway.config import GatewayConfig
from gateway.ingest import Drops, Ingest, LatestFrames
from gateway.metrics import GatewayMetrics
from gateway.pipeline import (
    Dropped,
    Forward,
    FramePipeline,
    HeldBack,
    decode_small,
)
from stack import broker as broker_module
from tests.support.gateway import pca_deployment


def test_keyframes_catch_every_item_change_and_skip_a_static_scene() -> None:
    dwell = 30
    frames = scene_frames("cam-1", 12 * dwell, seed=3, dwell=dwell)
    scene = LabeledScene(load_fashion_mnist("test"), seed=3, dwell_frames=dwell)
    keyframes = KeyframeFilter(KeyframeSettings())
    decisions = [keyframes.decide("cam-1", decode_small(f.payload), f.label) for f in frames]
    changes = [i for i in range(1, len(frames)) if scene.item_index(i) != scene.item_index(i - 1)]
    assert len(changes) == 11
    assert all(decisions[i].keyframe for i in changes), "an item change was not a keyframe"
    kept = sum(d.keyframe for d in decisions) / len(decisions)
    assert kept < 0.35
    # The frames held back after a settled keyframe show the same item: no mismatches.
    assert sum(d.held_mismatched for d in decisions) == 0

    static = scene_frames("cam-2", 300, seed=4, dwell=10_000)
    still = KeyframeFilter(KeyframeSettings(max_interval=45))
    kept_static = sum(still.decide("cam-2", decode_small(f.payload)).keyframe for f in static)
    assert kept_static / len(static) < 0.06  # entry of the one item + forced re-anchors


def test_every_held_back_frame_is_reported_by_the_next_keyframe() -> None:
    frames = scene_frames("cam-1", 90, seed=5, dwell=30)
    keyframes = KeyframeFilter(KeyframeSettings(max_interval=20))
    decisions = [keyframes.decide("cam-1", decode_small(f.payload), f.label) for f in frames]
    last_keyframe = max(i for i, d in enumerate(decisions) if d.keyframe)
    held_before_last = sum(not d.keyframe for d in decisions[:last_keyframe])
    assert held_before_last > 30  # most frames were held back...
    assert sum(d.held_back for d in decisions) == held_before_last  # ...and all reported
    gaps = [
        b - a
        for a, b in zip(
            [i for i, d in enumerate(decisions) if d.keyframe],
            [i for i, d in enumerate(decisions) if d.keyframe][1:],
            strict=False,
        )
    ]
    assert max(gaps) <= 20  # max_interval forces a keyframe


def test_queue_newest_wins_and_counts_every_drop() -> None:
    drops: list[tuple[str, str]] = []
    queue: LatestFrames[int] = LatestFrames(
        depth=2, stale_after=60, on_drop=lambda c, r: drops.append((c, r))
    )
    for value in range(5):
        queue.put("a", value)
    queue.put("b", 100)
    taken = [queue.get(timeout=0) for _ in range(3)]
    assert [(e.camera_id, e.item) for e in taken if e] == [("a", 3), ("b", 100), ("a", 4)]
    assert drops == [("a", "queue_full")] * 3
    assert queue.get(timeout=0) is None


def test_a_taken_frame_is_outstanding_until_its_taker_is_done() -> None:
    # gateway.drain() waits on this: an empty queue with a frame still in the worker's hands
    # is not yet accounted for (it was neither processed nor dropped).
    queue: LatestFrames[int] = LatestFrames(depth=2, stale_after=60)
    queue.put("a", 1)
    queue.put("b", 2)
    assert queue.outstanding() == 2
    assert queue.get(timeout=0) is not None
    assert queue.get(timeout=0) is not None
    assert not any(queue.depths().values()) and queue.outstanding() == 2
    queue.done()
    assert queue.outstanding() == 1
    queue.done()
    assert queue.outstanding() == 0


def test_queue_drops_stale_frames() -> None:
    drops: list[str] = []
    queue: LatestFrames[int] = LatestFrames(
        depth=4, stale_after=0.0, on_drop=lambda c, r: drops.append(r)
    )
    queue.put("a", 1)
    assert queue.get(timeout=0) is None
    assert drops == ["stale"]


def test_ingest_queues_good_frames_and_counts_every_refusal_as_received_and_dropped() -> None:
    registry = CollectorRegistry()
    metrics = GatewayMetrics(registry)
    drops = Drops(metrics)
    ingest = Ingest(GatewayConfig(max_frame_mb=0.5, queue_depth=1), metrics, drops)
    first, second = scene_frames("cam-1", 2, seed=1)

    def sample(name: str, **labels: str) -> float:
        return registry.get_sample_value(f"edgelearn_gateway_{name}_total", labels) or 0.0

    assert ingest.frame(b"not an envelope", "mqtt", "cam-1") == "bad_magic"
    assert ingest.frame(wire.encode(first), "mqtt", "cam-2") == "camera_mismatch"
    assert ingest.frame(b"x" * 2**20, "coap", None) == "oversize"  # refused undecoded
    assert ingest.frame(wire.encode(first), "mqtt", "cam-1") is None
    assert ingest.frame(wire.encode(second), "coap", None) is None  # newest wins: depth 1
    assert sample("frames_received", camera="cam-1", transport="mqtt") == 2
    assert sample("frames_received", camera="cam-1", transport="coap") == 1
    assert sample("frames_received", camera="cam-2", transport="mqtt") == 1
    assert sample("frames_received", camera="unknown", transport="coap") == 1
    for camera, reason in [
        ("cam-1", "bad_magic"),
        ("cam-2", "camera_mismatch"),
        ("unknown", "oversize"),
        ("cam-1", "queue_full"),
    ]:
        assert sample("frames_dropped", camera=camera, reason=reason) == 1, reason
    assert ingest.frames_in_total == 2
    assert ingest.input_bytes_total == len(first.payload) + len(second.payload)
    entry = ingest.queue.get(timeout=0)
    assert entry is not None and entry.item.frame.seq == second.seq
    assert entry.item.transport == "coap"
    drops.feature("cam-1", "outbox_full")
    assert sample("features_dropped", camera="cam-1", reason="outbox_full") == 1


def test_modes_parse_with_clear_errors() -> None:
    assert Mode.parse("split:3") == Mode("split", 3)
    assert str(Mode.parse("full")) == "full"
    for bad in ("split", "split:0", "split:x", "pca:2", "jpeg", ""):
        with pytest.raises(ModeError):
            Mode.parse(bad)


@pytest.fixture(scope="module")
def secrets_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("secrets")
    broker_module.init_secrets(directory, cameras=1, gateways=1)
    return directory


def test_raw_mode_forwards_the_jpeg_unchanged_and_pca_sends_int8(secrets_dir: Path) -> None:
    frames = scene_frames("cam-1", 3, seed=1, dwell=30)
    pipeline = FramePipeline(
        "gw-1", mode=Mode.parse("pca"), keyframes=KeyframeSettings(enabled=False)
    )
    raw = pipeline.process(frames[0])  # no PCA model yet: raw, and nothing lost
    assert isinstance(raw, Forward) and raw.mode == Mode.parse("raw")
    assert isinstance(raw.envelope, wire.Feature)
    assert raw.envelope.codec is wire.Codec.JPEG and raw.envelope.payload == frames[0].payload

    public = signing.load_public_key(secrets_dir / signing.PUBLIC_KEY_FILE)
    pipeline.deploy(load_deployment(pca_deployment(secrets_dir, dim=32), public))
    feature = pipeline.process(frames[1])
    assert isinstance(feature, Forward) and feature.mode == Mode.parse("pca")
    envelope = feature.envelope
    assert isinstance(envelope, wire.Feature)
    assert (envelope.dtype, envelope.shape, envelope.label) == (
        wire.DType.INT8,
        (32,),
        frames[1].label,
    )
    values = codec.decode_array(
        envelope.payload,
        dtype=envelope.dtype,
        shape=envelope.shape,
        scale=envelope.scale,
        zero_point=envelope.zero_point,
        codec=envelope.codec,
    )
    assert values.shape == (32,) and np.isfinite(values).all()
    assert len(feature.data) < len(frames[1].payload) / 100


def test_truncated_and_garbage_jpegs_are_dropped_with_a_reason() -> None:
    frame = scene_frames("cam-1", 1)[0]
    pipeline = FramePipeline("gw-1", objects=None)  # the rule on whole frames
    truncated = wire.Frame("cam-1", 1, 0, 1280, 720, wire.Encoding.JPEG, None, frame.payload[:-500])
    garbage = wire.Frame(
        "cam-1", 2, 0, 1280, 720, wire.Encoding.JPEG, None, b"\xff\xd8" + bytes(100) + b"\xff\xd9"
    )
    assert pipeline.process(truncated) == Dropped("undecodable")
    assert pipeline.process(garbage) == Dropped("undecodable")
    assert isinstance(pipeline.process(frame), Forward)
    held = pipeline.process(frame)
    assert isinstance(held, HeldBack)


def _squares_frame(seq: int, shift: int) -> wire.Frame:
    """Two objects on a fixed background, the left one moved ``shift`` pixels right."""
    image = make_background(np.random.default_rng(3)).copy()
    if shift >= 0:
        cv2.rectangle(image, (200 + shift, 200), (420 + shift, 460), (40, 40, 40), -1)
        cv2.rectangle(image, (800, 250), (1000, 500), (230, 230, 230), -1)
    jpeg = preprocess.encode_jpeg(image, 80)
    return wire.Frame("cam-1", seq, seq, 1280, 720, wire.Encoding.JPEG, None, jpeg)


def test_objects_keep_their_tracks_and_a_corrupt_jpeg_leaves_the_camera_unharmed() -> None:
    pipeline = FramePipeline("gw-1", keyframes=KeyframeSettings(motion_interval=1))
    assert pipeline.process(_squares_frame(0, -1)).objects == ()  # empty: the background
    first = pipeline.process(_squares_frame(1, 0))
    assert len(first.objects) == 2 and {o.reason for o in first.objects} == {"appeared"}
    tracks = {o.track for o in first.objects}
    good = _squares_frame(2, 40)
    # Cut short in transit, or its header gone: counted, and nothing of the camera changes.
    # (A JPEG whose entropy-coded data is damaged but whose markers are intact decodes with
    # a libjpeg warning OpenCV cannot report: such a frame is looked at like any other.)
    corrupt = [
        dataclasses.replace(good, seq=3, payload=good.payload[: len(good.payload) // 2]),
        dataclasses.replace(good, seq=4, payload=b"\xff\xd8" + good.payload[600:]),
    ]
    assert [pipeline.process(frame) for frame in corrupt] == [Dropped("undecodable")] * 2
    after = pipeline.process(good)
    assert {o.track for o in after.objects} == tracks  # same tracks, nothing new
    moved = next(o for o in after.objects if o.box[0] < 640)
    assert moved.reason == "moving" and abs(moved.box[0] - 240) <= 16


def test_a_keyframe_knob_in_the_config_file_changes_what_every_mode_sends_alike(
    secrets_dir: Path, tmp_path: Path
) -> None:
    """The keyframe rule is one, fed by the gateway's config: a knob set in its TOML file
    changes which objects an edge mode sends, and cloud-only sends the same frames' JPEGs
    with the same objects, so the modes are compared on the same views."""
    key = signing.load_public_key(secrets_dir / signing.PUBLIC_KEY_FILE)
    deployment = load_deployment(pca_deployment(secrets_dir, model_input=roi.CROP_RULE), key)
    frames = [_squares_frame(0, -1)] + [_squares_frame(1 + i, 12 * i) for i in range(20)]
    toml = tmp_path / "gateway.toml"
    toml.write_text("[gateway]\nkeyframe_motion_interval = 2\n")

    def sends(config: GatewayConfig, mode: Mode) -> list[tuple[int, tuple[int, ...]]]:
        pipeline = FramePipeline("gw-1", mode=mode, keyframes=config.keyframe_settings())
        pipeline.deploy(deployment)
        outcomes = [(frame.seq, pipeline.process(frame)) for frame in frames]
        return [
            (seq, outcome.envelope.tracks)
            for seq, outcome in outcomes
            if isinstance(outcome, Forward) and isinstance(outcome.envelope, wire.Feature)
        ]

    default = GatewayConfig()
    tuned = config_module.load(GatewayConfig, path=toml, section="gateway")
    assert tuned.keyframe_settings().motion_interval == 2
    assert default.keyframe_settings().motion_interval == 5
    by_default, by_file = sends(default, Mode(PCA)), sends(tuned, Mode(PCA))
    assert len(by_file) > len(by_default) >= 4  # appeared, then every 5th moving frame
    assert sends(tuned, Mode(RAW)) == by_file  # cloud-only: the same frames, the same objects
    assert sends(default, Mode(RAW)) == by_default
    toml.write_text("[gateway]\nkeyframe_motion_intreval = 2\n")
    with pytest.raises(config_module.ConfigError, match="keyframe_motion_intreval"):
        config_module.load(GatewayConfig, path=toml, section="gateway")


def test_two_objects_in_a_frame_give_one_feature_with_both_boxes_tracks_and_labels(
    secrets_dir: Path,
) -> None:
    key = signing.load_public_key(secrets_dir / signing.PUBLIC_KEY_FILE)
    deployment = load_deployment(pca_deployment(secrets_dir, model_input=roi.CROP_RULE), key)
    pipeline = FramePipeline("gw-1", mode=Mode(PCA))
    pipeline.deploy(deployment)
    truth = ((7, (200, 200, 421, 461)), (2, (800, 250, 1001, 501)))  # the squares' boxes

    def labeled(seq: int, shift: int) -> wire.Frame:
        frame = _squares_frame(seq, shift)
        if shift < 0:
            return frame
        return dataclasses.replace(
            frame,
            truth_labels=tuple(label for label, _ in truth),
            truth_boxes=((200 + shift, 200, 421 + shift, 461), truth[1][1]),
        )

    assert isinstance(pipeline.process(labeled(0, -1)), HeldBack)  # empty: nothing sent
    first = pipeline.process(labeled(1, 0))
    assert isinstance(first, Forward)
    feature = first.envelope
    assert isinstance(feature, wire.Feature)
    assert feature.shape == (2, 32) and len(feature.tracks) == 2
    assert sorted(feature.labels) == [2, 7]  # each object took its own true label
    assert codec.unpack_feature(feature).shape == (2, 32)
    settle = KeyframeSettings().settle_frames
    standing = [pipeline.process(labeled(2 + i, 0)) for i in range(settle)]
    assert all(isinstance(o, HeldBack) for o in standing[:-1])
    settled = standing[-1]  # it has stood for settle_frames: its settled view goes up once
    assert isinstance(settled, Forward) and {o.reason for o in settled.objects} == {"settled"}
    assert isinstance(pipeline.process(labeled(2 + settle, 0)), HeldBack)  # still: nothing new
    after_move = [pipeline.process(labeled(3 + settle + i, 40)) for i in range(settle + 1)]
    forwarded = [o for o in after_move if isinstance(o, Forward)]
    assert len(forwarded) == 1  # the one that moved, once it has settled again
    moved = forwarded[0]
    assert isinstance(moved.envelope, wire.Feature)
    assert len(moved.envelope.tracks) == 1  # only the one that moved goes up
    assert moved.envelope.tracks[0] in feature.tracks and moved.envelope.labels == (7,)


def test_a_raw_frame_carries_the_masks_that_cut_the_gateways_own_crops() -> None:
    """Cloud-only: the JPEG goes up as it is, with each object's box and its mask in its
    crop square; the crops the cloud cuts with those masks are the ones this gateway cuts
    for an edge mode (the cloud keeps no background model of its own)."""
    pipeline = FramePipeline("gw-1", mode=Mode(RAW))
    assert isinstance(pipeline.process(_squares_frame(0, -1)), HeldBack)  # the empty scene
    sent = pipeline.process(_squares_frame(1, 0))
    assert isinstance(sent, Forward) and sent.mode == Mode(RAW)
    feature = wire.decode_as(sent.data, wire.Feature)  # as the cloud reads it
    assert len(feature.boxes) == 2 and len(feature.masks) == 2
    mask = roi.mask_from_windows(feature.masks)
    decoded = preprocess.decode_reduced(feature.payload, 1, roi.crop_reduction(feature.boxes, 48))
    at_cloud = [roi.crop(decoded, box, (1280, 720), 48, mask=mask) for box in feature.boxes]
    frame = _squares_frame(1, 0)
    at_gateway = pipeline._crops(frame, feature.boxes, (48, 48, 1))
    assert all(np.array_equal(a, b) for a, b in zip(at_cloud, at_gateway, strict=True))
    assert all(crop[24, 24] > 0 and crop[2, 2] == 0 for crop in at_cloud)  # the object, cut out


def test_a_small_object_is_cut_from_the_finer_decode(secrets_dir: Path) -> None:
    """An item a camera sees small (here 120 px of 720) is cut from the 1/2-scale decode,
    not the 1/4 one, which would scale it up into the model's input: the feature is the
    extractor's output on that crop (the same background model's mask, at that scale)."""
    key = signing.load_public_key(secrets_dir / signing.PUBLIC_KEY_FILE)
    deployment = load_deployment(pca_deployment(secrets_dir, model_input=roi.CROP_RULE), key)
    pipeline = FramePipeline("gw-1", mode=Mode(PCA))
    pipeline.deploy(deployment)
    background = make_background(np.random.default_rng(3))
    with_item = background.copy()
    for x in range(600, 680, 8):  # a striped item: detail a 1/4 decode averages away
        cv2.rectangle(with_item, (x, 300), (x + 3, 420), (30, 30, 30), -1)
        cv2.rectangle(with_item, (x + 4, 300), (x + 7, 420), (220, 220, 220), -1)
    frames = [
        wire.Frame("cam-1", seq, seq, 1280, 720, wire.Encoding.JPEG, None,
                   preprocess.encode_jpeg(image, 80))
        for seq, image in enumerate([background, with_item])
    ]  # fmt: skip
    finder = roi.ObjectFinder()  # what the pipeline's own background model sees
    assert isinstance(pipeline.process(frames[0]), HeldBack)
    finder.update("cam-1", roi.small_grey(frames[0].payload))
    sent = pipeline.process(frames[1])
    (found,) = finder.update("cam-1", roi.small_grey(frames[1].payload))
    assert isinstance(sent, Forward) and isinstance(sent.envelope, wire.Feature)
    size, _, _ = deployment.extractor.input_shape
    assert roi.crop_reduction([found.box], size) == preprocess.FINE_REDUCTION

    def feature_at(reduction: int) -> np.ndarray:
        decoded = preprocess.decode_reduced(frames[1].payload, 1, reduction)
        mask = finder.object_mask("cam-1", decoded)
        crop = roi.crop(decoded, found.box, (1280, 720), size, 1, mask=mask)
        return np.stack([deployment.extractor.run(crop)])  # quantised, as it is sent

    values = codec.unpack_feature(sent.envelope)
    assert np.array_equal(values, feature_at(preprocess.FINE_REDUCTION))
    assert not np.array_equal(values, feature_at(preprocess.REDUCTION))


def test_full_mode_sends_the_crops_of_every_nth_labeled_keyframe(
    secrets_dir: Path, trained_registry: Path
) -> None:
    from cameras.replay import object_frames
    from cloud.registry import Registry
    from edgelearn.modes import FULL

    private = signing.load_private_key(secrets_dir / signing.PRIVATE_KEY_FILE)
    model = Registry(trained_registry).deployment("cnn-full", None, private)
    deployment = load_deployment(
        model, signing.load_public_key(secrets_dir / signing.PUBLIC_KEY_FILE)
    )
    pipeline = FramePipeline("gw-1", mode=Mode(FULL), learning_sample=3)
    pipeline.deploy(deployment)
    outcomes = [pipeline.process(frame) for frame in object_frames("cam-1", 240, seed=4)]
    sent = [o.envelope for o in outcomes if isinstance(o, Forward)]
    samples = [e for e in sent if isinstance(e, wire.Feature)]
    results = [e for e in sent if isinstance(e, wire.Result)]
    assert len(sent) >= 9 and len(samples) == len(sent) // 3  # every 3rd, all labeled here
    for sample in samples:
        assert sample.mode == "full" and sample.model_version == deployment.version
        crops = codec.unpack_feature(sample)
        assert crops.dtype == np.uint8 and crops.shape == (len(sample.tracks), *model.input_shape)
        assert all(label is not None for label in sample.labels)
    assert all(r.computed_at == wire.ComputedAt.EDGE for r in results)
    # 0: results only
    only_results = FramePipeline("gw-1", mode=Mode(FULL), learning_sample=0)
    only_results.deploy(deployment)
    outcomes = [only_results.process(frame) for frame in object_frames("cam-1", 120, seed=4)]
    assert all(isinstance(o.envelope, wire.Result) for o in outcomes if isinstance(o, Forward))


def test_in_full_a_video_is_answered_by_the_pushed_student_as_a_split_gateway_would_be(
    secrets_dir: Path, trained_registry: Path
) -> None:
    """A gateway in full sends no features: the student the cloud pushed answers its video
    cameras, on the crops a split gateway would send it (same decode, same mask)."""
    from cloud.registry import Registry
    from edgelearn.modes import FULL
    from edgelearn.student import Student, load_student, sign_student
    from tests.test_gateway_service import _video_frames

    private = signing.load_private_key(secrets_dir / signing.PRIVATE_KEY_FILE)
    public = signing.load_public_key(secrets_dir / signing.PUBLIC_KEY_FILE)
    registry = Registry(trained_registry)
    full = load_deployment(registry.deployment("cnn-full", None, private), public)
    entry = registry.serving(Mode.parse("split:2"))
    edge = registry.deployment(entry.name, entry.version, private)
    split = load_deployment(edge, public)
    width = split.extractor.output.elements
    rng = np.random.default_rng(0)

    def student(version: str, coef: np.ndarray, threshold: float) -> Student:
        return Student(
            version=version, mode="split:2", versions=(entry.version,), coef=coef,
            intercept=np.zeros(2, np.float32), mean=np.zeros(width, np.float32),
            std=np.ones(width, np.float32), trained_on=frozenset(), threshold=threshold,
        )  # fmt: skip

    frames = _video_frames("cam-5", 90)

    def taught(pipeline: FramePipeline) -> dict[tuple[int, int], int]:
        answers = {}
        for frame in frames:
            outcome = pipeline.process(frame)
            if isinstance(outcome, Forward):
                result = outcome.envelope
                assert isinstance(result, wire.Result) and result.task == wire.TASK_TEACHER
                assert result.mode == FULL and result.computed_at == wire.ComputedAt.EDGE
                answers.update(
                    zip(((frame.seq, t) for t in result.tracks), result.classes, strict=True)
                )
        return answers

    def full_gateway(pushed: Student | None) -> FramePipeline:
        pipeline = FramePipeline("gw-1", mode=Mode(FULL))
        pipeline.deploy(full)
        if pushed is not None:
            pipeline.student = load_student(sign_student(pushed, edge, private), public)
        return pipeline

    # Without a student: unknown, never one of the data set's classes.
    without = taught(full_gateway(None))
    assert len(without) > 40 and set(without.values()) == {wire.UNKNOWN}
    # A student whose answers depend on the features: the same answers as it gives the
    # features a split gateway sends for the same objects.
    coef = rng.normal(0, 1, (2, width)).astype(np.float32)
    answered = taught(full_gateway(student("s-any", coef, threshold=0.0)))
    splitter = FramePipeline("gw-1", mode=Mode.parse("split:2"))
    splitter.deploy(split)
    expected = {}
    for frame in frames:
        outcome = splitter.process(frame)
        if isinstance(outcome, Forward):
            feature = outcome.envelope
            assert isinstance(feature, wire.Feature)
            values = split.extractor.output.dequantize(codec.unpack_feature(feature))
            classes, _ = student("s-any", coef, 0.0).answer(values)
            expected.update(zip(((frame.seq, t) for t in feature.tracks), classes, strict=True))
    assert answered == expected and {0, 1} <= set(answered.values())
    # An unsure student leaves its objects unknown (open set), as in the cloud.
    unsure = taught(full_gateway(student("s-unsure", np.zeros((2, width), np.float32), 0.75)))
    assert set(unsure.values()) == {wire.UNKNOWN}
