"""Warnings about misbehaving peers, rate-limited per peer and reason.

Anyone with a camera's credential can send garbage at a gateway, so a WARNING per bad
message would let one peer flood the log. :class:`PeerLog` writes the first warning of a
(peer, reason) pair, then at most one per ``interval`` seconds, each saying how many it held
back since the last one. Every drop is still counted in the metrics, exactly; only the log is
thinned. Memory is bounded by ``max_keys`` pairs (the oldest is forgotten first).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass
class _Window:
    logged_at: float
    suppressed: int = 0


class PeerLog:
    def __init__(
        self,
        logger: logging.Logger,
        *,
        interval: float = 60.0,
        max_keys: int = 1024,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._clock = clock
        self._windows: OrderedDict[tuple[str, str], _Window] = OrderedDict()
        self._lock = threading.Lock()  # callers may be on several threads of one process

    def warning(self, peer: str, reason: str, message: str, *args: object) -> bool:
        """Log ``message % args`` unless (``peer``, ``reason``) was logged in the last
        ``interval`` seconds; True if it was written."""
        key = (peer, reason)
        with self._lock:
            now = self._clock()
            window = self._windows.get(key)
            if window is not None and now - window.logged_at < self.interval:
                window.suppressed += 1
                return False
            suppressed = window.suppressed if window is not None else 0
            self._windows[key] = _Window(now)
            self._windows.move_to_end(key)
            while len(self._windows) > self.max_keys:
                self._windows.popitem(last=False)
        if suppressed:
            message += " (and %d more like it from %s since the last such warning)"
            args = (*args, suppressed, peer)
        self._logger.warning(message, *args)
        return True
