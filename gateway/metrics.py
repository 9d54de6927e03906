"""Prometheus metrics of a gateway worker. Every frame is counted exactly once, as
``processed{outcome=forwarded|held_back}`` or ``dropped{reason}``, so
``received == processed + dropped`` once the queues are empty.

* ``edgelearn_gateway_frames_received_total{camera,transport}``
* ``edgelearn_gateway_frames_processed_total{camera,outcome}``
* ``edgelearn_gateway_frames_dropped_total{camera,reason}`` - reasons in
  :data:`gateway.ingest.DROP_REASONS`, the drop policy
* ``edgelearn_gateway_frames_out_of_order_total{camera}`` - frames older than one this worker
  already had from that camera (a pool should have none: each camera has one worker)
* ``edgelearn_gateway_input_bytes_total{camera}`` - camera JPEG bytes that arrived
* ``edgelearn_gateway_raw_equivalent_bytes_total{camera}`` - JPEG bytes of the forwarded
  frames *and* the held-back ones: what cloud-only would have sent upstream
* ``edgelearn_gateway_uplink_bytes_total{camera,mode}`` - envelope bytes sent upstream
* ``edgelearn_gateway_stage_seconds{stage}`` - decode_small, objects, keyframe, decode,
  extract, encode, publish
* ``edgelearn_gateway_hop_seconds{hop}`` - where a forwarded frame's time goes at the
  gateway, frame by frame (:data:`HOPS`), and ``edgelearn_gateway_processed_age_seconds``:
  its age (since capture) when the pipeline is done with it. The cloud's
  ``edgelearn_cloud_arrival_age_seconds`` against this one is the outbox and the uplink.
* ``edgelearn_gateway_objects_seen_total{camera}``, ``..._frames_looked_at_total{camera}``
  (their rates' ratio: objects in view) and ``..._objects_entered_total{camera}`` (new
  tracks), from the per-camera background model (:mod:`edgelearn.roi`)
* ``edgelearn_gateway_queue_depth{camera}`` - frames waiting, read at scrape time
* ``edgelearn_gateway_capacity_frames_per_second{mode}`` - measured, see the status message
* ``edgelearn_gateway_outbox_items``, ``..._outbox_bytes``, ``..._outbox_oldest_seconds`` -
  features kept until the cloud acknowledges them, read at scrape time
* ``edgelearn_gateway_features_acked_total``, ``..._features_resent_total`` and
  ``..._features_dropped_total{camera,reason}`` (reasons in
  :data:`gateway.ingest.FEATURE_DROP_REASONS`): every forwarded feature is acknowledged,
  still in the outbox, or dropped by reason
* ``edgelearn_gateway_outbox_failures_total`` - outbox writes the disk refused (the feature
  was sent without being kept)
* ``edgelearn_gateway_models_rejected_total{reason}``, ``..._model_swaps_total{slot}``
* ``edgelearn_gateway_model_info{slot,version}`` and ``edgelearn_gateway_mode_info{mode,
  effective}``
* ``edgelearn_gateway_teacher_looks_total{camera}``, ``..._teacher_labels_total{camera,
  label}`` (labels that count: several views agreed), ``..._teacher_cpu_seconds_total
  {camera}``, ``..._teacher_busy_total{camera}`` (offers dropped: its queue was full),
  ``..._teacher_labels_sent_total{camera}`` (objects sent up with a teacher label), and the
  gauges ``..._teacher_agreement{camera}`` (the cloud's answers against its labels) and
  ``..._teacher_rate{camera}`` (the share of new tracks it looks at), from
  :mod:`gateway.teacher_stage`
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Final

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edgelearn.metrics import HOP_BUCKETS
from edgelearn.roi import FoundObject
from gateway.outbox import Outbox

UNKNOWN_CAMERA: Final = "unknown"

# The hops of a forwarded frame (one that gets a result), in order. ``camera`` is measured on
# wall clocks (capture at the camera to receipt here: the camera's JPEG encoding, the edge
# broker, a pool's dispatcher), the others on this process's monotonic clock.
HOPS: Final = (
    "camera",  # captured -> received by this worker
    "queue",  # received -> taken by the worker thread
    "processing",  # the pipeline: decode, objects, keyframe rule, extraction, encoding
    "outbox",  # processed -> its first publish starts: on disk, handed to the event loop
    "publish",  # publish -> the edge broker's acknowledgement (QoS 1)
)

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


class _OutboxCollector(Collector):
    def __init__(self, outbox: Callable[[], Outbox | None]) -> None:
        self._outbox = outbox

    def collect(self) -> Iterator[GaugeMetricFamily]:
        outbox = self._outbox()
        values = (
            (0, 0, 0.0) if outbox is None else (outbox.items, outbox.bytes, outbox.oldest_age())
        )
        for (name, doc), value in zip(_OUTBOX_GAUGES, values, strict=True):
            yield GaugeMetricFamily(name, doc, value=value)


_OUTBOX_GAUGES: Final = (
    ("edgelearn_gateway_outbox_items", "Features waiting for the cloud's acknowledgement"),
    ("edgelearn_gateway_outbox_bytes", "Envelope bytes waiting in the outbox"),
    ("edgelearn_gateway_outbox_oldest_seconds", "Age of the oldest unacknowledged feature"),
)


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
        self.out_of_order = Counter(
            "edgelearn_gateway_frames_out_of_order",
            "Frames captured before one this worker already had from the same camera",
            ["camera"],
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
        self.hop_seconds = Histogram(
            "edgelearn_gateway_hop_seconds",
            "Time a forwarded frame spent in each hop at the gateway",
            ["hop"],
            buckets=HOP_BUCKETS,
            registry=registry,
        )
        self.processed_age = Histogram(
            "edgelearn_gateway_processed_age_seconds",
            "Time since capture when the pipeline was done with a forwarded frame",
            buckets=HOP_BUCKETS,
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
        self.teacher_looks = Counter(
            "edgelearn_gateway_teacher_looks",
            "Frames the teacher looked at (each for one or more of its objects)",
            ["camera"],
            registry=registry,
        )
        self.teacher_labels = Counter(
            "edgelearn_gateway_teacher_labels",
            "Tracks the teacher labeled: several of its views agreed",
            ["camera", "label"],
            registry=registry,
        )
        self.teacher_cpu = Counter(
            "edgelearn_gateway_teacher_cpu_seconds",
            "CPU seconds of the teacher's thread, by the camera it looked at",
            ["camera"],
            registry=registry,
        )
        self.teacher_labels_sent = Counter(
            "edgelearn_gateway_teacher_labels_sent",
            "Objects sent up with a teacher label on their Feature",
            ["camera"],
            registry=registry,
        )
        self.teacher_rate = Gauge(
            "edgelearn_gateway_teacher_rate",
            "Share of a camera's new tracks the teacher looks at (1: learning; the watch rate"
            " once the cloud's answers agree with it)",
            ["camera"],
            registry=registry,
        )
        self.teacher_agreement = Gauge(
            "edgelearn_gateway_teacher_agreement",
            "Share of the camera's latest teacher-labeled tracks the cloud's answer agreed with",
            ["camera"],
            registry=registry,
        )
        self.teacher_busy = Counter(
            "edgelearn_gateway_teacher_busy",
            "Objects offered to the teacher and dropped: its queue was full",
            ["camera"],
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
            "Upstream publishes that failed for a lost connection (sent again later)",
            registry=registry,
        )
        self.link_up = Gauge(
            "edgelearn_gateway_link_up",
            "1 while the edge broker's bridge to the cloud is up (or there is none), 0 while "
            "it says it is down: re-sends wait",
            registry=registry,
        )
        self.link_up.set(1)
        self.acked = Counter(
            "edgelearn_gateway_features_acked",
            "Features the cloud acknowledged (they leave the outbox)",
            registry=registry,
        )
        self.resent = Counter(
            "edgelearn_gateway_features_resent",
            "Features sent again because no acknowledgement came in time",
            registry=registry,
        )
        self.features_dropped = Counter(
            "edgelearn_gateway_features_dropped",
            "Forwarded features given up before the cloud acknowledged them, by reason",
            ["camera", "reason"],
            registry=registry,
        )
        self.outbox_failures = Counter(
            "edgelearn_gateway_outbox_failures",
            "Outbox writes the disk refused",
            registry=registry,
        )
        # Counters, not a gauge of "in view": a camera may move to another worker of the
        # pool, and a gauge left behind would be counted twice. In view = the rate of
        # objects_seen over the rate of frames looked at (frames_looked_at).
        self.objects_seen = Counter(
            "edgelearn_gateway_objects_seen",
            "Objects in view, summed over the frames looked at (divide by frames_looked_at)",
            ["camera"],
            registry=registry,
        )
        self.object_frames = Counter(
            "edgelearn_gateway_frames_looked_at",
            "Frames the background model looked at for objects",
            ["camera"],
            registry=registry,
        )
        self.objects_entered = Counter(
            "edgelearn_gateway_objects_entered",
            "Objects that came into view (new tracks)",
            ["camera"],
            registry=registry,
        )

    def observe_objects(self, camera: str, objects: tuple[FoundObject, ...]) -> None:
        self.object_frames.labels(camera).inc()
        self.objects_seen.labels(camera).inc(len(objects))
        entered = sum(1 for item in objects if item.reason == "appeared")
        self.objects_entered.labels(camera).inc(entered)

    def watch_queues(self, depths: Callable[[], dict[str, int]]) -> None:
        self.registry.register(_QueueDepthCollector(depths))

    def watch_outbox(self, outbox: Callable[[], Outbox | None]) -> None:
        self.registry.register(_OutboxCollector(outbox))

    def set_model(self, slot: str, version: str) -> None:
        for labels in list(self.model_info._metrics):  # one version per slot
            if labels[0] == slot:
                self.model_info.remove(*labels)
        self.model_info.labels(slot, version).set(1)

    def set_mode(self, mode: str, effective: str) -> None:
        self.mode_info.clear()
        self.mode_info.labels(mode, effective).set(1)
