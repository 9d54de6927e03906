"""Shadow scoring: after a promotion, the replaced model answers too, unpublished, on the
same objects, so a rollback compares the two models and nothing else.

Where it sits: :meth:`cloud.trainer.ContinuousTrainer.promote` starts a :class:`Shadow` for
the mode (the replaced model's cloud half, loaded); every consumer that answers a batch of
that mode with the promoted version also runs the shadow on the same inputs *after* it has
published the batch's results (the shadow costs no result any latency), and records, per
labeled object, whether each model was right (:class:`ShadowBoard`). The trainer reads the
pairs and, once enough distinct items are in, judges them with the paired test of
:mod:`cloud.judge` (one look: the false-rollback rate is the test's level). Items the
promoted model trained on are no evidence and are left out when the pairs are read.

Whole stretches of time are never compared: scenes differ by 15 points from one half
minute to the next, which made equal models roll back a third of the time.
"""

from __future__ import annotations

import threading
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True, eq=False)
class Shadow:
    mode: str
    candidate: str  # the promoted version, which answers and publishes
    replaced: str  # the version it replaced, which answers in shadow
    classifier: Any  # the replaced model's cloud half (a cloud.serving.Classifier)
    trained_items: frozenset[int] = frozenset()  # of the candidate: no evidence


@dataclass(frozen=True)
class Pairs:
    """Per labeled object answered by both: the item (or object) it shows, its camera, and
    whether the promoted and the replaced model were right."""

    keys: tuple[Hashable, ...]
    cameras: tuple[str, ...]
    candidate_correct: npt.NDArray[np.bool_]
    replaced_correct: npt.NDArray[np.bool_]

    @property
    def items(self) -> int:
        return len(set(self.keys))


@dataclass
class _Watched:
    shadow: Shadow
    keys: list[Hashable] = field(default_factory=list)
    cameras: list[str] = field(default_factory=list)
    candidate: list[bool] = field(default_factory=list)
    replaced: list[bool] = field(default_factory=list)


class ShadowBoard:
    """The shadows in force, one per mode at most, and their pairs; consumers and the
    trainer share one (a lock guards it)."""

    def __init__(self) -> None:
        self._watched: dict[str, _Watched] = {}
        self._lock = threading.Lock()

    def start(self, shadow: Shadow) -> None:
        with self._lock:
            self._watched[shadow.mode] = _Watched(shadow)

    def stop(self, mode: str) -> None:
        with self._lock:
            self._watched.pop(mode, None)

    def shadow_for(self, mode: str, serving: str) -> Shadow | None:
        """The shadow to run beside ``serving``'s answers of ``mode`` (None: none)."""
        with self._lock:
            watched = self._watched.get(mode)
        if watched is None or watched.shadow.candidate != serving:
            return None
        return watched.shadow

    def record(
        self,
        shadow: Shadow,
        keys: Sequence[Hashable],
        cameras: Sequence[str],
        labels: Sequence[int | None],
        candidate: npt.NDArray[np.int64],
        replaced: npt.NDArray[np.int64],
    ) -> None:
        """Both models' classes for the same objects; unlabeled ones teach nothing."""
        with self._lock:
            watched = self._watched.get(shadow.mode)
            if watched is None or watched.shadow is not shadow:  # ended meanwhile
                return
            for key, camera, label, mine, theirs in zip(
                keys, cameras, labels, candidate, replaced, strict=True
            ):
                if label is None:
                    continue
                watched.keys.append(key)
                watched.cameras.append(camera)
                watched.candidate.append(int(mine) == label)
                watched.replaced.append(int(theirs) == label)

    def pairs(self, mode: str) -> Pairs | None:
        """The pairs so far of ``mode``'s shadow, without the items the promoted model
        trained on (None: no shadow)."""
        with self._lock:
            watched = self._watched.get(mode)
            if watched is None:
                return None
            trained = watched.shadow.trained_items
            kept = [
                i
                for i, key in enumerate(watched.keys)
                if not (isinstance(key, tuple) and key[0] == "item" and key[1] in trained)
            ]
            return Pairs(
                tuple(watched.keys[i] for i in kept),
                tuple(watched.cameras[i] for i in kept),
                np.asarray([watched.candidate[i] for i in kept], bool),
                np.asarray([watched.replaced[i] for i in kept], bool),
            )
