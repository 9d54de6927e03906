"""The cloud's one connection to its database: an SQLite file (one machine, the default) or a
PostgreSQL server that every cloud process shares (``--store postgresql://...``).

Statements are written once, with ``?`` placeholders and SQL both engines speak (``INSERT
... ON CONFLICT DO NOTHING``, row values); PostgreSQL gets ``%s``. :meth:`Database.run` runs
one operation under the connection's lock. On PostgreSQL it survives a restarted or
unreachable server: the operation is run again on a new connection, each retry counted
(``on_retry``), until ``reconnect_for`` seconds have passed; then :class:`StoreUnavailable`.
An operation must therefore be safe to run twice: one transaction, or reads.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")


class StoreUnavailable(RuntimeError):
    """The database could not be reached within ``reconnect_for`` seconds."""


def is_url(location: object) -> bool:
    """Whether ``location`` names a PostgreSQL server rather than a folder."""
    return isinstance(location, str) and location.startswith(("postgresql://", "postgres://"))


def redacted(url: str) -> str:
    """``url`` without its password, for logs and errors."""
    head, _, tail = url.partition("://")
    credentials, at, rest = tail.rpartition("@")
    if not at:
        return url
    return f"{head}://{credentials.split(':', 1)[0]}:***@{rest}"


def for_postgres(schema: str) -> str:
    """SQLite DDL in PostgreSQL's types: 64-bit integers (captures are nanoseconds), an
    identity for an integer key (the rows' arrival order), doubles for REAL (times), bytea."""
    return (
        schema.replace("INTEGER PRIMARY KEY", "BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY")
        .replace("INTEGER", "BIGINT")
        .replace("REAL", "DOUBLE PRECISION")
        .replace("BLOB", "BYTEA")
    )


class Connection:
    """What an operation sees: ``execute`` (``?`` placeholders) and ``transaction``."""

    def __init__(self, raw: Any, postgres: bool) -> None:
        self.raw = raw
        self.postgres = postgres

    def execute(self, sql: str, params: Sequence[Any] = ()) -> Any:
        if self.postgres:
            return self.raw.execute(sql.replace("?", "%s"), tuple(params))
        return self.raw.execute(sql, tuple(params))

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        if self.postgres:
            with self.raw.cursor() as cursor:
                cursor.executemany(sql.replace("?", "%s"), rows)
        else:
            self.raw.executemany(sql, rows)

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """Committed when the block ends, rolled back if it raises."""
        if self.postgres:
            with self.raw.transaction():
                yield
        else:
            with self.raw:
                yield


class Database:
    def __init__(
        self,
        location: str | Path | None,
        *,
        schema: str,
        reconnect_for: float = 30.0,
        on_retry: Callable[[], None] = lambda: None,
    ) -> None:
        """``location``: a PostgreSQL URL, an SQLite file, or None (SQLite in memory);
        ``schema``: SQLite's DDL (PostgreSQL gets it in its own types, :func:`for_postgres`)."""
        self.postgres = is_url(location)
        self.location = location
        self.reconnect_for = reconnect_for
        self.on_retry = on_retry
        self.retries = 0
        self._lock = threading.Lock()
        self._schema = for_postgres(schema) if self.postgres else schema
        self._connection: Connection | None = None
        with self._lock:
            self._connect()

    @property
    def where(self) -> str:
        """The location, without a password."""
        return redacted(str(self.location)) if self.postgres else str(self.location)

    def _connect(self) -> Connection:
        if self.postgres:
            import psycopg  # the cloud's extra: an edge install never needs it

            raw: Any = psycopg.connect(str(self.location), autocommit=True, connect_timeout=5)
            connection = Connection(raw, postgres=True)
            with connection.transaction():
                # two processes creating the same tables at once would collide
                connection.execute("SELECT pg_advisory_xact_lock(7261)")
                for statement in self._schema.split(";"):
                    if statement.strip():
                        connection.execute(statement)
        else:
            raw = sqlite3.connect(
                ":memory:" if self.location is None else str(self.location),
                check_same_thread=False,
                timeout=30.0,  # another process of the same cloud may hold the lock
            )
            raw.execute("PRAGMA journal_mode=WAL")
            # A killed process loses nothing committed; only a power cut could.
            raw.execute("PRAGMA synchronous=NORMAL")
            connection = Connection(raw, postgres=False)
        self._connection = connection
        return connection

    def prepare(self, migrate: Callable[[Connection], None]) -> None:
        """Run ``migrate`` (SQLite: an older file's columns) and then the schema."""
        with self._lock:
            assert self._connection is not None
            if not self.postgres:
                migrate(self._connection)
                self._connection.raw.executescript(self._schema)

    def run(self, operation: Callable[[Connection], T]) -> T:
        """``operation`` on the connection, under its lock; on PostgreSQL again on a new
        connection while the server is away (each retry counted), for ``reconnect_for``."""
        if not self.postgres:
            with self._lock:
                assert self._connection is not None
                return operation(self._connection)
        import psycopg

        deadline = time.monotonic() + self.reconnect_for
        pause = 0.1
        while True:
            try:
                with self._lock:
                    connection = self._connection or self._connect()
                    return operation(connection)
            except psycopg.OperationalError as exc:
                with self._lock:
                    self._drop()
                self.retries += 1
                self.on_retry()
                if time.monotonic() > deadline:
                    raise StoreUnavailable(f"{self.where}: {exc}") from exc
                log.warning("the store %s is away (%s); again in %.1f s", self.where, exc, pause)
                time.sleep(pause)  # the server is restarting: the next try reconnects
                pause = min(pause * 2, 2.0)

    def _drop(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            with contextlib.suppress(Exception):
                connection.raw.close()

    def close(self) -> None:
        with self._lock:
            self._drop()
