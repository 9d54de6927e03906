"""Shared fixtures: a real mosquitto with the project's config, per-test sites, MQTT probes.

The broker is started once per session on free ports from the same templates and the same
``broker init`` code a user runs, and stopped at the end. Each test gets its own ``site``
(a topic namespace), so tests never see each other's messages.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgelearn.config import BrokerConfig
from edgelearn.secrets import Secrets
from stack import broker as broker_module


@dataclass
class BrokerUnderTest:
    running: broker_module.RunningBroker

    @property
    def host(self) -> str:
        return self.running.host

    @property
    def port(self) -> int:
        return self.running.port

    @property
    def tls_port(self) -> int:
        return self.running.tls_port

    @property
    def secrets_dir(self) -> Path:
        return self.running.secrets.directory

    @property
    def secrets(self) -> Secrets:
        return self.running.secrets

    def config_for(self, user: str, *, tls: bool = False) -> BrokerConfig:
        return BrokerConfig.for_user(
            user,
            host="localhost" if tls else self.host,
            port=self.tls_port if tls else self.port,
            secrets_dir=self.secrets_dir,
            tls=tls,
        )


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerUnderTest]:
    root = tmp_path_factory.mktemp("broker")
    secrets = broker_module.init_secrets(root / "secrets", cameras=16, gateways=4)
    running = broker_module.start_broker(
        secrets, broker_module.BrokerSettings(role="edge", run_dir=root / "run")
    )
    try:
        yield BrokerUnderTest(running)
    finally:
        running.stop()


@dataclass
class BridgedSite:
    """An edge broker bridged into a cloud broker: two real mosquittos on the session's
    secrets, from the project's templates. Either can be killed (SIGKILL, as a crash) and
    started again on the same ports with the same persistence directory."""

    root: Path
    cloud: BrokerUnderTest
    edge: BrokerUnderTest

    def _settings(self, role: str) -> broker_module.BrokerSettings:
        running = (self.cloud if role == "cloud" else self.edge).running
        bridge = broker_module.Bridge(self.cloud.host, self.cloud.port) if role == "edge" else None
        return broker_module.BrokerSettings(
            role=role,
            port=running.port,
            tls_port=running.tls_port,
            run_dir=running.run_dir,
            bridge=bridge,
        )

    def kill(self, role: str) -> None:
        process = (self.cloud if role == "cloud" else self.edge).running.process
        process.kill()
        process.wait(10)

    def start(self, role: str) -> None:
        target = self.cloud if role == "cloud" else self.edge
        target.running = broker_module.start_broker(target.running.secrets, self._settings(role))

    def stop(self) -> None:
        self.edge.running.stop()
        self.cloud.running.stop()


@pytest.fixture
def bridged(broker: BrokerUnderTest, tmp_path: Path) -> Iterator[BridgedSite]:
    secrets = broker.secrets
    cloud = broker_module.start_broker(
        secrets, broker_module.BrokerSettings(role="cloud", run_dir=tmp_path / "cloud-broker")
    )
    try:
        edge = broker_module.start_broker(
            secrets,
            broker_module.BrokerSettings(
                role="edge",
                run_dir=tmp_path / "edge-broker",
                bridge=broker_module.Bridge(cloud.host, cloud.port),
            ),
        )
    except BaseException:
        cloud.stop()
        raise
    site = BridgedSite(tmp_path, BrokerUnderTest(cloud), BrokerUnderTest(edge))
    try:
        yield site
    finally:
        site.stop()


_site_counter = itertools.count()


@pytest.fixture
def site() -> str:
    return f"t{next(_site_counter)}-{uuid.uuid4().hex[:8]}"


def wait_for(condition: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``condition`` until true; fail the test with ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.01)


@dataclass
class Received:
    topic: str
    payload: bytes
    retain: bool


@dataclass
class MqttProbe:
    """A paho client for tests: records messages and the reason codes of acknowledgements."""

    client: mqtt.Client
    messages: list[Received] = field(default_factory=list)
    acks: dict[int, ReasonCode] = field(default_factory=dict)
    connect_result: ReasonCode | None = None
    disconnected: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> int:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        return int(info.mid)

    def publish_and_wait(
        self, topic: str, payload: bytes, timeout: float = 10.0, retain: bool = False
    ) -> ReasonCode:
        mid = self.publish(topic, payload, qos=1, retain=retain)
        wait_for(lambda: mid in self.acks or self.disconnected.is_set(), timeout, "PUBACK")
        if mid not in self.acks:
            raise ConnectionError("disconnected before the PUBACK")
        return self.acks[mid]

    def subscribe(self, topic: str, qos: int = 1, timeout: float = 10.0) -> None:
        done = threading.Event()
        granted: list[Any] = []

        def on_subscribe(client: Any, userdata: Any, mid: int, codes: Any, props: Any) -> None:
            granted.extend(codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        self.client.subscribe(topic, qos=qos)
        if not done.wait(timeout):
            raise AssertionError(f"no SUBACK for {topic}")
        if any(code.is_failure for code in granted):
            raise PermissionError(f"subscription to {topic} refused: {granted}")

    def payloads(self, topic: str | None = None) -> list[bytes]:
        with self.lock:
            return [m.payload for m in self.messages if topic is None or m.topic == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def open_probe(
    broker: BrokerUnderTest,
    user: str | None,
    *,
    tls: bool = False,
    password: str | None = None,
    expect_refused: bool = False,
) -> MqttProbe:
    """A connected :class:`MqttProbe` on ``broker``; the caller closes it."""
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"probe-{uuid.uuid4().hex[:10]}",
        protocol=mqtt.MQTTv5,
    )
    probe = MqttProbe(client)
    if user is not None:
        config = broker.config_for(user, tls=tls)
        config.apply_to_paho(client)
        if password is not None:
            client.username_pw_set(user, password)
    elif tls:
        broker.config_for("observer", tls=True)  # only to check the CA exists
    connected = threading.Event()

    def on_connect(client: Any, userdata: Any, flags: Any, code: ReasonCode, props: Any) -> None:
        probe.connect_result = code
        connected.set()

    def on_message(client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        with probe.lock:
            probe.messages.append(Received(message.topic, message.payload, message.retain))

    def on_publish(
        client: Any, userdata: Any, mid: int, code: ReasonCode, props: Properties
    ) -> None:
        probe.acks[mid] = code

    def on_disconnect(client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        probe.disconnected.set()
        connected.set()

    client.on_connect = on_connect
    client.on_message = on_message
    client.on_publish = on_publish
    client.on_disconnect = on_disconnect
    host = "localhost" if tls else broker.host
    client.connect(host, broker.tls_port if tls else broker.port)
    client.loop_start()
    if not connected.wait(10):
        probe.close()
        raise AssertionError("no CONNACK")
    if not expect_refused and (probe.connect_result is None or probe.connect_result.is_failure):
        probe.close()
        raise AssertionError(f"connect as {user} failed: {probe.connect_result}")
    return probe


@pytest.fixture
def mqtt_probe(broker: BrokerUnderTest) -> Iterator[Callable[..., MqttProbe]]:
    """``mqtt_probe(user, tls=False, password=None)`` -> a connected :class:`MqttProbe`."""
    probes: list[MqttProbe] = []

    def connect(user: str | None, **options: Any) -> MqttProbe:
        probe = open_probe(broker, user, **options)
        probes.append(probe)
        return probe

    yield connect
    for probe in probes:
        probe.close()


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with every mode trained on the quick plan, both its generations (about a
    minute on 2 cores): the CNN split at k=2, full, cloud-only, PCA and autoencoder. Shared
    by the end-to-end tests (a cloud on it has nothing left to grow); its accuracies are
    far below the default plan's (see the benchmarks)."""
    from cloud.bootstrap import TrainingPlan, train_plan
    from cloud.registry import Registry

    root = tmp_path_factory.mktemp("registry")
    train_plan(Registry(root), TrainingPlan.quick())
    return root
