"""The main job: ``edgelearn up`` runs the whole stack, shows a reduction, and leaves
nothing behind; raw frames never cross the bridge to the cloud broker."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgelearn.ports import free_port
from edgelearn.secrets import Secrets
from stack import broker as broker_module
from tests.conftest import wait_for


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


def _survivors(*needles: str) -> list[str]:
    listing = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [
        line
        for line in listing.splitlines()
        if any(needle in line for needle in needles) and "ps -eo" not in line
    ]


def test_up_runs_the_stack_shows_a_reduction_and_stops_everything(
    tmp_path: Path, trained_registry: Path
) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(trained_registry, registry)
    secrets = tmp_path / "secrets"
    broker_module.init_secrets(secrets, cameras=8, gateways=2)
    run_dir = tmp_path / "run"
    edge_port, cloud_port = free_port(), free_port()
    command = [
        sys.executable,
        "-m",
        "stack",
        "up",
        "--duration",
        "30",
        "--budget",
        "quick",
        "--split-ks",
        "2",
        "--mode",
        "split:2",
        "--cameras",
        "3",
        "--secrets",
        str(secrets),
        "--registry",
        str(registry),
        "--run-dir",
        str(run_dir),
        "--edge-port",
        str(edge_port),
        "--cloud-port",
        str(cloud_port),
        "--prometheus-port",
        "0",
        "--interval",
        "5",
    ]
    up = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    crossed: dict[str, int] = {"frames": 0, "features": 0}
    lock = threading.Lock()
    observer = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bridge-watch", protocol=mqtt.MQTTv5
    )
    try:
        wait_for(lambda: _listening(cloud_port) or up.poll() is not None, 60, "the cloud broker")
        observer.username_pw_set("observer", Secrets(secrets).password("observer"))

        def on_message(client: object, userdata: object, message: mqtt.MQTTMessage) -> None:
            with lock:
                crossed[message.topic.split("/")[3]] = (
                    crossed.get(message.topic.split("/")[3], 0) + 1
                )

        observer.on_message = on_message
        observer.connect("127.0.0.1", cloud_port)
        observer.subscribe([("edgelearn/v1/+/frames/#", 0), ("edgelearn/v1/+/features/#", 0)])
        observer.loop_start()
        output, _ = up.communicate(timeout=600)
    finally:
        observer.loop_stop()
        observer.disconnect()
        if up.poll() is None:
            up.kill()
            up.wait()
    assert up.returncode == 0, output[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["results"] > 0
    assert summary["uplink_reduction"] is not None and summary["uplink_reduction"] > 0.9
    assert "reduction" in output and "cam-4" in output  # three labeled cameras + the video
    with lock:
        assert crossed["features"] > 0  # the bridge carries features up...
        assert crossed["frames"] == 0  # ...and never a raw frame
    assert _survivors(str(run_dir), f"127.0.0.1:{edge_port}", f"127.0.0.1:{cloud_port}") == []
