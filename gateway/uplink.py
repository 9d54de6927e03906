"""The uplink of a gateway worker: its features to the cloud, at least once.

Where it sits in the flow of a frame::

    worker thread --Forward--> Uplink.keep_and_send --> Outbox.put (SQLite): on disk first
                                    | a send slot free (max_pending)?
                                    v
    task forwarder: first sends, in the worker's order --+
    task resender: what the outbox says is due ----------+--> publish, QoS 1, max_inflight
                                                              at once --> features/<gw>/<camera>
    MQTT acks/<gw> --> Uplink.acknowledged --> Outbox.acknowledge: the cloud has it, forget it

Delivery is end to end, at least once: a feature stays in the :class:`gateway.outbox.Outbox`
until an ``Ack`` from the cloud names it, and the cloud de-duplicates. Features queued for
their first send are capped (``max_pending``); past that they wait in the outbox, due at
once, so the worker thread never blocks on a slow uplink and a long outage costs what the
outbox policy says, each feature given up counted through ``on_drop`` (the worker's
:class:`gateway.ingest.Drops`). A publish that finds no connection is due again as soon as
there is one.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass
from typing import Any

from edgelearn import wire
from edgelearn.mqtt import MqttSession, NotConnected
from edgelearn.peer_log import PeerLog
from gateway.config import GatewayConfig
from gateway.metrics import GatewayMetrics
from gateway.outbox import Outbox, OutboxError, Pending
from gateway.pipeline import Forward

log = logging.getLogger(__name__)

Spawn = Callable[[Coroutine[Any, Any, None], str], None]
"""Starts a named task that the worker cancels when it stops."""


@dataclass(frozen=True)
class _FirstSend:
    pending: Pending
    processed: float  # time.monotonic() when the pipeline was done: the outbox hop


class Uplink:
    """Keeps and sends the features of one worker; the worker thread hands them in, the
    ``forwarder`` and ``resender`` tasks send them."""

    def __init__(
        self,
        config: GatewayConfig,
        metrics: GatewayMetrics,
        *,
        on_drop: Callable[[str, str], None],
        extract_seconds: Mapping[str, float],
    ) -> None:
        self.config = config
        self._topics = wire.Topics(config.site)
        self._metrics = metrics
        self._on_drop = on_drop  # (camera, reason): a feature given up, for the drop policy
        self._extract_seconds = extract_seconds  # the model slot's, for the capacity gauge
        self._peers = PeerLog(log)
        self.outbox: Outbox | None = None  # open while the worker runs
        metrics.watch_outbox(lambda: self.outbox)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._session: MqttSession | None = None
        self._spawn: Spawn | None = None
        self._sends: asyncio.Queue[_FirstSend] | None = None  # first sends, from the worker
        self._pending = threading.BoundedSemaphore(config.max_pending)
        self._inflight = asyncio.Semaphore(config.max_inflight)
        self.bytes_total = 0  # for the status message's rate
        # What the edge broker says of its bridge to the cloud (``bridge/up``, retained):
        # while it is down, what was sent waits in the bridge's queue, so nothing is re-sent.
        # No word (a gateway on the cloud broker itself, no bridge): up.
        self._bridges: dict[str, bool] = {}  # by bridge name: up?
        self._probed = 0.0  # when the last probe went (time.monotonic())

    def open(self, session: MqttSession, spawn: Spawn) -> None:
        """On the event loop, as the worker starts: the outbox (what a previous run left in
        it is due at once), and where publishes go."""
        self._loop = asyncio.get_running_loop()
        self._sends = asyncio.Queue()
        self._session, self._spawn = session, spawn
        self.outbox = Outbox(
            self.config.outbox_path,
            max_items=self.config.outbox_max_items,
            max_bytes=int(self.config.outbox_max_mb * 2**20),
            policy=self.config.outbox_policy,
            retry_after=self.config.retry_after,
            retry_max=self.config.retry_max,
            on_drop=self._on_drop,
        )

    def close(self) -> None:
        if self.outbox is not None:
            self.outbox.close()  # what is still in it goes out at the next start
            self.outbox = None

    def pending(self) -> int:
        """Features queued for their first send or being sent for the first time."""
        return self.config.max_pending - self._pending._value

    def settled(self) -> bool:
        """Whether the cloud acknowledged every feature."""
        return self.outbox is not None and not self.outbox.items

    # --- the worker thread ---------------------------------------------------------------

    def keep_and_send(self, item: Forward, processed: float) -> None:
        """Into the outbox first (on disk before it is sent), then queue its first send. With
        no send slot free (the uplink is slow or down) it waits in the outbox instead, due at
        once: the worker never blocks on the uplink, and the outbox's bounds and policy
        decide what a long outage costs."""
        assert self._loop is not None and self._sends is not None and self.outbox is not None
        envelope = item.envelope
        camera, mode = envelope.camera_id, str(item.mode)
        topic = self._topics.feature(self.config.gateway_id, camera)
        capture = wire.capture_of(envelope)
        sending = self._pending.acquire(blocking=False)
        try:
            kept = self.outbox.put(capture, topic, item.data, mode, sent=sending)
        except OutboxError as exc:
            self._outbox_failed(exc)
            if not sending:
                self._on_drop(camera, "outbox_failed")
            kept = sending  # sent once, unprotected: better than not at all
        if not sending:
            return
        if not kept:  # the policy refused it (counted)
            self._pending.release()
            return
        pending = Pending(*capture, topic, item.data, mode, attempts=0)
        self._loop.call_soon_threadsafe(self._sends.put_nowait, _FirstSend(pending, processed))

    def _outbox_failed(self, exc: OutboxError) -> None:
        self._metrics.outbox_failures.inc()
        self._peers.warning("outbox", "outbox_failed", "%s", exc)

    # --- the event loop ------------------------------------------------------------------

    def acknowledged(self, payload: bytes) -> None:
        """An ``Ack`` envelope from the cloud: forget what it names."""
        try:
            ack = wire.decode_as(payload, wire.Ack)
        except wire.WireError as exc:
            self._peers.warning("cloud", exc.reason, "ignored an ack: %s", exc)
            return
        if ack.gateway_id != self.config.gateway_id or self.outbox is None:
            return
        try:
            # Every worker of the pool reads the gateway's acks; each forgets what it holds.
            self._metrics.acked.inc(self.outbox.acknowledge(ack.entries(), ack.consumer))
        except OutboxError as exc:
            self._outbox_failed(exc)

    @property
    def link_up(self) -> bool:
        return all(self._bridges.values())

    def bridge_state(self, bridge: str, payload: bytes) -> None:
        """The edge broker's notice of one of its bridges: ``1`` up, ``0`` down."""
        was = self.link_up
        self._bridges[bridge] = payload.strip() != b"0"
        if self.link_up != was:
            log.info("the edge broker's link to the cloud is %s", "up" if self.link_up else "down")
            if self.link_up and self.outbox is not None:
                self.outbox.link_restored()
        self._metrics.link_up.set(1 if self.link_up else 0)

    async def forward(self) -> None:
        """First sends, in the order the worker made them (a task)."""
        assert self._sends is not None and self._spawn is not None
        while True:
            item = await self._sends.get()
            await self._inflight.acquire()
            self._spawn(self._send(item.pending, first=True, processed=item.processed), "publish")

    async def resend(self) -> None:
        """Whatever the outbox says is due (a task): unacknowledged after its backoff and
        passed by the acks (:meth:`Outbox.paced`), a send that failed for a lost connection,
        or what a previous run left behind. Nothing while the bridge is down."""
        assert self._session is not None and self._spawn is not None
        assert self.outbox is not None
        while True:
            await self._session.connected.wait()
            if not self.link_up:
                await asyncio.sleep(0.5)
                continue
            free = max(1, self._inflight._value)
            paced = self.outbox.paced()
            if paced is None:  # no ack for retry_max: one copy, the oldest, as a probe
                now = time.monotonic()
                free = 1 if now - self._probed >= self.config.retry_max else 0
                self._probed = now if free else self._probed
            try:
                batch = self.outbox.take_due(free, sent_before=paced) if free else []
            except OutboxError as exc:  # a full disk: nothing lost, tried again next tick
                self._outbox_failed(exc)
                batch = []
            if batch:
                log.debug(
                    "re-sending %d: %s", len(batch),
                    "a probe, no ack for retry_max" if paced is None
                    else f"sent before {paced:.1f} (acks through {self.outbox.acked_through:.1f})",
                )  # fmt: skip
            for item in batch:
                await self._inflight.acquire()
                self._spawn(self._send(item, first=False), "publish")
            if len(batch) < free or not free:  # nothing more now (or no probe due): wait
                due = self.outbox.next_due()
                wait = 0.5 if due is None else due - time.time()
                await asyncio.sleep(min(0.5, max(0.02, wait)))  # the resend schedule's tick

    async def _send(self, item: Pending, *, first: bool, processed: float | None = None) -> None:
        """Publish one feature; ``processed`` (a first send's) is when the pipeline was done
        with it, for the outbox hop."""
        assert self._session is not None and self.outbox is not None
        started = time.perf_counter()
        if processed is not None:
            self._metrics.hop_seconds.labels("outbox").observe(time.monotonic() - processed)
        try:
            await self._session.publish(item.topic, item.payload, qos=1, wait_for_connection=1)
        except NotConnected as exc:
            self._metrics.forward_failures.inc()
            log.info("uplink publish failed (%s); sending again once connected", exc)
            try:
                self.outbox.retry_now(item.capture)
            except OutboxError as error:  # sent again at its backoff instead
                self._outbox_failed(error)
            return
        finally:
            self._inflight.release()
            if first:
                self._pending.release()
        published = time.perf_counter() - started
        self._metrics.stage_seconds.labels("publish").observe(published)
        if processed is not None:
            self._metrics.hop_seconds.labels("publish").observe(published)
        self._metrics.uplink_bytes.labels(item.camera_id, item.mode).inc(len(item.payload))
        self.bytes_total += len(item.payload)
        if not first:
            self._metrics.resent.inc()
        if (seconds := self._extract_seconds.get(item.mode)) is not None:
            self._metrics.capacity.labels(item.mode).set(1.0 / seconds)
