"""An MQTT v5 session that keeps itself connected, for the asyncio services.

Built on aiomqtt (itself on paho-mqtt). :class:`MqttSession` is an async context manager
owning a TaskGroup with one named loop, ``mqtt-connection``, which connects, subscribes,
hands each message to the service's callback and, when the link drops, reconnects with
exponential backoff (logged at INFO) and subscribes again. Services publish through
:meth:`MqttSession.publish`, which waits a bounded time for the link and raises
:class:`NotConnected` rather than queueing without limit.

The first connection is different: if the broker cannot be reached or refuses us within
``connect_timeout``, entering the context raises :class:`BrokerUnavailable` with a one-line
reason, so a CLI can say "cannot reach broker at host:port" instead of retrying forever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgelearn.config import BrokerConfig

log = logging.getLogger(__name__)

# Nagle's algorithm holds a small write while an earlier one is unacknowledged, and the
# broker delays that acknowledgement by up to 40 ms when it has nothing to send back: a
# feature published just after the PUBACK of an ack, or a result just after a feature's
# PUBACK, waited 40 ms. Every packet here is a whole message: send it at once.
SOCKET_OPTIONS = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)

MessageHandler = Callable[[aiomqtt.Message], None]


async def cancel_until_done(tasks: Sequence[asyncio.Task[Any]], patience: float) -> None:
    """Cancel ``tasks`` and wait for them, cancelling again every ``patience`` seconds.

    Python 3.11's ``asyncio.wait_for`` (aiomqtt's publish and subscribe use it) can swallow
    a cancellation that lands as its inner future completes; the task then carries on (a
    gateway's status loop went back to sleep and its shutdown waited for ever). Cancelling
    again reaches such a task at its next await.
    """
    while pending := [task for task in tasks if not task.done()]:
        for task in pending:
            task.cancel()
        await asyncio.wait(pending, timeout=patience)


class MqttSessionError(RuntimeError):
    pass


class BrokerUnavailable(MqttSessionError):
    """The first connection failed: wrong address, broker down, or credentials refused."""


class NotConnected(MqttSessionError):
    """A publish found no connection within its timeout."""


class MqttSession:
    def __init__(
        self,
        config: BrokerConfig,
        client_id: str,
        *,
        subscriptions: Sequence[tuple[str, int]] = (),
        on_message: MessageHandler | None = None,
        on_connect: Callable[[], Awaitable[None]] | None = None,
        will: aiomqtt.Will | None = None,
        persistent: bool = False,
        manual_ack: bool = False,
        session_expiry_seconds: int = 3600,
        max_inflight: int = 100,
        max_queued_incoming: int = 10_000,
        connect_timeout: float = 10.0,
        # A broker back after a long outage is found within this (cameras.mqtt_link.Backoff
        # says why a 30 s cap was too long).
        backoff_max: float = 3.0,
    ) -> None:
        self.config = config
        self.client_id = client_id
        self.subscriptions = list(subscriptions)
        self._on_message = on_message
        self._on_connect = on_connect
        self._will = will
        self._persistent = persistent
        # QoS 1 messages are acknowledged by :meth:`ack`, once handled, instead of on
        # receipt: one the process dies holding is delivered again (a persistent session).
        self._manual_ack = manual_ack
        self._session_expiry = session_expiry_seconds
        self._max_inflight = max_inflight
        self._max_queued_incoming = max_queued_incoming
        self._connect_timeout = connect_timeout
        self._backoff_max = backoff_max
        self._client: aiomqtt.Client | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._loop_task: asyncio.Task[None] | None = None
        self._first_attempt: asyncio.Future[None] | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0
        self.connection = 0  # counts connections: which one a message came on (:meth:`ack`)

    def _new_client(self) -> aiomqtt.Client:
        client = self._make_client()
        # aiomqtt warns past 10 concurrent publishes; our callers bound their own concurrency
        # (the gateway's in-flight cap, one result per frame), so warn only far beyond that.
        client.pending_calls_threshold = max(10, 4 * self._max_inflight)
        if self._manual_ack:  # aiomqtt does not expose paho's option; paho has it
            client._client.manual_ack_set(True)
        return client

    def _make_client(self) -> aiomqtt.Client:
        properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]  # paho
        if self._persistent:
            # Survive restarts of either side: the broker keeps our subscriptions and the
            # QoS 1 messages addressed to us for this long.
            properties.SessionExpiryInterval = self._session_expiry
        return aiomqtt.Client(
            self.config.host,
            self.config.port,
            username=self.config.username,
            password=self.config.password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            will=self._will,
            clean_start=not self._persistent,
            properties=properties,
            tls_context=self.config.ssl_context(),
            timeout=self._connect_timeout,
            max_inflight_messages=self._max_inflight,
            max_queued_incoming_messages=self._max_queued_incoming,
            logger=logging.getLogger(f"{__name__}.paho"),
            socket_options=SOCKET_OPTIONS,
        )

    async def __aenter__(self) -> MqttSession:
        loop = asyncio.get_running_loop()
        self._first_attempt = loop.create_future()
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        self._loop_task = self._tasks.create_task(self._connection_loop(), name="mqtt-connection")
        try:
            await asyncio.wait_for(asyncio.shield(self._first_attempt), self._connect_timeout + 5)
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        tasks, self._tasks = self._tasks, None
        if tasks is None:
            return
        if self._loop_task is not None:
            # Each attempt leaves time for aiomqtt's graceful DISCONNECT.
            await cancel_until_done([self._loop_task], patience=self._connect_timeout + 2)
        await tasks.__aexit__(None, None, None)

    async def _connection_loop(self) -> None:
        backoff = 0.5
        while True:
            client = self._new_client()
            try:
                async with client:
                    self._client = client
                    self.connection += 1
                    for topic, qos in self.subscriptions:
                        await client.subscribe(topic, qos=qos)
                    if self._on_connect is not None:
                        await self._on_connect()
                    self.connected.set()
                    backoff = 0.5
                    if self._first_attempt is not None and not self._first_attempt.done():
                        self._first_attempt.set_result(None)
                    else:
                        log.info("%s: reconnected to %s", self.client_id, self.config.address)
                    async for message in client.messages:
                        if self._on_message is not None:
                            self._on_message(message)
            except aiomqtt.MqttError as exc:
                self.connected.clear()
                self._client = None
                if self._first_attempt is not None and not self._first_attempt.done():
                    self._first_attempt.set_exception(
                        BrokerUnavailable(
                            f"cannot connect to {self.config.address} as "
                            f"{self.config.username or 'anonymous'}: {exc}"
                        )
                    )
                    return
                self.reconnects += 1
                log.info(
                    "%s: connection to %s lost (%s); retrying in %.1fs",
                    self.client_id,
                    self.config.address,
                    exc,
                    backoff,
                )
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, self._backoff_max)
            finally:
                self.connected.clear()
                self._client = None

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 0,
        retain: bool = False,
        wait_for_connection: float = 5.0,
    ) -> None:
        """Publish; for QoS 1 this returns once the broker acknowledged the message."""
        if not self.connected.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connected.wait(), wait_for_connection)
        client = self._client
        if client is None:
            raise NotConnected(f"no connection to {self.config.address}")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain)
        except aiomqtt.MqttError as exc:
            raise NotConnected(f"publish to {topic} failed: {exc}") from exc

    def ack(self, message: aiomqtt.Message, connection: int) -> None:
        """Acknowledge a QoS 1 ``message`` (``manual_ack``) that arrived on ``connection``
        (:attr:`connection` when it arrived). One from an earlier connection is not: the
        broker delivers it again on this one."""
        client = self._client
        if client is not None and connection == self.connection and message.qos > 0:
            client._client.ack(message.mid, message.qos)

    async def subscribe(self, topic: str, qos: int = 0) -> None:
        """Add a subscription now and after every reconnect."""
        self.subscriptions.append((topic, qos))
        if self._client is not None:
            await self._client.subscribe(topic, qos=qos)
