"""Cloud consumers: features in, upper layers, results out, scored and stored.

Where it sits::

    MQTT $share/<group>/.../features/+/+ --> bounded queue --> inference thread
        (batches across cameras, grouped by mode and model version)
        --> Result per frame on results/<camera>  (QoS 0: a result is news, not a record)
        --> Scoreboard (per-frame accuracy) and FeatureStore (labeled, for training)

A gateway in ``full`` mode sends ``wire.Result`` envelopes on its feature topic (only the
answer goes up); consumers republish them on the results topic and score them like their own.
Several consumers in one shared-subscription group split the load.

A camera whose objects the teacher names (``Feature.task``: a video, a real camera) is
answered by the teacher task's student (:mod:`cloud.students`) in the teacher's classes, and
``unknown`` where there is none yet or it is unsure: never by the data set's classes. Its
teacher-labeled tracks count toward the student's agreement, not the data set's accuracy.

Which model answers a feature is the :class:`~cloud.serving.ClassifierSource`'s business
(:mod:`cloud.serving`: in production the registry's cloud halves); a feature no model can
answer is dropped with reason ``no_model`` and counted. Each result is scored on the
consumers' shared :class:`~cloud.serving.Scoreboard` (per-frame accuracy, held-back frames
included) before it is published, so whoever sees it finds it counted.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Hashable
from dataclasses import dataclass, replace
from typing import Any

import aiomqtt
import numpy as np
import numpy.typing as npt
from prometheus_client import CollectorRegistry

from cloud.adaptation import ClassMix
from cloud.database import StoreUnavailable
from cloud.feature_store import Arrival, FeatureStore
from cloud.metrics import CloudMetrics
from cloud.serving import Classifier, ClassifierSource, Score, Scoreboard
from cloud.shadow import Shadow, ShadowBoard
from cloud.students import StudentBoard
from edgelearn import codec, preprocess, roi, wire
from edgelearn.artifacts import top_classes
from edgelearn.config import BrokerConfig
from edgelearn.mqtt import MqttSession
from edgelearn.peer_log import PeerLog

log = logging.getLogger(__name__)

# How long an answer's publish may take before its capture is left unacknowledged (the
# gateway then sends it again, and the stored answer goes out again).
RESULT_PUBLISH_TIMEOUT = 10.0


def _went_out(future: Any) -> bool:
    """Whether a publish's future ended with the broker holding the message."""
    return not future.cancelled() and future.exception() is None


# --- results ----------------------------------------------------------------------------


def _per_object(feature: wire.Feature, classifier: Classifier) -> bool:
    """Whether ``feature`` was classified object by object (its rows are its objects)."""
    return bool(feature.tracks) and (not classifier.takes_frames or classifier.objects)


def _result_of(
    feature: wire.Feature,
    classes: tuple[int, ...],
    scores: tuple[float, ...],
    *,
    per_object: bool,
    task: str = wire.TASK_DATASET,
) -> wire.Result:
    """The Result of one feature, answered ``classes`` (of ``task``) with ``scores``: per
    object (tracks, boxes, labels, classes, scores; the first object's answer in
    ``predicted``/``score``/``label``) or for the whole frame."""
    objects: dict[str, Any] = {}
    label = feature.label
    if per_object:
        objects = {
            "tracks": feature.tracks,
            "boxes": feature.boxes,
            "labels": feature.labels,
            "classes": classes,
            "scores": scores,
            "items": feature.items,
        }
        label = feature.labels[0]
    return wire.Result(
        camera_id=feature.camera_id,
        seq=feature.seq,
        capture_ns=feature.capture_ns,
        result_ns=time.time_ns(),
        gateway_id=feature.gateway_id,
        mode=feature.mode,
        label=label,
        predicted=classes[0],
        score=scores[0],
        model_version=feature.model_version,
        computed_at=wire.ComputedAt.CLOUD,
        held_back=0 if per_object else feature.held_back,
        held_mismatched=0 if per_object else feature.held_mismatched,
        task=task,
        **objects,
    )


def _evidence(feature: wire.Feature, per_object: bool) -> tuple[list[Hashable], list[int | None]]:
    """What each model input of ``feature`` shows (its item; else its object: camera and
    track; else the frame) and its true label (None: unlabeled)."""
    if per_object:
        items = feature.items or (None,) * len(feature.tracks)
        keys: list[Hashable] = [
            ("item", item) if item is not None else (feature.camera_id, track)
            for track, item in zip(feature.tracks, items, strict=True)
        ]
        return keys, list(feature.labels)
    return [("frame", feature.camera_id, feature.seq)], [feature.label]


def _batch_evidence(
    answers: list[_Answer], classifier: Classifier
) -> tuple[list[Hashable], list[int | None], list[str]]:
    """:func:`_evidence` of each model input of a batch, with its camera."""
    keys: list[Hashable] = []
    labels: list[int | None] = []
    cameras: list[str] = []
    for answer in answers:
        feature = answer.incoming.envelope
        assert isinstance(feature, wire.Feature)
        mine, truth = _evidence(feature, _per_object(feature, classifier))
        keys.extend(mine)
        labels.extend(truth)
        cameras.extend([feature.camera_id] * len(mine))
    return keys, labels, cameras


@dataclass(frozen=True, eq=False)
class _ShadowJob:
    """A batch the promoted model answered, for its replaced one to answer in shadow."""

    shadow: Shadow
    inputs: npt.NDArray[Any]
    keys: list[Hashable]
    cameras: list[str]
    labels: list[int | None]
    predicted: npt.NDArray[np.int64]  # the promoted model's classes


# --- the consumer ------------------------------------------------------------------------


@dataclass(frozen=True)
class ConsumerConfig:
    consumer_id: str = "cloud-0"
    site: str = wire.DEFAULT_SITE
    results_site: str | None = None  # None: the site each feature came from
    group: str = "cloud"
    batch_max: int = 32
    queue_max: int = 20_000  # about a minute at the rated 300 features/s
    session_expiry_seconds: int = 300


@dataclass(frozen=True)
class _Incoming:
    site: str
    envelope: wire.Feature | wire.Result
    size: int
    received: float = 0.0  # time.perf_counter(): the queue hop


@dataclass
class _Answer:
    """An arrival, what the consumer made of it, and whether it ends in an ack."""

    incoming: _Incoming
    result: wire.Result | None = None  # None: not answered (a drop, counted)
    values: npt.NDArray[Any] | None = None  # a feature's decoded array, to store
    final: bool = True  # False: may succeed later (a model not loaded yet): not acked
    rows: int = 1  # model inputs it gave: one per object (one for a whole frame)
    served: str = ""  # the version of the cloud half that answered
    empty: bool = False  # a raw frame with no object in view: recorded and acked, no result
    made: float = 0.0  # time.perf_counter() when its result was made: the publish hop


class CloudConsumer:
    def __init__(
        self,
        config: ConsumerConfig,
        broker: BrokerConfig,
        models: ClassifierSource,
        *,
        store: FeatureStore | None = None,
        scoreboard: Scoreboard | None = None,
        metrics: CloudMetrics | None = None,
        class_mix: ClassMix | None = None,
        shadows: ShadowBoard | None = None,
        students: StudentBoard | None = None,
    ) -> None:
        """``store`` is the de-duplication ledger (and, with ``keep_features``, the
        training data); consumers of one cloud share it, the ``scoreboard``, the
        ``metrics`` (the process's one registry, served by whoever owns it: None, a registry
        of this consumer's own, not served), the cameras' ``class_mix`` (None: answers as
        the model gives them) and the ``shadows`` (the replaced models a promotion is watched
        against). ``students`` answer the teacher task's cameras (None: ``unknown`` to all of
        them)."""
        self.config = config
        self.broker = broker
        self.models = models
        self.store = store or FeatureStore(None, keep_features=False)
        self.topics = wire.Topics(config.site)
        self.metrics = metrics or CloudMetrics(CollectorRegistry())
        self.scoreboard = scoreboard or Scoreboard()
        self.class_mix = class_mix
        self.shadows = shadows
        self.students = students
        self._shadow_jobs: list[_ShadowJob] = []  # of the batch in hand, run after its results
        self._queue: queue.Queue[_Incoming] = queue.Queue(config.queue_max)
        self.metrics.watch_queue(self._queue.qsize)
        self._stopping = threading.Event()
        self._session: MqttSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._peers = PeerLog(log)
        self.results_published = 0
        self._serving: dict[str, str] = {}  # mode -> the cloud half's version last used

    # --- ingest (event loop) -------------------------------------------------------------

    def _on_message(self, message: aiomqtt.Message) -> None:
        topic = str(message.topic)
        payload = bytes(message.payload) if isinstance(message.payload, bytes | bytearray) else b""
        gateway = wire.topic_level(topic, -2)
        try:
            envelope = wire.decode(payload)
            if not isinstance(envelope, wire.Feature | wire.Result):
                raise wire.WireError("wrong_kind", type(envelope).__name__)
            if envelope.gateway_id != gateway:
                raise wire.WireError("gateway_mismatch", f"{envelope.gateway_id} on {gateway}")
        except wire.WireError as exc:
            self.metrics.dropped.labels(exc.reason).inc()
            self._peers.warning(gateway, exc.reason, "rejected an envelope on %s: %s", topic, exc)
            return
        mode = envelope.mode
        self.metrics.features_received.labels(mode).inc()
        self.metrics.received_bytes.labels(mode).inc(len(payload))
        self.metrics.arrival_age.labels(mode).observe(
            max(0, time.time_ns() - envelope.capture_ns) / 1e9
        )
        incoming = _Incoming(
            wire.topic_level(topic, 2), envelope, len(payload), time.perf_counter()
        )
        try:
            self._queue.put_nowait(incoming)
        except queue.Full:  # not acked: the gateway sends it again
            self.metrics.dropped.labels("queue_full").inc()

    # --- inference thread ----------------------------------------------------------------

    def _work(self) -> None:
        while not self._stopping.is_set():
            try:
                first = self._queue.get(timeout=0.2)
            except queue.Empty:
                continue
            batch = [first]
            while len(batch) < self.config.batch_max:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self._handle(batch)
            except StoreUnavailable as exc:  # not stored, so not acked: the gateways resend
                log.warning("a batch of %d not stored: %s", len(batch), exc)
                self.metrics.dropped.labels("store_unavailable").inc(len(batch))
            except Exception:  # one bad batch must not stop the consumer; not acked: resent
                log.exception("inference failed on a batch of %d", len(batch))
                self.metrics.dropped.labels("inference_failed").inc(len(batch))
            finally:
                for _ in batch:
                    self._queue.task_done()

    def _handle(self, batch: list[_Incoming]) -> None:
        """Answer what the ledger has not seen, then record it once with its answer (a
        duplicate another consumer recorded meanwhile is dropped there), then score and
        publish what was new. A retry of a recorded capture gets its stored answer again,
        with no inference. A capture whose answer went out is acknowledged once the broker
        has it (QoS 1): an answer lost on the way means no ack, so the gateway sends the
        capture again and its answer goes out again (at least once, end to end)."""
        started = time.perf_counter()
        for item in batch:
            self.metrics.hop_seconds.labels(item.envelope.mode, "queue").observe(
                max(0.0, started - item.received)
            )
        self.metrics.batch_size.observe(len(batch))
        records = self.store.recorded([(item.site, item.envelope) for item in batch])
        now: list[_Incoming] = []  # acknowledged at once: nothing (more) to publish
        after: list[tuple[_Incoming, Any]] = []  # acknowledged once their answer is out
        for item, record in zip(batch, records, strict=True):
            if record is None:
                continue
            self.metrics.duplicates.labels(item.envelope.mode).inc()
            if record.result is None:
                now.append(item)
            else:  # the same bytes again: a subscriber de-duplicates by capture
                self.metrics.results_republished.inc()
                after.append((item, self._publish_result(item.site, item.envelope, record.result)))
        answers = self._answer(
            [item for item, record in zip(batch, records, strict=True) if record is None], started
        )
        answered = [answer for answer in answers if answer.result is not None or answer.empty]
        for answer in answered:
            if answer.result is not None:  # named as recorded: a re-publication names it too
                answer.result = self._named(answer.result, answer.served)
        payloads = [None if a.result is None else wire.encode(a.result) for a in answered]
        new = self.store.record(
            [
                Arrival(a.incoming.site, a.incoming.envelope, a.incoming.size, a.values, payload)
                for a, payload in zip(answered, payloads, strict=True)
            ]
        )
        published: set[int] = set()
        for answer, payload, is_new in zip(answered, payloads, new, strict=True):
            envelope = answer.incoming.envelope
            if not is_new:  # another consumer recorded it first: its answer is that one's
                self.metrics.duplicates.labels(envelope.mode).inc()
                continue
            if isinstance(envelope, wire.Feature):
                self.metrics.raw_equivalent_bytes.labels(envelope.mode).inc(
                    envelope.raw_bytes * (1 + envelope.held_back)
                )
            if answer.result is None or payload is None:  # nothing in view: acked as is
                self.metrics.frames_without_objects.labels(envelope.mode).inc()
                continue
            future = self._emit(
                answer.incoming.site, answer.result, payload, answer.served, answer.made
            )
            after.append((answer.incoming, future))
            published.add(id(answer))
        now += [a.incoming for a in answers if a.final and id(a) not in published]
        self._acknowledge(now)
        self._acknowledge_when_out(after)
        self._run_shadows()

    def _acknowledge_when_out(self, pending: list[tuple[_Incoming, Any]]) -> None:
        """Acknowledge each capture once its answer's publish is confirmed, in one batch
        when the last of them settles; one whose answer did not go out stays unacked."""
        if not pending:
            return
        left = [len(pending)]
        lock = threading.Lock()

        def settled(_: Any) -> None:
            with lock:
                left[0] -= 1
                if left[0]:
                    return
            out = [item for item, future in pending if _went_out(future)]
            if len(out) < len(pending):
                self.metrics.dropped.labels("result_not_published").inc(len(pending) - len(out))
            self._acknowledge(out)

        for _, future in pending:
            future.add_done_callback(settled)

    def _run_shadows(self) -> None:
        """The replaced models answer what the promoted ones did, after the results are out
        (:mod:`cloud.shadow`)."""
        jobs, self._shadow_jobs = self._shadow_jobs, []
        for job in jobs:
            assert self.shadows is not None
            try:
                probabilities = job.shadow.classifier.predict(job.inputs)
            except Exception:  # the shadow must never cost an answer
                log.exception("the shadow model of %s failed", job.shadow.mode)
                continue
            if self.class_mix is not None:
                probabilities = self.class_mix.reweighted(
                    job.shadow.mode, job.cameras, probabilities
                )
            self.shadows.record(
                job.shadow, job.keys, job.cameras, job.labels, job.predicted,
                np.argmax(probabilities, axis=1),
            )  # fmt: skip
            self.metrics.shadow_objects.labels(job.shadow.mode).inc(len(job.keys))

    def _answer(self, batch: list[_Incoming], started: float) -> list[_Answer]:
        """The answers of a batch that ``started`` (``time.perf_counter()``) then."""
        answers = [_Answer(item) for item in batch]
        groups: dict[tuple[str, str], list[_Answer]] = defaultdict(list)
        for answer in answers:
            envelope = answer.incoming.envelope
            if isinstance(envelope, wire.Result):
                answer.result = envelope  # the edge answered ("full")
                answer.served = envelope.model_version
                answer.made = started
            elif envelope.task == wire.TASK_TEACHER:
                self._answer_taught(answer)
            else:
                groups[(envelope.mode, envelope.model_version)].append(answer)
        for (mode, version), group in groups.items():
            # Usually one cloud half for every camera; a camera with a specialised one
            # (the continuous trainer's) gets its own batch.
            by_classifier: dict[int, tuple[Classifier | None, list[_Answer]]] = {}
            for answer in group:
                classifier = self.models.classifier_for(
                    mode, version, answer.incoming.envelope.camera_id
                )
                by_classifier.setdefault(id(classifier), (classifier, []))[1].append(answer)
            for classifier, part in by_classifier.values():
                self._answer_with(classifier, mode, version, part, started)
            self._note_serving(mode, self.models.classifier_for(mode, version))
        return answers

    def _answer_taught(self, answer: _Answer) -> None:
        """A teacher-task feature: the student's answer per object (``unknown`` without
        one, or for a cloud-only JPEG, which has no features to read), and its labeled
        tracks counted toward the student's agreement and its watch."""
        feature = answer.incoming.envelope
        assert isinstance(feature, wire.Feature)
        count = len(feature.tracks) or 1
        classes: tuple[int, ...] = (wire.UNKNOWN,) * count
        scores: tuple[float, ...] = (0.0,) * count
        student = replaced = None
        if self.students is not None:
            student = self.students.student_for(feature.mode, feature.model_version)
            replaced = self.students.replaced(feature.mode)
            if student is None or (
                replaced is not None and feature.model_version not in replaced.versions
            ):
                replaced = None  # a watch compares two students on what both can read
        rows: npt.NDArray[np.float32] | None = None
        if feature.codec is not wire.Codec.JPEG:
            try:
                answer.values = codec.unpack_feature(feature)  # kept: its labeled rows
            except codec.CodecError as exc:
                self._undecodable(feature, exc)
                return
            real = codec.dequantize(answer.values, feature.scale, feature.zero_point)
            rows = real if feature.tracks else real[None]
        if student is not None and rows is not None:
            classes, scores = student.answer(rows)
            answer.served = student.version
        if feature.tracks and self.students is not None:
            # every row, labeled or not: a looped video's twin tracks are found by them
            keys = (
                self.students.same_objects(feature.camera_id, feature.tracks, rows)
                if rows is not None
                else [(feature.camera_id, track) for track in feature.tracks]
            )
            self._count_agreement(feature, classes, replaced, rows, keys)
        answer.result = _result_of(
            feature, classes, scores, per_object=bool(feature.tracks), task=wire.TASK_TEACHER
        )
        answer.made = time.perf_counter()

    def _count_agreement(
        self,
        feature: wire.Feature,
        classes: tuple[int, ...],
        replaced: Any,
        rows: npt.NDArray[np.float32] | None,
        keys: list[tuple[str, int]],
    ) -> None:
        """The first answer to each teacher-labeled object (``keys``), for the agreement
        gauge and a promotion's watch."""
        if self.students is None or feature.label_source != self.students.source:
            return  # no labels, or another teacher's (its classes are not the student's)
        other = replaced.answer(rows)[0] if replaced is not None and rows is not None else None
        for index, (key, label) in enumerate(zip(keys, feature.labels, strict=True)):
            if label is None:
                continue
            first = self.students.record(
                feature.mode, feature.camera_id, key, label, classes[index],
                None if other is None else other[index],
            )  # fmt: skip
            if first:
                agreement, _ = self.students.agreement(feature.camera_id)
                if agreement is not None:
                    self.metrics.teacher_agreement.labels(feature.camera_id).set(agreement)

    def _note_serving(self, mode: str, classifier: Classifier | None) -> None:
        """``model_info``: the global cloud half now answering ``mode``."""
        if classifier is None:
            return
        previous = self._serving.get(mode)
        if previous != classifier.version:
            if previous is not None:  # a promotion or a rollback: the old one serves no more
                self.metrics.model_info.labels(mode, previous).set(0)
            self.metrics.model_info.labels(mode, classifier.version).set(1)
            self._serving[mode] = classifier.version

    def _answer_with(
        self,
        classifier: Classifier | None,
        mode: str,
        version: str,
        group: list[_Answer],
        started: float,
    ) -> None:
        if classifier is None:  # the registry may get it (a training still running)
            self.metrics.dropped.labels("no_model").inc(len(group))
            self._peers.warning(version, "no_model", "no cloud model for %s %s yet", mode, version)
            for answer in group:
                answer.final = False
            return
        inputs, kept = self._inputs(classifier, group)
        if not kept:
            return
        called = time.perf_counter()
        probabilities = classifier.predict(inputs)
        inferred = time.perf_counter()
        self.metrics.inference_seconds.labels(mode).observe(inferred - called)
        for hop, seconds in (("prepare", called - started), ("inference", inferred - called)):
            histogram = self.metrics.hop_seconds.labels(mode, hop)
            for _ in kept:  # each feature's own hop
                histogram.observe(seconds)
        mix = self.class_mix
        shadow = self.shadows.shadow_for(mode, classifier.version) if self.shadows else None
        if mix is not None or shadow is not None:  # a static cloud skips all of this
            keys, labels, cameras = _batch_evidence(kept, classifier)
            if len(keys) != len(probabilities):  # not one per input: nothing to adapt by
                mix = shadow = None
            if mix is not None:
                probabilities = mix.answer(mode, cameras, keys, probabilities)
            if shadow is not None:
                predicted = np.argmax(probabilities, axis=1)
                self._shadow_jobs.append(
                    _ShadowJob(shadow, inputs, keys, cameras, labels, predicted)
                )
        position = 0
        for answer in kept:
            feature = answer.incoming.envelope
            assert isinstance(feature, wire.Feature)
            rows = probabilities[position : position + answer.rows]
            position += answer.rows
            answer.served = classifier.version
            classes, scores = top_classes(rows)
            per_object = _per_object(feature, classifier)
            answer.result = _result_of(feature, classes, scores, per_object=per_object)
            answer.made = time.perf_counter()

    def _inputs(
        self, classifier: Classifier, answers: list[_Answer]
    ) -> tuple[npt.NDArray[Any], list[_Answer]]:
        """Model input of each feature; an undecodable one is dropped for good (its
        retries would not decode either) and still acknowledged."""
        rows: list[npt.NDArray[Any]] = []
        kept: list[_Answer] = []
        for answer in answers:
            feature = answer.incoming.envelope
            assert isinstance(feature, wire.Feature)
            try:
                given: list[npt.NDArray[Any]]
                if classifier.takes_frames:
                    given = self._frame_inputs(feature, classifier)
                    if given and feature.tracks:  # the crops, kept as training rows
                        answer.values = np.stack(given)
                else:
                    answer.values = codec.unpack_feature(feature)
                    values = codec.dequantize(answer.values, feature.scale, feature.zero_point)
                    given = list(values) if feature.tracks else [values]
            except (codec.CodecError, preprocess.PreprocessError) as exc:
                self._undecodable(feature, exc)
                continue
            if not given:  # a raw frame with no object in view, for an objects model
                answer.empty = True
                continue
            answer.rows = len(given)
            rows.extend(given)
            kept.append(answer)
        return (np.stack(rows) if rows else np.empty(0)), kept

    def _undecodable(
        self, feature: wire.Feature, exc: codec.CodecError | preprocess.PreprocessError
    ) -> None:
        """A feature dropped for good (its retries would not decode either), counted."""
        self.metrics.dropped.labels(exc.reason).inc()
        self._peers.warning(
            feature.gateway_id, exc.reason, "undecodable feature from %s: %s",
            feature.gateway_id, exc,
        )  # fmt: skip

    def _frame_inputs(
        self, feature: wire.Feature, classifier: Classifier
    ) -> list[npt.NDArray[Any]]:
        """``raw``: the camera's JPEG as model input, the way the gateway would have cut it:
        each object the gateway found, cut out with the mask the gateway sent with it
        (:func:`edgelearn.roi.mask_windows`: the cloud keeps no background model, so a
        camera's frames may go to any consumer of any cloud machine), for a classifier
        trained on crops; the centre square for one trained on whole frames."""
        if not classifier.objects:
            jpeg = feature.payload
            return [preprocess.frame_to_input(jpeg, classifier.input_size, classifier.channels)]
        mask = roi.mask_from_windows(feature.masks)
        reduction = roi.crop_reduction(feature.boxes, classifier.input_size)
        decoded = preprocess.decode_reduced(feature.payload, classifier.channels, reduction)
        size = (decoded.shape[1] * reduction, decoded.shape[0] * reduction)
        return [
            roi.crop(decoded, box, size, classifier.input_size, classifier.channels, mask=mask)
            for box in feature.boxes
        ]

    def _emit(
        self, site: str, result: wire.Result, payload: bytes, served: str, made: float
    ) -> Any:
        """Score ``result`` and publish it (``payload``: its bytes, as recorded); ``made``
        (``time.perf_counter()``) is when it was made (an edge result: when its batch
        started), for the publish hop. The publish's future."""
        mode = result.mode
        computed_at = result.computed_at.name.lower()
        self.metrics.results.labels(mode, computed_at).inc()
        self.metrics.latency.labels(mode).observe(
            max(0, result.result_ns - result.capture_ns) / 1e9
        )
        taught = result.task == wire.TASK_TEACHER
        for name in result.names:
            self.metrics.predictions.labels(mode, result.task, name).inc()
            if taught:
                self.metrics.taught_answers.labels(result.camera_id, name).inc()
        if taught:  # its labels are the teacher's: agreement (above), not accuracy
            score = Score(0, 0)
            self.metrics.objects_classified.labels(mode).inc(len(result.tracks))
        elif result.tracks:  # each object on its own, as the frame's keyframe
            scores = [
                self.scoreboard.record(result.camera_id, mode, label, predicted, 0, 0, served)
                for label, predicted in zip(result.labels, result.classes, strict=True)
            ]
            score = Score(sum(s.frames for s in scores), sum(s.correct for s in scores))
            self.metrics.objects_classified.labels(mode).inc(len(result.tracks))
        else:
            score = self.scoreboard.record(
                result.camera_id,
                mode,
                result.label,
                result.predicted,
                result.held_back,
                result.held_mismatched,
                served,
            )
        if score.frames:
            scored = self.metrics.frames_scored
            scored.labels(result.camera_id, mode, "correct").inc(score.correct)
            scored.labels(result.camera_id, mode, "wrong").inc(score.frames - score.correct)
            accuracy = self.scoreboard.accuracy(result.camera_id, mode)
            if accuracy is not None:
                self.metrics.accuracy.labels(result.camera_id, mode).set(accuracy)
        future = self._publish_result(site, result, payload)
        future.add_done_callback(functools.partial(self._published, mode, made))
        return future

    def _named(self, result: wire.Result, served: str) -> wire.Result:
        """``result`` with the class name of each answer (``served``: the model version
        whose classes a data-set answer indexes; a teacher-task answer is in the student's)."""
        if result.task == wire.TASK_TEACHER:
            names: tuple[str, ...] = (
                self.students.classes if self.students is not None else wire.TEACHER_CLASSES
            )
        else:
            names = self.models.class_names(served) if served else ()

        def name(predicted: int) -> str:
            if predicted == wire.UNKNOWN:
                return "unknown"
            return names[predicted] if 0 <= predicted < len(names) else str(predicted)

        return replace(result, names=tuple(name(p) for p in result.classes or (result.predicted,)))

    def _publish_result(self, site: str, capture: Any, payload: bytes) -> Any:
        """Publish an answer at QoS 1 on the results topic of ``capture``'s camera; the
        future is done when the broker has it (or it failed, or timed out)."""
        topics = wire.Topics(self.config.results_site or site)
        return self._publish(
            topics.result(capture.camera_id), payload, 1, timeout=RESULT_PUBLISH_TIMEOUT
        )

    def _acknowledge(self, handled: list[_Incoming]) -> None:
        """One Ack per (site, gateway) for everything handled for good, new or not."""
        by_gateway: dict[tuple[str, str], list[wire.Feature | wire.Result]] = defaultdict(list)
        for item in handled:
            by_gateway[(item.site, item.envelope.gateway_id)].append(item.envelope)
        for (site, gateway), envelopes in by_gateway.items():
            for start in range(0, len(envelopes), wire.MAX_ACK_ENTRIES):
                chunk = envelopes[start : start + wire.MAX_ACK_ENTRIES]
                ack = wire.Ack.of(
                    gateway,
                    [wire.capture_of(envelope) for envelope in chunk],
                    consumer=self.config.consumer_id,
                )
                future = self._publish(wire.Topics(site).ack(gateway), wire.encode(ack), 1)
                future.add_done_callback(self._acked)
            self.metrics.acked.inc(len(envelopes))

    def _publish(self, topic: str, payload: bytes, qos: int, timeout: float | None = None) -> Any:
        assert self._loop is not None and self._session is not None
        publish = self._session.publish(topic, payload, qos=qos, wait_for_connection=1.0)
        return asyncio.run_coroutine_threadsafe(
            publish if timeout is None else asyncio.wait_for(publish, timeout), self._loop
        )

    def _published(self, mode: str, made: float, future: Any) -> None:
        if _went_out(future):
            self.metrics.hop_seconds.labels(mode, "publish").observe(time.perf_counter() - made)
            self.results_published += 1

    def _acked(self, future: Any) -> None:
        if future.cancelled() or future.exception() is not None:
            self.metrics.ack_failures.inc()  # the gateway sends again; that one is acked

    # --- lifecycle -----------------------------------------------------------------------

    async def __aenter__(self) -> CloudConsumer:
        self._loop = asyncio.get_running_loop()
        self._session = MqttSession(
            self.broker,
            self.config.consumer_id,
            subscriptions=[(wire.shared(self.config.group, self.topics.all_features()), 1)],
            on_message=self._on_message,
            # Features queue at the broker while this slot restarts; an abandoned slot's
            # session (and what was queued for it) goes after this long, and the gateways'
            # outboxes send the unacknowledged features again to the slots still there.
            persistent=True,
            session_expiry_seconds=self.config.session_expiry_seconds,
            max_queued_incoming=self.config.queue_max,
            backoff_max=2.0,  # back within 2 s of the broker
        )
        await self._session.__aenter__()
        self._thread = threading.Thread(target=self._work, name="inference", daemon=True)
        self._thread.start()
        return self

    async def drain(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            await asyncio.sleep(0.02)  # polling the queue's idle condition, bounded

    async def __aexit__(self, *exc_info: object) -> None:
        self._stopping.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 10)
        if self._session is not None:
            await self._session.__aexit__(None, None, None)
