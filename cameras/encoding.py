"""JPEG encoding of camera frames, at a fixed quality or steered to a target bitrate.

Second stage in the flow of a frame (source -> **JPEG** -> transport). Paper 003's cameras
send 720p at 3000 kb/s; at 15 fps that is 25 kB a frame, which libjpeg reaches for a
typical indoor scene somewhere around quality 40-70 depending on texture and noise. So a
camera either uses a fixed quality (``--quality``) or a :class:`BitrateController` that
adjusts the quality after every frame to keep the average bytes per second at the target.

Pure code: arrays in, bytes out, through the project's one JPEG encoder
(:func:`edgelearn.preprocess.encode_jpeg`); the camera service runs it in a worker thread
(OpenCV releases the GIL while encoding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Final, Protocol

from cameras.scene import Image
from edgelearn.preprocess import encode_jpeg

MIN_QUALITY: Final = 5
MAX_QUALITY: Final = 95


class FrameEncoder(Protocol):
    """Turns a frame into JPEG bytes; :attr:`quality` is the quality the next frame gets."""

    @property
    def quality(self) -> int: ...

    def encode(self, image: Image) -> bytes: ...


@dataclass
class FixedQuality:
    """Every frame at the same JPEG quality."""

    fixed: int = 80

    def __post_init__(self) -> None:
        if not 1 <= self.fixed <= 100:
            raise ValueError(f"JPEG quality must be 1-100, got {self.fixed}")

    @property
    def quality(self) -> int:
        return self.fixed

    def encode(self, image: Image) -> bytes:
        return encode_jpeg(image, self.fixed)


@dataclass
class BitrateController:
    """Adapts JPEG quality so that bytes per second stay near ``kbps`` at ``fps``.

    The per-frame budget is ``kbps * 1000 / 8 / fps`` bytes. After each frame the controller
    moves the quality by ``-gain * log2(ratio)`` where ``ratio`` compares the recent
    average frame size (plus a share of any accumulated over- or under-spend) with the
    budget; JPEG size is roughly exponential in quality over the useful range, so a log
    step converges in a few frames without oscillating. The accumulated spend is clamped to
    two seconds of budget, so a scene change is not paid back for ever.
    """

    kbps: float
    fps: float
    initial_quality: float = 60.0
    gain: float = 8.0
    smoothing: float = 0.3
    _quality: float = field(init=False)
    _average: float | None = field(init=False, default=None)
    _debt: float = field(init=False, default=0.0)

    def __post_init__(self) -> None:
        if self.kbps <= 0 or self.fps <= 0:
            raise ValueError(f"bitrate and fps must be positive, got {self.kbps}, {self.fps}")
        self._quality = float(min(MAX_QUALITY, max(MIN_QUALITY, self.initial_quality)))

    @property
    def budget(self) -> float:
        """Target bytes per frame."""
        return self.kbps * 1000.0 / 8.0 / self.fps

    @property
    def quality(self) -> int:
        return round(self._quality)

    def update(self, frame_bytes: int) -> None:
        """Account one encoded frame of ``frame_bytes`` and pick the next quality."""
        budget = self.budget
        if self._average is None:
            self._average = float(frame_bytes)
        else:
            self._average += self.smoothing * (frame_bytes - self._average)
        limit = 2.0 * self.fps * budget
        self._debt = max(-limit, min(limit, self._debt + frame_bytes - budget))
        # Pay back a tenth of the accumulated spend per frame.
        planned = max(1.0, self._average + 0.1 * self._debt)
        step = -self.gain * math.log2(planned / budget)
        self._quality = min(MAX_QUALITY, max(MIN_QUALITY, self._quality + max(-15, min(15, step))))

    def encode(self, image: Image) -> bytes:
        data = encode_jpeg(image, self.quality)
        self.update(len(data))
        return data
