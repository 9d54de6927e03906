"""Gateway workers against a real mosquitto: features upstream, shared subscriptions, model
deployment and refusal, bad input, exact frame accounting, CoAP from libcoap's client."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import pytest

from cameras.replay import object_frames, scene_frames
from edgelearn import wire
from tests.support.broker import BrokerUnderTest
from tests.support.gateway import RunningGateway, pca_deployment, run_gateway
from tests.support.mqtt import MqttProbe
from tests.support.waiting import wait_for

Probe = Callable[..., MqttProbe]


def _features(probe: MqttProbe) -> list[wire.Feature]:
    return [wire.decode_as(payload, wire.Feature) for payload in probe.payloads()]


def _deploy(cloud: MqttProbe, topics: wire.Topics, model: wire.Model) -> None:
    assert not cloud.publish_and_wait(
        topics.model(wire.ALL_GATEWAYS, model.mode),
        wire.encode(model),
    ).is_failure


def _publish_frames(camera: MqttProbe, topics: wire.Topics, frames: list[wire.Frame]) -> int:
    total = 0
    for frame in frames:
        data = wire.encode(frame)
        total += len(frame.payload)
        assert not camera.publish_and_wait(topics.frame(frame.camera_id), data).is_failure
    return total


def _video_frames(camera_id: str, count: int) -> list[wire.Frame]:
    """The first ``count`` frames of vtest.avi as a camera sends them (720p JPEG)."""
    import cv2
    import numpy as np

    from cameras.sources import fit_to
    from edgelearn.preprocess import encode_jpeg

    capture = cv2.VideoCapture("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
    frames = []
    try:
        for seq in range(count):
            ok, image = capture.read()
            assert ok, "vtest.avi is missing or short: setup.sh installs opencv-doc"
            jpeg = encode_jpeg(fit_to(np.asarray(image, np.uint8), (1280, 720)), 80)
            frame = wire.Frame(
                camera_id=camera_id, seq=seq, capture_ns=1_000_000 + seq, width=1280,
                height=720, encoding=wire.Encoding.JPEG, label=None, payload=jpeg,
            )  # fmt: skip
            frames.append(frame)
    finally:
        capture.release()
    return frames


def _accounted(gateway: RunningGateway) -> tuple[float, float, float]:
    received = gateway.total("edgelearn_gateway_frames_received_total")
    processed = gateway.total("edgelearn_gateway_frames_processed_total")
    dropped = gateway.total("edgelearn_gateway_frames_dropped_total")
    return received, processed, dropped


def test_pca_features_are_far_smaller_than_raw_and_a_plan_switches_mode_not_keyframes_off(
    broker: BrokerUnderTest, mqtt_probe: Probe, site: str
) -> None:
    topics = wire.Topics(site)
    cloud = mqtt_probe("cloud")
    cloud.subscribe(topics.all_features())
    camera = mqtt_probe("cam-1")
    frames = scene_frames("cam-1", 24, seed=2)
    with run_gateway(broker, site=site, mode="pca", keyframes=False, queue_depth=64) as gateway:
        model = pca_deployment(broker.secrets_dir, dim=32)
        _deploy(cloud, topics, model)
        wait_for(
            lambda: gateway.sample("edgelearn_gateway_model_swaps_total", slot="pca") == 1,
            30,
            "the PCA model to load",
        )
        raw_bytes = _publish_frames(camera, topics, frames[:12])
        wait_for(lambda: len(cloud.payloads()) == 12, 30, "12 PCA features")
        pca = _features(cloud)
        assert {f.mode for f in pca} == {"pca"}
        assert {f.model_version for f in pca} == {model.version}
        assert [f.label for f in pca] == [f.label for f in frames[:12]]
        pca_bytes = sum(len(p) for p in cloud.payloads())
        assert pca_bytes * 100 < raw_bytes

        plan = wire.Plan(
            gateway_id="gw-1",
            plan_version=1,
            mode="raw",
            keyframes=1,  # the planner's default; this gateway's operator turned them off
            keyframe_threshold=0.02,
            keyframe_max_interval=45,
        )
        assert not cloud.publish_and_wait(topics.plan("gw-1"), wire.encode(plan)).is_failure
        wait_for(lambda: str(gateway.worker.pipeline.mode) == "raw", 10, "the plan")
        assert not gateway.worker.pipeline.keyframes.enabled  # every frame still goes up
        _publish_frames(camera, topics, frames[12:])
        wait_for(lambda: len(cloud.payloads()) == 24, 30, "12 raw features")
        raw = _features(cloud)[12:]
        assert {f.mode for f in raw} == {"raw"}
        assert [f.payload for f in raw] == [f.payload for f in frames[12:]]


def test_two_workers_share_the_cameras_and_together_process_all(
    broker: BrokerUnderTest, mqtt_probe: Probe, site: str
) -> None:
    topics = wire.Topics(site)
    cloud = mqtt_probe("cloud")
    cloud.subscribe(topics.all_features())
    cameras = [f"cam-{n}" for n in (2, 3, 4, 5)]
    settings = dict(site=site, gateway_id="gw-2", mode="raw", keyframes=False, queue_depth=64)
    with (
        run_gateway(broker, worker=0, **settings) as first,
        run_gateway(broker, worker=1, **settings) as second,
    ):
        sent = []
        for camera_id in cameras:
            frames = scene_frames(camera_id, 10, seed=hash(camera_id) % 100)
            _publish_frames(mqtt_probe(camera_id), topics, frames)
            sent += [(f.camera_id, f.seq) for f in frames]
        wait_for(lambda: len(cloud.payloads()) == len(sent), 30, "every frame forwarded")
        shares = [g.total("edgelearn_gateway_frames_received_total") for g in (first, second)]
        assert all(share > 0 for share in shares), shares
        assert sum(shares) == len(sent)
        assert sorted((f.camera_id, f.seq) for f in _features(cloud)) == sorted(sent)


def test_tampered_or_foreign_models_are_refused_while_frames_keep_flowing(
    broker: BrokerUnderTest, mqtt_probe: Probe, site: str, tmp_path: Path
) -> None:
    from stack import broker as broker_module

    topics = wire.Topics(site)
    cloud = mqtt_probe("cloud")
    cloud.subscribe(topics.all_features())
    camera = mqtt_probe("cam-6")
    frames = scene_frames("cam-6", 6, seed=7)
    with run_gateway(
        broker, site=site, gateway_id="gw-3", mode="pca", keyframes=False, queue_depth=64
    ) as gateway:
        good = pca_deployment(broker.secrets_dir, version="good-1")
        _deploy(cloud, topics, good)
        wait_for(
            lambda: gateway.sample("edgelearn_gateway_model_swaps_total", slot="pca") == 1,
            30,
            "the good model",
        )
        artifact = bytearray(good.artifact)
        artifact[len(artifact) // 2] ^= 0xFF
        tampered = dataclasses.replace(good, version="tampered-2", artifact=bytes(artifact))
        _deploy(cloud, topics, tampered)
        other_keys = broker_module.init_secrets(tmp_path / "other", cameras=0, gateways=0)
        foreign = pca_deployment(other_keys.directory, version="foreign-3")
        _deploy(cloud, topics, foreign)
        wait_for(
            lambda: gateway.total("edgelearn_gateway_models_rejected_total") == 2,
            30,
            "two refusals",
        )
        assert gateway.sample("edgelearn_gateway_models_rejected_total", reason="unknown_key") == 1
        # tampered-2 kept good-1's signature over different metadata: refused either way.
        assert (
            gateway.total("edgelearn_gateway_models_rejected_total", reason="bad_digest")
            + gateway.total("edgelearn_gateway_models_rejected_total", reason="bad_signature")
            == 1
        )
        _publish_frames(camera, topics, frames)
        wait_for(lambda: len(cloud.payloads()) == len(frames), 30, "features after refusals")
        assert {f.model_version for f in _features(cloud)} == {"good-1"}


def test_bad_input_is_counted_and_every_frame_accounted_for(
    broker: BrokerUnderTest, mqtt_probe: Probe, site: str, caplog: pytest.LogCaptureFixture
) -> None:
    topics = wire.Topics(site)
    camera = mqtt_probe("cam-7")
    frames = scene_frames("cam-7", 60, seed=9)
    with run_gateway(
        broker, site=site, gateway_id="gw-4", mode="raw", keyframes=True, queue_depth=2
    ) as gateway:
        bad = [
            b"not an envelope",
            wire.encode(dataclasses.replace(frames[0], camera_id="cam-8")),  # not its topic
            wire.encode(dataclasses.replace(frames[0], payload=frames[0].payload[:-300])),
            wire.encode(wire.Plan("gw-4", 1, "raw", 0, 0.0, 1)),  # wrong kind on frames
        ]
        garbage = [b"GARBAGE" + bytes([n]) * 40 for n in range(200)]  # a credential's flood
        for payload in bad + garbage:
            assert not camera.publish_and_wait(topics.frame("cam-7"), payload).is_failure
        bad += garbage

        def bad_ones_handled() -> bool:
            received, processed, dropped = _accounted(gateway)
            return received == len(bad) == processed + dropped

        # The truncated JPEG must reach the pipeline before a burst could push it out.
        wait_for(bad_ones_handled, 30, "the bad envelopes to be handled")
        # Then a burst far faster than the worker drains a depth-2 queue.
        for frame in frames:
            camera.publish(topics.frame("cam-7"), wire.encode(frame), qos=0)
        wait_for(lambda: _accounted(gateway)[0] == len(bad) + len(frames), 30, "all arrivals")
        gateway.drain()
        received, processed, dropped = _accounted(gateway)
        assert received == processed + dropped
        reasons = {"bad_magic": 201, "camera_mismatch": 1, "wrong_kind": 1, "undecodable": 1}
        for reason, count in reasons.items():
            assert (
                gateway.sample(
                    "edgelearn_gateway_frames_dropped_total", camera="cam-7", reason=reason
                )
                == count
            ), reason
        # Every drop counted, but the log says each (peer, reason) once a minute, not 201 times.
        warnings = [r.getMessage() for r in caplog.records if r.name == "gateway.ingest"]
        assert sum("bad_magic" in message for message in warnings) == 1
        assert sum("camera_mismatch" in message for message in warnings) == 1
        assert (
            gateway.sample(
                "edgelearn_gateway_frames_dropped_total", camera="cam-7", reason="undecodable"
            )
            == 1
        )
        assert processed > 0


def test_status_is_retained_and_marks_the_worker_offline_on_exit(
    broker: BrokerUnderTest, mqtt_probe: Probe, site: str
) -> None:
    topics = wire.Topics(site)
    observer = mqtt_probe("cloud")
    observer.subscribe(topics.all_status())
    with run_gateway(broker, site=site, gateway_id="gw-1", mode="split:2") as gateway:
        wait_for(lambda: bool(observer.payloads()), 10, "a status")
        status = wire.decode_as(observer.payloads()[-1], wire.Status)
        assert status.online == 1 and status.mode == "raw"
        assert "split:2" in status.note  # says it runs raw until the model comes
        assert gateway.worker.metrics_server is not None
    wait_for(
        lambda: wire.decode_as(observer.payloads()[-1], wire.Status).online == 0,
        10,
        "the offline status",
    )


@pytest.mark.training  # converts the packaged detector with TensorFlow
def test_a_signed_teacher_reaches_the_gateway_and_a_tampered_one_does_not(
    broker: BrokerUnderTest, mqtt_probe: Probe, site: str, tmp_path: Path
) -> None:
    from cloud.models.teacher import person_teacher
    from edgelearn import signing
    from edgelearn.secrets import Secrets
    from edgelearn.teacher import sign_teacher
    from stack import broker as broker_module

    topics = wire.Topics(site)
    cloud = mqtt_probe("cloud")
    artifact = person_teacher()
    key = signing.load_private_key(Secrets(broker.secrets_dir).signing_key)
    teacher = sign_teacher(artifact, key)
    assert len(wire.encode(teacher)) < 8 * 2**20  # under the brokers' message limit
    with run_gateway(broker, site=site, gateway_id="gw-2", mode="raw") as gateway:
        assert not cloud.publish_and_wait(
            topics.deployment(wire.ALL_GATEWAYS, teacher), wire.encode(teacher), retain=True
        ).is_failure
        assert topics.deployment(wire.ALL_GATEWAYS, teacher).endswith("/models/all/teacher")
        wait_for(
            lambda: gateway.sample("edgelearn_gateway_model_swaps_total", slot="teacher") == 1,
            60,
            "the teacher to load",
        )
        slot = gateway.worker.model_slot
        assert slot.teacher is not None and slot.teacher_version == teacher.version
        assert (
            gateway.sample("edgelearn_gateway_model_info", slot="teacher", version=teacher.version)
            == 1
        )
        data = bytearray(teacher.artifact)
        data[len(data) // 3] ^= 0xFF
        tampered = dataclasses.replace(teacher, version="t-tampered", artifact=bytes(data))
        other = broker_module.init_secrets(tmp_path / "other", cameras=0, gateways=0)
        foreign = sign_teacher(artifact, signing.load_private_key(other.signing_key))
        foreign = dataclasses.replace(foreign, version="t-foreign")
        for model in (tampered, foreign):
            cloud.publish_and_wait(
                f"{topics.base}/models/gw-2/teacher", wire.encode(model)
            )  # a gateway's own slot
        wait_for(
            lambda: gateway.total("edgelearn_gateway_models_rejected_total") == 2,
            30,
            "two refusals",
        )
        assert gateway.sample("edgelearn_gateway_models_rejected_total", reason="unknown_key") == 1
        assert slot.teacher_version == teacher.version  # the good one stays
        # The people of the sample video, through the worker: its teacher stage looks at
        # the objects the worker sends, and labels tracks once their views agree; the
        # labels go up on the tracks' later Features, as the cloud receives them.
        cloud.subscribe(topics.all_features())
        _publish_frames(mqtt_probe("cam-5"), topics, _video_frames("cam-5", 120))
        wait_for(
            lambda: gateway.total("edgelearn_gateway_teacher_labels_total", label="person") >= 1,
            90,
            "a track labeled person",
        )
        assert gateway.total("edgelearn_gateway_teacher_looks_total", camera="cam-5") >= 3
        assert gateway.total("edgelearn_gateway_teacher_cpu_seconds_total", camera="cam-5") > 0

        def sent_up(camera: str) -> list[wire.Feature]:
            return [
                feature
                for payload in cloud.payloads()
                if isinstance(feature := wire.decode(payload), wire.Feature)
                and feature.camera_id == camera
            ]

        wait_for(
            lambda: any(f.label_source.startswith("teacher:") for f in sent_up("cam-5")),
            60,
            "a Feature with the teacher's label",
        )
        video = sent_up("cam-5")
        assert {f.task for f in video} == {wire.TASK_TEACHER}
        taught = [f for f in video if f.label_source == f"teacher:{teacher.name}"]
        assert all(len(f.label_scores) == len(f.tracks) for f in taught)
        assert any(
            label == 0 and score >= 0.8
            for f in taught
            for label, score in zip(f.labels, f.label_scores, strict=True)
        )  # person, each of its views at 0.8 or more
        assert gateway.total("edgelearn_gateway_teacher_labels_sent_total", camera="cam-5") >= 1
        # A labeled camera's objects carry their ground truth: the teacher leaves them be.
        labeled = object_frames("cam-6", 90, seed=3)
        _publish_frames(mqtt_probe("cam-6"), topics, labeled)
        wait_for(
            lambda: (
                gateway.total("edgelearn_gateway_frames_processed_total", camera="cam-6")
                + gateway.total("edgelearn_gateway_frames_dropped_total", camera="cam-6")
                == len(labeled)
            ),
            60,
            "the labeled camera's frames",
        )
        sent = gateway.total(
            "edgelearn_gateway_frames_processed_total", camera="cam-6", outcome="forwarded"
        )
        assert sent > 0  # objects went up: there was something to offer
        assert gateway.total("edgelearn_gateway_teacher_looks_total", camera="cam-6") == 0
        truth = sent_up("cam-6")
        assert truth and {f.task for f in truth} == {wire.TASK_DATASET}
        assert {f.label_source for f in truth if any(x is not None for x in f.labels)} == {
            wire.SOURCE_TRUTH
        }
    cloud.publish_and_wait(topics.deployment(wire.ALL_GATEWAYS, teacher), b"", retain=True)
