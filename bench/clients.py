"""The benchmarks' own MQTT clients: publishers and listeners (paho, MQTT v5)."""

from __future__ import annotations

import collections
import os
import threading
from typing import Any

from edgelearn import wire
from edgelearn.config import BrokerConfig


def mqtt_client(config: BrokerConfig, client_id: str, *, max_inflight: int = 20) -> Any:
    """A connected paho client (MQTT v5) with its network thread running."""
    import paho.mqtt.client as mqtt
    from paho.mqtt.enums import CallbackAPIVersion

    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5)
    config.apply_to_paho(client)
    client.max_inflight_messages_set(max_inflight)
    connected = threading.Event()
    outcome: list[Any] = []

    def on_connect(client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
        outcome.append(code)
        connected.set()

    client.on_connect = on_connect
    client.connect(config.host, config.port)
    client.loop_start()
    if not connected.wait(15) or outcome[0].is_failure:
        client.loop_stop()
        raise RuntimeError(f"{client_id}: no connection to {config.address} ({outcome})")
    return client


def close_client(client: Any) -> None:
    client.disconnect()
    client.loop_stop()


def publish_retained(config: BrokerConfig, topic: str, payload: bytes) -> None:
    """Publish ``payload`` retained at QoS 1 and wait for the broker's acknowledgement."""
    client = mqtt_client(config, f"bench-retain-{os.getpid()}")
    try:
        info = client.publish(topic, payload, qos=1, retain=True)
        info.wait_for_publish(15)
        if not info.is_published():
            raise RuntimeError(f"the broker did not acknowledge the message on {topic}")
    finally:
        close_client(client)


class Acker:
    """The cloud's receipts without the cloud: every feature (or edge result) published under
    ``site`` is acknowledged to its gateway, as :mod:`cloud.consumer` does after answering,
    in one ``Ack`` per gateway every ``every`` seconds. A benchmark of the gateway alone runs
    one so that its outbox works as in a pipeline; without it, every feature is sent again
    after ``retry_after`` and the gateway's uplink and CPU count copies no cloud asks for."""

    def __init__(self, config: BrokerConfig, site: str, every: float = 0.05) -> None:
        self._topics = wire.Topics(site)
        self._every = every
        self._lock = threading.Lock()
        self._waiting: dict[str, list[wire.Capture]] = collections.defaultdict(list)
        self.acknowledged = 0
        self._stop = threading.Event()
        self._client = mqtt_client(config, f"bench-acker-{os.getpid()}")
        self._client.on_message = self._on_message
        self._client.subscribe(self._topics.all_features(), qos=1)
        self._thread = threading.Thread(target=self._run, name="bench-acker", daemon=True)
        self._thread.start()

    def _on_message(self, client: Any, userdata: Any, message: Any) -> None:
        try:
            envelope = wire.decode(bytes(message.payload))
        except wire.WireError:
            return  # not ours to judge: the benchmark counts what the gateway sent
        if isinstance(envelope, wire.Feature | wire.Result):
            with self._lock:
                self._waiting[envelope.gateway_id].append(wire.capture_of(envelope))

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            with self._lock:
                waiting, self._waiting = self._waiting, collections.defaultdict(list)
            for gateway, captures in waiting.items():
                for start in range(0, len(captures), wire.MAX_ACK_ENTRIES):
                    chunk = captures[start : start + wire.MAX_ACK_ENTRIES]
                    ack = wire.Ack.of(gateway, chunk)
                    self._client.publish(self._topics.ack(gateway), wire.encode(ack), qos=1)
                self.acknowledged += len(captures)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        close_client(self._client)
