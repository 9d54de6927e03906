"""One trainer at a time across cloud machines: a lease in the shared PostgreSQL.

The lease is a session-level advisory lock (``pg_try_advisory_lock``) held on a connection
of its own. PostgreSQL releases it when that session ends, however it ends: a holder that
is killed, loses its machine or its network lets another take it at its next try, with no
expiry time to tune and no row to clean up. :meth:`Lease.hold` is polled by the trainers'
loops (:class:`cloud.background.BackgroundLoop`): it takes the lease if it is free, and says
whether this process still holds it (its session still answers).

One limit: a holder whose session is cut while it trains finishes that one job before its
next poll says the lease is gone, so for the length of one job two trainers may run.
A promotion they both make goes through the registry, which keeps both versions.
"""

from __future__ import annotations

import logging
import threading
import zlib
from collections.abc import Callable
from typing import Any

from cloud.database import redacted

log = logging.getLogger(__name__)


class Lease:
    def __init__(
        self,
        url: str,
        name: str = "trainer",
        *,
        on_change: Callable[[bool], None] = lambda held: None,
    ) -> None:
        self.url = url
        self.name = name
        self.key = zlib.crc32(f"edgelearn:{name}".encode())  # the lock's number
        self._on_change = on_change
        self._lock = threading.Lock()
        self._connection: Any = None
        self.held = False

    def hold(self) -> bool:
        """Take the lease if it is free; whether this process holds it now."""
        import psycopg

        with self._lock:
            was = self.held
            try:
                if self._connection is None:
                    self._connection = psycopg.connect(self.url, autocommit=True, connect_timeout=5)
                if self.held:  # ours while our session lives: check that it does
                    self._connection.execute("SELECT 1")
                else:
                    (got,) = self._connection.execute(
                        "SELECT pg_try_advisory_lock(%s)", (self.key,)
                    ).fetchone()
                    self.held = bool(got)
            except psycopg.OperationalError as exc:
                log.warning("lease %s: %s is away (%s)", self.name, redacted(self.url), exc)
                self._close()
            if self.held != was:
                log.info("lease %s %s", self.name, "taken" if self.held else "lost")
                self._on_change(self.held)
            return self.held

    def release(self) -> None:
        with self._lock:
            if self.held:
                self._on_change(False)
            self._close()

    def _close(self) -> None:
        connection, self._connection = self._connection, None
        self.held = False
        if connection is not None:
            try:
                connection.close()
            except Exception:  # a broken connection closes anyway
                log.debug("lease %s: close failed", self.name, exc_info=True)
