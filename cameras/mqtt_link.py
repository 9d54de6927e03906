"""A camera's MQTT v5 link: paho-mqtt driven by the asyncio event loop, reconnecting itself.

Transport stage of the flow of a frame: each camera is its own MQTT client (client id
``<prefix><camera_id>-<random>``, user name = camera id, password from the secrets
directory) and publishes its frame envelopes to ``edgelearn/v1/<site>/frames/<camera_id>``.

Why not aiomqtt: a QoS 0 publish in aiomqtt waits for its write confirmation even after
the connection dropped (until a timeout), and it does not reconnect. Here paho's socket is
registered with the event loop the same way aiomqtt does it (reader/writer callbacks, a
once-a-second ``loop_misc`` for keepalive), every pending send fails the moment the
connection drops, and a named background loop reconnects with exponential backoff (INFO
log on each reconnect) while the camera keeps its pace and counts frames skipped as
``disconnected``.

Flow control: :meth:`MqttLink.send` returns when paho has written the PUBLISH to the socket
(QoS 0) or the broker acknowledged it (QoS 1), so the camera's in-flight limit bounds what
sits in paho's buffers. A QoS 1 PUBACK with a failure reason code (an ACL refusal on MQTT
v5) raises :class:`~cameras.errors.TransportError` with reason ``refused``.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Self

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.reasoncodes import ReasonCode

from cameras.errors import ConnectError, TransportError
from edgelearn.config import BrokerConfig

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Backoff:
    """Exponential backoff with jitter: ``initial * factor**attempt`` capped at ``maximum``
    (3 s: a camera finds its site's broker back within that, where a 30 s cap kept it away
    11.5 s after a 20 s outage; an attempt is one refused connect to a local broker)."""

    initial: float = 0.5
    maximum: float = 3.0
    factor: float = 2.0
    jitter: float = 0.2

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        base = min(self.maximum, self.initial * self.factor ** max(0, attempt))
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1.0 + spread))


class MqttLink:
    """One camera's MQTT connection. Use as ``async with MqttLink(...) as link``."""

    def __init__(
        self,
        camera_id: str,
        broker: BrokerConfig,
        topic: str,
        *,
        qos: int = 0,
        client_id: str | None = None,
        keepalive: int = 30,
        connect_timeout: float = 10.0,
        send_timeout: float = 10.0,
        backoff: Backoff = Backoff(),
        on_reconnect: Callable[[], None] | None = None,
    ) -> None:
        if qos not in (0, 1):
            raise ValueError(f"camera frames use QoS 0 or 1, not {qos}")
        self.camera_id = camera_id
        self.broker = broker
        self.topic = topic
        self.qos = qos
        self.client_id = client_id or f"{camera_id}-{uuid.uuid4().hex[:8]}"
        self.keepalive = keepalive
        self.connect_timeout = connect_timeout
        self.send_timeout = send_timeout
        self.backoff = backoff
        self.on_reconnect = on_reconnect
        self._connected = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._client: mqtt.Client | None = None
        self._pending: dict[int, asyncio.Future[None]] = {}
        self._connack: asyncio.Future[ReasonCode] | None = None
        self._lost = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._closing = False
        self._disconnected = asyncio.Event()

    # -- public ----------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connected

    async def send(self, envelope: bytes) -> None:
        client = self._client
        if client is None or not self._connected:
            raise TransportError(
                f"{self.camera_id}: not connected to {self.broker.address}",
                reason="disconnected",
                camera_id=self.camera_id,
            )
        info = client.publish(self.topic, envelope, qos=self.qos)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise TransportError(
                f"{self.camera_id}: publish failed: {mqtt.error_string(info.rc)}",
                reason="disconnected" if info.rc == mqtt.MQTT_ERR_NO_CONN else "publish_failed",
                camera_id=self.camera_id,
            )
        if info.is_published():
            return
        future = self._running_loop().create_future()
        self._pending[info.mid] = future
        try:
            async with asyncio.timeout(self.send_timeout):
                await future
        except TimeoutError as exc:
            raise TransportError(
                f"{self.camera_id}: publish not confirmed within {self.send_timeout}s",
                reason="timeout",
                camera_id=self.camera_id,
            ) from exc
        finally:
            self._pending.pop(info.mid, None)

    async def __aenter__(self) -> Self:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._client = self._make_client()
        try:
            await self._connect(first=True)
        except BaseException:
            self._close_socket()
            raise
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._loops = [
            self._tasks.create_task(
                self._keepalive_loop(), name=f"mqtt-keepalive-{self.camera_id}"
            ),
            self._tasks.create_task(
                self._reconnect_loop(), name=f"mqtt-reconnect-{self.camera_id}"
            ),
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self._closing = True
        for task in self._loops:
            task.cancel()
        client = self._client
        if client is not None and self._connected:
            self._disconnected.clear()
            client.disconnect()
            # Let the DISCONNECT packet go out so the broker sees a clean close; a closing
            # link does not wait long for it.
            try:
                async with asyncio.timeout(1.0):
                    await self._disconnected.wait()
            except TimeoutError:
                log.debug("camera %s: DISCONNECT not written within 1s", self.camera_id)
        self._connected = False
        if self._tasks is not None:
            await self._tasks.__aexit__(None, None, None)
            self._tasks = None
        self._close_socket()
        self._fail_pending("link closed")

    # -- connection management -------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=mqtt.MQTTv5,
            reconnect_on_failure=False,
        )
        self.broker.apply_to_paho(client)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    async def _connect(self, *, first: bool) -> None:
        """One connection attempt: TCP (+TLS) connect in a thread, then wait for CONNACK."""
        client = self._client
        assert client is not None
        loop = self._running_loop()
        self._connack = loop.create_future()
        try:
            if first:
                await asyncio.to_thread(
                    client.connect, self.broker.host, self.broker.port, self.keepalive
                )
            else:
                await asyncio.to_thread(client.reconnect)
        except (OSError, ValueError) as exc:
            raise ConnectError(
                f"cannot reach MQTT broker {self.broker.address}: {exc}",
                reason="unreachable",
                camera_id=self.camera_id,
            ) from exc
        try:
            async with asyncio.timeout(self.connect_timeout):
                code = await self._connack
        except TimeoutError as exc:
            self._close_socket()
            raise ConnectError(
                f"no CONNACK from {self.broker.address} within {self.connect_timeout}s",
                reason="timeout",
                camera_id=self.camera_id,
            ) from exc
        if code.is_failure:
            self._close_socket()
            raise ConnectError(
                f"broker {self.broker.address} refused camera {self.camera_id}: {code}",
                reason="refused",
                camera_id=self.camera_id,
            )
        self._connected = True
        self._lost.clear()

    async def _reconnect_loop(self) -> None:
        while True:
            await self._lost.wait()
            if self._closing:
                return
            lost_at = time.monotonic()
            attempt = 0
            while not self._closing:
                delay = self.backoff.delay(attempt)
                log.debug(
                    "camera %s: reconnect attempt %d in %.2fs", self.camera_id, attempt + 1, delay
                )
                await asyncio.sleep(delay)  # backoff between attempts
                if self._closing:
                    return
                try:
                    await self._connect(first=False)
                except ConnectError as exc:
                    attempt += 1
                    log.info(
                        "camera %s: reconnect attempt %d failed: %s", self.camera_id, attempt, exc
                    )
                    continue
                log.info(
                    "camera %s: reconnected to %s after %.1fs (%d failed attempts)",
                    self.camera_id,
                    self.broker.address,
                    time.monotonic() - lost_at,
                    attempt,
                )
                if self.on_reconnect is not None:
                    self.on_reconnect()
                break

    async def _keepalive_loop(self) -> None:
        # paho's loop_misc sends PINGREQ and notices a dead peer; once a second is what
        # paho's own network loop does.
        while True:
            await asyncio.sleep(1.0)
            client = self._client
            if client is not None and self._connected:
                client.loop_misc()

    def _connection_lost(self, reason: str) -> None:
        if self._connected:
            log.info(
                "camera %s: lost connection to %s (%s); reconnecting",
                self.camera_id,
                self.broker.address,
                reason,
            )
        self._connected = False
        self._fail_pending(reason)
        self._lost.set()

    def _fail_pending(self, reason: str) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(
                    TransportError(
                        f"{self.camera_id}: {reason}",
                        reason="disconnected",
                        camera_id=self.camera_id,
                    )
                )

    def _close_socket(self) -> None:
        client = self._client
        if client is not None:
            sock = client.socket()
            if sock is not None:
                self._remove_io(sock.fileno())
                sock.close()

    # -- paho callbacks (event loop thread, except socket ones during connect) ----------

    def _running_loop(self) -> asyncio.AbstractEventLoop:
        assert self._loop is not None, "use MqttLink as an async context manager"
        return self._loop

    def _in_loop(self, function: Callable[..., Any], *args: Any) -> None:
        if threading.get_ident() == self._loop_thread:
            function(*args)
        else:
            self._running_loop().call_soon_threadsafe(function, *args)

    def _on_connect(
        self, client: mqtt.Client, userdata: Any, flags: Any, code: ReasonCode, properties: Any
    ) -> None:
        def deliver() -> None:
            if self._connack is not None and not self._connack.done():
                self._connack.set_result(code)

        self._in_loop(deliver)

    def _on_disconnect(
        self, client: mqtt.Client, userdata: Any, flags: Any, code: Any, properties: Any
    ) -> None:
        self._in_loop(self._disconnected.set)
        if not self._closing:
            self._in_loop(self._connection_lost, str(code))

    def _on_publish(
        self, client: mqtt.Client, userdata: Any, mid: int, code: ReasonCode, properties: Any
    ) -> None:
        future = self._pending.get(mid)
        if future is None or future.done():
            return
        if code.is_failure:
            future.set_exception(
                TransportError(
                    f"{self.camera_id}: broker refused publish: {code}",
                    reason="refused",
                    camera_id=self.camera_id,
                )
            )
        else:
            future.set_result(None)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._running_loop().add_reader, sock.fileno(), self._read)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._remove_io, sock.fileno())

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._running_loop().add_writer, sock.fileno(), self._write)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._in_loop(self._running_loop().remove_writer, sock.fileno())

    def _remove_io(self, fileno: int) -> None:
        if fileno >= 0:
            self._running_loop().remove_reader(fileno)
            self._running_loop().remove_writer(fileno)

    def _read(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            while True:
                rc = client.loop_read()
                # TLS sockets may hold decoded bytes select() cannot see.
                sock = client.socket()
                pending = getattr(sock, "pending", None)
                if rc != mqtt.MQTT_ERR_SUCCESS or pending is None or pending() == 0:
                    break
        except OSError as exc:
            self._close_socket()
            self._connection_lost(f"read failed: {exc}")

    def _write(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            client.loop_write()
        except OSError as exc:
            self._close_socket()
            self._connection_lost(f"write failed: {exc}")
