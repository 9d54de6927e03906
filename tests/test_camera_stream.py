"""A real camera's live stream as a source: RTSP from a real server (GStreamer's), which
goes away and comes back while a camera reads it, beside a camera that must not notice."""

from __future__ import annotations

import asyncio
import threading

import pytest
from prometheus_client import CollectorRegistry

from cameras.camera import CameraFleet, CameraReport, CameraSettings
from cameras.errors import SourceError
from cameras.metrics import CameraMetrics
from cameras.scene import FrameSource
from cameras.sources import StreamSource, SyntheticScene, parse_source
from cameras.transport import memory_links
from edgelearn.ports import free_port
from edgelearn.wire import Frame, decode_as
from tests.support.rtsp import RtspServer
from tests.support.waiting import wait_for

pytestmark = pytest.mark.broker  # a real server, started and killed by the test


def test_a_stream_url_is_a_source_and_one_that_does_not_answer_fails_in_one_line() -> None:
    spec = parse_source("rtsp://127.0.0.1:8554/cam")
    assert (spec.kind, spec.url) == ("stream", "rtsp://127.0.0.1:8554/cam")
    assert parse_source("http://camera.local/video").kind == "stream"
    nobody = f"rtsp://127.0.0.1:{free_port()}/cam"
    with pytest.raises(SourceError, match="cannot open stream") as raised:
        StreamSource(nobody, open_timeout=2.0)
    assert raised.value.reason == "unreachable" and "\n" not in str(raised.value)


def test_a_camera_reads_the_stream_again_after_its_server_comes_back() -> None:
    sent: list[tuple[str, bytes]] = []
    registry = CollectorRegistry()
    metrics = CameraMetrics(registry)

    def rtsp_frames() -> int:
        return sum(camera == "cam-rtsp" for camera, _ in sent)

    def skipped_down() -> float:
        labels = {"camera": "cam-rtsp", "reason": "source_down"}
        return registry.get_sample_value("edgelearn_camera_frames_skipped_total", labels) or 0.0

    with RtspServer() as server:
        sources: list[FrameSource] = [
            StreamSource(server.url, read_timeout=2.0, backoff=0.25, backoff_max=1.0),
            SyntheticScene(seed=1),
        ]
        fleet_done = threading.Event()
        reports: list[CameraReport] = []
        running: list[tuple[asyncio.AbstractEventLoop, CameraFleet]] = []

        def run() -> None:
            async def go() -> list[CameraReport]:
                async with CameraFleet(
                    ["cam-rtsp", "cam-synthetic"],
                    sources=lambda index: sources[index],
                    links=memory_links(sent),
                    settings=CameraSettings(fps=10, duration=60, quality=60),
                    metrics=metrics,
                ) as fleet:
                    running.append((asyncio.get_running_loop(), fleet))
                    return await fleet.wait()

            try:
                reports.extend(asyncio.run(go()))
            finally:
                fleet_done.set()

        thread = threading.Thread(target=run, name="fleet")
        thread.start()
        try:
            wait_for(lambda: rtsp_frames() >= 20, 20, "frames from the stream")
            server.kill()
            wait_for(lambda: skipped_down() >= 5, 20, "frames skipped while the stream is down")
            during = rtsp_frames()
            server.start()  # the same port: the camera's URL is good again
            wait_for(lambda: rtsp_frames() >= during + 20, 25, "frames after the server came back")
        finally:
            wait_for(lambda: bool(running) or fleet_done.is_set(), 10, "the fleet to start")
            for loop, fleet in running:
                loop.call_soon_threadsafe(fleet.stop)
            wait_for(fleet_done.is_set, 70, "the fleet to end")
            thread.join(5)
            for source in sources:
                source.close()

    stream, synthetic = reports
    assert stream.source_reconnects >= 1
    assert stream.skipped["source_down"] == skipped_down() > 0
    reconnects = {"camera": "cam-rtsp"}
    assert registry.get_sample_value("edgelearn_camera_source_reconnects_total", reconnects) >= 1
    # The other camera never noticed: every one of its frames went out.
    assert synthetic.published > 0 and not any(synthetic.skipped.values())
    # Every tick of the stream's camera is accounted for, sent or skipped with its reason:
    # as many as the other camera's, give or take the one in hand when both were stopped.
    assert abs(stream.published + sum(stream.skipped.values()) - synthetic.published) <= 1
    frames = [decode_as(envelope, Frame) for camera, envelope in sent if camera == "cam-rtsp"]
    assert all((frame.width, frame.height) == (1280, 720) for frame in frames)
