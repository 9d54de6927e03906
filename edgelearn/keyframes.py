"""When a view is worth sending: one keyframe rule, for objects and for whole frames.

The gateway sends a view when it is new, while it moves (not every frame of it), when it
settles, and now and then while it stays. The rule is the same whether the view is one
object (:class:`edgelearn.roi.ObjectFinder` runs it per track) or a whole frame
(:class:`KeyframeFilter`, for a gateway without objects or a model of whole frames), and
cloud-only (``raw``) forwards a camera's JPEG exactly when an edge mode would send its
objects, so every mode is compared on the same views.

:class:`Cadence` is the rule. Per frame it is told whether its view *moved*, and answers
with a reason to send or ``None``:

- ``appeared``: its first view (a new object's first whole view; a camera's first frame);
- ``moving``: every ``motion_interval`` frames while it moves (at 15 fps and 5, a walking
  person is classified three times a second, not 15);
- ``settled``: once it has not moved for ``settle_frames`` (its clearest view);
- ``refresh``: every ``max_interval`` frames while it stays.

What *moved* means is all that differs. An object moved when its box has shifted by more
than ``move_fraction`` of its size from where it last moved (so the box's jitter of one
1/8-scale pixel, or an item swaying in place, is no move). A whole frame moved when the
fraction of its pixels that changed since the previous frame, by more than ``pixel_delta``
grey levels on the blurred 1/8-scale decode after removing the median difference (a uniform
brightness change does not count), is above ``threshold``. Measured on the labeled scene, a
frame against *the previous frame* scores 0.00 on a still item and 0.08-0.19 while an item
enters; against *the last keyframe* a still item drifts to about 0.09, as much as a new
item, so the comparison is always with the previous frame. Whole frames held back take
their keyframe's answer: measured on 10 labeled cameras before objects, keyframes at start
and settle only kept 10% of frames but cost 11 points of per-frame accuracy (the frames of an
item sliding in took the answer of its first, partial view); ``motion_interval=1`` kept a
quarter of the frames at the accuracy of sending all. Objects are answered per view and
need no such tight cadence.

With keyframes off every view in full sight is sent, every frame. The knobs come from one
place: the gateway's config (``[gateway]`` ``keyframe_*`` keys or their flags), and the
planner's plan may change ``enabled``, ``threshold`` and ``max_interval`` but never turn on
what the operator turned off.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

Reason = Literal["appeared", "moving", "settled", "refresh"]

SmallFrame = npt.NDArray[np.int16]
"""A blurred 1/8-scale grey decode (:func:`edgelearn.roi.small_grey`), as int16."""


@dataclass(frozen=True)
class KeyframeSettings:
    enabled: bool = True
    motion_interval: int = 5  # frames between two sends of a view that moves
    settle_frames: int = 3  # frames without a move before a moving view has settled
    max_interval: int = 45  # frames between two sends of a view that stays
    move_fraction: float = 0.1  # an object moved: its box shifted by this much of its size
    threshold: float = 0.02  # a frame moved: this fraction of its pixels changed (0..1)...
    pixel_delta: int = 12  # ...each by more than this many grey levels, after blur

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"keyframe threshold {self.threshold} is not a fraction in 0..1")
        if min(self.motion_interval, self.settle_frames, self.max_interval) < 1:
            raise ValueError("keyframe motion_interval, settle_frames, max_interval must be >= 1")
        if not self.move_fraction > 0 or self.pixel_delta < 0:
            raise ValueError("keyframe move_fraction must be > 0 and pixel_delta >= 0")


@dataclass
class Cadence:
    """The keyframe state of one view (one object's track, or one camera's frames)."""

    moving: bool = True  # a view is new: it has not settled yet
    still: int = 0  # frames on end without a move
    since_sent: int = 0
    sent_once: bool = False

    def step(self, moved: bool, settings: KeyframeSettings) -> Reason | None:
        """This frame's reason to send the view, or ``None``. The caller says :meth:`sent`
        when it did send (a view partly out of sight is not sent, and keeps its reason)."""
        self.since_sent += 1
        if moved:
            self.moving, self.still = True, 0
        else:
            self.still += 1
        if not self.sent_once:
            return "appeared"
        if self.moving and self.still >= settings.settle_frames:
            self.moving = False
            return "settled"
        if self.moving and self.since_sent >= settings.motion_interval:
            return "moving"
        if self.since_sent >= settings.max_interval:
            return "refresh"
        return None

    def sent(self) -> None:
        self.since_sent, self.sent_once = 0, True


# --- whole frames ----------------------------------------------------------------------


def change_score(frame: SmallFrame, reference: SmallFrame, pixel_delta: int) -> float:
    """The fraction of pixels that changed by more than ``pixel_delta`` (0..1)."""
    if frame.shape != reference.shape:
        return 1.0  # the camera changed resolution: everything changed
    difference = frame - reference
    difference = np.abs(difference - np.median(difference))
    return float(np.count_nonzero(difference > pixel_delta) / difference.size)


@dataclass
class _Camera:
    previous: SmallFrame
    cadence: Cadence = field(default_factory=Cadence)
    keyframe_label: int | None = None
    held_back: int = 0
    held_mismatched: int = 0


@dataclass(frozen=True)
class Decision:
    keyframe: bool
    score: float
    reason: Reason | None = None
    # For a keyframe: the frames held back since the previous keyframe (they take the
    # previous keyframe's result) and how many of them had another ground-truth label.
    held_back: int = 0
    held_mismatched: int = 0


@dataclass
class KeyframeFilter:
    """The rule on whole frames, per camera. Not thread-safe: one per worker."""

    settings: KeyframeSettings = field(default_factory=KeyframeSettings)
    _cameras: dict[str, _Camera] = field(default_factory=dict)

    def decide(self, camera_id: str, small: SmallFrame, label: int | None = None) -> Decision:
        state = self._cameras.get(camera_id)
        if state is None:
            state = self._cameras[camera_id] = _Camera(previous=small)
            score = 1.0
        else:
            score = change_score(small, state.previous, self.settings.pixel_delta)
            state.previous = small
        reason = state.cadence.step(score > self.settings.threshold, self.settings)
        if reason is None and self.settings.enabled:
            state.held_back += 1
            if label is not None and label != state.keyframe_label:
                state.held_mismatched += 1
            return Decision(False, score)
        decision = Decision(True, score, reason, state.held_back, state.held_mismatched)
        state.cadence.sent()
        state.keyframe_label = label
        state.held_back = state.held_mismatched = 0
        return decision
