"""What arrived at the cloud, once each: the de-duplication ledger and the labeled features
the cloud trains on, in one SQLite file.

Where it sits::

    consumer batch --> FeatureStore.record (one transaction) --> Ack to the gateways
                            |                                  ``edgelearn train --from-features``
                            +--> arrivals: (site, capture), every feature or edge result
                            +--> features: the labeled ones, as the gateways sent them  --> load

Gateways re-send a feature until the cloud acknowledges it, so the same capture (camera,
seq, capture time: :func:`edgelearn.wire.capture_of`) can arrive twice: after a lost ack, a
consumer restart, a broker that redelivers. ``record`` inserts each arrival once and says
which ones are new; only those are answered, scored and kept, and every one of them is
acknowledged. The transaction commits before any ack goes
out, so an acknowledged feature is on disk (WAL mode: a killed process loses nothing it
committed) and a restarted cloud still recognises a late retry. Consumers of one process
share the store; consumers of several processes may share the file (SQLite locks it).

Stored ``values`` are the entropy-decoded arrays exactly as the gateways quantised them (int8
for the feature modes, the JPEG for ``raw``), with their quantisation and the bytes that
crossed the uplink; features of different extractors or model versions are different data
sets (:meth:`kinds`). Each row keeps its camera's task (:func:`stored_task`: ``dataset``, or
the teacher that labeled it, ``teacher:<name>``): a teacher's label (``person`` / ``other``)
and a data set's class share a number but not a meaning, so every reader names the task it
wants (the data set's by default). Bounded: beyond
``max_arrivals`` (the de-duplication window) and ``max_features`` rows the oldest go first.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cloud.database import Connection, Database
from edgelearn import codec, wire
from edgelearn.evidence import SameObjects
from edgelearn.modes import RAW

FILE_NAME: Final = "arrivals.sqlite"
_SCHEMA: Final = """
CREATE TABLE IF NOT EXISTS arrivals (
    site TEXT NOT NULL,
    camera TEXT NOT NULL,
    seq INTEGER NOT NULL,
    capture_ns INTEGER NOT NULL,
    gateway TEXT NOT NULL,
    mode TEXT NOT NULL,
    arrived REAL NOT NULL,
    result BLOB,
    writer TEXT,
    PRIMARY KEY (site, camera, seq, capture_ns)
);
CREATE INDEX IF NOT EXISTS arrivals_arrived ON arrivals (arrived);
CREATE TABLE IF NOT EXISTS features (
    id INTEGER PRIMARY KEY,
    site TEXT NOT NULL,
    camera TEXT NOT NULL,
    seq INTEGER NOT NULL,
    capture_ns INTEGER NOT NULL,
    mode TEXT NOT NULL,
    model_version TEXT NOT NULL,
    label INTEGER NOT NULL,
    dtype INTEGER NOT NULL,
    shape TEXT NOT NULL,
    scale REAL NOT NULL,
    zero_point INTEGER NOT NULL,
    wire_bytes INTEGER NOT NULL,
    payload BLOB NOT NULL,
    track INTEGER NOT NULL DEFAULT -1,
    item INTEGER NOT NULL DEFAULT -1,
    height INTEGER NOT NULL DEFAULT -1,
    task TEXT NOT NULL DEFAULT 'dataset',
    UNIQUE (site, camera, seq, capture_ns, track)
);
CREATE INDEX IF NOT EXISTS features_kind ON features (mode, model_version);
"""
_PRUNE_EVERY: Final = 4096  # arrivals recorded between two checks of the bounds


@dataclass(frozen=True)
class Arrival:
    """One envelope a consumer took off the features topic."""

    site: str
    envelope: wire.Feature | wire.Result
    wire_bytes: int
    values: npt.NDArray[np.generic] | None = None  # a feature's decoded array (None: raw)
    result: bytes | None = None  # its answer as published (None: nothing to answer)


@dataclass(frozen=True)
class Recorded:
    """A capture the ledger has: the answer published for it (None: it had none, or it
    was recorded before answers were kept), to publish again when it is sent again."""

    result: bytes | None


@dataclass(frozen=True, eq=False)
class LabeledRows:
    """Stored labeled rows in arrival order (``ids`` ascending): what the continuous trainer
    reads. ``values`` (N, *shape) as the gateways quantised them."""

    ids: npt.NDArray[np.int64]
    cameras: tuple[str, ...]
    tracks: npt.NDArray[np.int64]
    labels: npt.NDArray[np.int64]
    values: npt.NDArray[np.generic]
    items: npt.NDArray[np.int64]  # the data-set item each row shows (-1: not known)
    # the object's box height in the camera frame's pixels (-1: a whole frame, or not known)
    heights: npt.NDArray[np.int64]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: npt.NDArray[np.int64]) -> LabeledRows:
        return LabeledRows(
            self.ids[index],
            tuple(self.cameras[i] for i in index),
            self.tracks[index],
            self.labels[index],
            self.values[index],
            self.items[index],
            self.heights[index],
        )

    def objects(self) -> list[tuple[str, int]]:
        """What each row is evidence of: its item (one item on two cameras is one), or,
        where the item is not known, its object (camera, track; tracks that share a
        bit-identical row, a looped video's, are one: :class:`edgelearn.evidence.SameObjects`),
        or, for a whole frame (track -1), the row itself."""
        same = SameObjects()
        for camera, track, item, values in zip(
            self.cameras, self.tracks, self.items, self.values, strict=True
        ):
            if item < 0 and track >= 0:
                same.add(camera, int(track), [values])
        return [
            ("item", int(item))
            if item >= 0
            else same.key(camera, int(track))
            if track >= 0
            else ("row", int(row))
            for row, camera, track, item in zip(
                self.ids, self.cameras, self.tracks, self.items, strict=True
            )
        ]


@dataclass(frozen=True, eq=False)
class LoadedFeatures:
    mode: str
    model_version: str
    values: npt.NDArray[np.generic]  # (N, *shape): features, or raw objects' crops
    jpegs: list[bytes]  # raw whole frames only
    labels: npt.NDArray[np.int64]
    scale: float
    zero_point: int
    uplink_bytes: int


def _row_values(dtype: int, shape: str, payload: bytes) -> npt.NDArray[np.generic]:
    """A stored row's array: its payload as its dtype and shape columns say."""
    return np.frombuffer(payload, codec.numpy_dtype(wire.DType(dtype))).reshape(json.loads(shape))


def stored_task(feature: wire.Feature) -> str:
    """The task a row is kept under: ``dataset``, or for a teacher's label its source
    (``teacher:<name>``), so the labels of two teachers (a user's detector replacing the
    packaged one) never train one student: their class numbers mean different things."""
    if feature.task == wire.TASK_TEACHER and feature.label_source.startswith("teacher:"):
        return feature.label_source
    return feature.task


def _migrate(db: Connection) -> None:
    """An SQLite file from before objects (one feature row per frame, no ``track``): its
    rows move to the new table as whole-frame rows (track -1), in one transaction. A file
    from before items or box heights gets the column (-1: not known), one from before tasks
    gets ``task`` (every row then was the data set's). A ledger from before answers were
    kept gets ``result`` (NULL: none kept), and one from before ``writer`` gets it (NULL)."""
    arrivals = [row[1] for row in db.execute("PRAGMA table_info(arrivals)")]
    for column, kind in (("result", "BLOB"), ("writer", "TEXT")):
        if arrivals and column not in arrivals:
            with db.transaction():
                db.execute(f"ALTER TABLE arrivals ADD COLUMN {column} {kind}")
    columns = [row[1] for row in db.execute("PRAGMA table_info(features)")]
    if "track" in columns:
        with db.transaction():
            for column in ("item", "height"):
                if column not in columns:
                    db.execute(
                        f"ALTER TABLE features ADD COLUMN {column} INTEGER NOT NULL DEFAULT -1"
                    )
            if "task" not in columns:
                db.execute("ALTER TABLE features ADD COLUMN task TEXT NOT NULL DEFAULT 'dataset'")
        return
    if not columns:
        return
    with db.transaction():
        db.execute("ALTER TABLE features RENAME TO features_before_objects")
        db.execute("DROP INDEX IF EXISTS features_kind")
        for statement in _SCHEMA.split(";"):  # not executescript: it would commit
            if statement.strip():
                db.execute(statement)
        names = ", ".join(columns)
        db.execute(f"INSERT INTO features ({names}) SELECT {names} FROM features_before_objects")
        db.execute("DROP TABLE features_before_objects")


def _bytes(value: Any) -> bytes | None:
    """A BLOB as bytes (PostgreSQL may give a memoryview)."""
    return None if value is None else bytes(value)


class FeatureStore:
    def __init__(
        self,
        root: Path | str | None,
        *,
        keep_features: bool = True,
        max_arrivals: int = 2_000_000,
        max_features: int = 500_000,
        reconnect_for: float = 30.0,
    ) -> None:
        """``root``: a folder (its ``arrivals.sqlite``), a ``postgresql://`` URL that every
        cloud process shares, or None (in memory: nothing survives a restart);
        ``keep_features`` False keeps only the de-duplication ledger. On PostgreSQL, an
        operation waits up to ``reconnect_for`` seconds for a restarted server."""
        self.root = root
        self.keep_features = keep_features
        self.max_arrivals = max_arrivals
        self.max_features = max_features
        if isinstance(root, Path):
            root.mkdir(parents=True, exist_ok=True)
        self._db = Database(
            root / FILE_NAME if isinstance(root, Path) else root,
            schema=_SCHEMA,
            reconnect_for=reconnect_for,
        )
        self._db.prepare(_migrate)
        self._since_prune = 0

    @property
    def shared(self) -> bool:
        """Whether other cloud processes share it (PostgreSQL)."""
        return self._db.postgres

    @property
    def retries(self) -> int:
        """Operations run again after the database was away."""
        return self._db.retries

    def on_retry(self, count: Callable[[], None]) -> None:
        self._db.on_retry = count

    def record(self, arrivals: Sequence[Arrival]) -> list[bool]:
        """Insert each arrival once; which ones were new. Labeled new features are kept
        for training. One transaction: committed when this returns.

        A server lost during the commit leaves its outcome unknown, and the transaction runs
        again on a new connection. The rows carry this call's ``writer`` token, so a row the
        lost commit did write is known as this call's own: still new, its training rows
        already kept."""
        now = time.time()
        writer = uuid.uuid4().hex
        attempts = 0

        def record(db: Connection) -> list[bool]:
            nonlocal attempts
            attempts += 1
            new: list[bool] = []
            with db.transaction():
                for arrival in arrivals:
                    envelope = arrival.envelope
                    key = (arrival.site, *wire.capture_of(envelope))
                    cursor = db.execute(
                        "INSERT INTO arrivals (site, camera, seq, capture_ns, gateway, mode,"
                        " arrived, result, writer) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
                        " ON CONFLICT DO NOTHING",
                        (*key, envelope.gateway_id, envelope.mode, now, arrival.result, writer),
                    )
                    if cursor.rowcount == 1:
                        new.append(True)
                        if self.keep_features and isinstance(envelope, wire.Feature):
                            self._keep(db, arrival, envelope)
                    else:  # seen before; after a lost commit, perhaps by this very call
                        new.append(attempts > 1 and self._written_by(db, key, writer))
            return new

        new = self._db.run(record)
        self._since_prune += len(arrivals)
        if self._since_prune >= _PRUNE_EVERY:
            self._since_prune = 0
            self._db.run(self._prune)
        return new

    @staticmethod
    def _written_by(db: Connection, key: tuple[str, str, int, int], writer: str) -> bool:
        row = db.execute(
            "SELECT writer FROM arrivals WHERE site = ? AND camera = ? AND seq = ?"
            " AND capture_ns = ?",
            key,
        ).fetchone()
        return row is not None and row[0] == writer

    def recorded(
        self, arrivals: Sequence[tuple[str, wire.Feature | wire.Result]]
    ) -> list[Recorded | None]:
        """Each (site, envelope) capture's record (None: not recorded yet), with the answer
        published for it: a retry gets the same answer again, never a second inference
        (``record`` still decides, for a race between consumers)."""

        def read(db: Connection) -> list[Any]:
            return [
                db.execute(
                    "SELECT result FROM arrivals WHERE site = ? AND camera = ? AND seq = ?"
                    " AND capture_ns = ?",
                    (site, *wire.capture_of(envelope)),
                ).fetchone()
                for site, envelope in arrivals
            ]

        rows = self._db.run(read)
        return [None if row is None else Recorded(_bytes(row[0])) for row in rows]

    def _keep(self, db: Connection, arrival: Arrival, feature: wire.Feature) -> None:
        """A labeled feature as training rows: one per labeled object (its slice of the
        stacked values, its share of the wire bytes; for a raw JPEG of objects, the crop the
        consumer cut of it with the camera's background model of the moment), or one for a
        whole-frame feature. An unlabeled one teaches nothing."""
        # track, label, item, box height, data
        rows: list[tuple[int, int, int, int, npt.NDArray[np.generic] | bytes]] = []
        if feature.tracks:
            if arrival.values is not None:
                values = np.ascontiguousarray(arrival.values)
                items = feature.items or (None,) * len(feature.tracks)
                rows = [
                    (track, label, -1 if item is None else item, box[3] - box[1], values[index])
                    for index, (track, label, item, box) in enumerate(
                        zip(feature.tracks, feature.labels, items, feature.boxes, strict=True)
                    )
                    if label is not None
                ]
        elif feature.label is not None:
            data = feature.payload if arrival.values is None else arrival.values
            rows = [(-1, feature.label, -1, -1, data)]
        for track, label, item, height, data in rows:
            if isinstance(data, bytes):  # raw: the JPEG as it came
                shape, payload = feature.shape, data
            else:  # a feature's values, or (raw, uint8 like its JPEG) an object's crop
                array = np.ascontiguousarray(data)
                shape, payload = tuple(array.shape), array.tobytes()
            db.execute(
                "INSERT INTO features (site, camera, seq, capture_ns, mode,"
                " model_version, label, dtype, shape, scale, zero_point, wire_bytes, payload,"
                " track, item, height, task)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT DO NOTHING",
                (
                    arrival.site,
                    *wire.capture_of(feature),
                    feature.mode,
                    feature.model_version,
                    label,
                    int(feature.dtype),
                    json.dumps(list(shape)),
                    feature.scale,
                    feature.zero_point,
                    arrival.wire_bytes // max(1, len(rows)),
                    payload,
                    track,
                    item,
                    height,
                    stored_task(feature),
                ),
            )

    def _prune(self, db: Connection) -> None:
        with db.transaction():
            for table, bound, order, key in (
                ("arrivals", self.max_arrivals, "arrived", "site, camera, seq, capture_ns"),
                ("features", self.max_features, "id", "id"),
            ):
                (count,) = db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()
                if count > bound:
                    db.execute(
                        f"DELETE FROM {table} WHERE ({key}) IN"
                        f" (SELECT {key} FROM {table} ORDER BY {order} LIMIT ?)",
                        (count - bound,),
                    )

    def arrived(self) -> int:
        """Distinct (site, capture) recorded (within the de-duplication window)."""
        (count,) = self._db.run(lambda db: db.execute("SELECT COUNT(*) FROM arrivals").fetchone())
        return int(count)

    def flush(self) -> None:
        """Nothing is buffered (every record commits); kept for callers that stop."""

    def close(self) -> None:
        self._db.close()

    # --- training ------------------------------------------------------------------------

    def kinds(self) -> list[tuple[str, str]]:
        """The (mode, model version) data sets held, each a separate training set."""
        rows = self._db.run(
            lambda db: db.execute(
                "SELECT DISTINCT mode, model_version FROM features WHERE task = ?"
                " ORDER BY mode, model_version",
                (wire.TASK_DATASET,),
            ).fetchall()
        )
        return [(str(mode), str(version)) for mode, version in rows]

    def count(
        self,
        mode: str,
        versions: Sequence[str],
        after_id: int = 0,
        *,
        task: str = wire.TASK_DATASET,
    ) -> tuple[int, int]:
        """How many labeled rows of ``mode`` and ``task`` from these model versions came
        after row ``after_id``, and the newest row's id (0: none)."""
        marks = ", ".join("?" * len(versions))
        count, newest = self._db.run(
            lambda db: db.execute(
                f"SELECT COUNT(*), MAX(id) FROM features WHERE mode = ? AND id > ?"
                f" AND task = ? AND model_version IN ({marks})",
                (mode, after_id, task, *versions),
            ).fetchone()
        )
        return int(count), int(newest or 0)

    def labeled_rows(
        self,
        mode: str,
        versions: Sequence[str],
        *,
        newest: int,
        replay: int = 0,
        up_to_id: int | None = None,
        seed: int = 0,
        task: str = wire.TASK_DATASET,
    ) -> LabeledRows:
        """The ``newest`` rows (up to row ``up_to_id``) of ``mode`` and ``task`` from these
        model versions (one feature space: same edge artifact), plus ``replay`` rows drawn
        at random from the older ones, all in arrival order."""
        marks = ", ".join("?" * len(versions))
        where = f"mode = ? AND task = ? AND model_version IN ({marks}) AND id <= ?"
        bound = (mode, task, *versions, up_to_id if up_to_id is not None else 2**62)
        columns = "id, camera, track, label, dtype, shape, payload, item, height"

        def read(db: Connection) -> tuple[list[Any], list[Any]]:
            recent = db.execute(
                f"SELECT {columns} FROM features WHERE {where} ORDER BY id DESC LIMIT ?",
                (*bound, newest),
            ).fetchall()
            older: list[Any] = []
            if replay and recent:
                oldest = min(row[0] for row in recent)
                ids = [
                    row[0]
                    for row in db.execute(
                        f"SELECT id FROM features WHERE {where} AND id < ?", (*bound, oldest)
                    ).fetchall()
                ]
                if ids:
                    rng = np.random.default_rng(seed)
                    chosen = rng.choice(ids, min(replay, len(ids)), replace=False)
                    older = db.execute(
                        f"SELECT {columns} FROM features WHERE id IN"
                        f" ({', '.join('?' * len(chosen))})",
                        [int(i) for i in chosen],
                    ).fetchall()
            return recent, older

        recent, older = self._db.run(read)
        rows = sorted([*older, *recent], key=lambda row: row[0])
        if not rows:
            return LabeledRows(
                np.empty(0, np.int64), (), np.empty(0, np.int64), np.empty(0, np.int64),
                np.empty(0, np.int8), np.empty(0, np.int64), np.empty(0, np.int64),
            )  # fmt: skip
        values = np.stack([_row_values(row[4], row[5], row[6]) for row in rows])
        return LabeledRows(
            np.asarray([row[0] for row in rows], np.int64),
            tuple(str(row[1]) for row in rows),
            np.asarray([row[2] for row in rows], np.int64),
            np.asarray([row[3] for row in rows], np.int64),
            values,
            np.asarray([row[7] for row in rows], np.int64),
            np.asarray([row[8] for row in rows], np.int64),
        )

    def load(self, mode: str, model_version: str, limit: int | None = None) -> LoadedFeatures:
        bound = "" if limit is None else f" LIMIT {int(limit)}"
        rows = self._db.run(
            lambda db: db.execute(
                "SELECT label, dtype, shape, scale, zero_point, wire_bytes, payload, track"
                f" FROM features WHERE mode = ? AND model_version = ? AND task = ?"
                f" ORDER BY id{bound}",
                (mode, model_version, wire.TASK_DATASET),
            ).fetchall()
        )
        if not rows:
            raise FileNotFoundError(f"no stored features for {mode} {model_version} in {self.root}")
        crops = [row for row in rows if row[7] >= 0]  # raw: objects' crops (track >= 0)
        if mode == RAW and crops:  # a store of both kinds trains on the crops
            rows = crops
        labels = np.asarray([row[0] for row in rows], np.int64)
        uplink = sum(int(row[5]) for row in rows)
        scale, zero_point = float(rows[-1][3]), int(rows[-1][4])
        if mode == RAW and not crops:  # whole frames: the JPEGs
            jpegs = [bytes(row[6]) for row in rows]
            return LoadedFeatures(
                mode, model_version, np.empty(0, np.uint8), jpegs, labels, 1.0, 0, uplink
            )
        values = np.stack([_row_values(row[1], row[2], row[6]) for row in rows])
        return LoadedFeatures(mode, model_version, values, [], labels, scale, zero_point, uplink)
