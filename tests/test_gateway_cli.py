"""``edgelearn gateway`` with a pool of workers: started as a caller from Python starts it, the
workers run on the broker, gateway id and site the caller gave, whatever ``sys.argv`` of the
calling process holds; every camera is handled by one worker, and a dead worker's cameras
move to the survivor."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from bench.faults import pool_workers
from cameras.coap_link import CoapLink
from cameras.replay import scene_frames
from edgelearn import wire
from edgelearn.coap_security import camera_context
from edgelearn.metrics import scrape
from edgelearn.ports import free_port
from stack.launcher import edgelearn_command
from tests.support.broker import BrokerUnderTest
from tests.support.mqtt import MqttProbe
from tests.support.waiting import wait_for

Probe = Callable[..., MqttProbe]


def _statuses(observer: MqttProbe) -> dict[str, int]:
    """The newest ``online`` flag per status topic."""
    newest: dict[str, int] = {}
    with observer.lock:
        for message in observer.messages:
            newest[message.topic] = wire.decode_as(message.payload, wire.Status).online
    return newest


def test_a_pool_started_from_python_runs_on_the_callers_broker_and_id_from_its_config_file(
    broker: BrokerUnderTest, mqtt_probe: Probe, site: str, tmp_path: Path
) -> None:
    """The settings reach every worker of the pool from a TOML file (as ``up`` hands them),
    and a file with a key no setting has is refused with that key's name."""
    topics = wire.Topics(site)
    observer = mqtt_probe("cloud")
    observer.subscribe(topics.all_status())
    config = tmp_path / "gateway.toml"
    config.write_text(
        "[gateway]\n"
        'gateway_id = "gw-3"\n'
        f'broker_host = "{broker.host}"\nbroker_port = {broker.port}\n'
        f'secrets = "{broker.secrets_dir}"\nsite = "{site}"\nmode = "raw"\n'
        "status_interval = 0.5\nkeyframe_motion_interval = 3\n"
    )
    arguments = ["gateway", "--workers", "2", "--config", str(config), "--metrics-port", "0"]
    # sys.argv of this child is ["-c"]: nothing of the command line is in it.
    caller = f"import sys; from stack.cli import main; sys.exit(main({arguments!r}))"
    pool = subprocess.Popen(
        [sys.executable, "-c", caller],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    workers = {topics.status("gw-3", 0), topics.status("gw-3", 1)}
    try:
        wait_for(
            lambda: (
                {t for t, online in _statuses(observer).items() if online} == workers
                or pool.poll() is not None
            ),
            90,
            "both workers online as gw-3 on the test broker",
        )
        assert pool.poll() is None, pool.communicate()[0]
    finally:
        pool.send_signal(signal.SIGTERM)
        output, _ = pool.communicate(timeout=60)
    assert pool.returncode == 0, output
    # Each worker stopped cleanly and said so (a clean disconnect sends no last will).
    wait_for(
        lambda: {t for t, online in _statuses(observer).items() if not online} == workers,
        20,
        "both workers offline",
    )

    config.write_text(config.read_text() + "keyframe_motion_intreval = 4\n")
    refused = subprocess.run(
        edgelearn_command("gateway", "--workers", "2", "--config", str(config)),
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert refused.returncode != 0
    assert "keyframe_motion_intreval" in refused.stderr, refused.stderr


def _two_free_ports() -> int:
    """A port whose next one is free too: the workers' metrics go on consecutive ports."""
    while True:
        port = free_port()
        with socket.socket() as probe, contextlib.suppress(OSError):
            probe.bind(("127.0.0.1", port + 1))
            return port


def _received(port: int) -> dict[str, float]:
    return scrape([f"http://127.0.0.1:{port}/metrics"]).by_label(
        "edgelearn_gateway_frames_received_total", "camera"
    )


def test_each_camera_has_one_worker_and_a_dead_workers_cameras_move(
    broker: BrokerUnderTest, mqtt_probe: Probe, site: str, tmp_path: Path
) -> None:
    cameras = [f"cam-{n}" for n in range(1, 5)]
    frames = {camera: scene_frames(camera, 20, seed=n) for n, camera in enumerate(cameras)}
    publishers = {camera: mqtt_probe(camera) for camera in cameras}
    topics = wire.Topics(site)
    port = _two_free_ports()
    coap_port = free_port()
    pool = subprocess.Popen(
        [
            *edgelearn_command(),
            "gateway",
            "--workers",
            "2",
            "--id",
            "gw-2",
            "--broker",
            f"{broker.host}:{broker.port}",
            "--secrets",
            str(broker.secrets_dir),
            "--site",
            site,
            "--mode",
            "raw",
            "--outbox",
            "memory",
            "--metrics-port",
            str(port),
            "--coap-port",
            str(coap_port),
        ],
        stdin=subprocess.DEVNULL,
        stdout=(tmp_path / "pool.log").open("w"),
        stderr=subprocess.STDOUT,
    )
    stop = threading.Event()

    def publish() -> None:  # each camera at 10 fps, keyframes on: real per-camera state
        for number in itertools.count():
            if stop.wait(0.1):
                return
            for camera in cameras:
                frame = frames[camera][number % 20]
                frame = dataclasses.replace(frame, seq=number, capture_ns=time.time_ns())
                publishers[camera].client.publish(topics.frame(camera), wire.encode(frame))

    publisher = threading.Thread(target=publish, daemon=True)
    publisher.start()
    try:

        def owners() -> dict[str, set[int]]:
            """Per camera, the workers whose count of it grew over half a second."""
            before = [_received(port + slot) for slot in (0, 1)]
            stop.wait(0.5)
            after = [_received(port + slot) for slot in (0, 1)]
            return {
                camera: {s for s in (0, 1) if after[s].get(camera, 0) > before[s].get(camera, 0)}
                for camera in cameras
            }

        wait_for(lambda: pool.poll() is None and _ready(port), 90, "both workers serving")
        wait_for(
            lambda: all(len(o) == 1 for o in owners().values()), 20, "every camera on one worker"
        )
        held = owners()
        # Load spreads evenly: two cameras each.
        assert sorted(sum(1 for o in held.values() if s in o) for s in (0, 1)) == [2, 2], held

        def counts() -> list[dict[str, dict[str, float]]]:
            samples = [scrape([f"http://127.0.0.1:{port + s}/metrics"]) for s in (0, 1)]
            return [
                {
                    name: x.by_label(f"edgelearn_gateway_{name}_total", "camera")
                    for name in ("frames_looked_at", "frames_received", "frames_dropped")
                }
                for x in samples
            ]

        def one_background_model_sees_every_frame() -> bool:
            """Over half a second, per camera: one worker's background model looked at every
            frame of it that reached the pool and was not dropped, the other's at none."""
            before = counts()
            stop.wait(0.5)
            after = counts()
            seen[:] = [before, after]

            def grew(slot: int, camera: str) -> tuple[bool, bool]:
                looked, got, lost = (
                    after[slot][n].get(camera, 0) - before[slot][n].get(camera, 0)
                    for n in after[slot]
                )
                return looked > 0, looked + lost == got

            return all(
                sorted(grew(s, c) for s in (0, 1)) == [(False, True), (True, True)] for c in cameras
            )

        seen: list[object] = []
        try:
            wait_for(one_background_model_sees_every_frame, 20, "one background model per camera")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: {seen}") from None
        victim = pool_workers(pool.pid)[0]  # the older pid is worker 0
        survivor_before = _received(port + 1)
        os.kill(victim, signal.SIGKILL)
        # Every camera's frames now reach worker 1, those of worker 0 too, before worker 0 is
        # back (it is restarted, and takes its share again below). How fast is the gateway
        # benchmark's to say, not this test's: under a loaded machine it takes longer.
        wait_for(
            lambda: all(_received(port + 1).get(c, 0) > survivor_before.get(c, 0) for c in cameras),
            30,
            "every camera's frames on worker 1",
        )
        log_text = (tmp_path / "pool.log").read_text()
        moved = [c for c, o in held.items() if o == {0}]
        assert all(f"camera {c}: worker 0 is down, moved to worker 1" in log_text for c in moved)
        # Worker 0 comes back and takes its share again; still one worker per camera.
        wait_for(
            lambda: (
                sorted(len([c for c, o in owners().items() if o == {s}]) for s in (0, 1)) == [2, 2]
            ),
            90,
            "two cameras per worker after the restart",
        )
        for slot in (0, 1):
            samples = scrape([f"http://127.0.0.1:{port + slot}/metrics"])
            assert samples.total("edgelearn_gateway_frames_out_of_order_total") == 0, slot
        # A new camera, over CoAP (the pool's endpoint, OSCORE): taken by one worker, no restart.
        security = camera_context(broker.secrets, tmp_path / "camera-state", "cam-5")
        newcomer = scene_frames("cam-5", 1)[0]
        asyncio.run(_post(f"coap+tcp://127.0.0.1:{coap_port}/frames", newcomer, security))
        wait_for(
            lambda: sorted(_coap_count(port + s, "cam-5") for s in (0, 1)) == [0, 1],
            10,
            "the new camera's CoAP frame at one worker",
        )
    finally:
        stop.set()
        publisher.join(5)
        pool.send_signal(signal.SIGTERM)
        pool.wait(60)
    assert pool.returncode == 0, (tmp_path / "pool.log").read_text()
    log_text = (tmp_path / "pool.log").read_text()
    assert "exited with -9; restarting" in log_text, log_text


async def _post(uri: str, frame: wire.Frame, security: object) -> None:
    async with CoapLink(frame.camera_id, uri, security=security, timeout=20) as link:
        await link.send(wire.encode(frame))


def _coap_count(port: int, camera: str) -> float:
    return scrape([f"http://127.0.0.1:{port}/metrics"]).total(
        "edgelearn_gateway_frames_received_total", camera=camera, transport="coap"
    )


def _ready(port: int) -> bool:
    return not scrape([f"http://127.0.0.1:{port + s}/metrics" for s in (0, 1)]).unreachable
