"""Real-time pacing of a camera: absolute deadlines, no drift, skipped frames counted.

Frame ``i`` of a camera is due at ``start + i / (fps * speed)``. Deadlines are computed
from the start, never by adding intervals, so a late frame does not push the following
ones back and a ten-minute run at 15 fps has 9,000 frames, not 8,990. When the camera
wakes up past the deadline of the *next* frame (encoding or the event loop fell behind),
the frames whose time has passed are skipped - a real camera cannot send the past - and
the pacer reports how many, for the ``late`` skip reason.

Pure: times are passed in, so tests drive it with a fake clock.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Tick:
    """The frame to produce now: its index, its deadline, and frames skipped before it."""

    index: int
    deadline: float
    skipped: int


class Pacer:
    """Deadlines at ``rate`` frames per second from ``start``; ``rate=None`` means as fast as
    possible (every frame is due at once and nothing is ever late)."""

    def __init__(self, rate: float | None, start: float) -> None:
        if rate is not None and not (rate > 0 and math.isfinite(rate)):
            raise ValueError(f"frame rate must be positive, got {rate}")
        self.rate = rate
        self.start = start
        self.next_index = 0

    def deadline(self, index: int) -> float:
        if self.rate is None:
            return self.start
        return self.start + index / self.rate

    def frames_before(self, end: float) -> int:
        """How many frames are due strictly before time ``end`` (a run's length in frames)."""
        if self.rate is None:
            raise ValueError("an unpaced camera has no frame count for a duration")
        return max(0, math.ceil((end - self.start) * self.rate - 1e-9))

    def next_deadline(self) -> float:
        return self.deadline(self.next_index)

    def take(self, now: float) -> Tick:
        """Claim the frame to produce at ``now`` (call at or after :meth:`next_deadline`).

        If ``now`` is already past the deadline of the frame after the next one, the frames
        in between are skipped: the newest frame whose deadline has passed is produced.
        """
        index = self.next_index
        if self.rate is not None:
            due = math.floor((now - self.start) * self.rate + 1e-9)
            index = max(index, due)
        tick = Tick(index=index, deadline=self.deadline(index), skipped=index - self.next_index)
        self.next_index = index + 1
        return tick
