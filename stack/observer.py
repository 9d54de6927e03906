"""What a user of the stack sees: every result on the cloud broker, scored per object.

``edgelearn up`` runs one :class:`ResultsObserver`: an MQTT client of its own, the
``observer`` user, subscribed to every site's ``results/+`` on the cloud broker, outside the
pipeline (it trusts no counter of the cloud's). Each result's objects carry their true label
and item (a labeled camera's ground truth) and the class the pipeline answered, so the
observer scores them as a downstream subscriber would and keeps, per object: when it was
answered, its camera, its mode, its item, right or wrong.

:meth:`ResultsObserver.report` turns that into the summary's accuracies: per mode, overall
and per camera, over the whole run and over the last ``recent_seconds``, each an
:class:`edgelearn.evidence.Evidence` (objects, distinct items, a 95% interval by
resampling items). Items a serving model was trained on (``trained_items``: what the
continuous trainer recorded in the registry) are left out, and counted, so every figure
rests on items the models never saw.

An observer can watch one site alone (``site=``), and each :class:`Scored` also says which
object of which frame it was (``seq``, ``track``) and what was answered: ``bench drift``
watches its two clouds' results apart and compares them object by object.

A camera without labels (a video, a real camera) is answered in the teacher's classes
(``Result.task``); its objects are not scored against a data set. For those the observer
counts the answers by class (``person``, ``other moving object``, ``unknown``, and any
class that is not the teacher's, which must stay 0), and, for each object the gateway's
teacher labeled, whether the first answer that carried its label agreed with it: the
student-teacher agreement, one object one piece of evidence (:meth:`teacher_report`). An
object is a track, except that a looped video shows the same people again as new tracks:
the observer also reads those cameras' features (``features/+``), and tracks that share a
bit-identical feature row are one object (:class:`edgelearn.evidence.SameObjects`). A
twin's answer comes from a student that may have trained on the first pass, so it is not
counted again.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from edgelearn import codec, wire
from edgelearn.config import BrokerConfig
from edgelearn.evidence import Evidence, SameObjects, item_accuracy

RECENT_SECONDS = 300.0


@dataclass(frozen=True)
class Scored:
    """One labeled object of one result, as the observer saw it."""

    at: float  # monotonic seconds when it arrived
    camera: str
    mode: str
    item: int | None
    correct: bool
    # Which object of which frame it was and what was answered: two clouds answering the
    # same frames (bench drift's two arms) are compared object by object.
    seq: int = -1
    track: int | None = None  # None: a whole-frame result
    label: int | None = None
    predicted: int | None = None
    capture_ns: int = 0

    def key(self) -> tuple[str, int]:
        """The evidence it belongs to: its item (None: a labeled frame of no known item,
        counted on its own)."""
        return ("item", self.item) if self.item is not None else (self.camera, id(self))


def scored_objects(result: wire.Result, at: float) -> list[Scored]:
    """The labeled objects of ``result`` (a whole-frame result: the frame, if labeled)."""

    def scored(item: int | None, track: int | None, label: int, predicted: int) -> Scored:
        return Scored(
            at,
            result.camera_id,
            result.mode,
            item,
            label == predicted,
            seq=result.seq,
            track=track,
            label=label,
            predicted=predicted,
            capture_ns=result.capture_ns,
        )

    if result.task != wire.TASK_DATASET:  # the teacher's labels: taught_answers
        return []
    if result.tracks:
        items = result.items or (None,) * len(result.tracks)
        return [
            scored(item, track, label, predicted)
            for label, predicted, item, track in zip(
                result.labels, result.classes, items, result.tracks, strict=True
            )
            if label is not None
        ]
    if result.label is None:
        return []
    return [scored(None, None, result.label, result.predicted)]


@dataclass(frozen=True)
class Agreement:
    """A teacher-labeled track's first answer, as the observer saw it."""

    at: float
    camera: str
    track: int
    agreed: bool
    label: int  # the teacher's: which class the agreement is about
    key: tuple[str, int]  # the object: its first track (a looped video's twins are one)
    answer: int  # what was answered (wire.UNKNOWN: no student, or it was unsure)


def answer_name(answer: int, classes: tuple[str, ...] = wire.TEACHER_CLASSES) -> str:
    """A teacher-task answer's name among its ``classes``; ``labeled-set class`` for one
    that is not the teacher's (it names nothing here, and must never happen)."""
    if answer == wire.UNKNOWN:
        return "unknown"
    if 0 <= answer < len(classes):
        return classes[answer]
    return "labeled-set class"


class ResultsObserver:
    """Subscribes to ``results`` of ``site`` (by default every site) on the broker of
    ``config`` (as a context manager); thread-safe."""

    def __init__(
        self,
        config: BrokerConfig,
        clock: Callable[[], float] = time.monotonic,
        *,
        site: str = wire.ANY_SITE,
        teacher_classes: tuple[str, ...] = wire.TEACHER_CLASSES,
    ) -> None:
        self.config = config
        self.site = site
        self.teacher_classes = teacher_classes  # the teacher task's, as the cloud pushed it
        self._clock = clock
        self._lock = threading.Lock()
        self._scored: list[Scored] = []
        # cameras the teacher names: answers by class, and each labeled track's first answer
        self._answers: dict[str, dict[str, int]] = {}
        self._agreements: list[Agreement] = []
        self._compared: set[tuple[str, int]] = set()
        self._same = SameObjects()  # a looped video's twin tracks, from their features
        self.results = 0
        self.undecodable = 0
        self.first_at: float | None = None  # when the first result arrived (the clock's)
        self._client: Any = None

    def __enter__(self) -> ResultsObserver:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"up-observer-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.config.apply_to_paho(client)
        topics = wire.Topics(self.site)

        def on_connect(client: Any, userdata: Any, flags: Any, code: Any, props: Any) -> None:
            if not code.is_failure:  # again after every reconnect
                client.subscribe([(topics.all_results(), 0), (topics.all_features(), 0)])

        client.on_connect = on_connect
        client.on_message = lambda client, userdata, message: self.add(bytes(message.payload))
        client.connect_async(self.config.host, self.config.port)
        client.loop_start()
        self._client = client
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._client is not None:
            self._client.disconnect()
            self._client.loop_stop()

    def add(self, payload: bytes) -> None:
        try:
            envelope = wire.decode(payload)
        except wire.WireError:
            with self._lock:
                self.undecodable += 1
            return
        if isinstance(envelope, wire.Feature):
            self._feature(envelope)
            return
        if not isinstance(envelope, wire.Result):
            return  # a gateway's status on the feature topic: not a user's concern here
        result = envelope
        now = self._clock()
        scored = scored_objects(result, now)
        with self._lock:
            self.results += 1
            if self.first_at is None:
                self.first_at = now
            self._scored.extend(scored)
            if result.task == wire.TASK_TEACHER:
                self._taught(result, now)

    def _feature(self, feature: wire.Feature) -> None:
        """A teacher camera's feature: its rows tell twin tracks apart from new objects."""
        if feature.task != wire.TASK_TEACHER or not feature.tracks:
            return
        if feature.codec is wire.Codec.JPEG:
            return  # cloud-only: the frame, not a row per object
        try:
            rows = codec.unpack_feature(feature)
        except codec.CodecError:
            with self._lock:
                self.undecodable += 1
            return
        if len(rows) != len(feature.tracks):
            return
        with self._lock:
            for track, row in zip(feature.tracks, rows, strict=True):
                self._same.add(feature.camera_id, track, [row])

    def _taught(self, result: wire.Result, now: float) -> None:
        answers = self._answers.setdefault(result.camera_id, {})
        for answer in result.classes or (result.predicted,):
            name = answer_name(answer, self.teacher_classes)
            answers[name] = answers.get(name, 0) + 1
        for track, label, answer in zip(result.tracks, result.labels, result.classes, strict=True):
            key = self._same.key(result.camera_id, track)
            if label is None or key in self._compared:
                continue
            self._compared.add(key)
            self._agreements.append(
                Agreement(now, result.camera_id, track, answer == label, label, key, answer)
            )

    def teacher_report(self, recent_seconds: float = RECENT_SECONDS) -> dict[str, Any]:
        """Per camera the teacher names: answers by class, and the agreement of the first
        answer to each teacher-labeled object with its label, over the run and the last
        ``recent_seconds`` (evidence by object: a looped video's twin tracks are one)."""
        with self._lock:
            answers = {camera: dict(counts) for camera, counts in self._answers.items()}
            agreements = list(self._agreements)
        since = self._clock() - recent_seconds
        report: dict[str, Any] = {}
        for camera in sorted(answers, key=lambda c: (len(c), c)):
            mine = [a for a in agreements if a.camera == camera]
            recent = [a for a in mine if a.at >= since]
            report[camera] = {
                "answers": answers[camera],
                "labeled_objects": len(mine),
                "agreement": _agreement(mine).as_dict(),
                # the first answers a student gave (not unknown): what it knew of objects it
                # had not trained on; the rest were first seen before there was a student
                "agreement_answered": _agreement(
                    [a for a in mine if a.answer != wire.UNKNOWN]
                ).as_dict(),
                "first_unknown": sum(a.answer == wire.UNKNOWN for a in mine),
                f"agreement_last_{recent_seconds:.0f}s": _agreement(recent).as_dict(),
                # per teacher class: a student that always says person agrees on most of a
                # street's tracks, and on none of its other moving objects
                "agreement_by_label": {
                    name: _agreement([a for a in mine if a.label == index]).as_dict()
                    for index, name in enumerate(self.teacher_classes)
                },
            }
        return report

    def scored(self) -> list[Scored]:
        """Every labeled object seen so far, in arrival order (a copy)."""
        with self._lock:
            return list(self._scored)

    def report(
        self, trained_items: Iterable[int] = (), recent_seconds: float = RECENT_SECONDS
    ) -> dict[str, Any]:
        """Per mode: ``run`` and ``last_<n>s`` accuracies (overall and per camera) over the
        objects of items no serving model trained on, and how many objects were left out."""
        with self._lock:
            scored = list(self._scored)
        trained = set(trained_items)
        kept = [s for s in scored if s.item is None or s.item not in trained]
        since = self._clock() - recent_seconds
        report: dict[str, Any] = {}
        for mode in sorted({s.mode for s in scored}):
            mine = [s for s in kept if s.mode == mode]
            recent = [s for s in mine if s.at >= since]
            report[mode] = {
                "run": accuracies(mine),
                f"last_{recent_seconds:.0f}s": accuracies(recent),
                "objects_of_trained_items_left_out": sum(1 for s in scored if s.mode == mode)
                - len(mine),
            }
        return report


def accuracies(scored: list[Scored]) -> dict[str, Any]:
    """:func:`evidence_of` ``scored``, overall and per camera ("cameras")."""
    cameras = sorted({s.camera for s in scored}, key=lambda c: (len(c), c))
    return {
        **evidence_of(scored).as_dict(),
        "cameras": {
            camera: evidence_of([s for s in scored if s.camera == camera]).as_dict()
            for camera in cameras
        },
    }


def _agreement(agreements: list[Agreement]) -> Evidence:
    return item_accuracy([a.agreed for a in agreements], [a.key for a in agreements])


def evidence_of(scored: list[Scored]) -> Evidence:
    """The accuracy of ``scored`` objects, by the distinct items they show."""
    return item_accuracy([s.correct for s in scored], [s.key() for s in scored])
