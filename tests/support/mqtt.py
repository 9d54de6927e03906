"""An MQTT client a test drives by hand (paho, MQTT v5): publish and wait for the
broker's answer, subscribe, and read what arrived."""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from tests.support.broker import BrokerUnderTest
from tests.support.waiting import wait_for


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
