"""A gateway worker process: the I/O shell around :class:`gateway.pipeline.FramePipeline`.

Where it sits::

    MQTT .../frames/+ (or the pool's ingest) --+
                                               +--> Ingest -----> worker thread
    CoAP POST /frames -------------------------+    (LatestFrames,   (pipeline)
                                                     newest wins)        |
                          Outbox (SQLite) <-- put, on disk first --------+
                             |  first send now; again after a backoff until acked
                             +--> MQTT features/<gw>/<camera>, QoS 1
    MQTT acks/<gw>            --> Outbox.acknowledge: the cloud has it, forget it
    MQTT models/{all,<gw>}/+  --> ModelSlot: verify signature + digest, load in a thread, swap
    MQTT plans/<gw>           --> ModelSlot: mode / keyframe thresholds, between frames
    every few seconds         --> retained status/<gw>/<worker>; last will marks it offline

:class:`GatewayWorker` is an async context manager owning a TaskGroup of named loops
(``mqtt-connection`` inside the session, ``worker``, ``forwarder``, ``resender``,
``status``, and ``feed`` in a pool). Per-frame compute runs in the worker thread, off the
event loop; a pool's pipe is read in a thread too (its reads block). Delivery is
end to end, at least once: a feature stays in the :class:`gateway.outbox.Outbox` until an
``Ack`` from the cloud names it, and the cloud de-duplicates. Features queued for their
first send are capped (``max_pending``); past that they wait in the outbox, so the worker
never blocks on a slow uplink and a long outage costs what the outbox policy says, counted.

Frames come in through :mod:`gateway.ingest` (checked, counted, queued per camera, newest
wins), which also holds the worker's drop policy: every frame or feature dropped is counted
there, with its reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

import aiomqtt
from prometheus_client import CollectorRegistry

from edgelearn import roi, wire
from edgelearn.config import BrokerConfig
from edgelearn.metrics import MetricsServer, register_build_info, serve_metrics
from edgelearn.mqtt import MqttSession, NotConnected, cancel_until_done
from edgelearn.peer_log import PeerLog
from gateway import dispatch
from gateway.coap import CoapEndpoint
from gateway.config import GatewayConfig
from gateway.ingest import Arrival, Drops, Ingest, Queued
from gateway.metrics import GatewayMetrics
from gateway.model_slot import ModelSlot
from gateway.outbox import Outbox, OutboxError, Pending
from gateway.pipeline import Dropped, Forward, FramePipeline, HeldBack

log = logging.getLogger(__name__)
SESSION_EXPIRY_SECONDS = 3600


# --- the worker ------------------------------------------------------------------------


@dataclass(frozen=True)
class _FirstSend:
    pending: Pending
    processed: float  # time.monotonic() when the pipeline was done: the outbox hop


@dataclass(frozen=True)
class _Totals:
    """Monotonic counts read at one instant; two of them give the rates of a status period."""

    time: float
    uplink_bytes: int
    frames_in: int
    input_bytes: int
    keyframes: int
    held_back: int


@dataclass(frozen=True)
class _InputRates:
    fps: float
    bytes_per_second: float
    keyframe_ratio: float


class GatewayWorker:
    def __init__(
        self,
        config: GatewayConfig,
        *,
        broker: BrokerConfig | None = None,
        trusted_key: Any | None = None,
        registry: CollectorRegistry | None = None,
        feed: Connection | None = None,
    ) -> None:
        self.config = config
        # In a pool, frames come from the supervisor's dispatcher over this pipe (camera
        # affinity, gateway.dispatch), not from a subscription of our own.
        self.feed = feed
        self.feed_lost = asyncio.Event()
        self.topics = wire.Topics(config.site)
        self.broker = broker or config.broker_config()
        self.registry = registry or CollectorRegistry()
        register_build_info(self.registry, "gateway")
        self.metrics = GatewayMetrics(self.registry)
        self.pipeline = FramePipeline(
            gateway_id=config.gateway_id,
            mode=config.mode,
            keyframes=config.keyframe_settings(),
            feature_codec=config.codec,
            on_stage=lambda stage, seconds: self.metrics.stage_seconds.labels(stage).observe(
                seconds
            ),
            objects=roi.RoiSettings() if config.objects else None,
            learning_sample=config.learning_sample,
        )
        self.drops = Drops(self.metrics)
        self.ingest = Ingest(config, self.metrics, self.drops)
        self.model_slot = ModelSlot(config, self.pipeline, self.metrics, trusted_key=trusted_key)
        self.outbox: Outbox | None = None  # opened on entry
        self.metrics.watch_outbox(lambda: self.outbox)
        self._peers = PeerLog(log)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sends: asyncio.Queue[_FirstSend] | None = None  # first sends, from work
        self._pending = threading.BoundedSemaphore(config.max_pending)
        self._inflight = asyncio.Semaphore(config.max_inflight)
        self._stopping = threading.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._cancellable: set[asyncio.Task[Any]] = set()
        self._session: MqttSession | None = None
        self._coap: CoapEndpoint | None = None
        self.metrics_server: MetricsServer | None = None
        self.coap_port: int | None = None
        # Plain totals for the status message (the metrics hold the labelled ones).
        self.uplink_bytes_total = 0
        self.keyframes_total = 0
        self.held_back_total = 0

    # --- MQTT messages (event loop) ------------------------------------------------------

    def _on_message(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
        kind = wire.topic_level(topic, -2)
        if kind == "frames":
            self.ingest.frame(payload, "mqtt", wire.topic_level(topic, -1))
        elif wire.topic_level(topic, -3) == "models":
            if payload:  # an empty retained message clears a slot; nothing to load
                self._spawn(self.model_slot.receive(payload, topic), "model-load")
        elif kind == "plans":
            self.model_slot.apply_plan(payload)
        elif kind == "acks":
            self._acknowledged(payload)

    def _acknowledged(self, payload: bytes) -> None:
        try:
            ack = wire.decode_as(payload, wire.Ack)
        except wire.WireError as exc:
            self._peers.warning("cloud", exc.reason, "ignored an ack: %s", exc)
            return
        if ack.gateway_id != self.config.gateway_id or self.outbox is None:
            return
        try:
            # Every worker of the pool reads the gateway's acks; each forgets what it holds.
            self.metrics.acked.inc(self.outbox.acknowledge(ack.entries()))
        except OutboxError as exc:
            self._outbox_failed(exc)

    # --- worker thread -------------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            entry = self.ingest.queue.get(timeout=0.2)
            if entry is None:
                continue
            frame = entry.item.frame
            taken = time.monotonic()  # the queue's clock
            try:
                outcome = self.pipeline.process(frame)
            except Exception:  # a model failing on one frame must not stop the worker
                log.exception("extraction failed on %s #%d", frame.camera_id, frame.seq)
                outcome = Dropped("extract_failed")
            processed = time.monotonic()
            camera = frame.camera_id
            if isinstance(outcome, Dropped):
                self.drops.frame(camera, outcome.reason)
                continue
            self.metrics.raw_equivalent_bytes.labels(camera).inc(len(frame.payload))
            if self.pipeline.objects is not None:
                self.metrics.observe_objects(camera, outcome.objects)
            if isinstance(outcome, HeldBack):
                self.metrics.processed.labels(camera, "held_back").inc()
                self.held_back_total += 1
                continue
            self.keyframes_total += 1
            self.metrics.processed.labels(camera, "forwarded").inc()
            self._observe_hops(entry, taken, processed)
            self._keep_and_send(outcome, processed)

    def _observe_hops(self, entry: Queued[Arrival], taken: float, processed: float) -> None:
        """The gateway's hops of a forwarded frame (the ones that end in a result)."""
        capture_ns = entry.item.frame.capture_ns
        hops = self.metrics.hop_seconds
        hops.labels("camera").observe(max(0, entry.item.received_ns - capture_ns) / 1e9)
        hops.labels("queue").observe(max(0.0, taken - entry.enqueued))
        hops.labels("processing").observe(processed - taken)
        self.metrics.processed_age.observe(max(0, time.time_ns() - capture_ns) / 1e9)

    def _keep_and_send(self, item: Forward, processed: float) -> None:
        """Into the outbox first (on disk before it is sent), then queue its first send. With
        no send slot free (the uplink is slow or down) it waits in the outbox instead, due at
        once: the worker never blocks on the uplink, and the outbox's bounds and policy
        decide what a long outage costs."""
        assert self._loop is not None and self._sends is not None and self.outbox is not None
        envelope = item.envelope
        camera, mode = envelope.camera_id, str(item.mode)
        topic = self.topics.feature(self.config.gateway_id, camera)
        capture = wire.capture_of(envelope)
        sending = self._pending.acquire(blocking=False)
        try:
            kept = self.outbox.put(capture, topic, item.data, mode, sent=sending)
        except OutboxError as exc:
            self._outbox_failed(exc)
            if not sending:
                self.drops.feature(camera, "outbox_failed")
            kept = sending  # sent once, unprotected: better than not at all
        if not sending:
            return
        if not kept:  # the policy refused it (counted)
            self._pending.release()
            return
        pending = Pending(*capture, topic, item.data, mode, attempts=0)
        self._loop.call_soon_threadsafe(self._sends.put_nowait, _FirstSend(pending, processed))

    def _outbox_failed(self, exc: OutboxError) -> None:
        self.metrics.outbox_failures.inc()
        self._peers.warning("outbox", "outbox_failed", "%s", exc)

    # --- forwarder and status (event loop) -----------------------------------------------

    async def _read_feed(self) -> None:
        """The pool's pipe, in a thread: its reads block."""
        assert self.feed is not None and self._loop is not None
        if await asyncio.to_thread(self.ingest.read_feed, self.feed, self._loop, self._stopping):
            self.feed_lost.set()

    def _spawn(self, coroutine: Any, name: str) -> None:
        """A task in our TaskGroup that shutdown cancels (the threads are stopped by their
        flag instead)."""
        assert self._tasks is not None
        task = self._tasks.create_task(coroutine, name=name)
        self._cancellable.add(task)
        task.add_done_callback(self._cancellable.discard)

    async def _forward(self) -> None:
        """First sends, in the order the worker made them."""
        assert self._sends is not None
        while True:
            item = await self._sends.get()
            await self._inflight.acquire()
            self._spawn(self._send(item.pending, first=True, processed=item.processed), "publish")

    async def _resend(self) -> None:
        """Whatever the outbox says is due: unacknowledged after its backoff, a send that
        failed for a lost connection, or what a previous run left behind."""
        assert self._session is not None and self.outbox is not None
        while True:
            await self._session.connected.wait()
            free = max(1, self._inflight._value)
            try:
                batch = self.outbox.take_due(free)
            except OutboxError as exc:  # a full disk: nothing lost, tried again next tick
                self._outbox_failed(exc)
                batch = []
            for item in batch:
                await self._inflight.acquire()
                self._spawn(self._send(item, first=False), "publish")
            if len(batch) < free:
                due = self.outbox.next_due()
                wait = 0.5 if due is None else due - time.time()
                await asyncio.sleep(min(0.5, max(0.02, wait)))  # the resend schedule's tick

    async def _send(self, item: Pending, *, first: bool, processed: float | None = None) -> None:
        """Publish one feature; ``processed`` (a first send's) is when the pipeline was done
        with it, for the outbox hop."""
        assert self._session is not None and self.outbox is not None
        started = time.perf_counter()
        if processed is not None:
            self.metrics.hop_seconds.labels("outbox").observe(time.monotonic() - processed)
        try:
            await self._session.publish(item.topic, item.payload, qos=1, wait_for_connection=1)
        except NotConnected as exc:
            self.metrics.forward_failures.inc()
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
        self.metrics.stage_seconds.labels("publish").observe(published)
        if processed is not None:
            self.metrics.hop_seconds.labels("publish").observe(published)
        self.metrics.uplink_bytes.labels(item.camera_id, item.mode).inc(len(item.payload))
        self.uplink_bytes_total += len(item.payload)
        if not first:
            self.metrics.resent.inc()
        if (seconds := self.model_slot.extract_seconds.get(item.mode)) is not None:
            self.metrics.capacity.labels(item.mode).set(1.0 / seconds)

    def status(
        self, online: bool, uplink_rate: float = 0.0, rates: _InputRates | None = None
    ) -> wire.Status:
        mode, effective = self.pipeline.mode, self.pipeline.effective_mode()
        note = "" if mode == effective else f"no {mode} model yet: running raw"
        versions = self.pipeline.model_versions()
        return wire.Status(
            gateway_id=self.config.gateway_id,
            worker=self.config.worker,
            online=int(online),
            time_ns=time.time_ns(),
            mode=str(effective),
            model_version=versions.get(effective, "none"),
            capacity_fps=self.model_slot.capacity_fps(),
            uplink_bytes_per_second=uplink_rate,
            queue_depths=self.ingest.queue.depths(),
            note=note,
            input_fps=rates.fps if rates else 0.0,
            input_bytes_per_second=rates.bytes_per_second if rates else 0.0,
            keyframe_ratio=rates.keyframe_ratio if rates else 1.0,
            uplink_capacity_bytes_per_second=self.config.uplink_kbps * 1000 / 8,
        )

    def _totals(self) -> _Totals:
        return _Totals(
            time.monotonic(),
            self.uplink_bytes_total,
            self.ingest.frames_in_total,
            self.ingest.input_bytes_total,
            self.keyframes_total,
            self.held_back_total,
        )

    async def _publish_status(self) -> None:
        assert self._session is not None
        topic = self.topics.status(self.config.gateway_id, self.config.worker)
        last = self._totals()
        while True:
            now = self._totals()
            seconds = max(now.time - last.time, 1e-6)
            decided = (now.keyframes - last.keyframes) + (now.held_back - last.held_back)
            rates = _InputRates(
                fps=(now.frames_in - last.frames_in) / seconds,
                bytes_per_second=(now.input_bytes - last.input_bytes) / seconds,
                # No frame decided this period: keep "every frame is a keyframe" (the planner
                # then budgets for the worst case).
                keyframe_ratio=(now.keyframes - last.keyframes) / decided if decided else 1.0,
            )
            uplink_rate = (now.uplink_bytes - last.uplink_bytes) / seconds
            last = now
            try:
                await self._session.publish(
                    topic, wire.encode(self.status(True, uplink_rate, rates)), qos=1, retain=True
                )
            except NotConnected:
                log.info("status not published: no connection")
            await asyncio.sleep(self.config.status_interval)  # the status period

    # --- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> GatewayWorker:
        self._loop = asyncio.get_running_loop()
        self._sends = asyncio.Queue()
        self.outbox = Outbox(
            self.config.outbox_path,
            max_items=self.config.outbox_max_items,
            max_bytes=int(self.config.outbox_max_mb * 2**20),
            policy=self.config.outbox_policy,
            retry_after=self.config.retry_after,
            retry_max=self.config.retry_max,
            on_drop=self.drops.feature,
        )
        self.metrics_server = serve_metrics(
            self.registry, self.config.metrics_port, self.config.metrics_host
        )
        topics = self.topics
        will = aiomqtt.Will(
            topics.status(self.config.gateway_id, self.config.worker),
            wire.encode(self.status(False)),
            qos=1,
            retain=True,
        )
        self._session = MqttSession(
            self.broker,
            self.config.client_id,
            subscriptions=[
                *([] if self.feed else [(wire.shared(self.config.group, topics.all_frames()), 0)]),
                (f"{topics.base}/models/{wire.ALL_GATEWAYS}/+", 1),
                (topics.models_for(self.config.gateway_id), 1),
                (topics.plan(self.config.gateway_id), 1),
                (topics.ack(self.config.gateway_id), 1),
            ],
            on_message=self._on_message,
            will=will,
            persistent=True,
            # Acks, plans and models wait this long for a worker that is down; the outbox
            # re-sends after a longer outage, and models and plans are retained.
            session_expiry_seconds=SESSION_EXPIRY_SECONDS,
            backoff_max=2.0,
        )
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        try:
            await self._session.__aenter__()
            if self.config.coap_port >= 0:
                await self._start_coap()
            self.model_slot.update_mode_metric()
            self._tasks.create_task(asyncio.to_thread(self._work), name="worker")
            self._spawn(self._forward(), "forwarder")
            self._spawn(self._resend(), "resender")
            self._spawn(self._publish_status(), "status")
            if self.feed is not None:
                self._tasks.create_task(self._read_feed(), name="feed")
                self.feed.send((dispatch.READY,))
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start_coap(self) -> None:
        endpoint = CoapEndpoint(
            lambda payload, camera: self.ingest.frame(payload, "coap", camera),
            self.config.coap_host,
            self.config.coap_port,
            credentials=self.config.coap_credentials(),
            on_refused=lambda reason: self.drops.refused("coap", reason),
        )
        self._coap = await endpoint.__aenter__()
        self.coap_port = endpoint.port

    async def drain(self, timeout: float = 30.0) -> bool:
        """Wait until every queued frame is processed and its feature sent once (the broker
        acknowledged it); False if ``timeout`` came first."""
        return await self._wait_for(
            lambda: not any(self.ingest.queue.depths().values()) and self._pending_count() == 0,
            timeout,
        )

    async def settle(self, timeout: float = 30.0) -> bool:
        """Wait until the cloud acknowledged every feature; False on timeout."""
        return await self._wait_for(
            lambda: self.outbox is not None and not self.outbox.items, timeout
        )

    @staticmethod
    async def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)  # polling a condition, bounded by timeout
        return True

    def _pending_count(self) -> int:
        return self.config.max_pending - self._pending._value

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self.ingest.queue.close()
        if self._coap is not None:
            await self._coap.__aexit__(None, None, None)
            self._coap = None
        tasks, self._tasks = self._tasks, None
        if tasks is not None:
            await cancel_until_done(list(self._cancellable), patience=0.5)
            await tasks.__aexit__(None, None, None)
        self.ingest.queue.drain("shutdown")
        if self._session is not None:
            # A clean disconnect sends no last will: say we are offline ourselves.
            topic = self.topics.status(self.config.gateway_id, self.config.worker)
            with contextlib.suppress(NotConnected):
                await self._session.publish(
                    topic,
                    wire.encode(self.status(False)),
                    qos=1,
                    retain=True,
                    wait_for_connection=1.0,
                )
            await self._session.__aexit__(None, None, None)
            self._session = None
        if self.outbox is not None:
            self.outbox.close()  # what is still in it goes out at the next start
            self.outbox = None
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
