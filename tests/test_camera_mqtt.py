"""Cameras against a real mosquitto: frames seen by ``mosquitto_sub``, ACLs, reconnects."""

from __future__ import annotations

import asyncio
import logging
import shutil
import subprocess
import threading
import uuid
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest
from prometheus_client import CollectorRegistry

from cameras.camera import CameraFleet, CameraReport, CameraSettings
from cameras.errors import ConnectError, TransportError
from cameras.metrics import CameraMetrics
from cameras.mqtt_link import Backoff, MqttLink
from cameras.scene import FrameSource
from cameras.sources import SourceSpec, SyntheticScene
from cameras.transport import FrameLink
from edgelearn.config import BrokerConfig
from edgelearn.datasets import DEFAULT_ROOT, load_fashion_mnist
from edgelearn.ports import free_port
from edgelearn.wire import Frame, Topics, decode_as
from stack import broker as broker_module
from tests.support.broker import BrokerUnderTest
from tests.support.waiting import wait_for

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_sub") is None or shutil.which("stdbuf") is None,
    reason="mosquitto-clients (mosquitto_sub) or coreutils' stdbuf not installed",
)


class MosquittoSub:
    """``mosquitto_sub`` as a subprocess, printing ``topic hexpayload`` per message.

    ``-d`` makes it print its protocol exchange, so we can wait for the SUBACK before the
    cameras start (QoS 0 frames published before that are not delivered to it).
    """

    def __init__(self, broker: BrokerUnderTest, topic: str, count: int, timeout: int = 60):
        password = broker.secrets.password("gw-1")  # gateways read frames
        self.process = subprocess.Popen(
            # stdbuf: line-buffered stdout, so the SUBACK line arrives when it happens.
            [
                "stdbuf",
                "-oL",
                "mosquitto_sub",
                "-h",
                broker.host,
                "-p",
                str(broker.port),
                "-V",
                "mqttv5",
                "-u",
                "gw-1",
                "-P",
                password,
                "-i",
                f"sub-{uuid.uuid4().hex[:8]}",
                "-t",
                topic,
                "-F",
                "%t %x",
                "-C",
                str(count),
                "-W",
                str(timeout),
                "-d",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.payloads: list[tuple[str, bytes]] = []
        self.subscribed = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("Client ") and "received SUBACK" in line:
                self.subscribed.set()
            elif line.startswith("edgelearn/"):
                topic, _, hex_payload = line.strip().partition(" ")
                self.payloads.append((topic, bytes.fromhex(hex_payload)))

    def wait(self, timeout: float) -> int | None:
        """Exit status, or None if it is still running after ``timeout`` seconds."""
        try:
            code = self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            return None
        self._reader.join(timeout)
        return code

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self._reader.join(10)


@pytest.fixture
def mosquitto_sub(broker: BrokerUnderTest) -> Iterator[list[MosquittoSub]]:
    started: list[MosquittoSub] = []
    yield started
    for sub in started:
        sub.stop()


def mqtt_links(broker: BrokerUnderTest, site: str, **options: object):  # type: ignore[no-untyped-def]
    topics = Topics(site)

    def factory(camera_id: str) -> FrameLink:
        return MqttLink(camera_id, broker.config_for(camera_id), topics.frame(camera_id), **options)  # type: ignore[arg-type]

    return factory


def run_fleet(
    ids: list[str],
    sources,
    links,
    settings: CameraSettings,  # type: ignore[no-untyped-def]
    registry: CollectorRegistry | None = None,
) -> list[CameraReport]:
    async def go() -> list[CameraReport]:
        async with CameraFleet(
            ids,
            sources=sources,
            links=links,
            settings=settings,
            metrics=CameraMetrics(registry or CollectorRegistry()),
        ) as fleet:
            return await fleet.wait()

    return asyncio.run(go())


@pytest.mark.skipif(
    not (DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").exists(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_frames_of_three_labeled_cameras_reach_mosquitto_sub(
    broker: BrokerUnderTest, site: str, mosquitto_sub: list[MosquittoSub]
) -> None:
    ids, frames = ["cam-1", "cam-2", "cam-3"], 12
    spec = SourceSpec("fashion-mnist", split="test")
    data = load_fashion_mnist("test")

    def sources(index: int) -> FrameSource:
        return spec.open(index, cameras=3, seed=7, dwell_frames=3, data=data)

    sub = MosquittoSub(broker, Topics(site).all_frames(), count=len(ids) * frames)
    mosquitto_sub.append(sub)
    assert sub.subscribed.wait(10), "mosquitto_sub did not subscribe"
    reports = run_fleet(
        ids,
        sources,
        mqtt_links(broker, site),
        CameraSettings(fast=True, max_frames=frames, quality=70),
    )
    assert [report.published for report in reports] == [frames] * 3, reports
    assert sub.wait(30) == 0, f"{len(sub.payloads)} of {len(ids) * frames} received"

    by_camera: dict[str, list[Frame]] = defaultdict(list)
    for topic, payload in sub.payloads:
        frame = decode_as(payload, Frame)
        assert topic == Topics(site).frame(frame.camera_id)
        by_camera[frame.camera_id].append(frame)
    assert sorted(by_camera) == ids
    for index, camera_id in enumerate(ids):
        received = by_camera[camera_id]
        seqs = [frame.seq for frame in received]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs) == frames
        expected = sources(index)
        for frame in received:
            assert (frame.width, frame.height) == (1280, 720)
            image = cv2.imdecode(np.frombuffer(frame.payload, np.uint8), cv2.IMREAD_COLOR)
            assert image is not None and image.shape == (720, 1280, 3)
            # The items in view travel with the frame: each one's label and box.
            truth = expected.render(frame.seq).objects  # type: ignore[attr-defined]
            assert frame.label is None
            assert frame.truth_labels == tuple(item.label for item in truth)
            assert frame.truth_boxes == tuple(item.box for item in truth)
        assert any(frame.truth_labels for frame in received)


def test_a_camera_may_publish_only_its_own_frames(broker: BrokerUnderTest, site: str) -> None:
    async def go() -> None:
        wrong_topic = Topics(site).frame("cam-2")
        async with MqttLink("cam-1", broker.config_for("cam-1"), wrong_topic, qos=1) as link:
            with pytest.raises(TransportError) as caught:
                await link.send(b"not even a frame")
            assert caught.value.reason == "refused"
            assert link.connected

    asyncio.run(go())


def test_unreachable_broker_and_wrong_password_fail_at_connect(
    broker: BrokerUnderTest, site: str
) -> None:
    config = broker.config_for("cam-1")
    nowhere = BrokerConfig(
        host=config.host, port=free_port(), username="cam-1", password=config.password
    )
    wrong = BrokerConfig(
        host=config.host, port=config.port, username="cam-1", password="not-the-password"
    )

    async def go(target: BrokerConfig) -> None:
        async with MqttLink("cam-1", target, Topics(site).frame("cam-1")):
            pass

    with pytest.raises(ConnectError) as unreachable:
        asyncio.run(go(nowhere))
    assert unreachable.value.reason == "unreachable"
    with pytest.raises(ConnectError) as refused:
        asyncio.run(go(wrong))
    assert refused.value.reason == "refused"


def test_camera_reconnects_after_the_broker_restarts(
    broker: BrokerUnderTest, site: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Its own broker (the shared one must stay up), stopped and started on the same port."""
    settings = broker_module.BrokerSettings(role="edge", run_dir=tmp_path / "run")
    first = broker_module.start_broker(broker.secrets, settings)
    port, tls_port = first.port, first.tls_port
    restarted: list[broker_module.RunningBroker] = []
    registry = CollectorRegistry()
    config = BrokerConfig.for_user(
        "cam-9", host=first.host, port=port, secrets_dir=broker.secrets_dir
    )

    async def go() -> CameraReport:
        link = MqttLink(
            "cam-9", config, Topics(site).frame("cam-9"), backoff=Backoff(initial=0.1, maximum=0.5)
        )
        async with CameraFleet(
            ["cam-9"],
            sources=lambda i: SyntheticScene(seed=i, size=(320, 180)),
            links=lambda camera_id: link,
            settings=CameraSettings(fps=20),
            metrics=CameraMetrics(registry),
        ) as fleet:
            camera = fleet.cameras[0]
            loop = asyncio.get_running_loop()

            async def until(condition, what: str) -> None:  # type: ignore[no-untyped-def]
                await loop.run_in_executor(None, lambda: wait_for(condition, 20, what))

            await until(lambda: camera.report.published >= 5, "first frames")
            await loop.run_in_executor(None, first.stop)
            await until(lambda: not link.connected, "the link to notice the broker is gone")
            await until(
                lambda: camera.report.skipped.get("disconnected", 0) >= 3,
                "frames skipped while disconnected",
            )
            restarted.append(
                await loop.run_in_executor(
                    None,
                    lambda: broker_module.start_broker(
                        broker.secrets,
                        broker_module.BrokerSettings(
                            role="edge", port=port, tls_port=tls_port, run_dir=tmp_path / "run2"
                        ),
                    ),
                )
            )
            published_before = camera.report.published
            await until(lambda: link.connected, "reconnect")
            await until(
                lambda: camera.report.published >= published_before + 5,
                "frames after the reconnect",
            )
            fleet.stop()
            (report,) = await fleet.wait()
            return report

    caplog.set_level(logging.INFO, logger="cameras.mqtt_link")
    try:
        report = asyncio.run(go())
    finally:
        first.stop()
        for running in restarted:
            running.stop()
    assert report.skipped["disconnected"] >= 3
    assert (
        registry.get_sample_value("edgelearn_camera_reconnects_total", {"camera": "cam-9"}) == 1.0
    )
    assert any(
        "reconnected" in record.getMessage() and record.levelno == logging.INFO
        for record in caplog.records
    )


def test_camera_publishes_over_tls(broker: BrokerUnderTest, site: str) -> None:
    async def go() -> None:
        config = broker.config_for("cam-1", tls=True)
        async with MqttLink("cam-1", config, Topics(site).frame("cam-1"), qos=1) as link:
            await link.send(b"EL over TLS")  # QoS 1: returns once the broker acknowledged

    asyncio.run(go())
