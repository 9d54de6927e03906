"""The broker as the project configures it: authentication, per-role ACL, TLS and limits.

Refusals are checked with MQTT v5 QoS 1: the broker answers a refused PUBLISH with a
failure reason code, and since mosquitto delivers a message to subscribers before it
acknowledges it, a sentinel published after that acknowledgement arriving alone proves the
refused message went nowhere.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from edgelearn import wire
from edgelearn.modes import PCA, Mode
from edgelearn.secrets import Secrets
from stack import broker as broker_module
from tests.support.broker import BrokerUnderTest
from tests.support.mqtt import MqttProbe
from tests.support.waiting import wait_for

Probe = Callable[..., MqttProbe]


def test_camera_publishes_its_own_frames_only(mqtt_probe: Probe, site: str) -> None:
    topics = wire.Topics(site)
    gateway = mqtt_probe("gw-1")
    gateway.subscribe(topics.all_frames())
    camera = mqtt_probe("cam-1")

    assert not camera.publish_and_wait(topics.frame("cam-1"), b"own").is_failure
    refused = camera.publish_and_wait(topics.frame("cam-2"), b"forged")
    assert refused.is_failure and refused.getName() == "Not authorized"

    other_camera = mqtt_probe("cam-2")
    assert not other_camera.publish_and_wait(topics.frame("cam-2"), b"sentinel").is_failure
    wait_for(lambda: len(gateway.payloads()) >= 2, what="the sentinel")
    assert gateway.payloads() == [b"own", b"sentinel"]


def test_camera_cannot_publish_models_plans_or_features(mqtt_probe: Probe, site: str) -> None:
    topics = wire.Topics(site)
    cloud = mqtt_probe("cloud")
    cloud.subscribe(f"{topics.base}/#")
    camera = mqtt_probe("cam-3")
    for topic in (
        topics.model("gw-1", Mode(PCA)),
        topics.plan("gw-1"),
        topics.feature("cam-3", "cam-3"),
        topics.status("cam-3"),
        topics.result("cam-3"),
    ):
        assert camera.publish_and_wait(topic, b"forged").is_failure, topic
    assert not cloud.publish_and_wait(topics.model("gw-1", Mode(PCA)), b"sentinel").is_failure
    wait_for(lambda: len(cloud.payloads()) >= 1, what="the sentinel")
    assert cloud.payloads() == [b"sentinel"]


def test_camera_reads_nothing(mqtt_probe: Probe, site: str) -> None:
    """Mosquitto grants the SUBACK but delivers nothing the ACL does not allow. A message
    queued to the camera would arrive before the PUBACK of its own later publish on the
    same connection, so that PUBACK closes the window."""
    topics = wire.Topics(site)
    camera = mqtt_probe("cam-4")
    camera.subscribe(topics.all_frames())
    camera.subscribe(f"{topics.base}/#")
    gateway = mqtt_probe("gw-1")
    gateway.subscribe(topics.all_frames())
    cloud = mqtt_probe("cloud")
    assert not mqtt_probe("cam-9").publish_and_wait(topics.frame("cam-9"), b"f").is_failure
    assert not cloud.publish_and_wait(topics.model("gw-1", Mode(PCA)), b"m").is_failure
    wait_for(lambda: bool(gateway.payloads()), what="the gateway's copy")
    assert not camera.publish_and_wait(topics.frame("cam-4"), b"own").is_failure
    assert camera.payloads() == []


def test_roles_follow_the_flow_of_a_frame(mqtt_probe: Probe, site: str) -> None:
    """Gateway: frames in, features/status out. Cloud: features in, models/results out."""
    topics = wire.Topics(site)
    gateway = mqtt_probe("gw-2")
    cloud = mqtt_probe("cloud")
    # Shared subscriptions are checked against the filter inside them.
    gateway.subscribe(wire.shared("workers", topics.all_frames()))
    gateway.subscribe(topics.model("gw-2", Mode(PCA)))
    cloud.subscribe(wire.shared("consumers", topics.all_features()))
    cloud.subscribe(topics.all_status())
    cloud.subscribe(topics.all_frames())  # granted, but raw frames are not the cloud's to read
    camera = mqtt_probe("cam-10")
    assert not camera.publish_and_wait(topics.frame("cam-10"), b"frame").is_failure

    assert not gateway.publish_and_wait(topics.feature("gw-2", "cam-1"), b"feature").is_failure
    assert not gateway.publish_and_wait(topics.status("gw-2"), b"status").is_failure
    assert gateway.publish_and_wait(topics.feature("gw-1", "cam-1"), b"x").is_failure
    assert gateway.publish_and_wait(topics.status("gw-1"), b"x").is_failure
    assert gateway.publish_and_wait(topics.model("gw-2", Mode(PCA)), b"x").is_failure
    assert not cloud.publish_and_wait(topics.model("gw-2", Mode(PCA)), b"model").is_failure
    assert cloud.publish_and_wait(topics.frame("cam-1"), b"x").is_failure

    wait_for(lambda: len(cloud.payloads()) >= 2 and len(gateway.payloads()) >= 2, what="deliveries")
    assert not cloud.publish_and_wait(topics.result("cam-1"), b"closes the window").is_failure
    assert sorted(cloud.payloads()) == [b"feature", b"status"]
    assert sorted(gateway.payloads()) == [b"frame", b"model"]


def test_anonymous_and_wrong_password_are_refused(mqtt_probe: Probe) -> None:
    anonymous = mqtt_probe(None, expect_refused=True)
    assert anonymous.connect_result is not None and anonymous.connect_result.is_failure
    wrong = mqtt_probe("cam-1", password="not-the-password", expect_refused=True)
    assert wrong.connect_result is not None and wrong.connect_result.is_failure


def test_tls_connection_verified_against_generated_ca(mqtt_probe: Probe, site: str) -> None:
    topics = wire.Topics(site)
    observer = mqtt_probe("observer", tls=True)
    observer.subscribe(topics.all_frames())
    camera = mqtt_probe("cam-5", tls=True)
    assert not camera.publish_and_wait(topics.frame("cam-5"), b"over tls").is_failure
    wait_for(lambda: bool(observer.payloads()), what="the TLS message")
    assert observer.payloads() == [b"over tls"]


def test_oversize_message_refused_others_unharmed(mqtt_probe: Probe, site: str) -> None:
    topics = wire.Topics(site)
    gateway = mqtt_probe("gw-3")
    gateway.subscribe(topics.all_frames())
    bystander = mqtt_probe("cam-7")
    offender = mqtt_probe("cam-6")

    too_big = bytes(8 * 1024 * 1024 + 1)
    try:
        code = offender.publish_and_wait(topics.frame("cam-6"), too_big)
        assert code.is_failure
    except ConnectionError:
        pass  # dropping the offender's connection is also a refusal
    assert not bystander.publish_and_wait(topics.frame("cam-7"), b"still here").is_failure
    wait_for(lambda: bool(gateway.payloads()), what="the bystander's frame")
    assert gateway.payloads() == [b"still here"]
    assert not gateway.disconnected.is_set()


def test_mosquitto_clients_work_with_generated_credentials(
    broker: BrokerUnderTest, site: str
) -> None:
    """The Done-when check: mosquitto_pub/sub, clients we did not write."""
    topics = wire.Topics(site)
    secrets = broker.secrets
    base = ["-V", "5", "-h", broker.host, "-p", str(broker.port)]
    subscriber = subprocess.Popen(
        [
            "mosquitto_sub",
            *base,
            "-u",
            "gw-4",
            "-P",
            secrets.password("gw-4"),
            "-t",
            topics.all_frames(),
            "-C",
            "1",
            "-W",
            "20",
        ],
        stdout=subprocess.PIPE,
    )
    try:

        def publish(user: str, topic: str, message: str) -> str:
            """mosquitto_pub exits 0 on a refused QoS 1 publish but says so on stderr."""
            done = subprocess.run(
                [
                    "mosquitto_pub",
                    *base,
                    "-u",
                    user,
                    "-P",
                    secrets.password(user),
                    "-t",
                    topic,
                    "-m",
                    message,
                    "-q",
                    "1",
                ],
                capture_output=True,
                text=True,
                timeout=20,
            )
            assert done.returncode == 0, done.stderr
            return done.stderr

        assert "Not authorized" in publish("cam-8", topics.model("gw-4", Mode(PCA)), "forged")
        # mosquitto_sub may not have subscribed yet: publish until it has its one message.
        wait_for(
            lambda: (
                publish("cam-8", topics.frame("cam-8"), "hello") == ""
                and subscriber.poll() is not None
            ),
            timeout=20,
            what="mosquitto_sub",
        )
        assert subscriber.stdout is not None
        assert subscriber.stdout.read().strip() == b"hello"
    finally:
        subscriber.kill()
        subscriber.wait()


def test_password_file_uses_mosquitto_hash_format(tmp_path: Path) -> None:
    secrets = broker_module.init_secrets(tmp_path / "s", cameras=1, gateways=1)
    lines = secrets.password_file.read_text().splitlines()
    assert {line.split(":")[0] for line in lines} == {u.name for u in secrets.users()}
    assert all(line.split(":", 1)[1].startswith("$7$101$") for line in lines)
    assert oct(secrets.credentials_file.stat().st_mode & 0o777) == "0o600"
    with pytest.raises(broker_module.BrokerError):
        broker_module.init_secrets(tmp_path / "s")


def test_added_user_can_connect_after_reload(
    tmp_path: Path, mqtt_probe: Probe, broker: BrokerUnderTest
) -> None:
    secrets = Secrets(tmp_path / "s")
    broker_module.init_secrets(secrets.directory, cameras=0, gateways=0)
    running = broker_module.start_broker(
        secrets, broker_module.BrokerSettings(run_dir=tmp_path / "run")
    )
    with running:
        user = broker_module.add_user(secrets.directory, "lobby-cam", "camera")
        running.reload()  # a SIGHUP: mosquitto re-reads its files when it gets to it
        results: list[subprocess.CompletedProcess[bytes]] = []

        def published() -> bool:
            results.append(
                subprocess.run(
                    [
                        "mosquitto_pub",
                        "-V",
                        "5",
                        "-p",
                        str(running.port),
                        "-u",
                        user.name,
                        "-P",
                        user.password,
                        "-t",
                        "edgelearn/v1/x/frames/lobby-cam",
                        "-m",
                        "m",
                        "-q",
                        "1",
                    ],
                    capture_output=True,
                    timeout=20,
                )
            )
            return results[-1].returncode == 0

        wait_for(published, 20, "the new user's publish accepted")
    assert running.process.poll() is not None


def test_start_reports_port_in_use(tmp_path: Path, broker: BrokerUnderTest) -> None:
    with pytest.raises(broker_module.BrokerError, match="already in use"):
        broker_module.start_broker(
            broker.secrets,
            broker_module.BrokerSettings(port=broker.port, run_dir=tmp_path / "run"),
        )


def test_missing_mosquitto_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(broker_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(broker_module.Path, "exists", lambda self: False)
    with pytest.raises(broker_module.BrokerError, match="apt-get install mosquitto"):
        broker_module.mosquitto_binary()


def test_a_gateway_reads_the_results_its_teacher_compares_but_cannot_write_them(
    mqtt_probe: Probe, site: str
) -> None:
    topics = wire.Topics(site)
    gateway = mqtt_probe("gw-1")
    gateway.subscribe(topics.all_results())
    cloud = mqtt_probe("cloud")
    assert gateway.publish_and_wait(topics.result("cam-1"), b"forged").is_failure
    assert not cloud.publish_and_wait(topics.result("cam-1"), b"answer").is_failure
    wait_for(lambda: gateway.payloads(), what="the cloud's result")
    assert gateway.payloads() == [b"answer"]
