"""Prometheus metrics of the cloud role (consumers and trainer).

One registry a process: :class:`cloud.service.CloudService` creates one :class:`CloudMetrics`
and serves it on one ``/metrics``; its consumers, trainers and pushes count on those same
objects, the planner (:class:`cloud.planner.PlannerMetrics`) on the same registry. No series
says which consumer counted it: the dashboards sum over the consumers.

* ``edgelearn_cloud_features_received_total{mode}``, ``..._received_bytes_total{mode}``
  (envelope bytes: the uplink as the cloud sees it)
* ``edgelearn_cloud_raw_equivalent_bytes_total{mode}`` - the camera JPEG bytes these
  features stand for, held-back frames estimated at their keyframe's size
* ``edgelearn_cloud_features_dropped_total{reason}`` - exact reasons: the wire's
  (``bad_magic``, ``truncated``...), the codec's, ``no_model``, ``queue_full``...
* ``edgelearn_cloud_duplicates_total{mode}`` - a capture that had arrived before
  (a gateway's retry); not answered again, only acknowledged
* ``edgelearn_cloud_acked_total``, ``edgelearn_cloud_ack_failures_total`` - captures
  receipts sent back to the gateways, and acks that could not be published
* ``edgelearn_cloud_results_total{mode,computed_at}``
* ``edgelearn_cloud_predictions_total{mode,task,class_name}`` - by the class names of the
  camera's task (a user's data set: theirs; the teacher's ``person`` / ``other moving object``;
  ``unknown`` where the model was unsure)
* ``edgelearn_cloud_teacher_agreement_ratio{camera}`` - share of a camera's latest
  teacher-labeled tracks the cloud's answer agreed with; ``edgelearn_cloud_student_runs_total
  {mode,outcome}`` - the teacher task's student runs (:mod:`cloud.students`);
  ``edgelearn_cloud_teacher_task_answers_total{camera,class_name}`` - those cameras' answers
* ``edgelearn_cloud_frames_scored_total{camera,mode,outcome}`` - per camera frame, held-back ones
  included (see :class:`cloud.serving.Scoreboard`); ``edgelearn_cloud_accuracy_ratio{camera,mode}``
* ``edgelearn_cloud_batch_size`` and ``edgelearn_cloud_inference_seconds{mode}``
* ``edgelearn_cloud_end_to_end_latency_seconds{mode}`` - capture to result
* ``edgelearn_cloud_hop_seconds{mode,hop}`` - where a feature's time goes in the cloud
  (:data:`HOPS`), and ``edgelearn_cloud_arrival_age_seconds{mode}``: its age (since capture
  at the camera) when a consumer received it
* ``edgelearn_cloud_model_info{mode,version}``, ``edgelearn_cloud_queue_depth`` (every
  consumer's queue of the process)
* ``edgelearn_cloud_training_runs_total{kind}``, ``edgelearn_cloud_training_seconds{kind}``
  (``bootstrap``: the first model set; a mode: the continuous trainer's runs)
* the continuous trainer (:mod:`cloud.trainer`): ``edgelearn_cloud_trainer_triggers_total
  {mode,trigger}``, ``..._heldout_accuracy_ratio{mode,model}`` (candidate and serving on the
  last run's held-out arrivals), ``..._promotions_total{mode}``, ``..._rejections_total
  {mode,reason}``, ``..._rollbacks_total{mode}``, ``..._live_accuracy_ratio{mode,model}``
  (serving and, after a promotion, the one it replaced), ``..._specialised_cameras{mode}``
* ``edgelearn_cloud_model_pushed_bytes_total{mode}`` - signed models published to gateways
* the model grower (:mod:`cloud.grower`): ``edgelearn_cloud_model_generation{family}`` (the
  generation serving: ``cnn``, ``pca``, ``autoencoder``), ``..._model_heldout_accuracy_ratio
  {mode}`` (the serving entry's, on the held-out items), ``..._model_heldout_items{mode}``,
  ``..._generations_total{family,outcome}`` (``promoted``, ``kept``: the judge found no
  significant gain), ``..._generation_training`` (the generation in training; 0: none)
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from edgelearn.metrics import HOP_BUCKETS

LATENCY_BUCKETS = HOP_BUCKETS  # fine where the targets are: p50 15 ms, p99 50 ms
# The hops of a feature in a consumer, in order (each feature's own; a batch's share of them
# is observed once per feature of the batch).
HOPS = (
    "queue",  # received -> its batch starts
    "prepare",  # the batch starts -> the model is called: the ledger's check, decoding
    "inference",  # the batch's model call (upper layers)
    "publish",  # result made -> published: ledger record, scoring, the publish itself
)
INFERENCE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64)
TRAINING_BUCKETS = (1, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class _QueueDepth(Collector):
    """The consumers' queues together: what the process has waiting for inference."""

    def __init__(self) -> None:
        self.depths: list[Callable[[], int]] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(
            "edgelearn_cloud_queue_depth",
            "Features waiting for inference",
            value=sum(depth() for depth in self.depths),
        )


class CloudMetrics:
    """A cloud process's metrics, created once on its one registry: its consumers, trainers
    and pushes count on the same objects (the dashboards sum over whatever they count)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self._queue_depth: _QueueDepth | None = None
        self.features_received = Counter(
            "edgelearn_cloud_features_received",
            "Feature envelopes received",
            ["mode"],
            registry=registry,
        )
        self.received_bytes = Counter(
            "edgelearn_cloud_received_bytes",
            "Envelope bytes received from gateways",
            ["mode"],
            registry=registry,
        )
        self.raw_equivalent_bytes = Counter(
            "edgelearn_cloud_raw_equivalent_bytes",
            "Camera JPEG bytes the received features stand for (cloud-only would get these)",
            ["mode"],
            registry=registry,
        )
        self.dropped = Counter(
            "edgelearn_cloud_features_dropped",
            "Features dropped, by reason",
            ["reason"],
            registry=registry,
        )
        self.store_retries = Counter(
            "edgelearn_cloud_store_retries",
            "Store operations run again because the database was away (a restarted "
            "PostgreSQL): each waits for it, nothing is lost",
            registry=registry,
        )
        self.trainer_lease = Gauge(
            "edgelearn_cloud_trainer_lease",
            "1 while this process holds the trainer lease of a shared store (only its holder "
            "trains); always 1 with a store of its own",
            registry=registry,
        )
        self.events = Counter(
            "edgelearn_cloud_events",
            "JSON object events published on events/ (cloud.events), by type: new, update, end",
            ["type"],
            registry=registry,
        )
        self.events_dropped = Counter(
            "edgelearn_cloud_events_dropped",
            "Results that made no events, by reason (undecodable, or a failure, logged)",
            ["reason"],
            registry=registry,
        )
        self.events_open = Gauge(
            "edgelearn_cloud_events_open",
            "Objects announced (new) and not yet ended",
            registry=registry,
        )
        self.results_republished = Counter(
            "edgelearn_cloud_results_republished",
            "Stored answers published again: a retry of a capture the ledger has (the answer "
            "went out before, or not: a subscriber de-duplicates by camera, seq, capture_ns)",
            registry=registry,
        )
        self.duplicates = Counter(
            "edgelearn_cloud_duplicates",
            "Features (or edge results) that had arrived before: acknowledged, not counted",
            ["mode"],
            registry=registry,
        )
        self.acked = Counter(
            "edgelearn_cloud_acked",
            "Features acknowledged to their gateways",
            registry=registry,
        )
        self.ack_failures = Counter(
            "edgelearn_cloud_ack_failures",
            "Acks that could not be published (the gateway resends, the retry is acked)",
            registry=registry,
        )
        self.results = Counter(
            "edgelearn_cloud_results",
            "Results published",
            ["mode", "computed_at"],
            registry=registry,
        )
        self.objects_classified = Counter(
            "edgelearn_cloud_objects_classified",
            "Objects classified one by one (a frame's objects, each with its own result)",
            ["mode"],
            registry=registry,
        )
        self.frames_without_objects = Counter(
            "edgelearn_cloud_frames_without_objects",
            "Cloud-only frames with no object in view: recorded and acknowledged, no result",
            ["mode"],
            registry=registry,
        )
        self.predictions = Counter(
            "edgelearn_cloud_predictions",
            "Objects (or frames) classified, by the class name the model gave",
            ["mode", "task", "class_name"],
            registry=registry,
        )
        self.teacher_agreement = Gauge(
            "edgelearn_cloud_teacher_agreement_ratio",
            "Share of the camera's latest teacher-labeled tracks the cloud's answer agreed with",
            ["camera"],
            registry=registry,
        )
        self.taught_answers = Counter(
            "edgelearn_cloud_teacher_task_answers",
            "Objects of cameras the teacher names, by the answer (person, other moving"
            " object, unknown)",
            ["camera", "class_name"],
            registry=registry,
        )
        self.student_runs = Counter(
            "edgelearn_cloud_student_runs",
            "Runs of the teacher task's student trainer, by outcome",
            ["mode", "outcome"],
            registry=registry,
        )
        self.frames_scored = Counter(
            "edgelearn_cloud_frames_scored",
            "Camera frames scored against ground truth (held-back frames included)",
            ["camera", "mode", "outcome"],
            registry=registry,
        )
        self.accuracy = Gauge(
            "edgelearn_cloud_accuracy_ratio",
            "Rolling per-frame accuracy",
            ["camera", "mode"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "edgelearn_cloud_batch_size",
            "Features per inference batch",
            buckets=BATCH_BUCKETS,
            registry=registry,
        )
        self.inference_seconds = Histogram(
            "edgelearn_cloud_inference_seconds",
            "Upper-layer inference time per batch",
            ["mode"],
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.latency = Histogram(
            "edgelearn_cloud_end_to_end_latency_seconds",
            "From frame capture at the camera to its result at the cloud",
            ["mode"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.hop_seconds = Histogram(
            "edgelearn_cloud_hop_seconds",
            "Time a feature spent in each hop at the cloud",
            ["mode", "hop"],
            buckets=HOP_BUCKETS,
            registry=registry,
        )
        self.arrival_age = Histogram(
            "edgelearn_cloud_arrival_age_seconds",
            "Time since capture when a consumer received a feature (or an edge result)",
            ["mode"],
            buckets=HOP_BUCKETS,
            registry=registry,
        )
        self.model_info = Gauge(
            "edgelearn_cloud_model_info",
            "Model version serving each mode (value 1)",
            ["mode", "version"],
            registry=registry,
        )
        self.training_runs = Counter(
            "edgelearn_cloud_training_runs",
            "Training runs finished",
            ["kind"],
            registry=registry,
        )
        self.training_seconds = Histogram(
            "edgelearn_cloud_training_seconds",
            "Wall time of a training run",
            ["kind"],
            buckets=TRAINING_BUCKETS,
            registry=registry,
        )

        self.trainer_triggers = Counter(
            "edgelearn_cloud_trainer_triggers",
            "Continuous-trainer runs started, by what started them",
            ["mode", "trigger"],
            registry=registry,
        )
        self.trainer_heldout_accuracy = Gauge(
            "edgelearn_cloud_trainer_heldout_accuracy_ratio",
            "Accuracy on the last run's held-out arrivals, of the candidate and the serving model",
            ["mode", "model"],
            registry=registry,
        )
        self.trainer_promotions = Counter(
            "edgelearn_cloud_trainer_promotions",
            "Candidates promoted to serve",
            ["mode"],
            registry=registry,
        )
        self.trainer_rejections = Counter(
            "edgelearn_cloud_trainer_rejections",
            "Candidates not promoted, by reason",
            ["mode", "reason"],
            registry=registry,
        )
        self.trainer_rollbacks = Counter(
            "edgelearn_cloud_trainer_rollbacks",
            "Promotions undone because live accuracy fell",
            ["mode"],
            registry=registry,
        )
        self.trainer_live_accuracy = Gauge(
            "edgelearn_cloud_trainer_live_accuracy_ratio",
            "Live accuracy of a promoted model and of the one it replaced, answering in "
            "shadow, on the same objects (while on watch)",
            ["mode", "model"],
            registry=registry,
        )
        self.shadow_objects = Counter(
            "edgelearn_cloud_shadow_objects",
            "Objects a replaced model answered in shadow beside the promoted one",
            ["mode"],
            registry=registry,
        )
        self.class_prior = Gauge(
            "edgelearn_cloud_class_prior_ratio",
            "Each camera's class mix, estimated from its recent answers (the re-weighting prior)",
            ["mode", "camera", "class"],
            registry=registry,
        )
        self.trainer_specialised = Gauge(
            "edgelearn_cloud_trainer_specialised_cameras",
            "Cameras answered by a cloud half of their own (the held-out arrivals chose it)",
            ["mode"],
            registry=registry,
        )
        self.model_generation = Gauge(
            "edgelearn_cloud_model_generation",
            "Generation of the models serving each family (cnn, pca, autoencoder)",
            ["family"],
            registry=registry,
        )
        self.model_heldout_accuracy = Gauge(
            "edgelearn_cloud_model_heldout_accuracy_ratio",
            "Held-out accuracy of the model serving each mode, on its served path",
            ["mode"],
            registry=registry,
        )
        self.model_heldout_items = Gauge(
            "edgelearn_cloud_model_heldout_items",
            "Distinct held-out items that accuracy rests on",
            ["mode"],
            registry=registry,
        )
        self.generations = Counter(
            "edgelearn_cloud_generations",
            "Model generations trained in the background, by outcome",
            ["family", "outcome"],
            registry=registry,
        )
        self.generation_training = Gauge(
            "edgelearn_cloud_generation_training",
            "Generation being trained in the background (0: none)",
            registry=registry,
        )
        self.model_pushed_bytes = Counter(
            "edgelearn_cloud_model_pushed_bytes",
            "Bytes of signed model envelopes published to gateways",
            ["mode"],
            registry=registry,
        )

    def watch_queue(self, depth: Callable[[], int]) -> None:
        """Count a consumer's queue in ``edgelearn_cloud_queue_depth``, read at scrape time."""
        if self._queue_depth is None:
            self._queue_depth = _QueueDepth()
            self.registry.register(self._queue_depth)
        self._queue_depth.depths.append(depth)
