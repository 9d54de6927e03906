"""The camera service: CoAP round trips, real-time pacing, bounded backpressure, metrics."""

from __future__ import annotations

import asyncio
import warnings

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cameras.camera import CameraFleet, CameraReport, CameraSettings
from cameras.coap_link import CoapLink, check_uri
from cameras.errors import TransportError
from cameras.metrics import CameraMetrics
from cameras.sources import SyntheticScene
from cameras.transport import FrameLink, MemoryLink, memory_links
from edgelearn import wire
from edgelearn.ports import free_port
from edgelearn.wire import Frame, decode_as
from gateway.coap import CoapEndpoint, FrameCounter


def run_fleet(
    ids: list[str],
    links,
    settings: CameraSettings,
    registry: CollectorRegistry | None = None,  # type: ignore[no-untyped-def]
) -> list[CameraReport]:
    async def go() -> list[CameraReport]:
        async with CameraFleet(
            ids,
            sources=lambda index: SyntheticScene(seed=index),
            links=links,
            settings=settings,
            metrics=CameraMetrics(registry or CollectorRegistry()),
        ) as fleet:
            return await fleet.wait()

    return asyncio.run(go())


# --- CoAP -------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["coap", "coap+tcp"])
def test_720p_frames_round_trip_over_coap(scheme: str) -> None:
    """UDP carries each ~60-100 kB frame block-wise (1024-byte blocks); TCP in one message."""
    counter = FrameCounter(keep=True)

    async def go() -> list[CameraReport]:
        async with CoapEndpoint(counter) as endpoint:
            uri = endpoint.uri(scheme)

            def links(camera_id: str) -> FrameLink:
                return CoapLink(camera_id, uri)

            async with CameraFleet(
                ["cam-1", "cam-2"],
                sources=lambda index: SyntheticScene(seed=index),
                links=links,
                settings=CameraSettings(fast=True, max_frames=3, quality=90),
                metrics=CameraMetrics(CollectorRegistry()),
            ) as fleet:
                return await fleet.wait()

    reports = asyncio.run(go())
    assert [report.published for report in reports] == [3, 3]
    assert sorted((frame.camera_id, frame.seq) for frame in counter.frames) == [
        (camera, seq) for camera in ("cam-1", "cam-2") for seq in range(3)
    ]
    for frame in counter.frames:
        assert len(frame.payload) > 1024 * 10  # really block-wise over UDP
        image = cv2.imdecode(np.frombuffer(frame.payload, np.uint8), cv2.IMREAD_COLOR)
        assert image.shape == (720, 1280, 3)


def test_coap_endpoint_rejects_a_bad_envelope_with_a_reason() -> None:
    counter = FrameCounter()

    async def go() -> None:
        async with CoapEndpoint(counter) as endpoint:
            async with CoapLink("cam-1", endpoint.uri("coap+tcp")) as link:
                with pytest.raises(TransportError) as caught:
                    await link.send(b"EL" + bytes([wire.VERSION]) + b"\x01 truncated")
            assert caught.value.reason == "refused"
            assert "truncated" in str(caught.value)
            assert counter.rejected["truncated"] == 1
            assert counter.received == 0

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the receiver logs a WARNING for the bad peer
        asyncio.run(go())


def test_coap_send_to_nobody_fails_with_send_failed() -> None:
    async def go() -> None:
        uri = f"coap+tcp://127.0.0.1:{free_port()}/frames"
        async with CoapLink("cam-1", uri, timeout=5) as link:
            with pytest.raises(TransportError) as caught:
                await link.send(b"anything")
        assert caught.value.reason == "send_failed"

    asyncio.run(go())
    with pytest.raises(ValueError, match="coap"):
        check_uri("http://gateway/frames")


# --- pacing and backpressure ------------------------------------------------------------


def test_ten_seconds_at_15_fps_publishes_150_frames() -> None:
    """A check on counts, not a timing benchmark: deadlines are absolute, so no drift."""
    sent: list[tuple[str, bytes]] = []
    registry = CollectorRegistry()
    (report,) = run_fleet(
        ["cam-1"], memory_links(sent), CameraSettings(fps=15, duration=10, quality=50), registry
    )
    assert abs(report.published - 150) <= 1.5, report
    assert abs(len(sent) - 150) <= 1.5
    seqs = [decode_as(envelope, Frame).seq for _, envelope in sent]
    assert seqs == sorted(seqs)
    assert (
        registry.get_sample_value("edgelearn_camera_frames_published_total", {"camera": "cam-1"})
        == report.published
    )
    fps = registry.get_sample_value("edgelearn_camera_achieved_fps", {"camera": "cam-1"})
    assert fps is not None and 13.5 < fps < 16.5


def test_speed_multiplies_the_frame_rate() -> None:
    sent: list[tuple[str, bytes]] = []
    (report,) = run_fleet(
        ["cam-1"], memory_links(sent), CameraSettings(fps=10, speed=3, duration=1, quality=30)
    )
    assert report.published + sum(report.skipped.values()) == 30


def test_a_slow_transport_makes_the_camera_skip_not_queue() -> None:
    sent: list[tuple[str, bytes]] = []
    registry = CollectorRegistry()
    # Each send takes 0.25 s; frames are due every 50 ms; one may be in flight.
    (report,) = run_fleet(
        ["cam-1"],
        memory_links(sent, delay=0.25),
        CameraSettings(fps=20, duration=2, max_in_flight=1, quality=30),
        registry,
    )
    busy = report.skipped.get("transport_busy", 0)
    assert 4 <= report.published <= 10
    assert busy >= 25
    assert report.published + sum(report.skipped.values()) == 40  # every frame accounted
    assert (
        registry.get_sample_value(
            "edgelearn_camera_frames_skipped_total", {"camera": "cam-1", "reason": "transport_busy"}
        )
        == busy
    )
    # Sequence numbers are capture indices: the gaps are the skipped frames.
    seqs = [decode_as(envelope, Frame).seq for _, envelope in sent]
    assert seqs == sorted(seqs) and seqs[-1] > len(seqs)


def test_a_link_that_is_down_counts_disconnected_frames() -> None:
    sent: list[tuple[str, bytes]] = []

    def down(camera_id: str) -> FrameLink:
        return MemoryLink(camera_id, sent, fail=True)

    (report,) = run_fleet(["cam-1"], down, CameraSettings(fps=20, duration=0.5))
    assert report.published == 0 and not sent
    assert report.skipped["disconnected"] == 10


def test_unpaced_cameras_publish_as_fast_as_they_can() -> None:
    sent: list[tuple[str, bytes]] = []
    reports = run_fleet(
        ["cam-1", "cam-2"], memory_links(sent), CameraSettings(fast=True, max_frames=25, quality=40)
    )
    assert [report.published for report in reports] == [25, 25]
    assert all(not report.skipped for report in reports)


def test_bitrate_mode_reports_the_chosen_quality() -> None:
    sent: list[tuple[str, bytes]] = []
    registry = CollectorRegistry()
    run_fleet(
        ["cam-1"],
        memory_links(sent),
        CameraSettings(fast=True, max_frames=40, bitrate_kbps=3000),
        registry,
    )
    quality = registry.get_sample_value("edgelearn_camera_jpeg_quality", {"camera": "cam-1"})
    assert quality is not None and quality != 60
    budget = 3000 * 1000 / 8 / 15
    tail = [len(decode_as(envelope, Frame).payload) for _, envelope in sent[20:]]
    assert abs(sum(tail) / len(tail) - budget) < 0.2 * budget


def test_bench_encoding_part_reports_bytes_and_cpu_per_frame() -> None:
    from bench.cameras import measure_encoding

    result = measure_encoding(quick=True)
    synthetic = result["synthetic"]
    assert synthetic["q50"]["bytes_per_frame"] < synthetic["q80"]["bytes_per_frame"]
    assert synthetic["render_cpu_ms"] > 0 and synthetic["q80"]["encode_cpu_ms"] > 0
