"""``edgelearn bench cameras``: what one camera process can publish at 720p, per transport.

Measures, on this machine:

* ``bytes_per_frame``: JPEG bytes of a 720p frame per source (synthetic, labeled
  Fashion-MNIST scene, real video when the files are installed) and JPEG quality, plus the
  quality the bitrate controller settles on for paper 003's 3000 kb/s at 15 fps;
* ``cpu_ms_per_frame``: CPU milliseconds to render (or decode and scale) and encode one frame;
* ``link_fps``: envelopes per second one link delivers when the frame is already encoded
  (the transport's own ceiling), for MQTT QoS 0 and 1 against a real mosquitto we start,
  and for CoAP over UDP (block-wise, 1024-byte blocks) and over TCP against the aiocoap
  receiver in a separate process, at two frame sizes (quality 80 and 3000 kb/s);
* ``camera_fps``: frames per second a process of unpaced cameras (``--fast``) publishes
  end to end - render, encode, send - per transport, with the process CPU per frame.

Results depend on the machine: the numbers in the docs were taken on 2 shared cores.
``quick`` keeps the whole run near a minute.
"""

from __future__ import annotations

import asyncio
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry

from bench.runs import work_dir
from cameras.camera import CameraFleet, CameraSettings
from cameras.coap_link import CoapLink
from cameras.encoding import BitrateController
from cameras.metrics import CameraMetrics
from cameras.mqtt_link import MqttLink
from cameras.scene import FrameSource, LabeledScene
from cameras.sources import SyntheticScene, VideoSource
from cameras.transport import FrameLink
from edgelearn.config import BrokerConfig
from edgelearn.datasets import DEFAULT_ROOT, load_fashion_mnist
from edgelearn.metrics import machine_info
from edgelearn.ports import free_port
from edgelearn.preprocess import encode_jpeg
from edgelearn.wire import Encoding, Frame, Topics, encode
from stack import broker as broker_module
from stack.launcher import SAMPLE_VIDEO as VIDEO

log = logging.getLogger(__name__)


def _sources() -> dict[str, Callable[[int], FrameSource]]:
    sources: dict[str, Callable[[int], FrameSource]] = {
        "synthetic": lambda index: SyntheticScene(seed=index),
    }
    if (DEFAULT_ROOT / "t10k-images-idx3-ubyte.gz").exists():
        data = load_fashion_mnist("test")
        sources["fashion-mnist"] = lambda index: LabeledScene(data, seed=index)
    if VIDEO.exists():
        sources["video"] = lambda index: VideoSource(VIDEO, start_frame=97 * index)
    return sources


def measure_encoding(quick: bool) -> dict[str, Any]:
    """Bytes per frame and CPU per frame, per source and quality."""
    frames = 8 if quick else 30
    qualities = (50, 80, 95) if not quick else (50, 80)
    result: dict[str, Any] = {}
    for name, make in _sources().items():
        source = make(0)
        source.read()  # first frame fills caches (noise field, decoder): not steady state
        started = time.process_time()
        images = [source.read().image for _ in range(frames)]
        render = (time.process_time() - started) / frames
        source.close()
        entry: dict[str, Any] = {"render_cpu_ms": round(render * 1000, 2)}
        for quality in qualities:
            started = time.process_time()
            sizes = [len(encode_jpeg(image, quality)) for image in images]
            encode_cpu = (time.process_time() - started) / frames
            entry[f"q{quality}"] = {
                "bytes_per_frame": round(sum(sizes) / len(sizes)),
                "encode_cpu_ms": round(encode_cpu * 1000, 2),
            }
        controller = BitrateController(kbps=3000, fps=15)
        sizes = [len(controller.encode(images[i % frames])) for i in range(3 * frames)]
        entry["bitrate_3000kbps_15fps"] = {
            "quality": controller.quality,
            "bytes_per_frame": round(sum(sizes[frames:]) / len(sizes[frames:])),
        }
        result[name] = entry
    return result


def _envelope(size: int) -> bytes:
    return encode(Frame("cam-1", 0, time.time_ns(), 1280, 720, Encoding.JPEG, 3, os.urandom(size)))


async def _link_rate(link: FrameLink, envelope: bytes, seconds: float, window: int) -> float:
    """Envelopes per second through one link with ``window`` sends in flight."""
    async with link:
        await link.send(envelope)  # connection set up, caches warm
        sent = 0
        deadline = time.monotonic() + seconds
        started = time.monotonic()

        async def worker() -> None:
            nonlocal sent
            while time.monotonic() < deadline:
                await link.send(envelope)
                sent += 1

        async with asyncio.TaskGroup() as group:
            for _ in range(window):
                group.create_task(worker())
        return sent / (time.monotonic() - started)


async def _camera_rate(
    links: Callable[[str], FrameLink],
    cameras: int,
    seconds: float,
    quality: int,
    source: Callable[[int], FrameSource],
) -> dict[str, float]:
    settings = CameraSettings(fast=True, duration=seconds, quality=quality)
    ids = [f"cam-{index + 1}" for index in range(cameras)]
    cpu = time.process_time()
    async with CameraFleet(
        ids,
        sources=source,
        links=links,
        settings=settings,
        metrics=CameraMetrics(CollectorRegistry()),
    ) as fleet:
        started = time.monotonic()
        reports = await fleet.wait()
        elapsed = time.monotonic() - started
    cpu = time.process_time() - cpu
    published = sum(report.published for report in reports)
    return {
        "frames_per_second": round(published / elapsed, 1),
        "mb_per_second": round(sum(r.published_bytes for r in reports) / elapsed / 1e6, 2),
        "process_cpu_ms_per_frame": round(1000 * cpu / max(1, published), 2),
    }


class _CoapReceiverProcess:
    """``python -m gateway.coap`` (the gateway's endpoint alone) in its own process, with
    its own core, as a gateway would have."""

    def __init__(self) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.coap", "--port", str(self.port)],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
            text=True,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline()  # "receiving frames on ..." once bound
        if "receiving" not in first:
            self.stop()
            raise RuntimeError(f"CoAP receiver did not start: {first!r}")

    def uri(self, scheme: str) -> str:
        return f"{scheme}://127.0.0.1:{self.port}/frames"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        if self.process.stdout is not None:
            self.process.stdout.close()


async def _transports(quick: bool, sizes: dict[str, int]) -> dict[str, Any]:
    seconds = 2.5 if quick else 8.0
    camera_seconds = 3.0 if quick else 10.0
    results: dict[str, Any] = {}
    sources = _sources()
    scene = sources.get("fashion-mnist", sources["synthetic"])
    with work_dir("cameras") as root:
        secrets = broker_module.init_secrets(root / "secrets", cameras=4, gateways=1)
        broker = broker_module.start_broker(
            secrets, broker_module.BrokerSettings(role="edge", run_dir=root / "run")
        )
        try:
            topics = Topics("bench")

            def mqtt(qos: int) -> Callable[[str], FrameLink]:
                def link(camera_id: str) -> FrameLink:
                    config = BrokerConfig.for_user(
                        camera_id, host=broker.host, port=broker.port, secrets_dir=secrets.directory
                    )
                    return MqttLink(camera_id, config, topics.frame(camera_id), qos=qos)

                return link

            for qos in (0, 1):
                rates = {}
                for label, size in sizes.items():
                    envelope = _envelope(size)
                    rates[label] = round(
                        await _link_rate(mqtt(qos)("cam-1"), envelope, seconds, window=2), 1
                    )
                results[f"mqtt_qos{qos}"] = {"link_fps": rates}
            results["mqtt_qos0"]["camera_fps_2_cameras_q80"] = await _camera_rate(
                mqtt(0), 2, camera_seconds, 80, scene
            )
        finally:
            broker.stop()
    receiver = _CoapReceiverProcess()
    try:
        for scheme in ("coap", "coap+tcp"):
            rates = {}
            for label, size in sizes.items():
                envelope = _envelope(size)
                rates[label] = round(
                    await _link_rate(
                        CoapLink("cam-1", receiver.uri(scheme)), envelope, seconds, window=2
                    ),
                    1,
                )
            entry: dict[str, Any] = {"link_fps": rates}
            if scheme == "coap":
                entry["blocks_per_second_q80"] = round(
                    rates["q80"] * -(-(sizes["q80"] + 40) // 1024)
                )
                entry["block_size"] = 1024

            def coap(camera_id: str, scheme: str = scheme) -> FrameLink:
                return CoapLink(camera_id, receiver.uri(scheme))

            entry["camera_fps_2_cameras_q80"] = await _camera_rate(
                coap, 2, camera_seconds, 80, scene
            )
            results["coap_udp" if scheme == "coap" else "coap_tcp"] = entry
    finally:
        receiver.stop()
    return results


def run(quick: bool) -> dict[str, Any]:
    """Run the benchmark; returns a JSON-able dict (``edgelearn bench cameras``)."""
    started = time.monotonic()
    encoding = measure_encoding(quick)
    # Frame sizes for the transport runs: the labeled scene at quality 80, and the
    # 3000 kb/s budget at 15 fps.
    reference = encoding.get("fashion-mnist", encoding["synthetic"])
    sizes = {"q80": int(reference["q80"]["bytes_per_frame"]), "3000kbps": 25_000}
    transports = asyncio.run(_transports(quick, sizes))
    return {
        "machine": machine_info(),
        "frame": "1280x720 BGR, JPEG",
        "frame_bytes_used_for_link_fps": sizes,
        "bytes_per_frame": encoding,
        "transports": transports,
        "quick": quick,
        "elapsed_seconds": round(time.monotonic() - started, 1),
    }
