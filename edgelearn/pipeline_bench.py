"""``edgelearn bench pipeline``: every mode side by side on the same frames, in one run.

The setup is the real stack: an edge broker bridged to a cloud broker, ``edgelearn cloud``
(consumers, registry; it trains the models first if the registry is empty) and one
``edgelearn gateway`` worker, each its own process. The benchmark process plays the cameras:
it renders labeled Fashion-MNIST *test* items (never seen in training) as 720p scenes once,
then replays exactly those JPEGs for every mode, paced at the cameras' fps with the cameras
out of step (evenly spread over a frame interval, as free-running cameras are). Between runs a
retained plan switches the gateway's mode and keyframe filter, live.

For each mode, with keyframes on and off:

* bytes per frame and per second **crossing the bridge**: counted by a subscriber on the
  cloud broker (what arrived there is what crossed), and the reduction against the
  cloud-only mode (``raw`` without keyframes) on the same frames;
* accuracy on the held-out labeled items, per camera frame (held-back frames take their
  keyframe's answer), from the consumer's counters;
* end-to-end latency p50/p99, capture at the camera to the result published by the cloud
  (or by the gateway in ``full`` mode), from the results themselves;
* gateway and cloud CPU seconds per frame (``process_cpu_seconds_total`` of each process);
* cloud training time on what arrived: the cloud half retrained on the features stored
  during that run (``edgelearn train``'s code), with its held-out accuracy.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgelearn import broker as broker_module
from edgelearn import wire
from edgelearn.config import BrokerConfig
from edgelearn.metrics import machine_info
from edgelearn.secrets import Secrets
from edgelearn.stack import ChildProcesses, scrape

SITE = "bench"


@dataclass(frozen=True)
class Budget:
    cameras: int
    frames_per_camera: int
    fps: float
    dwell: int
    split_ks: tuple[int, ...]
    training: str  # bootstrap budget name
    retrain_epochs: int

    @classmethod
    def of(cls, quick: bool) -> Budget:
        if quick:
            return cls(
                cameras=4,
                frames_per_camera=90,
                fps=15,
                dwell=15,
                split_ks=(2,),
                training="quick",
                retrain_epochs=3,
            )
        return cls(
            cameras=10,
            frames_per_camera=300,
            fps=15,
            dwell=20,
            split_ks=(2, 6, 8),
            training="default",
            retrain_epochs=5,
        )


def _render_frames(budget: Budget) -> dict[str, list[wire.Frame]]:
    import cv2

    from cameras.datasets import load_fashion_mnist
    from cameras.scene import LabeledScene

    data = load_fashion_mnist("test")
    frames: dict[str, list[wire.Frame]] = {}
    for index in range(budget.cameras):
        camera = f"cam-{index + 1}"
        scene = LabeledScene(data, seed=1000 + index, dwell_frames=budget.dwell)
        frames[camera] = []
        for number in range(budget.frames_per_camera):
            rendered = scene.render(number)
            ok, jpeg = cv2.imencode(".jpg", rendered.image, [cv2.IMWRITE_JPEG_QUALITY, 80])
            assert ok
            frames[camera].append(
                wire.Frame(
                    camera, number, 0, 1280, 720, wire.Encoding.JPEG, rendered.label, jpeg.tobytes()
                )
            )
    return frames


class CloudWatch:
    """A subscriber on the cloud broker: what crossed the bridge, and every result."""

    def __init__(self, config: BrokerConfig) -> None:
        self.lock = threading.Lock()
        self.feature_bytes = 0
        self.feature_messages = 0
        self.frame_messages = 0
        self.latencies: list[float] = []
        self.results = 0
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id="bench-watch", protocol=mqtt.MQTTv5
        )
        config.apply_to_paho(self.client)
        self.client.on_message = self._on_message
        self.client.connect(config.host, config.port)
        topics = wire.Topics(SITE)
        self.client.subscribe(
            [
                (f"{topics.base}/features/#", 0),
                (topics.all_results(), 0),
                (f"{topics.base}/frames/#", 0),
            ]
        )
        self.client.loop_start()

    def _on_message(self, client: Any, userdata: Any, message: mqtt.MQTTMessage) -> None:
        kind = message.topic.split("/")[3]
        with self.lock:
            if kind == "features":
                # The bytes of the PUBLISH that crossed: topic, payload, fixed header.
                self.feature_bytes += len(message.payload) + len(message.topic) + 5
                self.feature_messages += 1
            elif kind == "frames":
                self.frame_messages += 1
            elif kind == "results":
                result = wire.decode_as(message.payload, wire.Result)
                self.results += 1
                self.latencies.append((result.result_ns - result.capture_ns) / 1e9)

    def reset(self) -> dict[str, Any]:
        with self.lock:
            snapshot = {
                "feature_bytes": self.feature_bytes,
                "feature_messages": self.feature_messages,
                "frame_messages": self.frame_messages,
                "results": self.results,
                "latencies": self.latencies,
            }
            self.feature_bytes = self.feature_messages = self.frame_messages = 0
            self.results = 0
            self.latencies = []
        return snapshot

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def _total(url: str, name: str, **match: str) -> float:
    return sum(
        value
        for labels, value in scrape(url).get(name, [])
        if all(labels.get(k) == v for k, v in match.items())
    )


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _wait(condition: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.1)  # polling a condition, bounded by timeout
    return False


def run(
    quick: bool, output_dir: Path | None = None, registry: Path | None = None
) -> dict[str, Any]:
    budget = Budget.of(quick)
    output_dir = output_dir or Path("out") / "pipeline"
    output_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="edgelearn-bench-"))
    registry = registry or Path(os.environ.get("EDGELEARN_BENCH_REGISTRY", work / "registry"))
    secrets = broker_module.init_secrets(work / "secrets", cameras=budget.cameras, gateways=1)
    children = ChildProcesses(work, echo=False)
    brokers: list[broker_module.RunningBroker] = []
    watch: CloudWatch | None = None
    try:
        cloud_broker = broker_module.start_broker(
            secrets, broker_module.BrokerSettings(role="cloud", run_dir=work / "broker-cloud")
        )
        edge_broker = broker_module.start_broker(
            secrets,
            broker_module.BrokerSettings(
                role="edge",
                run_dir=work / "broker-edge",
                bridge=broker_module.Bridge("127.0.0.1", cloud_broker.port),
            ),
        )
        brokers += [cloud_broker, edge_broker]
        env = {
            **os.environ,
            "EDGELEARN_SECRETS": str(secrets.directory),
            "TF_CPP_MIN_LOG_LEVEL": "2",
            "PYTHONUNBUFFERED": "1",
        }
        cloud_port, gateway_port = broker_module.free_port(), broker_module.free_port()
        ks = ",".join(str(k) for k in budget.split_ks)
        store = work / "features"
        cloud = children.start(
            "cloud",
            [
                sys.executable,
                "-m",
                "edgelearn.cli",
                "cloud",
                "--broker",
                f"127.0.0.1:{cloud_broker.port}",
                "--site",
                SITE,
                "--registry",
                str(registry),
                "--budget",
                budget.training,
                "--split-ks",
                ks,
                "--feature-store",
                str(store),
                "--metrics-port",
                str(cloud_port),
            ],
            env,
        )
        children.wait_for_line(cloud, "pushed", timeout=3600)
        gateway = children.start(
            "gateway",
            [
                sys.executable,
                "-m",
                "edgelearn.cli",
                "gateway",
                "--id",
                "gw-1",
                "--broker",
                f"127.0.0.1:{edge_broker.port}",
                "--site",
                SITE,
                "--mode",
                "raw",
                "--queue-depth",
                "8",
                "--metrics-port",
                str(gateway_port),
            ],
            env,
        )
        children.wait_for_line(gateway, "metrics", timeout=120)
        cloud_url = f"http://127.0.0.1:{cloud_port}/metrics"
        gateway_url = f"http://127.0.0.1:{gateway_port}/metrics"
        slots = ["pca", "autoencoder", "full", *[f"split-{k}" for k in budget.split_ks]]
        if not _wait(
            lambda: all(
                _total(gateway_url, "edgelearn_gateway_model_swaps_total", slot=slot) >= 1
                for slot in slots
            ),
            180,
        ):
            raise RuntimeError("the gateway did not load every model")
        watch = CloudWatch(
            BrokerConfig.for_user("observer", port=cloud_broker.port, secrets_dir=secrets.directory)
        )
        frames = _render_frames(budget)
        # One connection per camera: each publishes as its own broker user (the ACL holds).
        camera_clients = _camera_clients(secrets, edge_broker.port, list(frames))
        modes = ["raw", "pca", "autoencoder", *[f"split:{k}" for k in budget.split_ks], "full"]
        rows: dict[str, Any] = {}
        plan_version = int(time.time())
        cloud_config = BrokerConfig.for_user(
            "cloud", port=cloud_broker.port, secrets_dir=secrets.directory
        )
        for mode in modes:
            for keyframes in (False, True):
                plan_version += 1
                _send_plan(cloud_config, mode, keyframes, plan_version)
                if not _wait(
                    lambda mode=mode: (
                        _total(
                            gateway_url, "edgelearn_gateway_mode_info", mode=mode, effective=mode
                        )
                        == 1
                    ),
                    30,
                ):
                    raise RuntimeError(f"the gateway did not switch to {mode}")
                rows[_key(mode, keyframes)] = _measure(
                    mode, keyframes, frames, budget, camera_clients, watch, gateway_url, cloud_url
                )
        children.stop()  # the consumers flush the feature store as they stop
        retrain = _retrain(registry, store, modes, budget)
        baseline = rows[_key("raw", False)]
        for row in rows.values():
            row["reduction"] = (
                1 - row["uplink_bytes_per_frame"] / baseline["uplink_bytes_per_frame"]
                if baseline["uplink_bytes_per_frame"]
                else None
            )
        result = {
            "machine": machine_info(),
            "budget": budget.__dict__,
            "modes": rows,
            "training_on_what_arrived": retrain,
            "raw_frames_on_cloud_broker": watch.frame_messages,
            "camera_jpeg_bytes_per_frame": statistics.mean(
                len(f.payload) for sequence in frames.values() for f in sequence
            ),
            "elapsed_seconds": round(time.perf_counter() - started, 1),
        }
        _write_outputs(result, output_dir)
        return result
    finally:
        if watch is not None:
            watch.close()
        for client in _open_clients:
            client.loop_stop()
            client.disconnect()
        _open_clients.clear()
        children.stop()
        for running in reversed(brokers):
            running.stop()
        shutil.rmtree(work, ignore_errors=True)


_open_clients: list[mqtt.Client] = []


def _camera_clients(secrets: Secrets, port: int, cameras: list[str]) -> dict[str, mqtt.Client]:
    clients = {}
    for camera in cameras:
        client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=f"bench-{camera}", protocol=mqtt.MQTTv5
        )
        BrokerConfig.for_user(camera, port=port, secrets_dir=secrets.directory).apply_to_paho(
            client
        )
        client.connect("127.0.0.1", port)
        client.loop_start()
        clients[camera] = client
        _open_clients.append(client)
    return clients


def _send_plan(config: BrokerConfig, mode: str, keyframes: bool, version: int) -> None:
    client = mqtt.Client(
        CallbackAPIVersion.VERSION2, client_id="bench-planner", protocol=mqtt.MQTTv5
    )
    config.apply_to_paho(client)
    client.connect(config.host, config.port)
    client.loop_start()
    plan = wire.Plan("gw-1", version, mode, int(keyframes), 0.02, 45)
    client.publish(
        wire.Topics(SITE).plan("gw-1"), wire.encode(plan), qos=1, retain=True
    ).wait_for_publish(10)
    client.loop_stop()
    client.disconnect()


def _key(mode: str, keyframes: bool) -> str:
    return f"{mode} keyframes" if keyframes else mode


def _measure(
    mode: str,
    keyframes: bool,
    frames: dict[str, list[wire.Frame]],
    budget: Budget,
    clients: dict[str, mqtt.Client],
    watch: CloudWatch,
    gateway_url: str,
    cloud_url: str,
) -> dict[str, Any]:
    import dataclasses

    def counters() -> dict[str, float]:
        return {
            "gateway_cpu": _total(gateway_url, "process_cpu_seconds_total"),
            "cloud_cpu": _total(cloud_url, "process_cpu_seconds_total"),
            "forwarded": _total(
                gateway_url, "edgelearn_gateway_frames_processed_total", outcome="forwarded"
            ),
            "held": _total(
                gateway_url, "edgelearn_gateway_frames_processed_total", outcome="held_back"
            ),
            "dropped": _total(gateway_url, "edgelearn_gateway_frames_dropped_total"),
            "received": _total(gateway_url, "edgelearn_gateway_frames_received_total"),
            "correct": _total(
                cloud_url, "edgelearn_cloud_frames_scored_total", mode=mode, outcome="correct"
            ),
            "wrong": _total(
                cloud_url, "edgelearn_cloud_frames_scored_total", mode=mode, outcome="wrong"
            ),
        }

    watch.reset()
    before = counters()
    topics = wire.Topics(SITE)
    count = budget.frames_per_camera
    cameras = list(frames.items())
    # Free-running cameras are out of step: camera i's frames are due i / N of an interval
    # after camera 0's (as `edgelearn camera` staggers a fleet), not all at once.
    interval = 1.0 / (budget.fps * len(cameras))
    started = time.monotonic()
    for tick in range(count * len(cameras)):
        number, index = divmod(tick, len(cameras))
        delay = started + tick * interval - time.monotonic()
        if delay > 0:
            time.sleep(delay)  # pacing the cameras, not synchronisation
        camera, sequence = cameras[index]
        frame = dataclasses.replace(sequence[number], capture_ns=time.time_ns())
        clients[camera].publish(topics.frame(camera), wire.encode(frame), qos=0)
    duration = time.monotonic() - started
    sent = count * len(frames)

    def settled() -> bool:
        now = counters()
        handled = (
            now["forwarded"]
            + now["held"]
            + now["dropped"]
            - before["forwarded"]
            - before["held"]
            - before["dropped"]
        )
        return handled >= sent and watch.results >= now["forwarded"] - before["forwarded"]

    _wait(settled, 60)
    after = counters()
    seen = watch.reset()
    delta = {key: after[key] - before[key] for key in after}
    frames_handled = delta["forwarded"] + delta["held"]
    scored = delta["correct"] + delta["wrong"]
    return {
        "mode": mode,
        "keyframes": keyframes,
        "frames_published": sent,
        "frames_dropped": int(delta["dropped"]),
        "keyframe_ratio": delta["forwarded"] / frames_handled if frames_handled else None,
        "uplink_bytes": seen["feature_bytes"],
        "uplink_bytes_per_frame": seen["feature_bytes"] / sent,
        "uplink_bytes_per_second": seen["feature_bytes"] / duration,
        "messages_over_bridge": seen["feature_messages"],
        "results": seen["results"],
        "accuracy": delta["correct"] / scored if scored else None,
        "frames_scored": int(scored),
        "latency_p50_seconds": _percentile(seen["latencies"], 0.5),
        "latency_p99_seconds": _percentile(seen["latencies"], 0.99),
        "gateway_cpu_seconds_per_frame": delta["gateway_cpu"] / sent,
        "cloud_cpu_seconds_per_frame": delta["cloud_cpu"] / sent,
    }


def _retrain(registry: Path, store: Path, modes: list[str], budget: Budget) -> dict[str, Any]:
    """The cloud half retrained on what arrived in each mode (keyframes on and off pooled)."""
    from cloud.training_jobs import train_from_store

    results: dict[str, Any] = {}
    for mode in modes:
        if mode == "full":
            continue  # trained once in the cloud, answered at the edge: nothing arrives
        try:
            results[mode] = train_from_store(
                registry_root=registry,
                store_root=store,
                mode=mode,
                version=None,
                epochs=budget.retrain_epochs,
                n_held_out=500 if budget.training == "quick" else 1000,
            )
        except FileNotFoundError as exc:
            results[mode] = {"error": str(exc)}
    return results


def _write_outputs(result: dict[str, Any], output_dir: Path) -> None:
    from edgelearn.report import render_from_json

    (output_dir / "pipeline.json").write_text(json.dumps(result, indent=2, default=str))
    lines = [
        "| mode | keyframes | uplink B/frame | reduction vs cloud-only | keyframe % | "
        "accuracy | latency p50 / p99 ms | gateway / cloud CPU ms/frame |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in result["modes"].values():

        def ms(value: float | None) -> str:
            return "-" if value is None else f"{value * 1000:.0f}"

        def pct(value: float | None) -> str:
            return "-" if value is None else f"{value * 100:.1f}%"

        lines.append(
            f"| {row['mode']} | {'on' if row['keyframes'] else 'off'} | "
            f"{row['uplink_bytes_per_frame']:.0f} | {pct(row.get('reduction'))} | "
            f"{pct(row['keyframe_ratio'])} | {pct(row['accuracy'])} | "
            f"{ms(row['latency_p50_seconds'])} / {ms(row['latency_p99_seconds'])} | "
            f"{row['gateway_cpu_seconds_per_frame'] * 1000:.1f} / "
            f"{row['cloud_cpu_seconds_per_frame'] * 1000:.1f} |"
        )
    lines += [
        "",
        "| mode | cloud training s | uplink bytes of training set | held-out accuracy |",
        "|---|---|---|---|",
    ]
    for mode, row in result["training_on_what_arrived"].items():
        if "error" in row:
            lines.append(f"| {mode} | - | - | {row['error']} |")
            continue
        lines.append(
            f"| {mode} | {row['training_seconds']} | {row['uplink_bytes']} | "
            f"{row['held_out_accuracy'] * 100:.1f}% (n={row['n_train']}) |"
        )
    (output_dir / "pipeline.md").write_text("\n".join(lines) + "\n")
    render_from_json(result, output_dir)
