"""The main job: ``edgelearn up`` runs the whole stack, shows a reduction, and leaves
nothing behind; raw frames never cross the bridge to the cloud broker."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from edgelearn.ports import free_port
from edgelearn.secrets import Secrets
from stack import broker as broker_module
from tests.support.waiting import wait_for


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


def _fresh_state(tmp_path: Path, trained_registry: Path) -> tuple[Path, Path, Path]:
    """A copy of the trained registry, new secrets, an empty run folder."""
    registry = tmp_path / "registry"
    shutil.copytree(trained_registry, registry)
    secrets = tmp_path / "secrets"
    broker_module.init_secrets(secrets, cameras=8, gateways=2)
    return registry, secrets, tmp_path / "run"


def _pid_of(*needles: str) -> int | None:
    for proc in Path("/proc").iterdir():
        try:
            command = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except (OSError, ValueError):
            continue
        if proc.name.isdigit() and all(needle in command for needle in needles):
            return int(proc.name)
    return None


def _results_lines(text: str) -> list[int]:
    """The result totals of every summary printed so far."""
    return [
        int(line.split(": ")[1].split()[0])
        for line in text.splitlines()
        if line.startswith("edgelearn stack, ")
    ]


@pytest.mark.e2e
def test_up_runs_the_stack_restarts_a_killed_child_and_stops_in_order_on_ctrl_c(
    tmp_path: Path, trained_registry: Path
) -> None:
    """One run of the main job, as a user has it: cameras (labeled and the video), both
    brokers, Prometheus, the gateway and the cloud; the cloud killed and restarted by ``up``
    on its own; Ctrl-C; then a failed start. (``up --duration`` is exercised by
    tests/test_dataset_folder.py.)"""
    registry, secrets, run_dir = _fresh_state(tmp_path, trained_registry)
    edge_port, cloud_port = free_port(), free_port()
    console = tmp_path / "console.txt"
    command = [
        sys.executable, "-m", "stack", "up", "--budget", "quick", "--split-ks", "2",
        "--mode", "split:2", "--cameras", "3", "--secrets", str(secrets),
        "--registry", str(registry), "--run-dir", str(run_dir),
        "--edge-port", str(edge_port), "--cloud-port", str(cloud_port),
        "--prometheus-port", "0", "--interval", "2",
    ]  # fmt: skip
    up = subprocess.Popen(  # a foreground job of its own, as in a terminal
        command, stdout=console.open("w"), stderr=subprocess.STDOUT, text=True,
        start_new_session=True,
    )  # fmt: skip
    crossed: dict[str, int] = {"frames": 0, "features": 0}
    lock = threading.Lock()
    observer = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bridge-watch", protocol=mqtt.MQTTv5
    )

    def on_message(client: object, userdata: object, message: mqtt.MQTTMessage) -> None:
        kind = message.topic.split("/")[3]
        with lock:
            crossed[kind] = crossed.get(kind, 0) + 1

    try:
        wait_for(lambda: _listening(cloud_port) or up.poll() is not None, 60, "the cloud broker")
        observer.username_pw_set("observer", Secrets(secrets).password("observer"))
        observer.on_message = on_message
        observer.connect("127.0.0.1", cloud_port)
        observer.subscribe([("edgelearn/v1/+/frames/#", 0), ("edgelearn/v1/+/features/#", 0)])
        observer.loop_start()
        wait_for(
            lambda: (
                any(n > 0 for n in _results_lines(console.read_text())) or up.poll() is not None
            ),
            240,
            "results flowing",
        )
        assert up.poll() is None, console.read_text()[-3000:]
        cloud = _pid_of("-m stack cloud", str(run_dir))
        assert cloud is not None
        os.kill(cloud, signal.SIGKILL)
        wait_for(lambda: "cloud exited with -9: restarted" in console.read_text(), 30, "a restart")
        before = max(_results_lines(console.read_text()))
        wait_for(lambda: max(_results_lines(console.read_text())) > before, 120, "results after it")
        assert "cloud running (restarted after exit -9)" in console.read_text()
        os.killpg(up.pid, signal.SIGINT)  # Ctrl-C: the terminal signals the whole group
        try:
            up.wait(120)
        except subprocess.TimeoutExpired:
            up.send_signal(signal.SIGUSR1)  # every thread's stack, into the console file
            wait_for(lambda: "Thread 0x" in console.read_text(), 10, "a stack dump")
            raise AssertionError("up did not stop:\n" + console.read_text()[-6000:]) from None
    finally:
        observer.loop_stop()
        observer.disconnect()
        if up.poll() is None:
            up.kill()
            up.wait()
    text = console.read_text()
    assert up.returncode == 0, text[-3000:]
    totals = _results_lines(text)
    assert totals == sorted(totals), totals  # never backwards across the restart
    # Stopped in order (cameras, gateway, cloud, then the brokers): nobody lost a peer.
    assert "Traceback" not in text and "Connection reset" not in text, text[-3000:]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_status"] == 0 and summary["error"] is None
    assert summary["health"]["cloud"]["restarts"] == 1
    assert summary["results"] == totals[-1] > 0
    assert summary["uplink_reduction"] is not None and summary["uplink_reduction"] > 0.9
    assert "reduction" in text
    cameras = summary["cameras"]  # the last figures are the run's, not dead cameras'
    assert sorted(cameras) == ["cam-1", "cam-2", "cam-3", "cam-4"]  # three labeled + video
    assert all(seen["fps"] > 0 for seen in cameras.values()), cameras
    people = cameras["cam-4"]["objects"]  # vtest.avi: people walk through it
    assert people["in_view"] > 0.5 and people["entered"] > 0, people
    with lock:
        assert crossed["features"] > 0  # the bridge carries features up...
        assert crossed["frames"] == 0  # ...and never a raw frame
    # Routine lines stay in the log files; the console has the summaries and the events.
    started = "cloud cloud: consumers cloud-c0"  # the cloud's start-up line, once a start
    assert "Listening on" not in text and started not in text
    assert (run_dir / "cloud.log").read_text().count(started) == 2
    assert _survivors(str(run_dir), f"127.0.0.1:{edge_port}", f"127.0.0.1:{cloud_port}") == []

    # A failure exit writes it too: the cloud broker's port is taken.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        failed = subprocess.run(
            [*command[:-8], "--edge-port", "0", "--cloud-port", str(busy), "--no-prometheus"],
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert failed.returncode == 2, failed.stderr
    assert f"port {busy}" in failed.stderr
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_status"] == 2 and f"port {busy}" in summary["error"]
