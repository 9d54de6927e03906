"""Keyframe filter: decides, per camera, which frames are worth extracting and forwarding.

Where it sits: gateway ingest -> **keyframe filter** -> full extraction (keyframes only).

The score is cheap on purpose. OpenCV decodes the camera's JPEG at 1/8 scale
(``IMREAD_REDUCED_GRAYSCALE_8``: libjpeg skips most of the inverse DCT, 160x90 for 720p,
about 1 ms), blurs it to wash out sensor noise, and counts the fraction of pixels that
changed by more than ``pixel_delta`` grey levels (after removing the median difference, so a
uniform brightness change does not count).

What the score compares against matters. Measured on the labeled camera scene, a frame vs
*the last keyframe* scores about 0.09 on a still item (slow sway and lighting drift add up)
and about 0.10 on a new item: no threshold separates them. A frame vs *the previous frame*
scores 0.00 on a still item and 0.08-0.19 while an item enters. So the filter tracks motion
between consecutive frames and takes a keyframe when a change **starts** (the first frame of
a new item is never missed), every ``motion_interval``-th frame **while** it moves, and when
it **settles** (the clearest view of what arrived), plus every ``max_interval`` frames
without one, so a camera is never silent for long. Held-back frames are then only still
ones, which their keyframe describes. Measured on 10 labeled cameras (``bench pipeline``),
keyframes at start and settle only kept 10% of frames but cost 11 points of per-frame
accuracy, because the frames of an item sliding in took the answer of its first, partial
view; ``motion_interval=1`` keeps about a quarter of frames at the accuracy of sending all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np
import numpy.typing as npt

SmallFrame = npt.NDArray[np.int16]


@dataclass(frozen=True)
class KeyframeSettings:
    enabled: bool = True
    threshold: float = 0.02  # fraction of pixels changed since the previous frame (0..1)
    pixel_delta: int = 12  # grey levels that count as a change after blur
    max_interval: int = 45  # frames; a keyframe at least this often
    motion_interval: int = 1  # while the scene moves, a keyframe every this many frames

    def __post_init__(self) -> None:
        if not 0.0 <= self.threshold <= 1.0:
            raise ValueError(f"keyframe threshold {self.threshold} is not a fraction in 0..1")
        if self.max_interval < 1 or self.motion_interval < 1:
            raise ValueError("keyframe max and motion intervals must be >= 1")


def decode_small(jpeg: bytes) -> SmallFrame | None:
    """1/8-scale grayscale decode, blurred; ``None`` if the JPEG does not decode."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if image is None or image.size == 0:
        return None
    return cv2.GaussianBlur(image, (5, 5), 0).astype(np.int16)


def change_score(frame: SmallFrame, reference: SmallFrame, pixel_delta: int) -> float:
    if frame.shape != reference.shape:
        return 1.0  # the camera changed resolution: everything changed
    difference = frame - reference
    difference = np.abs(difference - np.median(difference))
    return float(np.count_nonzero(difference > pixel_delta) / difference.size)


@dataclass
class _CameraState:
    previous: SmallFrame
    moving: bool = False
    since_keyframe: int = 0
    keyframe_label: int | None = None
    held_back: int = 0
    held_mismatched: int = 0


@dataclass(frozen=True)
class Decision:
    keyframe: bool
    score: float
    # For a keyframe: the frames held back since the previous keyframe (they take the
    # previous keyframe's result) and how many of them had another ground-truth label.
    held_back: int = 0
    held_mismatched: int = 0


@dataclass
class KeyframeFilter:
    """Per-camera keyframe state. Not thread-safe: one per worker."""

    settings: KeyframeSettings = field(default_factory=KeyframeSettings)
    _cameras: dict[str, _CameraState] = field(default_factory=dict)

    def decide(self, camera_id: str, small: SmallFrame, label: int | None = None) -> Decision:
        state = self._cameras.get(camera_id)
        if state is None:
            self._cameras[camera_id] = _CameraState(previous=small, keyframe_label=label)
            return Decision(keyframe=True, score=1.0)
        state.since_keyframe += 1
        score = change_score(small, state.previous, self.settings.pixel_delta)
        state.previous = small
        moving = score > self.settings.threshold
        started_or_settled = moving != state.moving
        state.moving = moving
        if (
            not self.settings.enabled
            or started_or_settled
            or (moving and state.since_keyframe >= self.settings.motion_interval)
            or state.since_keyframe >= self.settings.max_interval
        ):
            decision = Decision(True, score, state.held_back, state.held_mismatched)
            state.since_keyframe = 0
            state.keyframe_label = label
            state.held_back = state.held_mismatched = 0
            return decision
        state.held_back += 1
        if label is not None and label != state.keyframe_label:
            state.held_mismatched += 1
        return Decision(keyframe=False, score=score)

    def forget(self, camera_id: str) -> None:
        self._cameras.pop(camera_id, None)
