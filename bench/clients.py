"""The benchmarks' own MQTT clients: publishers and listeners (paho, MQTT v5)."""

from __future__ import annotations

import os
import threading
from typing import Any

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
