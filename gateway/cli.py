"""``edgelearn gateway``: run a pool of gateway workers against an edge-site broker.

With ``--workers 1`` the worker runs in this process. With more, this process becomes a small
supervisor: it validates every worker's settings, then starts one worker process per slot
with exactly those settings (``multiprocessing`` spawn: nothing is re-read from the command
line, so a caller from Python gets the workers it asked for). The supervisor holds the pool's
one ingest connection (frames over MQTT, and CoAP) and hands every camera to exactly one
worker over a pipe (:mod:`gateway.dispatch`); a dead worker's cameras move to the survivors
at once. Metrics go on consecutive ports. The supervisor restarts a worker that dies, at
most ``RESTARTS_PER_MINUTE`` times a minute, and stops them all on Ctrl-C or SIGTERM.
Scaling out is by processes, not threads: each worker has its own GIL.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import logging
import multiprocessing
import signal
import sys
import time
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

import aiomqtt

from edgelearn import config as config_module
from edgelearn import signing, wire
from edgelearn.modes import ModeError
from edgelearn.mqtt import BrokerUnavailable, MqttSession
from gateway import dispatch
from gateway.coap import CoapEndpoint
from gateway.config import GatewayConfig
from gateway.dispatch import Dispatcher
from gateway.metrics import UNKNOWN_CAMERA

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
        help="shared-subscription group of the pool's ingest connection (several gateway pools "
        "in one group share the frames by message)",
    )
    parser.add_argument(
        "--no-keyframes",
        dest="keyframes",
        action="store_false",
        default=None,
        help="send every object in full view, every frame (without objects: every frame), "
        "instead of keyframes only",
    )
    parser.add_argument(
        "--no-objects",
        dest="objects",
        action="store_false",
        default=None,
        help="do not look for objects in view (no background model, no object metrics)",
    )
    parser.add_argument(
        "--keyframe-threshold",
        type=float,
        default=None,
        help="whole frames (no objects, or a model of whole frames): the fraction of pixels "
        "changed since the previous frame that counts as motion (default 0.02)",
    )
    parser.add_argument(
        "--keyframe-max-interval",
        type=int,
        default=None,
        help="an object (or the scene) that stays is sent again every N frames (default 45)",
    )
    parser.add_argument(
        "--keyframe-motion-interval",
        type=int,
        default=None,
        help="while an object (or the scene) moves, send it every N frames (default 5; "
        "smaller costs uplink, larger misses views)",
    )
    parser.add_argument(
        "--keyframe-settle-frames",
        type=int,
        default=None,
        help="frames without a move before a moving object has settled and is sent once "
        "more (default 3)",
    )
    parser.add_argument(
        "--keyframe-move-fraction",
        type=float,
        default=None,
        help="an object moved when its box shifted by this fraction of its size (default 0.1)",
    )
    parser.add_argument(
        "--learning-sample",
        type=int,
        default=None,
        help="full mode: every Nth keyframe with labeled objects also sends their crops, "
        "so the cloud keeps learning (default 10; 0: results only)",
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
        "--coap-insecure",
        action="store_true",
        default=None,
        help="INSECURE: accept CoAP posts without the camera's OSCORE credentials; anyone "
        "who reaches the port can post frames as any camera",
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


def _settings(args: argparse.Namespace) -> GatewayConfig:
    """The gateway's settings: defaults < the ``[gateway]`` table of ``--config`` <
    ``EDGELEARN_*`` < flags; unknown keys are refused with their names."""
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
            "objects",
            "keyframe_threshold",
            "keyframe_max_interval",
            "keyframe_motion_interval",
            "keyframe_settle_frames",
            "keyframe_move_fraction",
            "learning_sample",
            "queue_depth",
            "outbox",
            "outbox_max_mb",
            "outbox_policy",
            "coap_port",
            "coap_insecure",
            "uplink_kbps",
            "status_interval",
            "metrics_port",
        )
    }
    if args.broker:
        overrides["broker_host"], overrides["broker_port"] = config_module.parse_address(
            args.broker
        )
    try:
        return config_module.load(
            GatewayConfig, path=args.config, section="gateway", overrides=overrides
        )
    except ModeError as exc:
        raise config_module.ConfigError(str(exc)) from exc


def worker_config(config: GatewayConfig, worker: int) -> GatewayConfig:
    """Worker ``worker`` of a pool: its slot, and the metrics port after the previous
    worker's (0 stays 0: a free port each)."""
    port = config.metrics_port + worker if config.metrics_port else 0
    return dataclasses.replace(config, worker=worker, metrics_port=port)


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
    config: GatewayConfig,
    models: list[wire.Model],
    duration: float | None,
    feed: Connection | None = None,
) -> None:
    from gateway.service import GatewayWorker

    async with GatewayWorker(config, feed=feed) as worker:
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
        stopped = asyncio.ensure_future(stop.wait())
        lost = asyncio.ensure_future(worker.feed_lost.wait())
        await asyncio.wait({stopped, lost}, timeout=duration, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        lost.cancel()
        await worker.drain(timeout=5.0)


def run_worker(
    config: GatewayConfig,
    models: list[wire.Model],
    duration: float | None,
    feed: Connection | None = None,
) -> int:
    """One worker until ``duration`` or a signal; the exit status (2: no broker)."""
    try:
        asyncio.run(_run_worker(config, models, duration, feed))
    except BrokerUnavailable as exc:
        print(f"edgelearn gateway: {exc}", file=sys.stderr)
        return 2
    return 0


def _worker_process(
    config: GatewayConfig,
    models: list[wire.Model],
    duration: float | None,
    verbosity: int,
    feed: Connection | None = None,
) -> None:
    logging.basicConfig(level=verbosity, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    sys.exit(run_worker(config, models, duration, feed))


class _Pool:
    """The supervisor's side of a pool: worker processes, their pipes, and the dispatcher
    that gives each camera to one of them (gateway.dispatch says why)."""

    def __init__(
        self, configs: list[GatewayConfig], models: list[wire.Model], duration: float | None
    ) -> None:
        self.configs = configs
        self.models = models
        self.duration = duration
        self.context = multiprocessing.get_context("spawn")
        self.processes: dict[int, BaseProcess] = {}
        self.starting: dict[int, Connection] = {}  # started, not ready yet
        self.restarts: list[float] = []
        self.dispatcher = Dispatcher(on_move=self._moved)
        self.verbosity = logging.getLogger().getEffectiveLevel()

    @staticmethod
    def _moved(camera: str, old: int | None, new: int, why: str) -> None:
        if why == "failover":
            log.warning("camera %s: worker %s is down, moved to worker %d", camera, old, new)
        else:
            log.info("camera %s: worker %d (%s)", camera, new, why)

    def start(self, slot: int) -> None:
        ours, theirs = self.context.Pipe(duplex=True)
        # Each worker's CoAP is served by the pool (below), so a camera keeps one worker.
        config = dataclasses.replace(self.configs[slot], coap_port=-1)
        process = self.context.Process(
            target=_worker_process,
            args=(config, self.models, self.duration, self.verbosity, theirs),
            name=f"gateway-{config.client_id}",
        )
        process.start()
        theirs.close()
        self.processes[slot] = process
        self.starting[slot] = ours

    def check(self) -> int | None:
        """One supervision round: ready workers join, dead ones leave and restart. Returns
        an exit status when the pool must stop."""
        for slot, connection in list(self.starting.items()):
            try:
                ready = connection.poll() and connection.recv() == (dispatch.READY,)
            except (EOFError, OSError):
                ready = False
            if ready:
                del self.starting[slot]
                self.dispatcher.worker_up(slot, connection)
        for slot, process in list(self.processes.items()):
            code = process.exitcode
            if code is None:
                continue
            self.dispatcher.worker_down(slot)
            if slot in self.starting:
                self.starting.pop(slot).close()
            del self.processes[slot]
            if code == 0 and self.duration is not None:
                continue
            now = time.monotonic()
            self.restarts[:] = [t for t in self.restarts if now - t < 60]
            if code == 2 or len(self.restarts) >= RESTARTS_PER_MINUTE:
                log.error("gateway worker %d exited with %d; not restarting", slot, code)
                return code or 1
            self.restarts.append(now)
            log.warning("gateway worker %d exited with %d; restarting", slot, code)
            self.start(slot)
        self.dispatcher.report_drops()
        return None if self.processes else 0

    def stop(self) -> None:
        for process in self.processes.values():
            if process.is_alive():
                process.terminate()
        for process in self.processes.values():
            process.join(15)
            if process.is_alive():
                process.kill()
                process.join()
        self.dispatcher.close()
        for connection in self.starting.values():
            connection.close()


async def _supervise(pool: _Pool) -> int:
    config = pool.configs[0]
    topics = wire.Topics(config.site)
    dispatcher = pool.dispatcher

    def on_frame(message: aiomqtt.Message) -> None:
        payload = message.payload
        dispatcher.dispatch(
            wire.topic_level(str(message.topic), -1),
            "mqtt",
            bytes(payload) if isinstance(payload, bytes | bytearray) else b"",
        )

    def on_post(payload: bytes, camera: str | None) -> str | None:
        """A CoAP post, from ``camera`` as it authenticated (None: insecure endpoint)."""
        try:
            frame = wire.decode_as(payload, wire.Frame)
        except wire.WireError as exc:
            dispatcher.refused(payload, "coap")  # a worker counts it with its exact reason
            return exc.reason
        if camera is not None and frame.camera_id != camera:
            dispatcher.count(camera, "coap", "camera_mismatch")
            return "camera_mismatch"
        dispatcher.dispatch(frame.camera_id, "coap", payload)
        return None

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    session = MqttSession(
        config.broker_config(),
        f"{config.gateway_id}-ingest",
        subscriptions=[(wire.shared(config.group, topics.all_frames()), 0)],
        on_message=on_frame,
        backoff_max=2.0,
    )
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(asyncio.to_thread, pool.stop)
        for slot in range(len(pool.configs)):
            pool.start(slot)
        ingesting = False
        deadline = None if pool.duration is None else time.monotonic() + pool.duration + 10
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            code = pool.check()
            if code is not None:
                return code
            if not ingesting and dispatcher.live:
                # Frames are taken once a worker can have them: none lost to a cold start.
                ingesting = True
                await stack.enter_async_context(session)
                if config.coap_port >= 0:
                    endpoint = CoapEndpoint(
                        on_post,
                        config.coap_host,
                        config.coap_port,
                        credentials=config.coap_credentials(),
                        on_refused=lambda reason: dispatcher.count(UNKNOWN_CAMERA, "coap", reason),
                    )
                    await stack.enter_async_context(endpoint)
                    print(
                        f"gateway {config.gateway_id}: CoAP on udp/tcp port {endpoint.port}",
                        flush=True,
                    )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.1)  # the supervision period
    return 0


def supervise(
    configs: list[GatewayConfig], models: list[wire.Model], duration: float | None
) -> int:
    """Run one worker process per config behind one ingest connection, keep them alive, stop
    them together."""
    return asyncio.run(_supervise(_Pool(configs, models, duration)))


def main(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise config_module.ConfigError("--workers must be at least 1")
    # Every worker's settings are validated before any process starts.
    settings = _settings(args)
    configs = [worker_config(settings, worker) for worker in range(args.workers)]
    models = _read_models(args.model, configs[0].secrets)
    if args.workers > 1:
        return supervise(configs, models, args.duration)
    return run_worker(configs[0], models, args.duration)
