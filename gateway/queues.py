"""Per-camera bounded queues where the newest frame wins, served round-robin.

Where it sits: ingest (MQTT and CoAP, on the event loop) -> **LatestFrames** -> worker thread.

A camera is real time: when the worker falls behind, an old frame is worth less than a new
one, so a full camera queue drops its *oldest* frame (reason ``queue_full``), and frames that
waited longer than ``stale_after`` seconds are dropped when taken (reason ``stale``). Memory
is bounded by ``depth`` frames per camera; one busy camera cannot starve the others because
cameras are served in turn. Every drop goes through ``on_drop`` exactly once.
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Queued(Generic[T]):
    camera_id: str
    item: T
    enqueued: float  # time.monotonic()


class LatestFrames(Generic[T]):
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
