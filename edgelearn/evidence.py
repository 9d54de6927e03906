"""How sure an accuracy is: counted per object, resampled per distinct item.

A camera shows one item in many frames, and the gateway sends it several times (it appears,
moves, settles, stays). Those objects are one piece of evidence, not several: an accuracy
over 4,000 objects of 150 items is about as sure as one over 150. Every figure the project
reports therefore says how many distinct items it rests on, and its 95% interval comes from
resampling *items* (a cluster bootstrap: draw items with replacement, keep all of each drawn
item's objects), not objects.

Used wherever an accuracy is printed or decides something: the benchmarks, ``edgelearn up``'s
summary, the trainers' judges. numpy only.

Where no item is known (a video, a real camera: only a teacher's label), a track is the
object, except that a replayed video shows the same pixels every time it loops: the same
person walks by again as a new track, and its features are bit-identical to the first
time's. :class:`SameObjects` makes such tracks one object, so a looped clip of 30 people
is 30 pieces of evidence however long it plays, and a track seen before is not "held out"
from a model that trained on its twin.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Evidence:
    """An accuracy over ``objects`` scored objects of ``items`` distinct items, with its
    ``LEVEL`` interval [low, high] from resampling items (None without objects)."""

    correct: int
    objects: int
    items: int
    low: float | None
    high: float | None

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.objects if self.objects else None

    @property
    def half_width(self) -> float | None:
        if self.low is None or self.high is None:
            return None
        return (self.high - self.low) / 2

    def as_dict(self, digits: int = 4) -> dict[str, Any]:
        def rounded(value: float | None) -> float | None:
            return None if value is None else round(value, digits)

        return {
            "accuracy": rounded(self.accuracy),
            "low": rounded(self.low),
            "high": rounded(self.high),
            "correct": self.correct,
            "objects": self.objects,
            "items": self.items,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Evidence:
        return cls(data["correct"], data["objects"], data["items"], data["low"], data["high"])

    def text(self, interval: bool = True) -> str:
        """``81.2% (78.9-83.4, 512 items)`` (without ``interval``: ``81.2% (512 items)``);
        ``-`` without objects."""
        if self.accuracy is None:
            return "-"
        if not interval or self.low is None or self.high is None:
            return f"{self.accuracy:.1%} ({self.items} items)"
        return (
            f"{self.accuracy:.1%} ({self.low * 100:.1f}-{self.high * 100:.1f}, {self.items} items)"
        )


def per_item(
    correct: Sequence[bool] | np.ndarray, items: Sequence[Hashable]
) -> tuple[np.ndarray, np.ndarray]:
    """(correct objects, objects) of each distinct item, in first-seen order."""
    if len(correct) != len(items):
        raise ValueError(f"{len(correct)} outcomes for {len(items)} items")
    index: dict[Hashable, int] = {}
    keys = np.fromiter((index.setdefault(item, len(index)) for item in items), np.int64, len(items))
    hits = np.bincount(keys, weights=np.asarray(correct, np.float64), minlength=len(index))
    totals = np.bincount(keys, minlength=len(index)).astype(np.float64)
    return hits, totals


def item_accuracy(
    correct: Sequence[bool] | np.ndarray,
    items: Sequence[Hashable],
    *,
    resamples: int = RESAMPLES,
    level: float = LEVEL,
    seed: int = 0,
) -> Evidence:
    """Accuracy of objects whose outcomes are ``correct``, object ``i`` showing item
    ``items[i]``, with a percentile interval from ``resamples`` draws of items."""
    hits, totals = per_item(correct, items)
    count = len(totals)
    if count == 0:
        return Evidence(0, 0, 0, None, None)
    if count == 1:
        return Evidence(int(hits.sum()), int(totals.sum()), 1, None, None)
    rng = np.random.default_rng(seed)
    drawn = rng.integers(0, count, size=(resamples, count))
    accuracies = hits[drawn].sum(axis=1) / totals[drawn].sum(axis=1)
    tail = (1 - level) / 2
    low, high = np.quantile(accuracies, [tail, 1 - tail])
    return Evidence(int(hits.sum()), int(totals.sum()), count, float(low), float(high))


Track = tuple[str, int]  # (camera, track): an object, until it is found to be another's


class SameObjects:
    """Which tracks are one object: those that share a bit-identical feature row (features
    of identical pixels, a looped replay; on a live camera two tracks practically never
    share one). Online, oldest object first: :meth:`add` a track's rows as they arrive,
    :meth:`key` gives its object (the first track of it seen). Rows whose values are all
    equal (an empty crop) identify nothing and are skipped. Remembers at most ``max_rows``
    rows and tracks (oldest out). Not thread-safe."""

    def __init__(self, max_rows: int = 200_000) -> None:
        self.max_rows = max_rows
        self._by_row: OrderedDict[bytes, Track] = OrderedDict()
        self._parent: OrderedDict[Track, Track] = OrderedDict()
        self._born: dict[Track, int] = {}  # first-seen order: the older object's key stays
        self._count = 0

    def _root(self, track: Track) -> Track:
        while (parent := self._parent.get(track, track)) != track:
            grand = self._parent.get(parent, parent)
            self._parent[track] = grand  # halve the path
            track = grand
        return track

    def add(self, camera: str, track: int, rows: Iterable[np.ndarray]) -> Track:
        """Count ``rows`` (one object's feature values each) as ``track``'s; its object."""
        me: Track = (camera, int(track))
        if me not in self._parent:
            self._parent[me] = me
            self._born[me] = self._count
            self._count += 1
        for row in rows:
            values = np.ascontiguousarray(row)
            if values.size == 0 or (values == values.flat[0]).all():
                continue
            digest = hashlib.blake2b(values.tobytes(), digest_size=16).digest()
            seen = self._by_row.setdefault(digest, me)
            a, b = self._root(seen), self._root(me)
            if a != b:  # the older object absorbs the newer: its key stays
                older, newer = sorted((a, b), key=lambda t: self._born.get(t, -1))
                self._parent[newer] = older
        while len(self._by_row) > self.max_rows:
            self._by_row.popitem(last=False)
        while len(self._parent) > self.max_rows:
            gone, _ = self._parent.popitem(last=False)
            self._born.pop(gone, None)
        return self._root(me)

    def key(self, camera: str, track: int) -> Track:
        return self._root((camera, int(track)))
