"""Prometheus metrics of the camera role, per camera.

Labels are bounded: ``camera`` (one per configured camera) and, for skips, ``reason`` from
:data:`SKIP_REASONS`. Every metric is registered on the registry passed in, never the global
default one, so tests and several camera processes do not collide.

* ``edgelearn_camera_frames_published_total{camera}``
* ``edgelearn_camera_published_bytes_total{camera}`` - envelope bytes handed to the transport
* ``edgelearn_camera_frames_skipped_total{camera,reason}`` - frames the camera did not send
* ``edgelearn_camera_publish_latency_seconds{camera}`` - from handing a frame to the
  transport until it took it (QoS 0: written to the socket; QoS 1: PUBACK; CoAP: response)
* ``edgelearn_camera_source_reconnects_total{camera}`` - times a live stream came back
* ``edgelearn_camera_achieved_fps{camera}`` - published frames per second, recent window
* ``edgelearn_camera_jpeg_quality{camera}`` - the quality the bitrate controller chose
* ``edgelearn_camera_reconnects_total{camera}`` - successful reconnects of the link
"""

from __future__ import annotations

from collections import deque
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

SKIP_REASONS: Final = ("late", "transport_busy", "disconnected", "send_failed", "source_down")
"""Why a frame was not sent: the camera fell behind its deadlines (``late``), its in-flight
window was full (``transport_busy``), the link was down (``disconnected``), the
transport rejected the frame (``send_failed``), or its live stream was down and being
opened again (``source_down``)."""

# Loopback QoS 0 writes take ~100 us; a congested Wi-Fi link or CoAP block-wise over UDP
# takes hundreds of ms per 720p frame.
LATENCY_BUCKETS: Final = (
    0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip


class CameraMetrics:
    """The camera role's metric families; :meth:`camera` binds them to one camera."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.frames_published = Counter(
            "edgelearn_camera_frames_published",
            "Frames a camera handed to its transport successfully",
            ["camera"],
            registry=registry,
        )
        self.published_bytes = Counter(
            "edgelearn_camera_published_bytes",
            "Envelope bytes of published frames",
            ["camera"],
            registry=registry,
        )
        self.frames_skipped = Counter(
            "edgelearn_camera_frames_skipped",
            "Frames a camera did not send, by reason",
            ["camera", "reason"],
            registry=registry,
        )
        self.publish_latency = Histogram(
            "edgelearn_camera_publish_latency_seconds",
            "Time from handing a frame to the transport until the transport took it",
            ["camera"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.achieved_fps = Gauge(
            "edgelearn_camera_achieved_fps",
            "Published frames per second over the last few seconds",
            ["camera"],
            registry=registry,
        )
        self.jpeg_quality = Gauge(
            "edgelearn_camera_jpeg_quality",
            "JPEG quality of the most recent frame",
            ["camera"],
            registry=registry,
        )
        self.reconnects = Counter(
            "edgelearn_camera_reconnects",
            "Times a camera's link reconnected after losing its connection",
            ["camera"],
            registry=registry,
        )

        self.source_reconnects = Counter(
            "edgelearn_camera_source_reconnects",
            "Times a camera's live stream (RTSP, HTTP) came back after it broke",
            ["camera"],
            registry=registry,
        )

    def camera(self, camera_id: str) -> CameraRecorder:
        return CameraRecorder(self, camera_id)


class CameraRecorder:
    """One camera's children of the metric families, plus its achieved-fps window."""

    def __init__(self, metrics: CameraMetrics, camera_id: str, window: int = 32) -> None:
        self.camera_id = camera_id
        self._published = metrics.frames_published.labels(camera_id)
        self._bytes = metrics.published_bytes.labels(camera_id)
        self._latency = metrics.publish_latency.labels(camera_id)
        self._fps = metrics.achieved_fps.labels(camera_id)
        self._quality = metrics.jpeg_quality.labels(camera_id)
        self._reconnects = metrics.reconnects.labels(camera_id)
        self._source_reconnects = metrics.source_reconnects.labels(camera_id)
        # Children for every reason exist from the start, so a dashboard shows 0, not gaps.
        self._skipped = {
            reason: metrics.frames_skipped.labels(camera_id, reason) for reason in SKIP_REASONS
        }
        self._times: deque[float] = deque(maxlen=window)
        self.published = 0
        self.skipped = dict.fromkeys(SKIP_REASONS, 0)

    def published_frame(self, size: int, latency: float, now: float) -> None:
        self.published += 1
        self._published.inc()
        self._bytes.inc(size)
        self._latency.observe(latency)
        self._times.append(now)
        if len(self._times) >= 2 and self._times[-1] > self._times[0]:
            self._fps.set((len(self._times) - 1) / (self._times[-1] - self._times[0]))

    def skipped_frames(self, reason: str, count: int = 1) -> None:
        if count <= 0:
            return
        if reason not in self._skipped:
            raise ValueError(f"unknown skip reason {reason!r}")
        self.skipped[reason] += count
        self._skipped[reason].inc(count)

    def quality(self, value: int) -> None:
        self._quality.set(value)

    def reconnected(self) -> None:
        self._reconnects.inc()

    def source_reconnected(self, count: int = 1) -> None:
        self._source_reconnects.inc(count)
