"""Per-frame accuracy of the pipeline's answers, counted the way a camera user sees them.

Where it sits: cloud consumer -> result -> **Scoreboard** -> metrics.

Every frame a camera captured gets an answer: a keyframe gets its own result; the frames the
keyframe filter held back take the result of their camera's previous keyframe. A
``wire.Feature`` (or an edge ``wire.Result``) carries ``held_back`` (how many frames since
the previous keyframe were held back) and ``held_mismatched`` (how many of those had a
different ground-truth label from the previous keyframe: a change the filter missed). So when
keyframe *n* arrives, the frames held back after keyframe *n-1* are scored with *n-1*'s
prediction: ``held_back - held_mismatched`` of them share its label and are right exactly
when it was; the mismatched ones are counted wrong (their own labels did not travel, and the
previous answer was about another item: a conservative count).
"""

from __future__ import annotations

import collections
from dataclasses import dataclass, field


@dataclass
class _Last:
    correct: bool


@dataclass(frozen=True)
class Score:
    frames: int
    correct: int


@dataclass
class Scoreboard:
    """Rolling per-frame accuracy per (camera, mode) over the last ``window`` frames."""

    window: int = 2000
    _last: dict[tuple[str, str], _Last] = field(default_factory=dict)
    _recent: dict[tuple[str, str], collections.deque[bool]] = field(default_factory=dict)

    def record(
        self,
        camera_id: str,
        mode: str,
        label: int | None,
        predicted: int,
        held_back: int,
        held_mismatched: int,
    ) -> Score:
        """Score one answered keyframe and the held-back frames it settles. Unlabeled
        frames are not scored (a real video has no ground truth)."""
        if label is None:
            return Score(0, 0)
        key = (camera_id, mode)
        recent = self._recent.setdefault(key, collections.deque(maxlen=self.window))
        frames = correct = 0
        previous = self._last.get(key)
        if previous is not None and held_back:
            same = held_back - held_mismatched
            settled = [previous.correct] * same + [False] * held_mismatched
            recent.extend(settled)
            frames += held_back
            correct += same if previous.correct else 0
        this_correct = predicted == label
        recent.append(this_correct)
        self._last[key] = _Last(this_correct)
        return Score(frames + 1, correct + int(this_correct))

    def accuracy(self, camera_id: str, mode: str) -> float | None:
        recent = self._recent.get((camera_id, mode))
        return sum(recent) / len(recent) if recent else None

    def keys(self) -> list[tuple[str, str]]:
        return list(self._recent)
