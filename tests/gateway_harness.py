"""Helpers for gateway tests: real frames from the camera's renderer, a worker run in a
background event loop, and a real (random-component) PCA deployment signed like the cloud's.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractAsyncContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import cv2
import numpy as np

from cameras.datasets import load_fashion_mnist
from cameras.scene import LabeledScene
from cloud.models.artifacts import PcaProjection, TensorQuantization
from edgelearn import signing, wire
from gateway.config import GatewayConfig
from gateway.service import GatewayWorker
from tests.conftest import BrokerUnderTest

T = TypeVar("T")


def scene_frames(
    camera_id: str, count: int, *, seed: int = 0, dwell: int = 30, quality: int = 80
) -> list[wire.Frame]:
    scene = LabeledScene(load_fashion_mnist("test"), seed=seed, dwell_frames=dwell)
    frames = []
    for index in range(count):
        rendered = scene.render(index)
        ok, jpeg = cv2.imencode(".jpg", rendered.image, [cv2.IMWRITE_JPEG_QUALITY, quality])
        assert ok
        frames.append(
            wire.Frame(
                camera_id,
                index,
                time.time_ns(),
                1280,
                720,
                wire.Encoding.JPEG,
                rendered.label,
                jpeg.tobytes(),
            )
        )
    return frames


def pca_deployment(
    secrets_dir: Path, *, dim: int = 32, version: str = "pca-test-1", seed: int = 0
) -> wire.Model:
    """A PCA projection with random orthonormal components: real math, untrained."""
    rng = np.random.default_rng(seed)
    size = 96 * 96
    components, _ = np.linalg.qr(rng.normal(size=(size, dim)).astype(np.float32))
    projection = PcaProjection(
        mean=np.full(size, 0.5, np.float32),
        components=components.T.astype(np.float32).copy(),
        input_shape=(96, 96, 1),
        output=TensorQuantization("int8", (dim,), 0.05, 0),
    )
    key = signing.load_private_key(secrets_dir / signing.PRIVATE_KEY_FILE)
    return signing.sign_model(
        key,
        name="pca",
        version=version,
        kind="pca",
        split_k=0,
        input_shape=(96, 96, 1),
        metadata_json=json.dumps({"output": projection.output.to_dict()}),
        artifact=projection.to_bytes(),
    )


@dataclass
class RunningGateway:
    worker: GatewayWorker
    loop: asyncio.AbstractEventLoop

    def sample(self, name: str, **labels: str) -> float:
        return self.worker.registry.get_sample_value(name, labels) or 0.0

    def total(self, name: str, **match: str) -> float:
        """Sum of a counter over every label set that matches ``match``."""
        total = 0.0
        for family in self.worker.registry.collect():
            for sample in family.samples:
                if sample.name == name and all(sample.labels.get(k) == v for k, v in match.items()):
                    total += sample.value
        return total

    def drain(self, timeout: float = 30.0) -> None:
        asyncio.run_coroutine_threadsafe(self.worker.drain(timeout), self.loop).result(timeout + 5)


@contextmanager
def serve_in_thread(
    enter: Callable[[], AbstractAsyncContextManager[T]], what: str, start_timeout: float = 30.0
) -> Iterator[tuple[T, asyncio.AbstractEventLoop]]:
    """Enter ``enter()`` in an event loop of its own thread and keep it entered until the
    block ends; a failure to start is raised here, a failure to stop reports every task."""
    ready: list[tuple[T, asyncio.AbstractEventLoop]] = []
    failure: list[BaseException] = []
    started = threading.Event()
    stop: list[asyncio.Event] = []

    async def main() -> None:
        stop.append(asyncio.Event())
        try:
            async with enter() as running:
                ready.append((running, asyncio.get_running_loop()))
                started.set()
                await stop[0].wait()
        except BaseException as exc:
            failure.append(exc)
            started.set()

    thread = threading.Thread(target=asyncio.run, args=(main(),), daemon=True)
    thread.start()
    assert started.wait(start_timeout), f"{what} did not start"
    if failure:
        raise failure[0]
    loop = ready[0][1]
    try:
        yield ready[0]
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(30)
        if thread.is_alive():
            raise AssertionError(f"{what} did not stop:\n{_where_it_hangs(loop)}")


@contextmanager
def run_gateway(broker: BrokerUnderTest, **settings: object) -> Iterator[RunningGateway]:
    """Run a GatewayWorker in its own event loop thread until the block ends."""
    config = GatewayConfig(
        broker_host=broker.host,
        broker_port=broker.port,
        secrets=broker.secrets_dir,
        status_interval=0.5,
        **settings,  # type: ignore[arg-type]
    )
    with serve_in_thread(lambda: GatewayWorker(config), "gateway") as (worker, loop):
        yield RunningGateway(worker, loop)


def _where_it_hangs(loop: asyncio.AbstractEventLoop) -> str:
    """Every pending task of ``loop`` and every thread, with their stacks: what a worker that
    does not stop is waiting for."""
    import io
    import sys
    import traceback

    async def tasks() -> str:
        out = io.StringIO()
        for task in asyncio.all_tasks():
            if task is not asyncio.current_task():
                print(f"task {task.get_name()}:", file=out)
                task.print_stack(file=out)
        return out.getvalue()

    try:
        report = asyncio.run_coroutine_threadsafe(tasks(), loop).result(5)
    except Exception as exc:  # the loop itself may be stuck
        report = f"(tasks unavailable: {exc!r})\n"
    for ident, frame in sys._current_frames().items():
        report += f"thread {ident}:\n" + "".join(traceback.format_stack(frame)[-6:])
    return report
