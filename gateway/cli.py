"""``edgelearn gateway``: run a pool of gateway workers against an edge-site broker.

With ``--workers 1`` the worker runs in this process. With more, this process becomes a small
supervisor: it validates every worker's settings, then starts one worker process per slot
with exactly those settings (``multiprocessing`` spawn: nothing is re-read from the command
line, so a caller from Python gets the workers it asked for). The workers share a gateway id
and a shared-subscription group; MQTT hands each frame to one of them, round-robin by
message, not by camera. Metrics go on consecutive ports. The supervisor restarts a worker
that dies, at most ``RESTARTS_PER_MINUTE`` times a minute, and stops them all on Ctrl-C or
SIGTERM. Scaling out is by processes, not threads: each worker has its own GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import multiprocessing
import signal
import sys
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from edgelearn import config as config_module
from edgelearn import signing, wire
from edgelearn.modes import ModeError
from edgelearn.mqtt import BrokerUnavailable
from gateway.config import GatewayConfig

log = logging.getLogger(__name__)
RESTARTS_PER_MINUTE = 5


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--id", dest="gateway_id", default=None, help="gateway id = its broker user (default gw-1)"
    )
    parser.add_argument(
        "--mode",
        default=None,
        help="raw | pca | autoencoder | split:K | full (default split:3); "
        "runs raw until the cloud has pushed the model the mode needs",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes in this pool (default 1)"
    )
    parser.add_argument("--site", default=None, help="topic namespace of the camera site")
    parser.add_argument(
        "--broker",
        default=None,
        metavar="HOST:PORT",
        help="edge-site broker (default 127.0.0.1:1883)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=None,
        help="connect over TLS, verifying the broker against the site CA",
    )
    parser.add_argument(
        "--secrets", type=Path, default=None, help="secrets directory from `edgelearn broker init`"
    )
    parser.add_argument(
        "--group",
        default=None,
        help="shared-subscription group; MQTT hands each frame to one worker of the group",
    )
    parser.add_argument(
        "--no-keyframes",
        dest="keyframes",
        action="store_false",
        default=None,
        help="extract every frame instead of keyframes only",
    )
    parser.add_argument(
        "--keyframe-threshold",
        type=float,
        default=None,
        help="fraction of pixels changed between frames that counts as motion (default 0.02)",
    )
    parser.add_argument(
        "--keyframe-max-interval",
        type=int,
        default=None,
        help="frames without a keyframe before one is forced (default 45)",
    )
    parser.add_argument(
        "--keyframe-motion-interval",
        type=int,
        default=None,
        help="while the scene moves, a keyframe every N frames (default 1: every moving "
        "frame; larger saves uplink and costs accuracy)",
    )
    parser.add_argument(
        "--queue-depth",
        type=int,
        default=None,
        help="frames queued per camera; the newest wins (default 2)",
    )
    parser.add_argument(
        "--outbox",
        default=None,
        metavar="DIR|memory",
        help="where features wait until the cloud acknowledges them (default: outbox/ in "
        "the state directory; 'memory' loses them on a restart)",
    )
    parser.add_argument(
        "--outbox-max-mb",
        type=float,
        default=None,
        help="outbox size per worker before the policy drops features (default 512)",
    )
    parser.add_argument(
        "--outbox-policy",
        choices=("oldest", "newest"),
        default=None,
        help="what a full outbox drops: the oldest waiting feature (default) or the new one",
    )
    parser.add_argument(
        "--coap-port",
        type=int,
        default=None,
        help="serve CoAP POST /frames on this port (UDP and TCP); "
        "0 picks a free port, -1 (default) disables it",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="/metrics port of worker 0 (others: +1, +2...); 0 = free port",
    )
    parser.add_argument(
        "--uplink-kbps",
        type=float,
        default=None,
        help="this gateway's uplink capacity in kb/s, reported to the cloud's planner, which "
        "picks a mode whose traffic fits it (default 0: not configured, treated as fast)",
    )
    parser.add_argument(
        "--status-interval",
        type=float,
        default=None,
        help="seconds between two retained status messages (default 5)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        default=[],
        help="a signed model deployment file to load at start (repeatable)",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="TOML file with these settings ([gateway] table)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: until Ctrl-C)",
    )


def _settings(args: argparse.Namespace, worker: int) -> GatewayConfig:
    overrides: dict[str, Any] = {
        key: getattr(args, key)
        for key in (
            "gateway_id",
            "mode",
            "site",
            "tls",
            "secrets",
            "group",
            "keyframes",
            "keyframe_threshold",
            "keyframe_max_interval",
            "keyframe_motion_interval",
            "queue_depth",
            "outbox",
            "outbox_max_mb",
            "outbox_policy",
            "coap_port",
            "uplink_kbps",
            "status_interval",
        )
    }
    overrides["worker"] = worker
    if args.broker:
        overrides["broker_host"], overrides["broker_port"] = config_module.parse_address(
            args.broker
        )
    if args.metrics_port is not None:
        overrides["metrics_port"] = args.metrics_port + worker if args.metrics_port else 0
    try:
        return config_module.load(
            GatewayConfig, path=args.config, section="gateway", overrides=overrides
        )
    except ModeError as exc:
        raise config_module.ConfigError(str(exc)) from exc


def _read_models(paths: list[Path], secrets_dir: Path | None) -> list[wire.Model]:
    from edgelearn.secrets import Secrets, default_secrets_dir

    trusted = signing.load_public_key(
        Secrets(secrets_dir or default_secrets_dir()).signing_public_key
    )
    models = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        try:
            model = wire.decode_as(path.read_bytes(), wire.Model)
            signing.verify_model(model, trusted)
        except (wire.WireError, signing.ModelRejected) as exc:
            raise config_module.ConfigError(f"model file {path}: {exc}") from exc
        models.append(model)
    return models


async def _run_worker(
    config: GatewayConfig, models: list[wire.Model], duration: float | None
) -> None:
    from gateway.service import GatewayWorker

    async with GatewayWorker(config) as worker:
        assert worker.metrics_server is not None
        coap = f", CoAP on udp/tcp port {worker.coap_port}" if worker.coap_port else ""
        print(
            f"gateway {config.gateway_id} worker {config.worker}: mode {config.mode}, "
            f"metrics {worker.metrics_server.url}{coap}",
            flush=True,
        )
        for model in models:
            await worker.load_model(model)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
        await worker.drain(timeout=5.0)


def run_worker(config: GatewayConfig, models: list[wire.Model], duration: float | None) -> int:
    """One worker until ``duration`` or a signal; the exit status (2: no broker)."""
    try:
        asyncio.run(_run_worker(config, models, duration))
    except BrokerUnavailable as exc:
        print(f"edgelearn gateway: {exc}", file=sys.stderr)
        return 2
    return 0


def _worker_process(
    config: GatewayConfig, models: list[wire.Model], duration: float | None, verbosity: int
) -> None:
    logging.basicConfig(level=verbosity, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(run_worker(config, models, duration))


def supervise(
    configs: list[GatewayConfig], models: list[wire.Model], duration: float | None
) -> int:
    """Run one worker process per config, keep them alive, stop them together."""
    context = multiprocessing.get_context("spawn")
    processes: dict[int, BaseProcess] = {}
    restarts: list[float] = []
    stopping = False
    verbosity = logging.getLogger().getEffectiveLevel()

    def start(index: int) -> None:
        process = context.Process(
            target=_worker_process,
            args=(configs[index], models, duration, verbosity),
            name=f"gateway-{configs[index].client_id}",
        )
        process.start()
        processes[index] = process

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for index in range(len(configs)):
        start(index)
    deadline = None if duration is None else time.monotonic() + duration + 10
    try:
        while not stopping and (deadline is None or time.monotonic() < deadline):
            for index, process in list(processes.items()):
                code = process.exitcode
                if code is None:
                    continue
                if code == 0 and duration is not None:
                    del processes[index]
                    continue
                now = time.monotonic()
                restarts[:] = [t for t in restarts if now - t < 60]
                if code == 2 or len(restarts) >= RESTARTS_PER_MINUTE:
                    log.error("gateway worker %d exited with %d; not restarting", index, code)
                    return code or 1
                restarts.append(now)
                log.warning("gateway worker %d exited with %d; restarting", index, code)
                start(index)
            if not processes:
                return 0
            time.sleep(0.2)  # supervision period
    finally:
        for process in processes.values():
            if process.is_alive():
                process.terminate()
        for process in processes.values():
            process.join(15)
            if process.is_alive():
                process.kill()
                process.join()
    return 0


def main(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise config_module.ConfigError("--workers must be at least 1")
    # Every worker's settings are validated before any process starts.
    configs = [_settings(args, worker) for worker in range(args.workers)]
    models = _read_models(args.model, configs[0].secrets)
    if args.workers > 1:
        return supervise(configs, models, args.duration)
    return run_worker(configs[0], models, args.duration)
