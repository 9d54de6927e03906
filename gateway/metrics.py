"""Prometheus metrics of a gateway worker. Every frame is counted exactly once, as
``processed{outcome=forwarded|held_back}`` or ``dropped{reason}``, so
``received == processed + dropped`` once the queues are empty.

* ``edgelearn_gateway_frames_received_total{camera,transport}``
* ``edgelearn_gateway_frames_processed_total{camera,outcome}``
* ``edgelearn_gateway_frames_dropped_total{camera,reason}`` - reasons in :data:`DROP_REASONS`
* ``edgelearn_gateway_input_bytes_total{camera}`` - camera JPEG bytes that arrived
* ``edgelearn_gateway_raw_equivalent_bytes_total{camera}`` - JPEG bytes of the forwarded
  frames *and* the held-back ones: what cloud-only would have sent upstream
* ``edgelearn_gateway_uplink_bytes_total{camera,mode}`` - envelope bytes sent upstream
* ``edgelearn_gateway_stage_seconds{stage}`` - keyframe, decode, extract, encode, publish
* ``edgelearn_gateway_queue_depth{camera}`` - frames waiting, read at scrape time
* ``edgelearn_gateway_capacity_frames_per_second{mode}`` - measured, see the status message
* ``edgelearn_gateway_models_rejected_total{reason}``, ``..._model_swaps_total{slot}``
* ``edgelearn_gateway_model_info{slot,version}`` and ``edgelearn_gateway_mode_info{mode,
  effective}``
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

DROP_REASONS: Final = (
    "rejected_envelope",  # not a frame envelope (bad magic, truncated, wrong kind...)
    "undecodable",  # the JPEG does not decode or is truncated
    "queue_full",  # newest frame won: the oldest queued frame of that camera went
    "stale",  # waited longer than stale_after before a worker took it
    "extract_failed",  # the model raised on this frame
    "shutdown",  # still queued when the worker stopped
)
UNKNOWN_CAMERA: Final = "unknown"

# Stage costs run from ~50 us (keyframe score) to tens of ms (a big split on a busy core).
STAGE_BUCKETS: Final = (
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip


class _QueueDepthCollector(Collector):
    def __init__(self, depths: Callable[[], dict[str, int]]) -> None:
        self._depths = depths

    def collect(self) -> Iterator[GaugeMetricFamily]:
        family = GaugeMetricFamily(
            "edgelearn_gateway_queue_depth", "Frames waiting per camera", labels=["camera"]
        )
        for camera, depth in sorted(self._depths().items()):
            family.add_metric([camera], depth)
        yield family


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.received = Counter(
            "edgelearn_gateway_frames_received",
            "Frames that reached the gateway",
            ["camera", "transport"],
            registry=registry,
        )
        self.processed = Counter(
            "edgelearn_gateway_frames_processed",
            "Frames the gateway handled: forwarded (keyframes) or held back",
            ["camera", "outcome"],
            registry=registry,
        )
        self.dropped = Counter(
            "edgelearn_gateway_frames_dropped",
            "Frames dropped, by reason",
            ["camera", "reason"],
            registry=registry,
        )
        self.input_bytes = Counter(
            "edgelearn_gateway_input_bytes",
            "Camera JPEG bytes received",
            ["camera"],
            registry=registry,
        )
        self.raw_equivalent_bytes = Counter(
            "edgelearn_gateway_raw_equivalent_bytes",
            "JPEG bytes of the frames processed: what cloud-only would have sent up",
            ["camera"],
            registry=registry,
        )
        self.uplink_bytes = Counter(
            "edgelearn_gateway_uplink_bytes",
            "Envelope bytes sent upstream",
            ["camera", "mode"],
            registry=registry,
        )
        self.stage_seconds = Histogram(
            "edgelearn_gateway_stage_seconds",
            "Time per pipeline stage",
            ["stage"],
            buckets=STAGE_BUCKETS,
            registry=registry,
        )
        self.capacity = Gauge(
            "edgelearn_gateway_capacity_frames_per_second",
            "Keyframes per second this worker can extract in a mode (measured)",
            ["mode"],
            registry=registry,
        )
        self.models_rejected = Counter(
            "edgelearn_gateway_models_rejected",
            "Model deployments refused, by reason",
            ["reason"],
            registry=registry,
        )
        self.model_swaps = Counter(
            "edgelearn_gateway_model_swaps",
            "Models loaded and swapped in",
            ["slot"],
            registry=registry,
        )
        self.model_info = Gauge(
            "edgelearn_gateway_model_info",
            "Model version loaded per slot (value 1)",
            ["slot", "version"],
            registry=registry,
        )
        self.mode_info = Gauge(
            "edgelearn_gateway_mode_info",
            "Configured mode and the mode actually running (value 1)",
            ["mode", "effective"],
            registry=registry,
        )
        self.forward_failures = Counter(
            "edgelearn_gateway_forward_retries",
            "Upstream publishes retried after a failure",
            registry=registry,
        )

    def watch_queues(self, depths: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_QueueDepthCollector(depths))

    def set_model(self, slot: str, version: str) -> None:
        for labels in list(self.model_info._metrics):  # one version per slot
            if labels[0] == slot:
                self.model_info.remove(*labels)
        self.model_info.labels(slot, version).set(1)

    def set_mode(self, mode: str, effective: str) -> None:
        self.mode_info.clear()
        self.mode_info.labels(mode, effective).set(1)
