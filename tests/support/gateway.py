"""Helpers for gateway tests: a worker run in a background event loop, and a real
(random-component) PCA deployment signed like the cloud's. Frames come from
:func:`cameras.replay.scene_frames` (the camera's own renderer).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgelearn import signing, wire
from edgelearn.artifacts import PcaProjection, TensorQuantization
from edgelearn.service import serve_in_thread
from gateway.config import GatewayConfig
from gateway.service import GatewayWorker
from tests.support.broker import BrokerUnderTest


def pca_deployment(
    secrets_dir: Path,
    *,
    dim: int = 32,
    version: str = "pca-test-1",
    seed: int = 0,
    model_input: str = "frame",
) -> wire.Model:
    """A PCA projection with random orthonormal components: real math, untrained;
    ``model_input`` :data:`edgelearn.roi.CROP_RULE` says it takes object crops, as the
    cloud's models do."""
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
        metadata_json=json.dumps(
            {"output": projection.output.to_dict(), "preprocessing": model_input}
        ),
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
def run_gateway(broker: BrokerUnderTest, **settings: object) -> Iterator[RunningGateway]:
    """Run a GatewayWorker in its own event loop thread until the block ends."""
    config = GatewayConfig(
        broker_host=broker.host,
        broker_port=broker.port,
        secrets=broker.secrets_dir,
        # No cloud acknowledges these gateways' features unless a test runs one: re-sends
        # wait a minute, so the tests that count features see each once.
        **{  # type: ignore[arg-type]
            "status_interval": 0.5,
            "outbox": "memory",
            "retry_after": 60.0,
            "retry_max": 60.0,
            **settings,
        },
    )
    with serve_in_thread(lambda: GatewayWorker(config), "gateway") as (worker, loop):
        yield RunningGateway(worker, loop)
