"""The camera service: many simulated cameras in one process, each paced in real time.

This is the I/O shell around the pure stages (source -> JPEG -> envelope): per camera one
named task waits for the next absolute deadline (:mod:`cameras.pacing`), renders and
encodes the frame in a worker thread (OpenCV releases the GIL, the event loop stays free),
wraps it in a :class:`edgelearn.wire.Frame` and hands it to the camera's
:class:`~cameras.transport.FrameLink`.

Backpressure is explicit and bounded: at most ``max_in_flight`` sends per camera are
outstanding. A frame whose deadline comes while the window is full is skipped
(``transport_busy``), as is one due while the link is down (``disconnected``) or past its
time because the camera itself fell behind (``late``); the source still advances, so the
picture and the labels stay in step with wall time. Nothing queues without bound. In the
as-fast-as-possible mode (``fast``) there are no deadlines: a camera waits for a free slot
and sends the next frame.

Sequence numbers are capture indices: frame ``seq`` was due at ``start + seq / fps``, so a
gap in the sequence a gateway sees is a frame the camera skipped or the network lost.

:class:`CameraFleet` is an async context manager that owns a TaskGroup with one task per
camera; leaving it stops every camera and closes every link.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Self

from cameras.encoding import BitrateController, FixedQuality, FrameEncoder
from cameras.errors import SourceError, TransportError
from cameras.metrics import CameraMetrics, CameraRecorder
from cameras.pacing import Pacer
from cameras.scene import FrameSource
from cameras.transport import FrameLink, LinkFactory
from edgelearn.preprocess import HD_720P
from edgelearn.wire import Encoding, Frame, encode

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CameraSettings:
    """How every camera of a fleet runs."""

    fps: float = 15.0
    speed: float = 1.0
    fast: bool = False
    quality: int = 80
    bitrate_kbps: float | None = None
    max_in_flight: int = 2
    duration: float | None = None
    max_frames: int | None = None
    size: tuple[int, int] = HD_720P

    def __post_init__(self) -> None:
        if not self.fps > 0:
            raise ValueError(f"fps must be positive, got {self.fps}")
        if not self.speed > 0:
            raise ValueError(f"speed must be positive, got {self.speed}")
        if not 1 <= self.quality <= 100:
            raise ValueError(f"JPEG quality must be 1-100, got {self.quality}")
        if self.bitrate_kbps is not None and not self.bitrate_kbps > 0:
            raise ValueError(f"bitrate must be positive, got {self.bitrate_kbps}")
        if self.max_in_flight < 1:
            raise ValueError(f"max_in_flight must be >= 1, got {self.max_in_flight}")
        if self.duration is not None and not self.duration > 0:
            raise ValueError(f"duration must be positive, got {self.duration}")

    @property
    def rate(self) -> float | None:
        """Frames per second of wall time (``fps * speed``), or None when unpaced."""
        return None if self.fast else self.fps * self.speed

    def encoder(self) -> FrameEncoder:
        if self.bitrate_kbps is not None:
            return BitrateController(self.bitrate_kbps, self.fps)
        return FixedQuality(self.quality)


@dataclass
class CameraReport:
    """What one camera did in a run."""

    camera_id: str
    published: int = 0
    published_bytes: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    elapsed: float = 0.0
    cpu_seconds: float = 0.0
    last_seq: int | None = None
    source_reconnects: int = 0  # a live stream's returns after it broke

    @property
    def achieved_fps(self) -> float:
        return self.published / self.elapsed if self.elapsed > 0 else 0.0


@dataclass(frozen=True)
class _Encoded:
    envelope: bytes
    seq: int
    quality: int
    cpu_seconds: float


class Camera:
    """One camera: a source, an encoder, a link and its metrics."""

    def __init__(
        self,
        camera_id: str,
        source: FrameSource,
        link: FrameLink,
        settings: CameraSettings,
        recorder: CameraRecorder,
        phase: float = 0.0,
    ) -> None:
        self.camera_id = camera_id
        self.phase = phase  # seconds after the fleet's start that this camera's frame 0 is due
        self.source = source
        self.link = link
        self.settings = settings
        self.recorder = recorder
        self.encoder = settings.encoder()
        self.report = CameraReport(camera_id)
        self._in_flight = 0
        self._slot_free = asyncio.Event()

    def _produce(self, seq: int, skip_first: int) -> _Encoded:
        """Worker thread: advance past skipped frames, render, encode, wrap."""
        started = time.thread_time()
        if skip_first:
            self.source.skip(skip_first)
        frame = self.source.read()
        capture_ns = time.time_ns()
        quality = self.encoder.quality
        payload = self.encoder.encode(frame.image)
        height, width = frame.image.shape[:2]
        envelope = encode(
            Frame(
                camera_id=self.camera_id,
                seq=seq,
                capture_ns=capture_ns,
                width=width,
                height=height,
                encoding=Encoding.JPEG,
                label=frame.label,
                payload=payload,
                truth_labels=tuple(item.label for item in frame.objects),
                truth_boxes=tuple(item.box for item in frame.objects),
                truth_items=tuple(item.item for item in frame.objects),
                labeled=int(frame.labeled),
            )
        )
        return _Encoded(envelope, seq, quality, time.thread_time() - started)

    async def _send(self, encoded: _Encoded) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            await self.link.send(encoded.envelope)
        except TransportError as exc:
            reason = "disconnected" if exc.reason == "disconnected" else "send_failed"
            self._skip(reason)
            log.debug("camera %s: frame %d not sent: %s", self.camera_id, encoded.seq, exc)
        else:
            now = loop.time()
            self.recorder.published_frame(len(encoded.envelope), now - started, now)
            self.report.published += 1
            self.report.published_bytes += len(encoded.envelope)
            self.report.last_seq = encoded.seq
        finally:
            self._in_flight -= 1
            self._slot_free.set()

    async def _take(self, seq: int, skip_first: int) -> _Encoded | None:
        """:meth:`_produce` in a worker thread; None (counted ``source_down``) while a live
        stream is down. Its reconnects are counted as they happen."""
        try:
            return await asyncio.to_thread(self._produce, seq, skip_first)
        except SourceError as exc:
            if exc.reason != "stream_down":
                raise
            self._skip("source_down")
            return None
        finally:
            came_back = getattr(self.source, "reconnects", 0) - self.report.source_reconnects
            if came_back > 0:
                self.report.source_reconnects += came_back
                self.recorder.source_reconnected(came_back)

    def _skip(self, reason: str, count: int = 1) -> None:
        if count > 0:
            self.recorder.skipped_frames(reason, count)
            self.report.skipped[reason] = self.report.skipped.get(reason, 0) + count

    async def run(self, stop: asyncio.Event) -> CameraReport:
        """Publish frames until ``stop`` is set, the duration is over or enough frames went."""
        loop = asyncio.get_running_loop()
        settings = self.settings
        # The first frame is rendered before the clock starts: loading a data set, opening a
        # decoder and filling caches would otherwise make the first frames "late".
        primed = await self._take(0, 0)
        if self.phase > 0:
            primed = None  # its capture time would be stale by the phase: render frame 0 anew
        pacer = Pacer(settings.rate, start=loop.time() + (self.phase if settings.rate else 0.0))
        end = None if settings.duration is None else pacer.start + settings.duration
        total = settings.max_frames
        if end is not None and settings.rate is not None:
            due = pacer.frames_before(end)
            total = due if total is None else min(total, due)
        # Frames taken from the source so far; a frame that is not sent is still skipped
        # over in the source, so the picture and labels stay in step with the clock.
        position = 1
        was_connected = self.link.connected
        async with asyncio.TaskGroup() as sends:
            while not stop.is_set():
                if total is not None and pacer.next_index >= total:
                    break
                if settings.rate is None:
                    if end is not None and loop.time() >= end:
                        break
                    if not await self._wait_for_slot(stop, end):
                        continue
                    tick = pacer.take(loop.time())
                else:
                    if not await self._wait_until(pacer.next_deadline(), stop):
                        break
                    tick = pacer.take(loop.time())
                    if total is not None and tick.index >= total:
                        self._skip("late", total - (tick.index - tick.skipped))
                        break
                    self._skip("late", tick.skipped)
                    if self._in_flight >= settings.max_in_flight:
                        self._skip("transport_busy")
                        continue
                connected = self.link.connected
                if connected and not was_connected:
                    self.recorder.reconnected()
                    log.debug("camera %s: link is back", self.camera_id)
                was_connected = connected
                if not connected:
                    self._skip("disconnected")
                    if settings.rate is None:
                        await self._wait_until(loop.time() + 0.05, stop)  # poll the link
                    continue
                self._in_flight += 1
                try:
                    if primed is not None and tick.index == 0:
                        taken: _Encoded | None = primed
                    else:
                        taken = await self._take(tick.index, tick.index - position)
                except BaseException:
                    self._in_flight -= 1
                    raise
                primed = None
                position = tick.index + 1
                if taken is None:  # its live stream is down (counted)
                    self._in_flight -= 1
                    self._slot_free.set()
                    continue
                encoded = taken
                self.report.cpu_seconds += encoded.cpu_seconds
                self.recorder.quality(encoded.quality)
                sends.create_task(self._send(encoded), name=f"send-{self.camera_id}")
        self.report.elapsed = loop.time() - pacer.start
        if settings.duration is not None and not stop.is_set():
            # A paced run ends at its last deadline, one interval before the duration is up.
            self.report.elapsed = max(self.report.elapsed, settings.duration)
        return self.report

    async def _wait_until(self, when: float, stop: asyncio.Event) -> bool:
        """Sleep until loop time ``when``; False if ``stop`` was set meanwhile."""
        delay = when - asyncio.get_running_loop().time()
        if delay > 0:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
        return not stop.is_set()

    async def _wait_for_slot(self, stop: asyncio.Event, end: float | None) -> bool:
        """Unpaced mode: wait until fewer than ``max_in_flight`` sends are outstanding."""
        while self._in_flight >= self.settings.max_in_flight:
            self._slot_free.clear()
            timeout = None if end is None else max(0.0, end - asyncio.get_running_loop().time())
            try:
                async with asyncio.timeout(timeout):
                    await self._slot_free.wait()
            except TimeoutError:
                return False
            if stop.is_set():
                return False
        return True


class CameraFleet:
    """Many cameras in one process. ``async with CameraFleet(...) as fleet: await fleet.wait()``.

    Entering connects every camera's link concurrently (a broker that cannot be reached
    raises :class:`~cameras.errors.ConnectError` here) and starts one task per camera.
    """

    def __init__(
        self,
        camera_ids: Sequence[str],
        *,
        sources: Callable[[int], FrameSource],
        links: LinkFactory,
        settings: CameraSettings,
        metrics: CameraMetrics,
    ) -> None:
        if len(set(camera_ids)) != len(camera_ids):
            raise ValueError("camera ids must be unique")
        self.camera_ids = list(camera_ids)
        self.settings = settings
        self._sources = sources
        self._links = links
        self._metrics = metrics
        self._stack = contextlib.AsyncExitStack()
        self._stop = asyncio.Event()
        self._tasks: asyncio.TaskGroup | None = None
        self._runs: list[asyncio.Task[CameraReport]] = []
        self.cameras: list[Camera] = []

    async def __aenter__(self) -> Self:
        try:
            # Free-running cameras are not in step: spread the fleet's first frames evenly
            # over one frame interval, or every camera would fire in the same millisecond
            # and the gateway would see bursts no real fleet sends.
            rate = self.settings.rate
            for index, camera_id in enumerate(self.camera_ids):
                source = self._sources(index)
                self._stack.callback(source.close)
                link = self._links(camera_id)
                phase = index / (len(self.camera_ids) * rate) if rate else 0.0
                self.cameras.append(
                    Camera(
                        camera_id,
                        source,
                        link,
                        self.settings,
                        self._metrics.camera(camera_id),
                        phase=phase,
                    )
                )
            # Connect one after the other: a link's background loops belong to the task
            # that entered it, and that must be the task that leaves it.
            for camera in self.cameras:
                await self._stack.enter_async_context(camera.link)
            self._tasks = asyncio.TaskGroup()
            await self._tasks.__aenter__()
            self._runs = [
                self._tasks.create_task(camera.run(self._stop), name=f"camera-{camera.camera_id}")
                for camera in self.cameras
            ]
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    def stop(self) -> None:
        """Ask every camera to finish (in-flight sends complete first)."""
        self._stop.set()

    async def wait(self) -> list[CameraReport]:
        """Wait until every camera has finished (duration, frame count or :meth:`stop`)."""
        await asyncio.gather(*self._runs)
        return [run.result() for run in self._runs]

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        try:
            if self._tasks is not None:
                await self._tasks.__aexit__(exc_type, exc, traceback)
                self._tasks = None
        finally:
            await self._stack.aclose()
