"""Camera affinity for a pool of gateway workers: one ingest connection, every camera on one
worker.

Where it sits (``edgelearn gateway --workers N``, in the supervisor process)::

    MQTT $share/<group>/frames/+ --+                      +--> pipe --> worker 0 (ingest)
                                   +--> Dispatcher ------>+--> pipe --> worker 1 (ingest)
    CoAP POST /frames -------------+    camera -> worker  +--> ...

Why one ingest connection and not per-worker topic subsets: MQTT shared subscriptions share
out *messages*, round-robin, so without help no worker sees every frame of a camera, and
the per-camera state (keyframe decisions, newest-wins queues, held-back accounting) is
wrong. Topic subsets would need the supervisor to know every camera before its first frame
and a discovery round for a new one. The dispatcher sees every frame's topic, so a new camera
is assigned on its first frame to the worker with the fewest cameras, and the assignment is
exact. The cost is one copy of each frame through a local pipe.

* :meth:`Dispatcher.worker_down` moves a dead worker's cameras to the survivors at once (the
  supervisor notices a death within its 0.1 s period); :meth:`Dispatcher.worker_up` gives a
  worker that said it is ready its share back, moving cameras off the busiest workers until
  no two differ by more than one.
* Each worker's feed is a queue drained by a sender thread, so a stalled worker never blocks
  the event loop, bounded per camera (``FEED_DEPTH``), so a camera flooding its topic fills
  only its own share. A frame that finds its camera's share full is dropped as
  ``worker_busy``, one with no live worker as ``no_worker``. The dispatcher has no metrics of
  its own: it reports its drops to a live worker, which counts them with its own.
* Envelopes are not parsed here, except a CoAP post, whose camera is read from it (after the
  endpoint authenticated the poster); the worker checks everything.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from gateway.metrics import UNKNOWN_CAMERA

log = logging.getLogger(__name__)

FEED_DEPTH = 16  # frames of one camera waiting for its worker's pipe; ~1 s at 15 fps
FRAME, DROPS, READY = "frame", "drops", "ready"


class _Feed:
    """One worker's pipe, fed by a thread from a queue that :meth:`frame` bounds per camera,
    so a camera flooding its topic fills only its own share (drop reports always get
    through)."""

    def __init__(self, slot: int, connection: Connection) -> None:
        self.slot = slot
        self.connection = connection
        self.queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self.waiting: collections.Counter[str | None] = collections.Counter()
        self._lock = threading.Lock()
        self.broken = False
        self._thread = threading.Thread(target=self._run, name=f"feed-{slot}", daemon=True)
        self._thread.start()

    def frame(self, camera: str | None, transport: str, payload: bytes) -> bool:
        with self._lock:
            if self.broken or self.waiting[camera] >= FEED_DEPTH:
                return False
            self.waiting[camera] += 1
        self.queue.put((FRAME, camera, transport, payload))
        return True

    def control(self, message: tuple[Any, ...]) -> None:
        self.queue.put(message)

    def _run(self) -> None:
        while (message := self.queue.get()) is not None:
            try:
                self.connection.send(message)
            except OSError:  # the worker died; the supervisor moves its cameras
                self.broken = True
                return
            if message[0] == FRAME:
                with self._lock:
                    self.waiting[message[1]] -= 1

    def close(self) -> collections.Counter[tuple[str, str]]:
        """Stop the thread; returns the frames that were still waiting, by camera and
        transport."""
        self.broken = True
        waiting: collections.Counter[tuple[str, str]] = collections.Counter()
        while True:
            try:
                message = self.queue.get_nowait()
            except queue.Empty:
                break
            if message is not None and message[0] == FRAME:
                waiting[(message[1] or UNKNOWN_CAMERA, message[2])] += 1
        self.queue.put(None)
        self._thread.join(timeout=2.0)
        self.connection.close()
        return waiting


class Dispatcher:
    """Assigns each camera to one live worker and hands it that camera's frames."""

    def __init__(
        self, *, on_move: Callable[[str, int | None, int, str], None] | None = None
    ) -> None:
        self.assignment: dict[str, int] = {}
        self._feeds: dict[int, _Feed] = {}
        self._unreported: collections.Counter[tuple[str, str, str]] = collections.Counter()
        # (camera, old worker or None, new worker, why: "new", "rebalance" or "failover")
        self._on_move = on_move or (lambda camera, old, new, why: None)

    @property
    def live(self) -> list[int]:
        return sorted(self._feeds)

    def load(self) -> dict[int, list[str]]:
        cameras: dict[int, list[str]] = {slot: [] for slot in self._feeds}
        for camera, slot in self.assignment.items():
            cameras.setdefault(slot, []).append(camera)
        return cameras

    def _least_loaded(self) -> int | None:
        if not self._feeds:
            return None
        load = self.load()
        return min(self._feeds, key=lambda slot: (len(load[slot]), slot))

    def _assign(self, camera: str, slot: int, why: str) -> None:
        old = self.assignment.get(camera)
        self.assignment[camera] = slot
        self._on_move(camera, old, slot, why)

    def dispatch(self, camera: str, transport: str, payload: bytes) -> bool:
        """Hand one frame to its camera's worker; False if it was dropped (counted)."""
        slot = self.assignment.get(camera)
        if slot is None or slot not in self._feeds:
            slot = self._least_loaded()
            if slot is None:
                self._unreported[(camera, transport, "no_worker")] += 1
                return False
            self._assign(camera, slot, "new")
        if self._feeds[slot].frame(camera, transport, payload):
            return True
        self._unreported[(camera, transport, "worker_busy")] += 1
        return False

    def refused(self, payload: bytes, transport: str) -> None:
        """A frame refused before its camera is known: any worker counts it, exactly."""
        slot = self._least_loaded()
        if slot is None or not self._feeds[slot].frame(None, transport, payload):
            self._unreported[(UNKNOWN_CAMERA, transport, "no_worker")] += 1

    def count(self, camera: str, transport: str, reason: str) -> None:
        """A frame refused here (a CoAP post without credentials or from another camera)."""
        self._unreported[(camera, transport, reason)] += 1

    def worker_up(self, slot: int, connection: Connection) -> None:
        """A worker is ready: feed it, and balance the cameras again."""
        if slot in self._feeds:
            self.worker_down(slot)
        self._feeds[slot] = _Feed(slot, connection)
        while True:
            load = self.load()
            busiest = max(load, key=lambda s: (len(load[s]), -s))
            if len(load[busiest]) - len(load[slot]) <= 1:
                break
            self._assign(sorted(load[busiest])[-1], slot, "rebalance")

    def worker_down(self, slot: int, *, reassign: bool = True) -> None:
        """A worker died or stopped: its cameras go to the survivors, least loaded first."""
        feed = self._feeds.pop(slot, None)
        if feed is not None:
            for (camera, transport), count in feed.close().items():
                self._unreported[(camera, transport, "no_worker")] += count
        for camera in sorted(c for c, s in self.assignment.items() if s == slot):
            target = self._least_loaded() if reassign else None
            if target is None:
                del self.assignment[camera]
                continue
            self._assign(camera, target, "failover")

    def report_drops(self) -> None:
        """Send what was dropped here to a live worker, which counts it as its own."""
        slot = self._least_loaded()
        if slot is None or not self._unreported:
            return
        self._feeds[slot].control((DROPS, dict(self._unreported)))
        self._unreported.clear()

    def close(self) -> None:
        """The pool stops: feeds closed, nothing moved."""
        for slot in list(self._feeds):
            self.worker_down(slot, reassign=False)
