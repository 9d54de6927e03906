"""``edgelearn up``: the whole local stack on defaults, with a live summary.

What it starts, in order, each as a child process that ends with it::

    cloud broker  <--bridge--  edge broker            (mosquitto, raw frames stay on the edge)
    Prometheus                                         (when installed; scrapes everything)
    edgelearn cloud     on the cloud broker            (trains a first model set if the
                                                        registry is empty, pushes it, serves,
                                                        plans the gateways' modes)
    edgelearn gateway   on the edge broker             (a pool of workers; the mode is the
                                                        planner's unless --mode pins it)
    edgelearn camera x2 on the edge broker             (labeled-scene cameras + one camera
                                                        replaying a real video file)

Then it scrapes every process's ``/metrics`` every few seconds and prints, per camera: fps,
keyframe %, bytes raw (what cloud-only would send) vs sent, accuracy, and, per mode, latency
p50/p99 and the uplink reduction. ``--duration`` stops it; Ctrl-C or SIGTERM stop it
cleanly. Children get SIGTERM when this process dies for any reason (Linux
``PR_SET_PDEATHSIG``), so nothing outlives it.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from edgelearn import broker as broker_module
from edgelearn import wire
from edgelearn.config import ConfigError
from edgelearn.secrets import Secrets, default_secrets_dir

REPOSITORY = Path(__file__).resolve().parent.parent
SAMPLE_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
PROMETHEUS_CONFIG = REPOSITORY / "dashboards" / "prometheus"


class StackError(RuntimeError):
    """Something the user can fix: a port in use, a missing program or file."""


def _die_with_parent() -> None:
    libc = ctypes.CDLL("libc.so.6", use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


@dataclass
class Child:
    name: str
    process: subprocess.Popen[str]
    lines: list[str] = field(default_factory=list)
    metrics_urls: list[str] = field(default_factory=list)


class ChildProcesses:
    """Children started with ``start``, each one's output echoed with its name and kept."""

    def __init__(self, log_dir: Path, echo: bool) -> None:
        self.children: list[Child] = []
        self.log_dir = log_dir
        self.echo = echo
        self._lock = threading.Lock()

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Child:
        process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=env,
            preexec_fn=_die_with_parent,
        )
        child = Child(name, process)
        self.children.append(child)
        threading.Thread(target=self._pump, args=(child,), daemon=True).start()
        return child

    def _pump(self, child: Child) -> None:
        assert child.process.stdout is not None
        with (self.log_dir / f"{child.name}.log").open("w") as log:
            for line in child.process.stdout:
                log.write(line)
                log.flush()
                with self._lock:
                    child.lines.append(line.rstrip("\n"))
                    del child.lines[:-200]
                if self.echo and not line.startswith(("I0000", "W0000", "WARNING: All log")):
                    print(f"  {child.name:>8} | {line.rstrip()}", flush=True)

    def wait_for_line(self, child: Child, text: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        seen = 0
        while time.monotonic() < deadline:
            with self._lock:
                lines = list(child.lines)
            for line in lines[seen:]:
                if text in line:
                    return line
            seen = len(lines)
            if child.process.poll() is not None:
                tail = "\n".join(child.lines[-15:])
                raise StackError(f"{child.name} exited with {child.process.returncode}:\n{tail}")
            time.sleep(0.1)  # polling the child's output, bounded by timeout
        raise StackError(f"{child.name} did not print {text!r} within {timeout:.0f} s")

    def dead(self) -> list[Child]:
        return [child for child in self.children if child.process.poll() not in (None, 0)]

    def stop(self, timeout: float = 20.0) -> None:
        for child in reversed(self.children):
            if child.process.poll() is None:
                child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in self.children:
            try:
                child.process.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                child.process.kill()
                child.process.wait()


# --- the summary ----------------------------------------------------------------------------


def scrape(url: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    """``/metrics`` as {sample name: [(labels, value)]}; empty if unreachable."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return {}
    samples: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[sample.name].append((dict(sample.labels), float(sample.value)))
    return samples


def _sum_by(
    samples: dict[str, list[tuple[dict[str, str], float]]], name: str, label: str, **match: str
) -> dict[str, float]:
    totals: dict[str, float] = defaultdict(float)
    for labels, value in samples.get(name, []):
        if all(labels.get(key) == wanted for key, wanted in match.items()):
            totals[labels.get(label, "")] += value
    return totals


def _quantile(buckets: list[tuple[float, float]], q: float) -> float | None:
    """Histogram quantile from cumulative (upper bound, count) pairs, like PromQL's."""
    buckets = sorted(buckets)
    if not buckets or buckets[-1][1] == 0:
        return None
    rank = q * buckets[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in buckets:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * (
                (rank - lower_count) / width if width else 1.0
            )
        lower_bound, lower_count = bound, count
    return None


def summarize(urls: list[str]) -> dict[str, Any]:
    """Merge every process's metrics into the figures the summary prints."""
    merged: dict[str, list[tuple[dict[str, str], float]]] = defaultdict(list)
    for url in urls:
        for name, values in scrape(url).items():
            merged[name].extend(values)
    published = _sum_by(merged, "edgelearn_camera_frames_published_total", "camera")
    fps = {
        labels["camera"]: value for labels, value in merged.get("edgelearn_camera_achieved_fps", [])
    }
    forwarded = _sum_by(
        merged, "edgelearn_gateway_frames_processed_total", "camera", outcome="forwarded"
    )
    held = _sum_by(
        merged, "edgelearn_gateway_frames_processed_total", "camera", outcome="held_back"
    )
    raw = _sum_by(merged, "edgelearn_gateway_raw_equivalent_bytes_total", "camera")
    sent = _sum_by(merged, "edgelearn_gateway_uplink_bytes_total", "camera")
    dropped = _sum_by(merged, "edgelearn_gateway_frames_dropped_total", "reason")
    accuracy: dict[str, dict[str, float]] = defaultdict(dict)
    for labels, value in merged.get("edgelearn_cloud_accuracy_ratio", []):
        accuracy[labels["camera"]][labels["mode"]] = value
    cameras = sorted(set(published) | set(forwarded), key=lambda c: (len(c), c))
    per_camera = {
        camera: {
            "frames": int(published.get(camera, 0)),
            "fps": round(fps.get(camera, 0.0), 1),
            "keyframe_ratio": (
                forwarded.get(camera, 0) / total
                if (total := forwarded.get(camera, 0) + held.get(camera, 0))
                else None
            ),
            "raw_bytes": int(raw.get(camera, 0)),
            "sent_bytes": int(sent.get(camera, 0)),
            "accuracy": accuracy.get(camera, {}),
        }
        for camera in cameras
    }
    latency: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for labels, value in merged.get("edgelearn_cloud_end_to_end_latency_seconds_bucket", []):
        latency[labels["mode"]].append((float(labels["le"]), value))
    modes = {
        mode: {
            "latency_p50_seconds": _quantile(buckets, 0.5),
            "latency_p99_seconds": _quantile(buckets, 0.99),
        }
        for mode, buckets in latency.items()
    }
    scored = _sum_by(merged, "edgelearn_cloud_frames_scored_total", "mode", outcome="correct")
    wrong = _sum_by(merged, "edgelearn_cloud_frames_scored_total", "mode", outcome="wrong")
    for mode in set(scored) | set(wrong):
        total_scored = scored.get(mode, 0) + wrong.get(mode, 0)
        modes.setdefault(mode, {})["accuracy"] = (
            scored.get(mode, 0) / total_scored if total_scored else None
        )
    total_raw, total_sent = sum(raw.values()), sum(sent.values())
    results = sum(value for _, value in merged.get("edgelearn_cloud_results_total", []))
    return {
        "cameras": per_camera,
        "modes": modes,
        "results": int(results),
        "dropped": {reason: int(value) for reason, value in dropped.items() if value},
        "raw_bytes": int(total_raw),
        "sent_bytes": int(total_sent),
        "uplink_reduction": (1 - total_sent / total_raw) if total_raw else None,
    }


def _fmt_bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _fmt(value: float | None, scale: float = 100, suffix: str = "%") -> str:
    return "-" if value is None else f"{value * scale:.1f}{suffix}"


def render_summary(summary: dict[str, Any], elapsed: float) -> str:
    lines = [
        f"edgelearn stack, {elapsed:.0f} s: {summary['results']} results",
        f"{'camera':<10}{'fps':>6}{'frames':>8}{'keyframes':>11}{'raw':>11}{'sent':>11}"
        f"{'accuracy':>10}",
    ]
    for camera, row in summary["cameras"].items():
        accuracy = ", ".join(f"{mode} {_fmt(value)}" for mode, value in row["accuracy"].items())
        lines.append(
            f"{camera:<10}{row['fps']:>6}{row['frames']:>8}"
            f"{_fmt(row['keyframe_ratio']):>11}{_fmt_bytes(row['raw_bytes']):>11}"
            f"{_fmt_bytes(row['sent_bytes']):>11}  {accuracy or '-'}"
        )
    for mode, row in sorted(summary["modes"].items()):
        lines.append(
            f"mode {mode:<12} latency p50 {_fmt(row.get('latency_p50_seconds'), 1000, ' ms')}"
            f"  p99 {_fmt(row.get('latency_p99_seconds'), 1000, ' ms')}"
            f"  accuracy {_fmt(row.get('accuracy'))}"
        )
    lines.append(
        f"uplink: {_fmt_bytes(summary['sent_bytes'])} sent for "
        f"{_fmt_bytes(summary['raw_bytes'])} of camera JPEGs: "
        f"reduction {_fmt(summary['uplink_reduction'])}"
    )
    if summary["dropped"]:
        lines.append(
            "gateway drops: " + ", ".join(f"{k} {v}" for k, v in summary["dropped"].items())
        )
    return "\n".join(lines)


# --- the stack ----------------------------------------------------------------------------


AUTO_MODE = "auto"


def initial_mode(settings: StackSettings) -> str:
    """The mode a gateway starts in: pinned, or until its first plan the deepest split served."""
    if settings.mode != AUTO_MODE:
        return settings.mode
    ks = [int(k) for k in settings.split_ks.split(",") if k.strip()]
    return f"split:{max(ks)}" if ks else "raw"


@dataclass
class StackSettings:
    run_dir: Path = field(default_factory=lambda: Path.cwd() / "run" / "stack")
    secrets: Path | None = None
    registry: Path | None = None
    site: str = wire.DEFAULT_SITE
    edge_port: int = 1883
    cloud_port: int = 1884
    prometheus_port: int = 9090
    mode: str = "auto"  # auto: the cloud's planner picks each gateway's mode
    split_ks: str = "2,4,6,8"
    budget: str = "default"
    workers: int = 1
    uplink_kbps: float = 0.0  # the gateway's uplink as the planner sees it; 0: not configured
    labeled_cameras: int = 4
    video: Path | None = SAMPLE_VIDEO
    fps: float = 15.0
    duration: float | None = None
    interval: float = 5.0
    prometheus: bool = True
    echo: bool = True


def _edgelearn(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "edgelearn.cli", *arguments]


def _check_port(port: int, what: str, flag: str) -> int:
    if port == 0:
        return broker_module.free_port()
    if broker_module.port_in_use("127.0.0.1", port):
        raise StackError(
            f"port {port} ({what}) is in use: stop what runs there or pass "
            f"{flag} with another port (0 picks a free one)"
        )
    return port


@contextlib.contextmanager
def run_stack(
    settings: StackSettings,
) -> Iterator[tuple[ChildProcesses, list[str], dict[str, Any]]]:
    """Start everything; yields (children, metrics URLs, info) and stops all on exit."""
    broker_module.mosquitto_binary()  # a clear error before anything starts
    if settings.video is not None and not settings.video.is_file():
        raise StackError(
            f"sample video {settings.video} is missing: install Debian's "
            "opencv-doc package, or pass --video PATH or --video none"
        )
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    secrets_dir = settings.secrets or default_secrets_dir()
    secrets = Secrets(secrets_dir)
    cameras_needed = settings.labeled_cameras + (1 if settings.video else 0)
    if not secrets.exists():
        broker_module.init_secrets(secrets_dir, cameras=max(16, cameras_needed), gateways=4)
    cameras = [f"cam-{n}" for n in range(1, cameras_needed + 1)]
    known = {user.name for user in secrets.users()}
    for camera in cameras:
        if camera not in known:
            broker_module.add_user(secrets_dir, camera, "camera")
    edge_port = _check_port(settings.edge_port, "edge broker", "--edge-port")
    cloud_port = _check_port(settings.cloud_port, "cloud broker", "--cloud-port")
    prometheus_binary = shutil.which("prometheus") if settings.prometheus else None
    prometheus_port = (
        _check_port(settings.prometheus_port, "Prometheus", "--prometheus-port")
        if prometheus_binary
        else 0
    )
    env = {
        **os.environ,
        "EDGELEARN_SECRETS": str(secrets_dir),
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if settings.registry:
        env["EDGELEARN_REGISTRY"] = str(settings.registry)
    children = ChildProcesses(run_dir, settings.echo)
    brokers: list[broker_module.RunningBroker] = []
    info: dict[str, Any] = {}
    try:
        cloud_broker = broker_module.start_broker(
            secrets,
            broker_module.BrokerSettings(
                role="cloud", port=cloud_port, tls_port=0, run_dir=run_dir / "broker-cloud"
            ),
        )
        brokers.append(cloud_broker)
        edge_broker = broker_module.start_broker(
            secrets,
            broker_module.BrokerSettings(
                role="edge",
                port=edge_port,
                tls_port=0,
                run_dir=run_dir / "broker-edge",
                bridge=broker_module.Bridge("127.0.0.1", cloud_broker.port),
            ),
        )
        brokers.append(edge_broker)
        info["edge_broker"] = f"127.0.0.1:{edge_broker.port}"
        info["cloud_broker"] = f"127.0.0.1:{cloud_broker.port}"
        cloud_metrics = broker_module.free_port()
        cloud = children.start(
            "cloud",
            _edgelearn(
                "cloud",
                "--broker",
                info["cloud_broker"],
                "--site",
                settings.site,
                "--budget",
                settings.budget,
                "--split-ks",
                settings.split_ks,
                "--metrics-port",
                str(cloud_metrics),
                *(["--feature-store", str(run_dir / "features")]),
                *(["--plan"] if settings.mode == AUTO_MODE else []),
            ),
            env,
        )
        cloud.metrics_urls.append(f"http://127.0.0.1:{cloud_metrics}/metrics")
        children.wait_for_line(cloud, "pushed", timeout=3600)
        gateway_metrics = broker_module.free_port()
        gateway = children.start(
            "gateway",
            _edgelearn(
                "gateway",
                "--id",
                "gw-1",
                "--broker",
                info["edge_broker"],
                "--site",
                settings.site,
                "--mode",
                initial_mode(settings),
                "--workers",
                str(settings.workers),
                "--uplink-kbps",
                str(settings.uplink_kbps),
                "--metrics-port",
                str(gateway_metrics),
            ),
            env,
        )
        gateway.metrics_urls += [
            f"http://127.0.0.1:{gateway_metrics + index}/metrics"
            for index in range(settings.workers)
        ]
        for _ in range(settings.workers):
            children.wait_for_line(gateway, "metrics", timeout=120)
        labeled_metrics = broker_module.free_port()
        labeled = children.start(
            "cameras",
            _edgelearn(
                "camera",
                "--source",
                "fashion-mnist:test",
                "--cameras",
                str(settings.labeled_cameras),
                "--fps",
                str(settings.fps),
                "--broker",
                info["edge_broker"],
                "--site",
                settings.site,
                "--metrics-port",
                str(labeled_metrics),
            ),
            env,
        )
        labeled.metrics_urls.append(f"http://127.0.0.1:{labeled_metrics}/metrics")
        if settings.video is not None:
            video_metrics = broker_module.free_port()
            video = children.start(
                "video",
                _edgelearn(
                    "camera",
                    "--source",
                    f"video:{settings.video}",
                    "--cameras",
                    "1",
                    "--first-camera",
                    str(settings.labeled_cameras + 1),
                    "--fps",
                    str(settings.fps),
                    "--broker",
                    info["edge_broker"],
                    "--site",
                    settings.site,
                    "--metrics-port",
                    str(video_metrics),
                ),
                env,
            )
            video.metrics_urls.append(f"http://127.0.0.1:{video_metrics}/metrics")
        urls = [url for child in children.children for url in child.metrics_urls]
        if prometheus_binary:
            info["prometheus"] = _start_prometheus(
                children, prometheus_binary, run_dir, prometheus_port, env
            )
        yield children, urls, info
    finally:
        children.stop()
        for running in reversed(brokers):
            running.stop()


def _start_prometheus(
    children: ChildProcesses, binary: str, run_dir: Path, port: int, env: dict[str, str]
) -> str:
    config_dir = run_dir / "prometheus"
    if config_dir.exists():
        shutil.rmtree(config_dir)
    shutil.copytree(PROMETHEUS_CONFIG, config_dir)
    (config_dir / "targets").mkdir(exist_ok=True)
    targets = []
    for child in children.children:
        job = {"cloud": "cloud", "gateway": "gateway"}.get(child.name, "camera")
        for index, url in enumerate(child.metrics_urls):
            labels = {"job": job}
            if job == "gateway":
                labels |= {"gateway": "gw-1", "worker": str(index)}
            address = url.removeprefix("http://").removesuffix("/metrics")
            targets.append({"targets": [address], "labels": labels})
    (config_dir / "targets" / "stack.json").write_text(json.dumps(targets, indent=1))
    children.start(
        "prometheus",
        [
            binary,
            f"--config.file={config_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={run_dir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        env,
    )
    return f"http://127.0.0.1:{port}"


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = StackSettings()
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds of camera traffic (default: Ctrl-C)",
    )
    parser.add_argument(
        "--mode",
        default=defaults.mode,
        help="gateway mode: raw, pca, autoencoder, split:K, full, or auto (default): the "
        "cloud's planner picks it from the gateway's status (it starts in the deepest split)",
    )
    parser.add_argument(
        "--split-ks",
        default=defaults.split_ks,
        help=f"split points the cloud trains and pushes (default {defaults.split_ks})",
    )
    parser.add_argument(
        "--budget",
        choices=("default", "quick"),
        default=defaults.budget,
        help="training budget if the registry is empty (quick: ~1 min, "
        "low accuracy; default: a few minutes on 2 cores)",
    )
    parser.add_argument(
        "--uplink-kbps",
        type=float,
        default=defaults.uplink_kbps,
        help="the gateway's uplink in kb/s as reported to the planner (try 128: the planner "
        "moves the gateway to full, results only); default 0: not configured, a fast link",
    )
    parser.add_argument(
        "--workers", type=int, default=defaults.workers, help="gateway worker processes"
    )
    parser.add_argument(
        "--cameras",
        type=int,
        default=defaults.labeled_cameras,
        help="labeled-scene cameras (Fashion-MNIST)",
    )
    parser.add_argument(
        "--video", default=str(SAMPLE_VIDEO), help="video file for one more camera, or 'none'"
    )
    parser.add_argument("--fps", type=float, default=defaults.fps, help="camera frame rate")
    parser.add_argument("--site", default=defaults.site, help="topic namespace")
    parser.add_argument(
        "--edge-port", type=int, default=defaults.edge_port, help="edge broker port (0: free)"
    )
    parser.add_argument(
        "--cloud-port", type=int, default=defaults.cloud_port, help="cloud broker port (0: free)"
    )
    parser.add_argument(
        "--prometheus-port",
        type=int,
        default=defaults.prometheus_port,
        help="Prometheus port (0: free)",
    )
    parser.add_argument(
        "--no-prometheus",
        dest="prometheus",
        action="store_false",
        help="do not start Prometheus even when installed",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=defaults.run_dir,
        help="logs, broker data, Prometheus data, the summary JSON",
    )
    parser.add_argument("--secrets", type=Path, default=None, help="secrets directory")
    parser.add_argument("--registry", type=Path, default=None, help="model registry")
    parser.add_argument(
        "--interval", type=float, default=defaults.interval, help="seconds between summary updates"
    )
    parser.add_argument("--quiet", action="store_true", help="do not echo children's output")


def main(args: argparse.Namespace) -> int:
    settings = StackSettings(
        run_dir=args.run_dir,
        secrets=args.secrets,
        registry=args.registry,
        site=args.site,
        edge_port=args.edge_port,
        cloud_port=args.cloud_port,
        prometheus_port=args.prometheus_port,
        mode=args.mode,
        split_ks=args.split_ks,
        budget=args.budget,
        workers=args.workers,
        uplink_kbps=args.uplink_kbps,
        labeled_cameras=args.cameras,
        video=None if args.video == "none" else Path(args.video),
        fps=args.fps,
        duration=args.duration,
        interval=args.interval,
        prometheus=args.prometheus,
        echo=not args.quiet,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with run_stack(settings) as (children, urls, info):
            print("\nedgelearn stack is up:", flush=True)
            for key, value in info.items():
                print(f"  {key:<13} {value}")
            for url in urls:
                print(f"  metrics       {url}")
            started = time.monotonic()
            summary: dict[str, Any] = {}
            while not stop.is_set():
                stop.wait(settings.interval)
                summary = summarize(urls)
                elapsed = time.monotonic() - started
                print("\n" + render_summary(summary, elapsed), flush=True)
                if dead := children.dead():
                    raise StackError(
                        ", ".join(f"{c.name} exited with {c.process.returncode}" for c in dead)
                        + f"; logs in {settings.run_dir}"
                    )
                if settings.duration is not None and elapsed >= settings.duration:
                    break
            summary["elapsed_seconds"] = round(time.monotonic() - started, 1)
            (settings.run_dir / "summary.json").write_text(json.dumps(summary, indent=2))
            print(f"\nsummary written to {settings.run_dir / 'summary.json'}; stopping.")
    except (StackError, broker_module.BrokerError, ConfigError) as exc:
        print(f"edgelearn up: {exc}", file=sys.stderr)
        return 2
    return 0
