"""The status of a gateway worker: what the cloud's planner and an operator read of it.

Where it sits::

    every status_interval --> StatusReport.publish_every --> retained status/<gw>/<worker>, QoS 1
    connect: the last will, and a clean exit --> the same topic, online 0

A status says the mode that runs and its model, the worker's capacity per loaded mode (from
the model slot), its queues (ingest) and, over the last period, the frames and bytes that
came in, the share of decided frames that were keyframes, and the uplink's byte rate.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiomqtt

from edgelearn import wire
from edgelearn.mqtt import MqttSession, NotConnected
from gateway.config import GatewayConfig
from gateway.pipeline import FramePipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Totals:
    """Monotonic counts read at one instant; two of them give the rates of a status period."""

    time: float
    uplink_bytes: int
    frames_in: int
    input_bytes: int
    keyframes: int
    held_back: int


@dataclass(frozen=True)
class InputRates:
    fps: float
    bytes_per_second: float
    keyframe_ratio: float


class StatusReport:
    def __init__(
        self,
        config: GatewayConfig,
        pipeline: FramePipeline,
        *,
        capacity_fps: Callable[[], dict[str, float]],
        queue_depths: Callable[[], dict[str, int]],
        totals: Callable[[], Totals],
    ) -> None:
        self.config = config
        self.topic = wire.Topics(config.site).status(config.gateway_id, config.worker)
        self._pipeline = pipeline
        self._capacity_fps = capacity_fps
        self._queue_depths = queue_depths
        self._totals = totals

    def status(
        self, online: bool, uplink_rate: float = 0.0, rates: InputRates | None = None
    ) -> wire.Status:
        mode, effective = self._pipeline.mode, self._pipeline.effective_mode()
        note = "" if mode == effective else f"no {mode} model yet: running raw"
        versions = self._pipeline.model_versions()
        return wire.Status(
            gateway_id=self.config.gateway_id,
            worker=self.config.worker,
            online=int(online),
            time_ns=time.time_ns(),
            mode=str(effective),
            model_version=versions.get(effective, "none"),
            capacity_fps=self._capacity_fps(),
            uplink_bytes_per_second=uplink_rate,
            queue_depths=self._queue_depths(),
            note=note,
            input_fps=rates.fps if rates else 0.0,
            input_bytes_per_second=rates.bytes_per_second if rates else 0.0,
            keyframe_ratio=rates.keyframe_ratio if rates else 1.0,
            uplink_capacity_bytes_per_second=self.config.uplink_kbps * 1000 / 8,
        )

    def will(self) -> aiomqtt.Will:
        """Offline, for the broker to publish if the connection is lost."""
        return aiomqtt.Will(self.topic, wire.encode(self.status(False)), qos=1, retain=True)

    async def publish_every(self, session: MqttSession) -> None:
        """Online, once a period, with that period's rates (a task)."""
        last = self._totals()
        while True:
            now = self._totals()
            seconds = max(now.time - last.time, 1e-6)
            decided = (now.keyframes - last.keyframes) + (now.held_back - last.held_back)
            rates = InputRates(
                fps=(now.frames_in - last.frames_in) / seconds,
                bytes_per_second=(now.input_bytes - last.input_bytes) / seconds,
                # No frame decided this period: keep "every frame is a keyframe" (the planner
                # then budgets for the worst case).
                keyframe_ratio=(now.keyframes - last.keyframes) / decided if decided else 1.0,
            )
            uplink_rate = (now.uplink_bytes - last.uplink_bytes) / seconds
            last = now
            try:
                await session.publish(
                    self.topic,
                    wire.encode(self.status(True, uplink_rate, rates)),
                    qos=1,
                    retain=True,
                )
            except NotConnected:
                log.info("status not published: no connection")
            await asyncio.sleep(self.config.status_interval)  # the status period

    async def publish_offline(self, session: MqttSession) -> None:
        """A clean disconnect sends no last will: say we are offline ourselves."""
        with contextlib.suppress(NotConnected):
            await session.publish(
                self.topic,
                wire.encode(self.status(False)),
                qos=1,
                retain=True,
                wait_for_connection=1.0,
            )
