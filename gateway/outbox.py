"""The gateway's outbox: every feature stays on disk until the cloud acknowledges it.

Where it sits in the flow of a frame::

    pipeline --Forward--> Outbox.put (SQLite) --> publish, QoS 1 --> ... --> cloud
                              ^                                              |
                              +---- Outbox.acknowledge <-- Ack on acks/<gw> -+
                          re-sent with backoff while no Ack names it

QoS 1 only covers one hop, and a broker may drop what it accepted (a cloud broker that
restarts forgets its shared subscriptions; a consumer's session can be handed messages no
one will read). So delivery is end to end: a feature leaves the outbox only when an
:class:`edgelearn.wire.Ack` from the cloud names its capture (camera, seq, capture time). A
feature not acknowledged ``retry_after`` seconds after it was sent is sent again, then after
twice that, up to ``retry_max`` between tries; the cloud de-duplicates by capture, so a
retry never counts twice.

**Re-sends are paced by the acks** (:meth:`Outbox.paced`). A copy goes again only once the
cloud has acknowledged something sent at least ``retry_after`` after it: the cloud has moved
past it, so it was lost, not late. Copies that wait in a broker's queue (a cut link, a
backlog draining after one) are not sent twice, as long as the cloud answers in the order
they were sent (two consumers draining a backlog do not quite: see docs/design.md). When
no ack has come for ``retry_max`` (a cloud that lost its subscriptions, or is gone), the
uplink sends one copy, the oldest due, as a probe, once per ``retry_max``: once the cloud
acknowledges it, everything sent before it is due again. The uplink also holds every
re-send while the edge broker says its bridge is down (:mod:`gateway.uplink`).

The outbox is bounded (``max_items``, ``max_bytes``). When a new feature does not fit, the
``policy`` decides what goes: ``oldest`` (the default: the freshest view of a scene is worth
more than an old one, and training wants recent data) drops the oldest unacknowledged
feature, ``newest`` refuses the new one. Either way the drop is counted with reason
``outbox_full``. One SQLite file per worker, in WAL mode: a feature put is on disk before it
is first sent, so a killed gateway re-sends what it held when it starts again.

Thread-safe: the worker thread puts, the event loop takes what is due and acknowledges
(:mod:`gateway.uplink` does both).
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from edgelearn import wire

POLICIES: Final = ("oldest", "newest")
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS outbox (
    camera TEXT NOT NULL,
    seq INTEGER NOT NULL,
    capture_ns INTEGER NOT NULL,
    topic TEXT NOT NULL,
    payload BLOB NOT NULL,
    mode TEXT NOT NULL,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    due REAL NOT NULL,
    sent REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (camera, seq, capture_ns)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (due);
CREATE INDEX IF NOT EXISTS outbox_created ON outbox (created);
"""
_KEY: Final = "camera = ? AND seq = ? AND capture_ns = ?"


@dataclass(frozen=True)
class Pending:
    """One unacknowledged feature (or edge result) as it goes on the wire."""

    camera_id: str
    seq: int
    capture_ns: int
    topic: str
    payload: bytes
    mode: str
    attempts: int  # sends before this one

    @property
    def capture(self) -> wire.Capture:
        return (self.camera_id, self.seq, self.capture_ns)


class OutboxError(RuntimeError):
    """The outbox file cannot be opened or written (a full disk, a bad path)."""


@dataclass
class _Watermark:
    """How far one cloud consumer has acknowledged: the latest send (clock time) it acked,
    as it grew over time, so it can be read as it was a while ago."""

    through: float = 0.0
    last: float = 0.0  # when its last ack came
    marks: deque[tuple[float, float]] = field(default_factory=deque)  # (when, through)
    _old: float = 0.0

    def advance(self, now: float, latest: float) -> None:
        self.last = now
        if latest > self.through:
            self.through = latest
            self.marks.append((now, latest))

    def lagged(self, when: float) -> float:
        """``through`` as it was at ``when`` (an earlier time, never later than now)."""
        while self.marks and self.marks[0][0] <= when:
            self._old = self.marks.popleft()[1]
        return self._old


class Outbox:
    def __init__(
        self,
        path: Path | None,
        *,
        max_items: int = 100_000,
        max_bytes: int = 512 * 1024 * 1024,
        policy: str = "oldest",
        retry_after: float = 3.0,
        retry_max: float = 30.0,
        on_drop: Callable[[str, str], None] = lambda camera, reason: None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """``path`` None keeps the outbox in memory (tests; nothing survives a restart)."""
        if policy not in POLICIES:
            raise ValueError(f"outbox policy {policy!r}: choose {' or '.join(POLICIES)}")
        if max_items < 1 or max_bytes < 1 or not 0 < retry_after <= retry_max:
            raise ValueError("outbox bounds must be positive, retry_after <= retry_max")
        self.path = path
        self.max_items = max_items
        self.max_bytes = max_bytes
        self.policy = policy
        self.retry_after = retry_after
        self.retry_max = retry_max
        self._on_drop = on_drop
        self._clock = clock
        self._lock = threading.Lock()
        # When the last ack came (or the link came back), and how far each consumer of the
        # cloud has acknowledged (its acks name it; "" an older cloud's): paced() reads them.
        self.last_ack = clock()
        self._consumers: dict[str, _Watermark] = {}
        try:
            if path is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                ":memory:" if path is None else str(path), check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            # A killed process loses nothing committed; only a power cut could.
            self._db.execute("PRAGMA synchronous=NORMAL")
            columns = [row[1] for row in self._db.execute("PRAGMA table_info(outbox)")]
            if columns and "sent" not in columns:  # a file from before paced re-sends
                self._db.execute("ALTER TABLE outbox ADD COLUMN sent REAL NOT NULL DEFAULT 0")
            self._db.executescript(_SCHEMA)
            # What a previous run held goes out again as soon as this one is connected.
            self._db.execute("UPDATE outbox SET due = 0")
            self._db.commit()
            count, size = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(LENGTH(payload)), 0) FROM outbox"
            ).fetchone()
        except (OSError, sqlite3.Error) as exc:
            raise OutboxError(f"cannot open the outbox {path}: {exc}") from exc
        self._items, self._bytes = int(count), int(size)

    @contextlib.contextmanager
    def _transaction(self, what: str) -> Iterator[None]:
        """Committed at the end, or rolled back and raised as :class:`OutboxError` (a full
        disk). The caller holds the lock."""
        try:
            yield
            self._db.commit()
        except sqlite3.Error as exc:
            self._db.rollback()
            raise OutboxError(f"the outbox {self.path} refused {what}: {exc}") from exc

    # --- the worker thread ---------------------------------------------------------------

    def put(
        self, capture: wire.Capture, topic: str, payload: bytes, mode: str, *, sent: bool
    ) -> bool:
        """Keep one feature until it is acknowledged. ``sent``: the caller sends it now (its
        first try), so it is due again only after ``retry_after``; otherwise it is due at
        once. False if the policy refused it (counted). Raises :class:`OutboxError` if the
        disk fails."""
        now = self._clock()
        attempts, due = (1, now + self.retry_after) if sent else (0, now)
        with self._lock:
            with self._transaction("a feature"):  # failed: nothing evicted, nothing kept
                evicted = self._make_room(len(payload))
                if evicted is None:
                    self._on_drop(capture[0], "outbox_full")
                    return False
                replaced = self._db.execute(
                    f"SELECT LENGTH(payload) FROM outbox WHERE {_KEY}", capture
                ).fetchone()
                self._db.execute(
                    "INSERT OR REPLACE INTO outbox (camera, seq, capture_ns, topic, payload,"
                    " mode, created, attempts, due, sent) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (*capture, topic, payload, mode, now, attempts, due, now if sent else 0.0),
                )
            for camera, size in evicted:
                self._items -= 1
                self._bytes -= size
                self._on_drop(camera, "outbox_full")
            if replaced is None:
                self._items += 1
            else:
                self._bytes -= int(replaced[0])
            self._bytes += len(payload)
            return True

    def _make_room(self, size: int) -> list[tuple[str, int]] | None:
        """Delete (in the open transaction) what the policy evicts to fit ``size`` more
        bytes: the evicted (camera, size) pairs, or None if the new feature must go."""
        if size > self.max_bytes:
            return None
        evicted: list[tuple[str, int]] = []
        items, stored = self._items, self._bytes
        while items and (items + 1 > self.max_items or stored + size > self.max_bytes):
            if self.policy == "newest":
                return None
            row = self._db.execute(
                "SELECT camera, seq, capture_ns, LENGTH(payload) FROM outbox"
                " ORDER BY created LIMIT 1"
            ).fetchone()
            self._db.execute(f"DELETE FROM outbox WHERE {_KEY}", row[:3])
            evicted.append((str(row[0]), int(row[3])))
            items -= 1
            stored -= int(row[3])
        return evicted

    # --- the event loop ------------------------------------------------------------------

    def link_restored(self) -> None:
        """The link to the cloud is back: acks get ``retry_max`` to start flowing before the
        plain backoff applies again (the copies queued during the outage go first)."""
        self.last_ack = self._clock()

    @property
    def acked_through(self) -> float:
        """The latest send (clock time) any consumer has acknowledged."""
        return max((mark.through for mark in self._consumers.values()), default=0.0)

    def paced(self) -> float | None:
        """What a re-send must have been sent before (clock time) to go again: ``retry_after``
        before the latest send that *every* consumer acking lately (within ``retry_max``)
        had acknowledged ``retry_after`` ago.

        Every consumer: a shared subscription gives each consumer its own share of the
        features, which it answers in order, so a copy is lost only once every consumer has
        moved past it (two cloud processes draining one backlog run seconds apart). Read
        ``retry_after`` late: one consumer acks a frame with nothing in view at once and one
        with objects once its answer is out, so its own acks overtake each other by seconds.
        None when no ack has come for ``retry_max``: then only a probe goes
        (:mod:`gateway.uplink`)."""
        now = self._clock()
        if now - self.last_ack > self.retry_max:
            return None
        marks = list(self._consumers.values())
        active = [mark for mark in marks if now - mark.last <= self.retry_max] or marks
        if not active:
            return -self.retry_after
        return min(mark.lagged(now - self.retry_after) for mark in active) - self.retry_after

    def take_due(self, limit: int, sent_before: float | None = None) -> list[Pending]:
        """Up to ``limit`` features due to be sent, oldest first (with ``sent_before``,
        only those last sent before it, or never: :meth:`paced`); each is then due again
        after its backoff unless an ack comes first."""
        now = self._clock()
        paced = "" if sent_before is None else " AND sent <= ?"
        # Failed: not sent now; they stay due, on disk.
        with self._lock, self._transaction("a re-send"):
            rows = self._db.execute(
                "SELECT camera, seq, capture_ns, topic, payload, mode, attempts FROM outbox"
                f" WHERE due <= ?{paced} ORDER BY due LIMIT ?",
                (now, *(() if sent_before is None else (sent_before,)), limit),
            ).fetchall()
            self._db.executemany(
                f"UPDATE outbox SET attempts = attempts + 1, due = ?, sent = ? WHERE {_KEY}",
                [(now + self._backoff(int(row[6])), now, *row[:3]) for row in rows],
            )
        return [
            Pending(str(r[0]), int(r[1]), int(r[2]), str(r[3]), bytes(r[4]), str(r[5]), int(r[6]))
            for r in rows
        ]

    def _backoff(self, attempts: int) -> float:
        return float(min(self.retry_max, self.retry_after * 2**attempts))

    def retry_now(self, capture: wire.Capture) -> None:
        """A send failed (no connection): due again as soon as there is one."""
        # Failed: it stays due at its backoff instead.
        with self._lock, self._transaction("a retry"):  # never reached the broker: not sent
            self._db.execute(f"UPDATE outbox SET due = 0, sent = 0 WHERE {_KEY}", capture)

    def next_due(self) -> float | None:
        """When the earliest unacknowledged feature is due again (clock time), if any."""
        with self._lock:
            (due,) = self._db.execute("SELECT MIN(due) FROM outbox").fetchone()
        return None if due is None else float(due)

    def acknowledge(self, captures: Iterable[wire.Capture], consumer: str = "") -> int:
        """Forget the acknowledged features (``consumer``: the cloud consumer that acked
        them); returns how many were held here (acks for other workers' or already
        forgotten features are no-ops)."""
        with self._lock:
            removed = freed = 0
            # Failed: nothing forgotten; the features go again, harmless.
            latest, now = 0.0, self._clock()
            with self._transaction("an ack"):
                for capture in captures:
                    row = self._db.execute(
                        f"DELETE FROM outbox WHERE {_KEY} RETURNING LENGTH(payload), sent",
                        capture,
                    ).fetchone()
                    if row is not None:
                        removed += 1
                        freed += int(row[0])
                        latest = max(latest, float(row[1]))
            self._items -= removed
            self._bytes -= freed
            if removed:  # the consumer has moved past what was sent before ``latest``
                self._consumers.setdefault(consumer, _Watermark()).advance(now, latest)
                self.last_ack = now
            return removed

    @property
    def items(self) -> int:
        return self._items

    @property
    def bytes(self) -> int:
        return self._bytes

    def oldest_age(self) -> float:
        """Seconds the oldest unacknowledged feature has waited (0 when empty)."""
        with self._lock:
            (created,) = self._db.execute("SELECT MIN(created) FROM outbox").fetchone()
        return 0.0 if created is None else max(0.0, self._clock() - float(created))

    def close(self) -> None:
        with self._lock:
            self._db.close()
