"""A gateway worker process: the I/O shell around :class:`gateway.pipeline.FramePipeline`.

Where it sits::

    MQTT .../frames/+ (or the pool's ingest) --+
                                               +--> Ingest -----> worker thread
    CoAP POST /frames -------------------------+    (LatestFrames,   (pipeline)
                                                     newest wins)        |
                  Uplink: Outbox (SQLite) <-- put, on disk first --------+
                             |  first send now; again after a backoff until acked
                             +--> MQTT features/<gw>/<camera>, QoS 1
    MQTT acks/<gw>            --> Uplink: the cloud has it, the outbox forgets it
    MQTT models/{all,<gw>}/+  --> ModelSlot: verify signature + digest, load in a thread, swap
    MQTT plans/<gw>           --> ModelSlot: mode / keyframe thresholds, between frames
    every few seconds         --> retained status/<gw>/<worker>; last will marks it offline

:class:`GatewayWorker` is an async context manager owning a TaskGroup of named loops
(``mqtt-connection`` inside the session, ``worker``, ``forwarder``, ``resender``,
``status``, and ``feed`` in a pool). Per-frame compute runs in the worker thread, off the
event loop; a pool's pipe is read in a thread too (its reads block). Features go up
through :mod:`gateway.uplink`: end to end, at least once, and the worker thread never
blocks on a slow uplink.

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
from gateway import dispatch
from gateway.coap import CoapEndpoint
from gateway.config import GatewayConfig
from gateway.ingest import Arrival, Drops, Ingest, Queued
from gateway.metrics import GatewayMetrics
from gateway.model_slot import ModelSlot
from gateway.pipeline import Dropped, FramePipeline, HeldBack
from gateway.uplink import Uplink

log = logging.getLogger(__name__)
SESSION_EXPIRY_SECONDS = 3600


# --- the worker ------------------------------------------------------------------------


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
        self.uplink = Uplink(
            config,
            self.metrics,
            on_drop=self.drops.feature,
            extract_seconds=self.model_slot.extract_seconds,
        )
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping = threading.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._cancellable: set[asyncio.Task[Any]] = set()
        self._session: MqttSession | None = None
        self._coap: CoapEndpoint | None = None
        self.metrics_server: MetricsServer | None = None
        self.coap_port: int | None = None
        # Plain totals for the status message (the metrics hold the labelled ones).
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
            self.uplink.acknowledged(payload)

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
            self.uplink.keep_and_send(outcome, processed)

    def _observe_hops(self, entry: Queued[Arrival], taken: float, processed: float) -> None:
        """The gateway's hops of a forwarded frame (the ones that end in a result)."""
        capture_ns = entry.item.frame.capture_ns
        hops = self.metrics.hop_seconds
        hops.labels("camera").observe(max(0, entry.item.received_ns - capture_ns) / 1e9)
        hops.labels("queue").observe(max(0.0, taken - entry.enqueued))
        hops.labels("processing").observe(processed - taken)
        self.metrics.processed_age.observe(max(0, time.time_ns() - capture_ns) / 1e9)

    # --- the pool's feed, tasks, status (event loop) ------------------------------------

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
            self.uplink.bytes_total,
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
        self.uplink.open(self._session, self._spawn)
        self.metrics_server = serve_metrics(
            self.registry, self.config.metrics_port, self.config.metrics_host
        )
        self._tasks = asyncio.TaskGroup()
        await self._tasks.__aenter__()
        try:
            await self._session.__aenter__()
            if self.config.coap_port >= 0:
                await self._start_coap()
            self.model_slot.update_mode_metric()
            self._tasks.create_task(asyncio.to_thread(self._work), name="worker")
            self._spawn(self.uplink.forward(), "forwarder")
            self._spawn(self.uplink.resend(), "resender")
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
            lambda: not any(self.ingest.queue.depths().values()) and self.uplink.pending() == 0,
            timeout,
        )

    async def settle(self, timeout: float = 30.0) -> bool:
        """Wait until the cloud acknowledged every feature; False on timeout."""
        return await self._wait_for(self.uplink.settled, timeout)

    @staticmethod
    async def _wait_for(condition: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.02)  # polling a condition, bounded by timeout
        return True

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
        self.uplink.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
