"""Ingest: every frame that reaches a gateway worker, and the worker's whole drop policy.

Where it sits in the flow of a frame::

    MQTT .../frames/+ --------+
    CoAP POST /frames --------+--> Ingest.frame: checked, counted --> LatestFrames --> worker
    the pool's pipe (a thread)+    (received, input bytes)            (per camera,    thread
                                                                       newest wins)

**The frame queue** (:class:`LatestFrames`) holds each camera's frames between ingest and
the worker thread. A camera is real time: when the worker falls behind, an old frame is
worth less than a new one, so a full camera queue drops its *oldest* frame (reason
``queue_full``), and frames that waited longer than ``stale_after`` seconds are dropped when
taken (reason ``stale``). Memory is bounded by ``depth`` frames per camera; one busy camera
cannot starve the others because cameras are served in turn.

**The drop policy.** Every frame a worker receives is counted once as processed or as
dropped, and every forwarded feature is acknowledged, still in the outbox, or dropped. Each
drop is counted through :class:`Drops`, here, with one of the reasons below: they are the
exact ``reason`` labels of ``edgelearn_gateway_frames_dropped_total`` and
``edgelearn_gateway_features_dropped_total``, and each names the place that decides it. A
refused frame (a peer misbehaving) is also a rate-limited warning per peer and reason.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Final, Generic, TypeVar

from edgelearn import wire
from edgelearn.peer_log import PeerLog
from gateway import dispatch
from gateway.config import GatewayConfig
from gateway.metrics import UNKNOWN_CAMERA, GatewayMetrics

log = logging.getLogger(__name__)

# Frames. An envelope that does not decode keeps the exact reason of its
# edgelearn.wire.WireError (bad_magic, truncated, unknown_version, wrong_kind, too_long...):
# a bounded set, all literals in wire.py.
DROP_REASONS: Final = (
    "camera_mismatch",  # Ingest.frame (the pool: pool.py, for CoAP): the envelope names
    # another camera than its topic or the credential it came with
    "oversize",  # Ingest.frame: an envelope over max_frame_mb, refused undecoded
    "unauthenticated",  # gateway.coap: a CoAP post without a camera's credentials
    "worker_busy",  # gateway.dispatch: the camera's worker has a full inbox (pools only)
    "no_worker",  # gateway.dispatch: every worker of the pool is down
    "undecodable",  # gateway.pipeline: the JPEG does not decode or is truncated
    "queue_full",  # LatestFrames.put: newest frame won, the camera's oldest queued one went
    "stale",  # LatestFrames.get: waited longer than stale_after before the worker took it
    "extract_failed",  # the worker thread (gateway.service): the model raised on this frame
    "shutdown",  # LatestFrames.drain: still queued when the worker stopped
)
FEATURE_DROP_REASONS: Final = (
    "outbox_full",  # gateway.outbox: the policy evicted it (or refused it) to stay in bounds
    "outbox_failed",  # gateway.uplink: the disk refused it and no send slot was free
)


class Drops:
    """The one place a worker's drops are counted (the reasons above)."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self._metrics = metrics
        self._peers = PeerLog(log)

    def frame(self, camera_id: str, reason: str) -> None:
        """A received frame dropped (it was counted as received when it came in)."""
        self._metrics.dropped.labels(camera_id, reason).inc()
        log.debug("dropped a frame of %s: %s", camera_id, reason)

    def refused(
        self,
        transport: str,
        reason: str,
        camera: str = UNKNOWN_CAMERA,
        detail: str = "",
        *,
        count: int = 1,
    ) -> None:
        """Frames that arrived and were refused (a bad envelope, unauthenticated CoAP, a
        drop in the pool's dispatcher): counted as received and dropped, and a warning per
        peer and reason now and then."""
        self._metrics.received.labels(camera, transport).inc(count)
        self._metrics.dropped.labels(camera, reason).inc(count)
        log.debug("dropped %d frames of %s: %s", count, camera, reason)
        self._peers.warning(
            camera, reason, "refused %d %s frames from %s: %s %s", count, transport, camera,
            reason, detail,
        )  # fmt: skip

    def feature(self, camera_id: str, reason: str) -> None:
        """A forwarded feature given up before the cloud acknowledged it."""
        self._metrics.features_dropped.labels(camera_id, reason).inc()
        self._peers.warning("outbox", reason, "gave up a feature of %s: %s", camera_id, reason)


# --- the frame queue ------------------------------------------------------------------

T = TypeVar("T")


@dataclass(frozen=True)
class Queued(Generic[T]):
    camera_id: str
    item: T
    enqueued: float  # time.monotonic()


class LatestFrames(Generic[T]):
    """Per-camera newest-wins queues, served in turn; every drop goes through ``on_drop``
    exactly once. A frame handed out by :meth:`get` stays in :meth:`outstanding` until its
    taker calls :meth:`done`, so "nothing left" means processed, not only dequeued."""

    def __init__(
        self,
        depth: int = 2,
        stale_after: float = 2.0,
        on_drop: Callable[[str, str], None] = lambda camera, reason: None,
    ) -> None:
        if depth < 1:
            raise ValueError("queue depth must be >= 1")
        self.depth = depth
        self.stale_after = stale_after
        self._on_drop = on_drop
        self._queues: dict[str, collections.deque[Queued[T]]] = {}
        self._turns: collections.deque[str] = collections.deque()  # cameras with frames
        self._condition = threading.Condition()
        self._closed = False
        self._in_hand = 0  # handed out by get(), not yet done()

    def put(self, camera_id: str, item: T) -> None:
        dropped = False
        with self._condition:
            queue = self._queues.setdefault(camera_id, collections.deque())
            if len(queue) >= self.depth:
                queue.popleft()
                dropped = True
            if not queue:
                self._turns.append(camera_id)
            queue.append(Queued(camera_id, item, time.monotonic()))
            self._condition.notify()
        if dropped:
            self._on_drop(camera_id, "queue_full")

    def get(self, timeout: float | None = None) -> Queued[T] | None:
        """The next fresh frame (round-robin over cameras), or ``None`` on timeout/close."""
        deadline = None if timeout is None else time.monotonic() + timeout
        stale: list[str] = []
        try:
            with self._condition:
                while True:
                    while self._turns:
                        camera_id = self._turns.popleft()
                        queue = self._queues[camera_id]
                        entry = queue.popleft()
                        if queue:
                            self._turns.append(camera_id)
                        if time.monotonic() - entry.enqueued > self.stale_after:
                            stale.append(camera_id)
                            continue
                        self._in_hand += 1
                        return entry
                    if self._closed:
                        return None
                    remaining = None if deadline is None else deadline - time.monotonic()
                    if remaining is not None and remaining <= 0:
                        return None
                    self._condition.wait(remaining)
        finally:
            for camera_id in stale:
                self._on_drop(camera_id, "stale")

    def done(self) -> None:
        """The taker of an entry from :meth:`get` has counted its outcome."""
        with self._condition:
            self._in_hand -= 1

    def outstanding(self) -> int:
        """Frames queued or taken and not yet done."""
        with self._condition:
            return self._in_hand + sum(len(queue) for queue in self._queues.values())

    def depths(self) -> dict[str, int]:
        with self._condition:
            return {camera: len(queue) for camera, queue in self._queues.items()}

    def close(self) -> None:
        with self._condition:
            self._closed = True
            self._condition.notify_all()

    def drain(self, reason: str = "shutdown") -> int:
        """Drop (and count) whatever is still queued; returns how many."""
        with self._condition:
            leftovers = [(camera, len(queue)) for camera, queue in self._queues.items()]
            for queue in self._queues.values():
                queue.clear()
            self._turns.clear()
        for camera, count in leftovers:
            for _ in range(count):
                self._on_drop(camera, reason)
        return sum(count for _, count in leftovers)


# --- ingest ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Arrival:
    frame: wire.Frame
    transport: str
    received_ns: int  # time.time_ns(): the camera hop is capture (its clock) to here


class Ingest:
    """Frames arriving at a worker, from any transport: checked, counted and queued for the
    worker thread. It runs where frames arrive, on one thread per process: the event loop
    (MQTT, CoAP), or in a pool's worker the thread reading the supervisor's pipe, which
    queues straight for the worker thread without waking the loop. So it stays cheap: the
    envelope is decoded, the JPEG is not."""

    def __init__(self, config: GatewayConfig, metrics: GatewayMetrics, drops: Drops) -> None:
        self._max_bytes = config.max_frame_mb * 2**20
        self._metrics = metrics
        self.drops = drops
        self.queue: LatestFrames[Arrival] = LatestFrames(
            depth=config.queue_depth, stale_after=config.stale_after, on_drop=drops.frame
        )
        metrics.watch_queues(self.queue.depths)
        self._last_capture: dict[str, int] = {}
        # Plain totals for the status message (the metrics hold the labelled ones).
        self.frames_in_total = 0
        self.input_bytes_total = 0

    def frame(self, payload: bytes, transport: str, topic_camera: str | None) -> str | None:
        """Take one frame envelope; returns the drop reason if it was refused."""
        try:
            if len(payload) > self._max_bytes:
                raise wire.WireError("oversize", f"{len(payload)} bytes")
            frame = wire.decode_as(payload, wire.Frame)
            if topic_camera is not None and frame.camera_id != topic_camera:
                raise wire.WireError("camera_mismatch", f"{frame.camera_id} on {topic_camera}")
        except wire.WireError as exc:
            self.drops.refused(transport, exc.reason, topic_camera or UNKNOWN_CAMERA, str(exc))
            return exc.reason
        self._metrics.received.labels(frame.camera_id, transport).inc()
        if frame.capture_ns < self._last_capture.get(frame.camera_id, 0):
            self._metrics.out_of_order.labels(frame.camera_id).inc()
        else:
            self._last_capture[frame.camera_id] = frame.capture_ns
        self._metrics.input_bytes.labels(frame.camera_id).inc(len(frame.payload))
        self.frames_in_total += 1
        self.input_bytes_total += len(frame.payload)
        self.queue.put(frame.camera_id, Arrival(frame, transport, time.time_ns()))
        return None

    def read_feed(self, feed: Connection, stopping: threading.Event) -> bool:
        """The pool's pipe (blocking: run it in a thread): frames and the dispatcher's drops,
        taken in this thread, until ``stopping``. True if the supervisor is gone."""
        try:
            while not stopping.is_set():
                if not feed.poll(0.2):  # wakes to notice a stop
                    continue
                message = feed.recv()
                if message[0] == dispatch.FRAME:
                    _, camera, transport, payload = message
                    self.frame(payload, transport, camera)
                elif message[0] == dispatch.DROPS:
                    self._count_dispatch_drops(message[1])
        except (EOFError, OSError):
            if not stopping.is_set():
                log.error("the pool's supervisor is gone; stopping")
                return True
        return False

    def _count_dispatch_drops(self, drops: dict[tuple[str, str, str], int]) -> None:
        for (camera, transport, reason), count in drops.items():
            self.drops.refused(transport, reason, camera, "dropped by the pool", count=count)
