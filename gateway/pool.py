"""A gateway's pool of worker processes, and the one worker run in this process.

With one worker, :func:`run_worker` runs it here. With more, :func:`supervise` makes this
process a small supervisor: it starts one worker process per slot with exactly the settings
it was given (``multiprocessing`` spawn: nothing is re-read from a command line, so a caller
from Python gets the workers it asked for). The supervisor holds the pool's one ingest
connection (frames over MQTT, and CoAP) and hands every camera to exactly one worker over a
pipe (:mod:`gateway.dispatch`); a dead worker's cameras move to the survivors at once.
Metrics go on consecutive ports (:func:`worker_config`). The supervisor restarts a worker
that dies, at most ``RESTARTS_PER_MINUTE`` times a minute, and stops them all on Ctrl-C or
SIGTERM. Scaling out is by processes, not threads: each worker has its own GIL.
"""

from __future__ import annotations

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

import aiomqtt

from edgelearn import wire
from edgelearn.mqtt import BrokerUnavailable, MqttSession
from gateway import dispatch
from gateway.coap import CoapEndpoint
from gateway.config import GatewayConfig
from gateway.dispatch import Dispatcher
from gateway.metrics import UNKNOWN_CAMERA

log = logging.getLogger(__name__)
RESTARTS_PER_MINUTE = 5


def worker_config(config: GatewayConfig, worker: int, workers: int = 1) -> GatewayConfig:
    """Worker ``worker`` of a pool of ``workers``: its slot, the metrics port after the
    previous worker's (0 stays 0: a free port each), and its share of the gateway's teacher
    budget (each worker's teacher labels only its own cameras)."""
    port = config.metrics_port + worker if config.metrics_port else 0
    budget = config.teacher_budget / workers
    return dataclasses.replace(config, worker=worker, metrics_port=port, teacher_budget=budget)


async def _run_worker(
    config: GatewayConfig,
    models: list[wire.Model],
    duration: float | None,
    feed: Connection | None = None,
) -> None:
    from edgelearn.preprocess import sequential_opencv
    from gateway.service import GatewayWorker

    sequential_opencv()
    async with GatewayWorker(config, feed=feed) as worker:
        assert worker.metrics_server is not None
        coap = f", CoAP on udp/tcp port {worker.coap_port}" if worker.coap_port else ""
        print(
            f"gateway {config.gateway_id} worker {config.worker}: mode {config.mode}, "
            f"metrics {worker.metrics_server.url}{coap}",
            flush=True,
        )
        for model in models:
            await worker.model_slot.load(model)
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
