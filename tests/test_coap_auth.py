"""CoAP cameras authenticate with OSCORE, per camera, from the secrets directory: a post without
credentials, or with one camera's credentials carrying another camera's frame, is refused and
counted; a camera's own protected post is taken. Real clients: libcoap's ``coap-client`` (no
OSCORE in Debian's 4.3.1: it is the unauthenticated poster) and aiocoap's, as our cameras use it.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cameras.coap_link import CoapLink
from cameras.errors import TransportError
from cameras.replay import scene_frames
from edgelearn import wire
from edgelearn.coap_security import camera_context
from tests.support.broker import BrokerUnderTest
from tests.support.gateway import RunningGateway, run_gateway
from tests.support.mqtt import MqttProbe
from tests.support.waiting import wait_for

LIBCOAP = "coap-client-notls"
Probe = Callable[..., MqttProbe]


def _post_plain(uri: str, envelope: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [LIBCOAP, "-m", "post", "-b", "1024", "-f", str(envelope), uri],
        capture_output=True,
        timeout=60,
    )


def _post_protected(uri: str, frame: wire.Frame, security: object) -> str | None:
    """Post with aiocoap and OSCORE; the refusal's diagnostic, or None if taken."""

    async def post() -> str | None:
        async with CoapLink(frame.camera_id, uri, security=security, timeout=20) as link:
            try:
                await link.send(wire.encode(frame))
            except TransportError as exc:
                return str(exc)
        return None

    return asyncio.run(post())


def _dropped(gateway: RunningGateway, camera: str, reason: str) -> float:
    return gateway.sample("edgelearn_gateway_frames_dropped_total", camera=camera, reason=reason)


@pytest.mark.skipif(shutil.which(LIBCOAP) is None, reason="libcoap3-bin missing")
def test_coap_posts_need_the_cameras_own_credentials(
    broker: BrokerUnderTest, mqtt_probe: Probe, site: str, tmp_path: Path
) -> None:
    topics = wire.Topics(site)
    cloud = mqtt_probe("cloud")
    cloud.subscribe(topics.all_features())
    own, other = scene_frames("cam-9", 2, seed=3)[0], scene_frames("cam-8", 1, seed=4)[0]
    envelope = tmp_path / "frame.bin"
    envelope.write_bytes(wire.encode(own))
    cam9 = camera_context(broker.secrets, tmp_path / "camera-state", "cam-9")
    # keyframes off: every frame goes up (with them, a camera's first frame is its background)
    with run_gateway(
        broker, site=site, gateway_id="gw-1", mode="raw", coap_port=0, keyframes=False
    ) as gateway:
        uri = f"coap://127.0.0.1:{gateway.worker.coap_port}/frames"
        refused = _post_plain(uri, envelope)
        assert b"4.01" in refused.stdout + refused.stderr, refused
        assert _dropped(gateway, "unknown", "unauthenticated") == 1

        mismatch = _post_protected(uri, other, cam9)  # cam-9's key, cam-8's frame
        assert mismatch is not None and "camera_mismatch" in mismatch
        assert _dropped(gateway, "cam-9", "camera_mismatch") == 1

        assert _post_protected(uri, own, cam9) is None
        tcp = uri.replace("coap://", "coap+tcp://")
        second = scene_frames("cam-9", 2, seed=3)[1]
        assert _post_protected(tcp, second, cam9) is None  # the same context over TCP
        wait_for(lambda: len(cloud.payloads()) == 2, 30, "the two protected frames forwarded")
        received = "edgelearn_gateway_frames_received_total"
        assert gateway.sample(received, camera="cam-9", transport="coap") == 3
        assert gateway.sample(received, camera="cam-8", transport="coap") == 0
        assert {wire.decode_as(p, wire.Feature).camera_id for p in cloud.payloads()} == {"cam-9"}


@pytest.mark.skipif(shutil.which(LIBCOAP) is None, reason="libcoap3-bin missing")
def test_only_an_insecure_gateway_takes_plain_coap(
    broker: BrokerUnderTest, mqtt_probe: Probe, site: str, tmp_path: Path
) -> None:
    topics = wire.Topics(site)
    cloud = mqtt_probe("cloud")
    cloud.subscribe(topics.all_features())
    frame = scene_frames("cam-9", 1)[0]
    envelope = tmp_path / "frame.bin"
    envelope.write_bytes(wire.encode(frame))
    with run_gateway(
        broker,
        site=site,
        gateway_id="gw-1",
        mode="raw",
        coap_port=0,
        coap_insecure=True,
        keyframes=False,  # every frame goes up
    ) as gateway:
        done = _post_plain(f"coap://127.0.0.1:{gateway.worker.coap_port}/frames", envelope)
        assert done.returncode == 0, done.stderr
        wait_for(lambda: len(cloud.payloads()) == 1, 30, "the CoAP frame forwarded")
        assert wire.decode_as(cloud.payloads()[0], wire.Feature).payload == frame.payload
