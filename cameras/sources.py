"""Frame sources other than the labeled scene, and the ``--source`` spec that picks one.

First stage in the flow of a frame (**source** -> JPEG -> transport):

* :class:`VideoSource` replays a real video file (any container OpenCV's ``VideoCapture``
  reads), centre-cropped to 16:9 and scaled to 720p, looped, from a start offset;
* :class:`StreamSource` takes a real camera's live stream (``rtsp://``, ``http://``), the
  newest frame at each tick, and opens it again with backoff when it breaks;
* :class:`SyntheticScene` draws moving shapes on a gradient (no data files needed);
* :class:`~cameras.scene.LabeledScene` (in :mod:`cameras.scene`) shows a labeled data set.

:func:`parse_source` turns ``video:PATH``, ``rtsp://...``, ``fashion-mnist[:train|test]``,
``folder:PATH`` or ``synthetic`` into a :class:`SourceSpec` whose :meth:`~SourceSpec.open`
builds camera ``i``'s own source (its own seed, or its own start offset in the video).
Opening checks everything a user can get wrong (missing file, unreadable video, empty
folder, a stream that does not answer) and raises
:class:`~cameras.errors.SourceError` (a video) or :class:`~edgelearn.datasets.DatasetError`
(a data set) with a one-line message.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from cameras.errors import SourceError
from cameras.scene import (
    FrameSource,
    Image,
    LabeledScene,
    ObjectScene,
    RenderedSource,
    SourceFrame,
)
from edgelearn.datasets import (
    DEFAULT_ROOT,
    LabeledImages,
    folder_split,
    load_fashion_mnist,
    load_image_folder,
    subset,
)
from edgelearn.preprocess import HD_720P

log = logging.getLogger(__name__)


def fit_to(image: Image, size: tuple[int, int]) -> Image:
    """Centre-crop ``image`` to the aspect ratio of ``size`` (width, height), then resize:
    a 4:3 video fills a 16:9 sensor like a zoomed camera would, without black bars."""
    width, height = size
    rows, cols = image.shape[:2]
    if (cols, rows) == (width, height):
        return image
    target = width / height
    if cols / rows > target:
        crop = round(rows * target)
        offset = (cols - crop) // 2
        image = image[:, offset : offset + crop]
    else:
        crop = round(cols / target)
        offset = (rows - crop) // 2
        image = image[offset : offset + crop, :]
    shrinking = image.shape[0] > height
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return np.asarray(cv2.resize(image, size, interpolation=interpolation), dtype=np.uint8)


class VideoSource:
    """A video file replayed as a camera: scaled to ``size``, looped, from ``start_frame``.

    Frames carry no label. Raises :class:`SourceError` if the file is missing or OpenCV
    cannot decode a frame from it.
    """

    def __init__(
        self, path: Path | str, *, size: tuple[int, int] = HD_720P, start_frame: int = 0
    ) -> None:
        self.path = Path(path)
        self.size = size
        if not self.path.is_file():
            raise SourceError(
                f"video file not found: {self.path}", source=str(self.path), reason="missing"
            )
        self._capture = cv2.VideoCapture(str(self.path))
        if not self._capture.isOpened():
            self._capture.release()
            raise SourceError(
                f"cannot read video {self.path}: not a format OpenCV can decode",
                source=str(self.path),
            )
        count = int(self._capture.get(cv2.CAP_PROP_FRAME_COUNT))
        self.frame_count = count if count > 0 else None
        self.fps = float(self._capture.get(cv2.CAP_PROP_FPS)) or None
        if start_frame and self.frame_count:
            start_frame %= self.frame_count
        self._position = 0
        if start_frame:
            self._capture.set(cv2.CAP_PROP_POS_FRAMES, start_frame)
            self._position = start_frame
        # Fail now, not in the middle of a run, if nothing decodes.
        ok, first = self._capture.read()
        if not ok or first is None:
            self._rewind()
            ok, first = self._capture.read()
        if not ok or first is None:
            self._capture.release()
            raise SourceError(
                f"cannot read video {self.path}: no frame could be decoded",
                source=str(self.path),
            )
        self._pending: Image | None = np.asarray(first, dtype=np.uint8)

    def _rewind(self) -> None:
        if not self._capture.set(cv2.CAP_PROP_POS_FRAMES, 0):
            # Some containers cannot seek: reopen instead.
            self._capture.release()
            self._capture = cv2.VideoCapture(str(self.path))
        self._position = 0

    def _next_raw(self) -> Image:
        if self._pending is not None:
            first, self._pending = self._pending, None
            self._position += 1
            return first
        ok, frame = self._capture.read()
        if not ok or frame is None:
            log.debug("video %s: end after %d frames, looping", self.path, self._position)
            self._rewind()
            ok, frame = self._capture.read()
            if not ok or frame is None:
                raise SourceError(f"video {self.path} stopped decoding", source=str(self.path))
        self._position += 1
        return np.asarray(frame, dtype=np.uint8)

    def read(self) -> SourceFrame:
        return SourceFrame(image=fit_to(self._next_raw(), self.size), label=None)

    def skip(self, count: int) -> None:
        for _ in range(max(0, count)):
            if self._pending is not None:
                self._pending = None
                self._position += 1
            elif not self._capture.grab():
                self._rewind()
                self._capture.grab()
                self._position += 1
            else:
                self._position += 1

    def close(self) -> None:
        self._capture.release()


STREAM_SCHEMES = ("rtsp://", "rtsps://", "http://", "https://")


class StreamSource:
    """A real camera's live stream, as OpenCV's FFmpeg backend reads it (RTSP, HTTP).

    A thread reads the stream as fast as it comes and keeps the newest frame; :meth:`read`
    takes that one (scaled to ``size``), so a camera paced slower than its stream sends
    fresh pictures, not a backlog. When the stream breaks (the camera or its server went
    away, or nothing came for ``read_timeout``), the thread opens it again after a backoff
    that doubles from ``backoff`` up to ``backoff_max`` seconds, and counts each return in
    :attr:`reconnects`. Meanwhile :meth:`read` raises :class:`SourceError` with reason
    ``stream_down``, which the camera counts as a skipped frame and carries on: one dead
    stream never stops the other cameras. Opening fails with a one-line
    :class:`SourceError` if no frame comes within ``open_timeout`` at the start.
    """

    def __init__(
        self,
        url: str,
        *,
        size: tuple[int, int] = HD_720P,
        open_timeout: float = 10.0,
        read_timeout: float = 5.0,
        stale_after: float = 2.0,
        backoff: float = 0.5,
        backoff_max: float = 10.0,
    ) -> None:
        self.url, self.size = url, size
        self.stale_after = stale_after
        self._timeouts = (open_timeout, read_timeout)
        self._backoff = (backoff, backoff_max)
        self.reconnects = 0
        self._latest: tuple[Image, float] | None = None
        self._fresh = threading.Condition()
        self._stop = threading.Event()
        capture = self._open()
        if capture is None:
            raise SourceError(f"cannot open stream {url}", source=url, reason="unreachable")
        self._thread = threading.Thread(
            target=self._pump, args=(capture,), name=f"stream {url}", daemon=True
        )
        self._thread.start()
        with self._fresh:
            if not self._fresh.wait_for(lambda: self._latest is not None, open_timeout):
                self.close()
                raise SourceError(
                    f"stream {url} sent no frame in {open_timeout:.0f} s", source=url,
                    reason="unreadable",
                )  # fmt: skip

    def _open(self) -> cv2.VideoCapture | None:
        open_ms, read_ms = (round(1000 * seconds) for seconds in self._timeouts)
        capture = cv2.VideoCapture(
            self.url,
            cv2.CAP_FFMPEG,
            [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, open_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, read_ms],
        )
        if not capture.isOpened():
            capture.release()
            return None
        return capture

    def _pump(self, capture: cv2.VideoCapture | None) -> None:
        delay = self._backoff[0]
        while not self._stop.is_set():
            if capture is None:
                if self._stop.wait(delay):
                    break
                delay = min(2 * delay, self._backoff[1])
                capture = self._open()
                if capture is None:
                    log.debug("stream %s: still down; next try in %.1f s", self.url, delay)
                    continue
                self.reconnects += 1
                log.info("stream %s: back (reconnect %d)", self.url, self.reconnects)
            ok, frame = capture.read()
            if not ok or frame is None:
                capture.release()
                capture = None
                delay = self._backoff[0]
                log.warning("stream %s: lost; opening it again", self.url)
                continue
            with self._fresh:
                self._latest = (np.asarray(frame, np.uint8), time.monotonic())
                self._fresh.notify_all()
        if capture is not None:
            capture.release()

    def read(self) -> SourceFrame:
        with self._fresh:
            latest = self._latest
        if latest is None or time.monotonic() - latest[1] > self.stale_after:
            raise SourceError(f"stream {self.url} is down", source=self.url, reason="stream_down")
        return SourceFrame(image=fit_to(latest[0], self.size), label=None)

    def skip(self, count: int) -> None:
        """Nothing to skip: a live stream is always at its newest frame."""

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=sum(self._timeouts) + 1.0)


class SyntheticScene(RenderedSource):
    """Moving coloured shapes on a gradient: a source for tests that need no data files.

    Frame ``i`` is a pure function of ``(seed, i)``. Frames carry no label unless
    ``label_period`` is set, in which case the label is ``(i // label_period) % 10``.
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        size: tuple[int, int] = HD_720P,
        shapes: int = 6,
        label_period: int | None = None,
    ) -> None:
        self.seed = seed
        self.size = size
        self.label_period = label_period
        rng = np.random.default_rng([seed, 7])
        width, height = size
        xs = np.linspace(0.0, 1.0, width, dtype=np.float32)[None, :, None]
        ys = np.linspace(0.0, 1.0, height, dtype=np.float32)[:, None, None]
        top, bottom = rng.uniform(40, 200, 3), rng.uniform(40, 200, 3)
        background = top * (1 - ys) + bottom * ys + 20.0 * xs
        self._background = np.clip(background, 0, 255).astype(np.uint8)
        self._shapes = [
            (
                rng.uniform(0.05, 0.95, 2),  # centre (fraction of the frame)
                rng.uniform(-0.004, 0.004, 2),  # velocity per frame
                float(rng.uniform(0.04, 0.12)),  # radius (fraction of the height)
                tuple(float(c) for c in rng.uniform(0, 255, 3)),
                bool(rng.integers(0, 2)),  # circle or square
            )
            for _ in range(shapes)
        ]

    def render(self, index: int) -> SourceFrame:
        width, height = self.size
        image = self._background.copy()
        for centre, velocity, radius, colour, circle in self._shapes:
            # Bounce off the edges: a triangle wave of the unbounded position.
            position = centre + velocity * index
            position = 1.0 - np.abs(np.mod(position, 2.0) - 1.0)
            x, y = int(position[0] * width), int(position[1] * height)
            r = max(1, int(radius * height))
            if circle:
                cv2.circle(image, (x, y), r, colour, thickness=-1, lineType=cv2.LINE_AA)
            else:
                cv2.rectangle(image, (x - r, y - r), (x + r, y + r), colour, thickness=-1)
        cv2.putText(
            image,
            f"{index:06d}",
            (20, height - 20),
            cv2.FONT_HERSHEY_SIMPLEX,
            max(0.5, height / 720.0),
            (255, 255, 255),
            2,
            cv2.LINE_AA,
        )
        label = None if self.label_period is None else (index // self.label_period) % 10
        return SourceFrame(image=image, label=label, labeled=label is not None)


@dataclass(frozen=True)
class SourceSpec:
    """A parsed ``--source``: what kind and where; :meth:`open` builds one camera's source."""

    kind: str
    path: Path | None = None
    split: str = "train"
    url: str | None = None  # a live stream (``rtsp://...``)

    def load_data(self) -> LabeledImages | None:
        """The labeled data set (for labeled kinds), loaded once and shared by cameras."""
        if self.kind == "fashion-mnist":
            return load_fashion_mnist(self.split, self.path or DEFAULT_ROOT)
        if self.kind == "folder":
            assert self.path is not None
            data = load_image_folder(self.path)
            if self.split == "test":  # the part the cloud's first training held out
                return subset(data, folder_split(len(data))[1])
            return data
        return None

    def check(self) -> None:
        """Fail now, with a one-line :class:`SourceError`, if the source cannot be opened."""
        if self.kind == "video":
            assert self.path is not None
            VideoSource(self.path).close()
        elif self.kind == "stream":
            assert self.url is not None
            StreamSource(self.url).close()

    def open(
        self,
        camera_index: int,
        *,
        cameras: int = 1,
        seed: int = 0,
        dwell_frames: int = 30,
        start_seconds: float = 0.0,
        data: LabeledImages | None = None,
        size: tuple[int, int] = HD_720P,
        scene: str = "objects",
    ) -> FrameSource:
        """Camera ``camera_index``'s source. Cameras of one run see different pictures:
        labeled and synthetic scenes get seed ``seed + camera_index``; video cameras start
        ``camera_index / cameras`` of the way into the file (plus ``start_seconds``).
        A labeled source is an :class:`ObjectScene` (items walk in and out; a lane's cycle
        is ``5 * dwell_frames``) or, with ``scene="single"``, a :class:`LabeledScene`."""
        if self.kind == "video":
            assert self.path is not None
            probe = VideoSource(self.path, size=size)
            fps, count = probe.fps or 25.0, probe.frame_count
            probe.close()
            start = round(start_seconds * fps)
            if count:
                start += count * camera_index // max(1, cameras)
            return VideoSource(self.path, size=size, start_frame=start)
        if self.kind == "stream":  # one camera's stream: every camera of the spec shows it
            assert self.url is not None
            return StreamSource(self.url, size=size)
        if self.kind == "synthetic":
            return SyntheticScene(seed=seed + camera_index, size=size)
        data = data if data is not None else self.load_data()
        assert data is not None
        if scene == "single":
            return LabeledScene(
                data, seed=seed + camera_index, dwell_frames=dwell_frames, size=size
            )
        period = max(5 * dwell_frames, 4 * ObjectScene.WALK_FRAMES)
        return ObjectScene(data, seed=seed + camera_index, period_frames=period, size=size)


def parse_source(text: str) -> SourceSpec:
    """``video:PATH`` | ``rtsp://...`` (or ``http(s)://``: a live stream) |
    ``fashion-mnist[:train|test]`` | ``folder:PATH`` (every item) | ``folder-test:PATH`` (the
    items a cloud trained on the folder held out) | ``synthetic``."""
    if text.startswith(STREAM_SCHEMES):
        return SourceSpec("stream", url=text)
    kind, _, rest = text.partition(":")
    if kind == "video" and rest:
        return SourceSpec("video", Path(rest).expanduser())
    if kind in ("folder", "folder-test") and rest:
        return SourceSpec(
            "folder", Path(rest).expanduser(), "test" if kind == "folder-test" else "all"
        )
    if kind == "fashion-mnist" and rest in ("", "train", "test"):
        return SourceSpec("fashion-mnist", None, rest or "train")
    if kind == "synthetic" and not rest:
        return SourceSpec("synthetic")
    raise ValueError(
        f"unknown source {text!r}: use video:PATH, rtsp://..., fashion-mnist[:train|test], "
        "folder:PATH, folder-test:PATH or synthetic"
    )
