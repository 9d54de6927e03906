"""The gateway's teacher stage: a detector labels a sample of the objects the gateway sends,
on at most a set share of one core.

With ``hog``, OpenCV's HOG people detector gives a second opinion on each view, which can
only veto a label (:class:`~edgelearn.teacher.TrackVotes`): cheap (2-7 ms a view against the
detector's 17), and weaker (18 of 20 pinned people, 0 false).

Where it sits::

    worker thread: FramePipeline.process -> Forward (objects sent) --offer--> [a small queue]
    teacher thread: colour decode at 1/2 -> teacher_view -> Teacher.scores -> TrackVotes

The worker never waits for it: an offer that finds the queue full is dropped and counted
(``busy``). The teacher looks at a track at most ``views`` times, ``spacing`` frames apart
(the track's different poses are the views :class:`~edgelearn.teacher.TrackVotes` needs to
agree), and never again once its label counts. After each look it sleeps for as long as the
look cost in CPU times ``(1 - budget) / budget``, so over any stretch of work its thread
uses at most ``budget`` of a core (0.2 by default).

What it yields is a label per (camera, track) once the views agree, counted in the metrics
(looks, labels by class, CPU seconds). :meth:`TeacherStage.label_tracks` gives them to the
pipeline, which puts them on every later Feature of the track, with the source
``teacher:<name>`` and the views' score: only labels and features go up, never the frames
the teacher looked at.

**The sample rate follows the cloud's agreement.** The worker reads the results of its
cameras (bridged down from the cloud, as any subscriber at the site could) and hands them
to :meth:`TeacherStage.answered`. The first answer to a labeled track, made before any
student could have trained on it, is compared with the teacher's label (``unknown``
disagrees). Once the latest ``window`` labeled tracks of a camera agree at ``agree`` or
more, the teacher looks at only ``watch_rate`` of its new tracks (chosen by a hash of the
track, so a track is in or out for good), and its CPU falls with it. When agreement over the
window falls under ``drift_below`` (the scene changed, or a promotion went wrong), it looks
at every new track again, and so it does at once when results come from features of an edge
half it has not seen answered before (a new model generation, or another mode): no student
has learned those yet. Both thresholds count tracks, not features: one track is one piece
of evidence.
"""

from __future__ import annotations

import collections
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

from edgelearn import roi, wire
from edgelearn.preprocess import HD_720P
from edgelearn.teacher import HogPeople, Teacher, TeacherError, TrackVotes, teacher_view

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TeacherSettings:
    budget: float = 0.2  # the most of one core the teacher's thread uses
    views: int = 3  # views of a track that must agree (TrackVotes)
    spacing: int = 5  # frames of a track between two looks
    queue_depth: int = 4
    watch_rate: float = 0.1  # share of new tracks looked at once the cloud's answers agree
    window: int = 20  # latest labeled tracks of a camera its agreement is measured on
    agree: float = 0.95  # ... at least this over a full window: the watch rate
    drift_below: float = 0.85  # ... under this: every new track again
    hog: bool = False  # OpenCV's HOG people detector as a second opinion on each view

    def __post_init__(self) -> None:
        if not 0 < self.budget <= 1:
            raise ValueError("the teacher's budget is a share of one core: 0 < budget <= 1")
        if not 0 < self.watch_rate <= 1 or not 0 <= self.drift_below < self.agree <= 1:
            raise ValueError("need 0 < watch_rate <= 1 and 0 <= drift_below < agree <= 1")
        if self.views < 1 or self.spacing < 0 or self.queue_depth < 1:
            raise ValueError("views and queue_depth must be at least 1, spacing at least 0")


@dataclass(frozen=True)
class _Look:
    camera_id: str
    seq: int
    jpeg: bytes
    objects: tuple[roi.FoundObject, ...]


class TeacherStage:
    """Runs in a thread of its own between :meth:`start` and :meth:`stop`. ``teacher`` is
    read at every look, so a teacher pushed later takes over at the next one; with none, an
    offer is ignored. ``on_look(camera, seconds)`` and ``on_label(camera, label)`` count."""

    def __init__(
        self,
        teacher: Callable[[], Teacher | None],
        settings: TeacherSettings | None = None,
        *,
        on_look: Callable[[str, float], None] = lambda camera, seconds: None,
        on_label: Callable[[str, str], None] = lambda camera, label: None,
        on_busy: Callable[[str], None] = lambda camera: None,
        on_agreement: Callable[[str, float, float], None] = lambda camera, agreed, rate: None,
    ) -> None:
        self.settings = settings or TeacherSettings()
        self._teacher = teacher
        self._on_look, self._on_label, self._on_busy = on_look, on_label, on_busy
        self._on_agreement = on_agreement
        # per camera: the latest labeled tracks' outcomes, the tracks compared, the rate
        self._agreed: dict[str, collections.deque[bool]] = {}
        self._compared: dict[str, collections.OrderedDict[int, None]] = {}
        self._rates: dict[str, float] = {}
        self._spaces: dict[str, set[tuple[str, str]]] = {}  # (mode, edge version) answered
        self._rate_lock = threading.Lock()  # the worker offers, the event loop compares
        self.votes = TrackVotes(views=self.settings.views)
        self._hog = HogPeople() if self.settings.hog else None
        self._looked: collections.OrderedDict[tuple[str, int], int] = collections.OrderedDict()
        self._queue: queue.Queue[_Look | None] = queue.Queue(self.settings.queue_depth)
        self._thread: threading.Thread | None = None
        self.cpu_seconds = 0.0
        self.looks = 0

    def label(self, camera_id: str, track: int) -> str | None:
        return self.votes.label(camera_id, track)

    def label_tracks(self, camera_id: str, tracks: tuple[int, ...]) -> dict[str, Any] | None:
        """The teacher's labels of a camera's tracks (classes of its task, ``votes.task``)
        as a Feature's ``labels``, ``label_scores`` and ``label_source``; None without a
        teacher or while none of them is labeled."""
        teacher = self._teacher()
        if teacher is None or not tracks:
            return None
        found = [self.votes.labeled(camera_id, track) for track in tracks]
        if all(item is None for item in found):
            return None
        return {
            "labels": tuple(None if item is None else item[0] for item in found),
            "label_scores": tuple(
                0.0 if item is None else float(np.float32(item[1])) for item in found
            ),
            "label_source": f"teacher:{teacher.name}",
        }

    def offer(self, frame: wire.Frame, objects: tuple[roi.FoundObject, ...]) -> None:
        """From the worker thread: a forwarded frame's objects; those it sends and that are
        worth a look are queued with the frame's JPEG (never blocks). A camera that renders
        ground truth has its labels: the budget goes to cameras without (real ones, videos)."""
        if not objects or frame.truth_boxes or self._teacher() is None:
            return
        wanted = tuple(item for item in objects if item.send and self._worth_a_look(frame, item))
        if not wanted:
            return
        look = _Look(frame.camera_id, frame.seq, frame.payload, wanted)
        try:
            self._queue.put_nowait(look)
        except queue.Full:
            self._on_busy(frame.camera_id)
            return
        for item in wanted:
            self._looked[(frame.camera_id, item.track)] = frame.seq
            self._looked.move_to_end((frame.camera_id, item.track))
        while len(self._looked) > 4096:
            self._looked.popitem(last=False)

    def _worth_a_look(self, frame: wire.Frame, item: roi.FoundObject) -> bool:
        if self.votes.label(frame.camera_id, item.track) is not None:
            return False  # its label already counts
        last = self._looked.get((frame.camera_id, item.track))
        if last is None:  # a new track: in the sample at the camera's rate
            return self.in_sample(frame.camera_id, item.track)
        return frame.seq - last >= self.settings.spacing

    # --- the sample rate, from the cloud's answers -------------------------------------

    def _new_space(self, camera: str, space: tuple[str, str]) -> None:
        """A result from features of an edge half not seen before (a new generation, or
        another mode): no student has learned them yet, so the teacher starts over."""
        with self._rate_lock:
            seen = self._spaces.setdefault(camera, set())
            if space in seen:
                return
            first = not seen
            seen.add(space)
            if first:
                return
            self._agreed.pop(camera, None)
            changed = self._rates.get(camera, 1.0) != 1.0
            self._rates[camera] = 1.0
        if changed:
            log.info("teacher: %s now sends %s %s features: looks at every new track again",
                     camera, *space)  # fmt: skip
            self._on_agreement(camera, 0.0, 1.0)

    def rate(self, camera_id: str) -> float:
        """The share of the camera's new tracks the teacher looks at."""
        with self._rate_lock:
            return self._rates.get(camera_id, 1.0)

    def in_sample(self, camera_id: str, track: int) -> bool:
        """Whether the teacher looks at this new track at the camera's rate: by a hash of
        the track's id, so a track stays in the sample or out of it."""
        rate = self.rate(camera_id)
        return rate >= 1.0 or ((track * 2654435761) % 2**32) / 2**32 < rate

    def wants(self, camera_id: str) -> bool:
        """Whether results of this camera can tell it anything (it labeled a track there)."""
        with self._rate_lock:
            return camera_id in self._compared

    def note_labeled(self, camera_id: str) -> None:
        with self._rate_lock:
            self._compared.setdefault(camera_id, collections.OrderedDict())

    def answered(self, result: wire.Result) -> None:
        """A result of one of its cameras: the first answer to each labeled track counts
        toward the camera's agreement, and the rate follows (see the module docstring)."""
        if result.task != wire.TASK_TEACHER or not result.tracks:
            return
        camera = result.camera_id
        self._new_space(camera, (result.mode, result.model_version))
        for track, answer in zip(result.tracks, result.classes, strict=True):
            labeled = self.votes.labeled(camera, track)
            if labeled is None:
                continue
            with self._rate_lock:
                compared = self._compared.setdefault(camera, collections.OrderedDict())
                if track in compared:
                    continue
                compared[track] = None
                while len(compared) > 4096:
                    compared.popitem(last=False)
                recent = self._agreed.setdefault(
                    camera, collections.deque(maxlen=self.settings.window)
                )
                recent.append(answer == labeled[0])
                agreed = sum(recent) / len(recent)
                rate = self._rates.get(camera, 1.0)
                if len(recent) == self.settings.window and agreed >= self.settings.agree:
                    rate = self.settings.watch_rate
                elif agreed < self.settings.drift_below:
                    rate = 1.0
                if rate != self._rates.get(camera, 1.0):
                    log.info("teacher: %s agrees on %.0f%% of its last %d labeled tracks: "
                             "looks at %.0f%% of new tracks", camera, agreed * 100,
                             len(recent), rate * 100)  # fmt: skip
                self._rates[camera] = rate
            self._on_agreement(camera, agreed, rate)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="teacher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        if self._thread is None:
            return
        self._queue.put(None)  # after whatever is queued
        self._thread.join(timeout)
        self._thread = None

    def _run(self) -> None:
        settings = self.settings
        while (look := self._queue.get()) is not None:
            teacher = self._teacher()
            if teacher is None:
                continue
            if teacher.classes != self.votes.classes:  # a teacher of other classes was pushed
                log.info("teacher: %s labels %s", teacher.name, ", ".join(teacher.classes))
                self.votes = TrackVotes(views=settings.views, classes=teacher.classes)
            started = time.thread_time()
            try:
                scores = self._score(teacher, look)
            except (TeacherError, cv2.error) as exc:
                log.warning("teacher: a look at %s #%d failed: %s", look.camera_id, look.seq, exc)
                scores = []
            spent = time.thread_time() - started
            self.cpu_seconds += spent
            self.looks += 1
            self._on_look(look.camera_id, spent)
            for track, score, second in scores:
                before = self.votes.label(look.camera_id, track)
                label = self.votes.add(look.camera_id, track, score, second)
                if label is not None and before is None:  # counted once per track
                    self.note_labeled(look.camera_id)
                    self._on_label(look.camera_id, label)
            time.sleep(spent * (1 - settings.budget) / settings.budget)  # the budget

    def _score(self, teacher: Teacher, look: _Look) -> list[tuple[int, Any, bool | None]]:
        """Each object's view: the teacher's scores, and the second opinion (None: off)."""
        decoded = cv2.imdecode(np.frombuffer(look.jpeg, np.uint8), cv2.IMREAD_REDUCED_COLOR_2)
        if decoded is None:
            raise TeacherError(f"{len(look.jpeg)} bytes are not a JPEG OpenCV reads")
        image = np.asarray(decoded, np.uint8)
        # The finder's boxes are in 720p pixels, whatever the camera sends.
        sx, sy = image.shape[1] / HD_720P[0], image.shape[0] / HD_720P[1]
        scores = []
        for item in look.objects:
            x0, y0, x1, y1 = item.box
            box = (round(x0 * sx), round(y0 * sy), round(x1 * sx), round(y1 * sy))
            view = teacher_view(image, box)
            second = None if self._hog is None else self._hog.score(view) > 0
            scores.append((item.track, teacher.scores(view), second))
        return scores
