"""A gateway worker process: the I/O shell around :class:`gateway.pipeline.FramePipeline`,
put together from its parts.

Where it sits, and which part does what::

    MQTT .../frames/+ (or the pool's feed) --+
                                             +--> Ingest --> LatestFrames --> worker thread
    CoAP POST /frames -----------------------+  (checked,   (per camera,      (the pipeline)
                                                 counted)     newest wins)          |
                          Uplink: Outbox (SQLite) <-- put, on disk first -----------+
                             |  first send now; again after a backoff until acked
                             +--> MQTT features/<gw>/<camera>, QoS 1
    MQTT acks/<gw>            --> Uplink: the cloud has it, the outbox forgets it
    MQTT models/{all,<gw>}/+  --> ModelSlot: verify signature + digest, load in a thread, swap
    MQTT plans/<gw>           --> ModelSlot: mode / keyframe thresholds, applied between frames
    every few seconds         --> StatusReport: retained status/<gw>/<worker>; the last will
                                  marks it offline

=================  =========================  ==============================================
part               module                     holds
=================  =========================  ==============================================
ingest, drops      :mod:`gateway.ingest`      the frame checks and counts, the newest-wins
                                              queue, the pool's feed, and the drop policy:
                                              every frame or feature dropped, by reason
model slot         :mod:`gateway.model_slot`  deployments (verified, loaded, measured), plans,
                                              the mode metric
uplink             :mod:`gateway.uplink`      the outbox, first sends, re-sends, acks
status             :mod:`gateway.status`      the status message, its rates and the last will
the worker         here                       the composition, the MQTT session and its
                                              routing, CoAP, the worker thread, the lifecycle
=================  =========================  ==============================================

:class:`GatewayWorker` is an async context manager owning a TaskGroup of named tasks:
``worker`` (the pipeline, in a thread: the one place per-frame compute leaves the event
loop), ``feed`` (a pool's pipe, in a thread: its reads block), ``forwarder``, ``resender``
and ``status``, and one ``publish`` per send and ``model-load`` per model. The MQTT session
(``mqtt-connection`` in its own TaskGroup) and the CoAP endpoint are contexts it enters.
Leaving it stops ingest, then the tasks and threads, counts what is still queued as dropped,
says the worker is offline, and closes the session, the outbox and the metrics endpoint.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

import aiomqtt
from prometheus_client import CollectorRegistry

from edgelearn import roi, wire
from edgelearn.config import BrokerConfig
from edgelearn.metrics import MetricsServer, register_build_info, serve_metrics
from edgelearn.mqtt import MqttSession, cancel_until_done
from gateway import dispatch
from gateway.coap import CoapEndpoint
from gateway.config import GatewayConfig
from gateway.ingest import Arrival, Drops, Ingest, Queued
from gateway.metrics import GatewayMetrics
from gateway.model_slot import ModelSlot
from gateway.pipeline import Dropped, FramePipeline, HeldBack
from gateway.status import StatusReport, Totals
from gateway.teacher_stage import TeacherSettings, TeacherStage
from gateway.uplink import Uplink

log = logging.getLogger(__name__)
SESSION_EXPIRY_SECONDS = 3600


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
        # The parts (the module docstring has the table).
        self.drops = Drops(self.metrics)
        self.ingest = Ingest(config, self.metrics, self.drops)
        self.model_slot = ModelSlot(config, self.pipeline, self.metrics, trusted_key=trusted_key)
        self.uplink = Uplink(
            config,
            self.metrics,
            on_drop=self.drops.feature,
            extract_seconds=self.model_slot.extract_seconds,
        )
        self.teacher = (
            TeacherStage(
                lambda: self.model_slot.teacher,
                TeacherSettings(budget=config.teacher_budget, hog=config.teacher_hog),
                on_look=self._teacher_looked,
                on_label=lambda camera, label: self.metrics.teacher_labels.labels(
                    camera, label
                ).inc(),
                on_busy=lambda camera: self.metrics.teacher_busy.labels(camera).inc(),
                on_agreement=self._teacher_agreement,
            )
            if config.teacher_budget > 0
            else None
        )
        if self.teacher is not None:  # its labels go up on the Features the pipeline makes
            self.pipeline.teacher_labels = self.teacher.label_tracks
        self.status = StatusReport(
            config,
            self.pipeline,
            capacity_fps=self.model_slot.capacity_fps,
            queue_depths=self.ingest.queue.depths,
            totals=self._totals,
        )
        # The worker thread's decisions, as plain totals for the status message.
        self.keyframes_total = 0
        self.held_back_total = 0
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: asyncio.TaskGroup | None = None
        self._cancellable: set[asyncio.Task[Any]] = set()
        self._session: MqttSession | None = None
        self._coap: CoapEndpoint | None = None
        self.metrics_server: MetricsServer | None = None
        self.coap_port: int | None = None

    def _teacher_agreement(self, camera: str, agreed: float, rate: float) -> None:
        self.metrics.teacher_agreement.labels(camera).set(agreed)
        self.metrics.teacher_rate.labels(camera).set(rate)

    def _teacher_looked(self, camera: str, seconds: float) -> None:
        self.metrics.teacher_looks.labels(camera).inc()
        self.metrics.teacher_cpu.labels(camera).inc(seconds)

    def _totals(self) -> Totals:
        return Totals(
            time.monotonic(),
            self.uplink.bytes_total,
            self.ingest.frames_in_total,
            self.ingest.input_bytes_total,
            self.keyframes_total,
            self.held_back_total,
        )

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
        elif wire.topic_level(topic, -3) == "bridges":
            self.uplink.bridge_state(wire.topic_level(topic, -2), payload)
        elif wire.topic_level(topic, -2) == "results":
            self._result(payload, wire.topic_level(topic, -1))

    def _result(self, payload: bytes, camera: str) -> None:
        """The cloud's answer for a camera: the teacher compares it with its labels."""
        if self.teacher is None or not self.teacher.wants(camera):
            return  # decoded only for the cameras it labeled
        try:
            result = wire.decode_as(payload, wire.Result)
        except wire.WireError as exc:  # the cloud's, not a camera's: logged, not counted
            log.warning("teacher: an undecodable result for %s: %s", camera, exc)
            return
        self.teacher.answered(result)

    # --- the worker thread ---------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            entry = self.ingest.queue.get(timeout=0.2)
            if entry is None:
                continue
            try:
                self._handle(entry)
            finally:
                self.ingest.queue.done()

    def _handle(self, entry: Queued[Arrival]) -> None:
        """One frame from the queue: processed, counted, and its feature kept and sent."""
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
            return
        self.metrics.raw_equivalent_bytes.labels(camera).inc(len(frame.payload))
        if self.pipeline.objects is not None:
            self.metrics.observe_objects(camera, outcome.objects)
        if isinstance(outcome, HeldBack):
            self.metrics.processed.labels(camera, "held_back").inc()
            self.held_back_total += 1
            return
        self.keyframes_total += 1
        self.metrics.processed.labels(camera, "forwarded").inc()
        self._observe_hops(entry, taken, processed)
        if self.teacher is not None:
            self._count_teacher_labels(outcome.envelope)
        self.uplink.keep_and_send(outcome, processed)
        if self.teacher is not None:
            self.teacher.offer(frame, outcome.objects)

    def _count_teacher_labels(self, envelope: wire.Feature | wire.Result) -> None:
        if isinstance(envelope, wire.Feature) and envelope.label_source.startswith("teacher:"):
            sent = sum(label is not None for label in envelope.labels)
            self.metrics.teacher_labels_sent.labels(envelope.camera_id).inc(sent)

    def _observe_hops(self, entry: Queued[Arrival], taken: float, processed: float) -> None:
        """The gateway's hops of a forwarded frame (the ones that end in a result)."""
        capture_ns = entry.item.frame.capture_ns
        hops = self.metrics.hop_seconds
        hops.labels("camera").observe(max(0, entry.item.received_ns - capture_ns) / 1e9)
        hops.labels("queue").observe(max(0.0, taken - entry.enqueued))
        hops.labels("processing").observe(processed - taken)
        self.metrics.processed_age.observe(max(0, time.time_ns() - capture_ns) / 1e9)

    async def _read_feed(self) -> None:
        """The pool's pipe, in a thread: its reads block."""
        assert self.feed is not None
        if await asyncio.to_thread(self.ingest.read_feed, self.feed, self._stopping):
            self.feed_lost.set()

    # --- lifecycle -----------------------------------------------------------------------

    def _spawn(self, coroutine: Any, name: str) -> None:
        """A task in our TaskGroup that shutdown cancels (the threads are stopped by their
        flag instead)."""
        assert self._tasks is not None
        task = self._tasks.create_task(coroutine, name=name)
        self._cancellable.add(task)
        task.add_done_callback(self._cancellable.discard)

    async def __aenter__(self) -> GatewayWorker:
        self._loop = asyncio.get_running_loop()
        topics = self.topics
        self._session = MqttSession(
            self.broker,
            self.config.client_id,
            subscriptions=[
                *([] if self.feed else [(wire.shared(self.config.group, topics.all_frames()), 0)]),
                (f"{topics.base}/models/{wire.ALL_GATEWAYS}/+", 1),
                (topics.models_for(self.config.gateway_id), 1),
                (topics.plan(self.config.gateway_id), 1),
                (topics.ack(self.config.gateway_id), 1),
                (wire.Topics.bridge_states(), 1),  # the edge broker's word on its bridge
                # the cloud's answers: the teacher's rate follows their agreement with it
                *([(topics.all_results(), 0)] if self.teacher is not None else []),
            ],
            on_message=self._on_message,
            will=self.status.will(),
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
            if self.teacher is not None:
                self.teacher.start()  # idle until the cloud pushes a teacher
            self._spawn(self.uplink.forward(), "forwarder")
            self._spawn(self.uplink.resend(), "resender")
            self._spawn(self.status.publish_every(self._session), "status")
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
            lambda: self.ingest.queue.outstanding() == 0 and self.uplink.pending() == 0,
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
        if self.teacher is not None:
            self.teacher.stop()
        if self._session is not None:
            await self.status.publish_offline(self._session)
            await self._session.__aexit__(None, None, None)
            self._session = None
        self.uplink.close()
        if self.metrics_server is not None:
            self.metrics_server.close()
            self.metrics_server = None
