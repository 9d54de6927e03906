"""The per-frame work of a gateway, without any I/O: frame envelope in, envelopes out.

Where it sits: the frame queue (:mod:`gateway.ingest`) -> the worker thread
(:mod:`gateway.service`) -> **FramePipeline.process** -> the uplink (:mod:`gateway.uplink`).

For each frame: reject what is not a JPEG (a truncated one lacks its end-of-image marker),
decode it at 1/8 scale for the background model (:mod:`edgelearn.roi`), which finds the
objects in view and marks those the keyframe rule (:mod:`edgelearn.keyframes`) picks. Those
go up together: ``raw`` (cloud-only) as the camera's JPEG unchanged with their boxes, an
edge mode (:mod:`edgelearn.modes`) as its extractor's output (:mod:`edgelearn.artifacts`)
on each one's crop, packed with :mod:`edgelearn.codec` into a ``wire.Feature``, and
``full`` as a ``wire.Result`` (the whole CNN ran here, only its answer goes up). Without
objects (``--no-objects``) or for a model of whole frames, the same rule runs on whole
frames (:class:`edgelearn.keyframes.KeyframeFilter`) and the frame's model input is used.

Until the deployment a mode needs has arrived, the pipeline runs ``raw`` and says so
(``effective_mode``), so no frame is lost while waiting for a model.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from edgelearn import codec, preprocess, roi, wire
from edgelearn.artifacts import LoadedDeployment, top_classes
from edgelearn.keyframes import KeyframeFilter, KeyframeSettings, SmallFrame
from edgelearn.modes import FULL, RAW, Mode
from edgelearn.student import EdgeStudent

STAGES = ("decode_small", "objects", "keyframe", "decode", "extract", "encode")


def decode_small(jpeg: bytes) -> SmallFrame | None:
    """1/8-scale grayscale decode, blurred (:func:`edgelearn.roi.small_grey`), as the
    keyframe filter's int16; ``None`` if the JPEG does not decode."""
    small = roi.small_grey(jpeg)
    return None if small is None else small.astype(np.int16)


# --- objects --------------------------------------------------------------------------


def takes_objects(deployment: LoadedDeployment) -> bool:
    """Whether ``deployment`` was trained on object crops (its metadata's
    ``preprocessing``), not on the whole frame's centre square."""
    return deployment.metadata.get("preprocessing") == roi.CROP_RULE


Truth = tuple[tuple[int | None, ...], tuple[int | None, ...]]
"""Per found box: its true label and its true item (None: not known)."""


def ground_truth(frame: wire.Frame, boxes: tuple[wire.Box, ...]) -> Truth:
    """The true label and item of each found box: the frame's true object it overlaps best
    at IoU 0.5 or more, each at most once (a labeled scene of several items); with one box
    and a frame-level label (one item in view), that label; otherwise None."""
    if not frame.truth_boxes:
        if frame.label is not None and len(boxes) == 1:
            return (frame.label,), (None,)
        return (None,) * len(boxes), (None,) * len(boxes)
    matched = roi.match(boxes, frame.truth_boxes, 0.5)
    items = frame.truth_items or (None,) * len(frame.truth_boxes)
    return (
        tuple(frame.truth_labels[matched[b]] if b in matched else None for b in range(len(boxes))),
        tuple(items[matched[b]] if b in matched else None for b in range(len(boxes))),
    )


def truth_source(labels: tuple[int | None, ...]) -> dict[str, Any]:
    """A Feature's label fields for these true labels: ``truth``, each as sure as can be."""
    if all(label is None for label in labels):
        return {"label_source": "", "label_scores": ()}
    return {"label_source": wire.SOURCE_TRUTH, "label_scores": (1.0,) * len(labels)}


# --- the pipeline --------------------------------------------------------------------


@dataclass(frozen=True)
class Dropped:
    reason: str


@dataclass(frozen=True)
class HeldBack:
    score: float
    objects: tuple[roi.FoundObject, ...] = ()  # what is in view in this frame


@dataclass(frozen=True)
class Forward:
    envelope: wire.Feature | wire.Result
    mode: Mode
    data: bytes  # the encoded envelope, encoded once, published as is
    objects: tuple[roi.FoundObject, ...] = ()


Outcome = Dropped | HeldBack | Forward


@dataclass
class FramePipeline:
    """Not thread-safe for ``process`` (one per worker thread); ``deploy`` and ``set_mode``
    may be called from another thread: they swap references the worker reads per frame."""

    gateway_id: str
    mode: Mode = field(default_factory=lambda: Mode(RAW))
    keyframes: KeyframeSettings = field(default_factory=KeyframeSettings)
    feature_codec: wire.Codec = wire.Codec.ZSTD
    on_stage: Callable[[str, float], None] = lambda stage, seconds: None
    objects: roi.RoiSettings | None = field(default_factory=roi.RoiSettings)  # None: off
    # full: every Nth keyframe with labeled objects sends their crops instead of the answer
    # (the cloud answers it and learns from it); 0: never
    learning_sample: int = 10
    # A teacher's labels of a camera's tracks as a Feature's label fields (labels, their
    # scores and source; None: none of them labeled yet): gateway.teacher_stage
    teacher_labels: Callable[[str, tuple[int, ...]], dict[str, Any] | None] | None = None
    # full: the teacher task's student with the edge half it reads (pushed by the cloud),
    # which answers the objects of cameras the teacher names; None: they are ``unknown``
    student: EdgeStudent | None = None
    _filter: KeyframeFilter = field(init=False)
    _labeled_keyframes: int = 0
    _finder: roi.ObjectFinder = field(init=False)
    _deployments: dict[Mode, LoadedDeployment] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._filter = KeyframeFilter(self.keyframes)
        self._finder = roi.ObjectFinder(self.objects, self.keyframes)

    # --- live changes (another thread) ------------------------------------------------

    def deploy(self, deployment: LoadedDeployment) -> None:
        with self._lock:
            self._deployments = {**self._deployments, deployment.mode: deployment}

    def set_mode(self, mode: Mode) -> None:
        self.mode = mode

    def set_keyframes(self, settings: KeyframeSettings) -> None:
        self.keyframes = settings
        self._filter.settings = settings
        self._finder.keyframes = settings

    def deployment_for(self, mode: Mode) -> LoadedDeployment | None:
        return self._deployments.get(mode)

    def effective_mode(self) -> Mode:
        mode = self.mode
        return mode if mode.kind == RAW or self.deployment_for(mode) else Mode(RAW)

    def model_versions(self) -> dict[Mode, str]:
        return {mode: deployment.version for mode, deployment in self._deployments.items()}

    # --- per frame -----------------------------------------------------------------------

    def _timed(self, stage: str, started: float) -> float:
        now = time.perf_counter()
        self.on_stage(stage, now - started)
        return now

    def process(self, frame: wire.Frame) -> Outcome:
        jpeg = frame.payload
        if jpeg[:2] != b"\xff\xd8" or jpeg[-2:] != b"\xff\xd9":
            return Dropped("undecodable")  # not a JPEG, or truncated in transit
        started = time.perf_counter()
        held_back = held_mismatched = 0
        found: tuple[roi.FoundObject, ...] = ()
        small = None
        if self.keyframes.enabled or self.objects is not None:
            small = roi.small_grey(jpeg)
            if small is None:  # before any state is touched: the camera's state is unharmed
                return Dropped("undecodable")
            started = self._timed("decode_small", started)
            if self.objects is not None:
                found = tuple(self._finder.update(frame.camera_id, small))
                started = self._timed("objects", started)
        mode = self.mode
        deployment = self.deployment_for(mode)
        if deployment is None:
            mode = Mode(RAW)
        if self.objects is not None and (
            mode.kind == RAW or (deployment is not None and takes_objects(deployment))
        ):
            return self._process_objects(frame, mode, deployment, found, started)
        if small is not None:  # whole frames: no objects, or a model of whole frames
            decision = self._filter.decide(frame.camera_id, small.astype(np.int16), frame.label)
            started = self._timed("keyframe", started)
            if not decision.keyframe:
                return HeldBack(decision.score, found)
            held_back, held_mismatched = decision.held_back, decision.held_mismatched
        if mode.kind == RAW:  # cloud-only without objects: the JPEG as it is
            jpeg_as_is = codec.EncodedArray.jpeg(jpeg)
            return self._forward(frame, mode, "none", jpeg_as_is, held_back, held_mismatched)
        assert deployment is not None
        model_input = self._model_input(jpeg, deployment)
        if model_input is None:
            return Dropped("undecodable")
        started = self._timed("decode", started)
        output = deployment.extractor.run(model_input)
        started = self._timed("extract", started)
        if mode.kind == FULL:
            result = self._edge_result(frame, output, deployment, (held_back, held_mismatched))
            return Forward(result, Mode(FULL), wire.encode(result), found)
        encoded = deployment.extractor.output.encode(output, self.feature_codec)
        forward = self._forward(
            frame, mode, deployment.version, encoded, held_back, held_mismatched
        )
        self._timed("encode", started)
        return dataclasses.replace(forward, objects=found)

    def _process_objects(
        self,
        frame: wire.Frame,
        mode: Mode,
        deployment: LoadedDeployment | None,
        found: tuple[roi.FoundObject, ...],
        started: float,
    ) -> Outcome:
        """The objects path. The objects the keyframe rule picked (every one wholly in
        view with keyframes off) go up together, as one Feature (or one Result for
        ``full``) with their tracks, boxes and ground-truth labels. Cloud-only (``raw``)
        sends the frame's JPEG as it is with their boxes, so the cloud classifies the same
        objects an edge mode would; a deployment trained on object crops runs each one's
        crop (:func:`edgelearn.roi.crop`, with the background model's mask) through the
        extractor. A frame with none to send is held back."""
        chosen = [item for item in found if item.send]
        if mode.kind == RAW or deployment is None:
            if not chosen and self.keyframes.enabled:
                return HeldBack(0.0, found)
            return self._forward_jpeg(frame, chosen, found)  # keyframes off: every frame
        if not chosen:
            return HeldBack(0.0, found)
        tracks = tuple(item.track for item in chosen)
        boxes = tuple(item.box for item in chosen)
        labels, items = ground_truth(frame, boxes)
        sent_labels = self._labels_sent(frame, tracks, labels, items)
        try:
            crops = self._crops(frame, boxes, deployment.extractor.input_shape)
        except preprocess.PreprocessError:
            return Dropped("undecodable")
        started = self._timed("decode", started)
        if mode.kind == FULL and self._is_learning_sample(labels):
            sample = codec.encode_array(np.stack(crops), codec=self.feature_codec)
            forward = self._forward(frame, mode, deployment.version, sample, 0, 0)
            feature = dataclasses.replace(
                forward.envelope, label=None, tracks=tracks, boxes=boxes, **sent_labels
            )
            return Forward(feature, mode, wire.encode(feature), found)
        if mode.kind == FULL and frame.task == wire.TASK_TEACHER:
            # the data set's classes would name nothing here: the student answers, if any
            try:
                answers = self._student_answers(frame, boxes, crops, deployment)
            except preprocess.PreprocessError:
                return Dropped("undecodable")
            started = self._timed("extract", started)
            result = self._edge_result(
                frame, None, deployment, objects=(tracks, boxes, (labels, items)), taught=answers
            )
            return Forward(result, Mode(FULL), wire.encode(result), found)
        outputs = np.stack([deployment.extractor.run(crop) for crop in crops])
        started = self._timed("extract", started)
        if mode.kind == FULL:
            result = self._edge_result(
                frame, outputs, deployment, objects=(tracks, boxes, (labels, items))
            )
            return Forward(result, Mode(FULL), wire.encode(result), found)
        encoded = deployment.extractor.output.encode(outputs, self.feature_codec)
        forward = self._forward(frame, mode, deployment.version, encoded, 0, 0)
        feature = dataclasses.replace(
            forward.envelope, label=None, tracks=tracks, boxes=boxes, **sent_labels
        )
        self._timed("encode", started)
        return Forward(feature, mode, wire.encode(feature), found)

    def _crops(
        self, frame: wire.Frame, boxes: tuple[wire.Box, ...], shape: tuple[int, int, int]
    ) -> list[Any]:
        """The objects' model inputs for an extractor of input ``shape``: at the decode its
        size needs, cut out of the background (the finder's mask)."""
        size, _, channels = shape
        decoded, mask = self._decoded_with_mask(frame, boxes, size, channels)
        frame_size = (frame.width, frame.height)
        return [roi.crop(decoded, box, frame_size, size, channels, mask=mask) for box in boxes]

    def _decoded_with_mask(
        self, frame: wire.Frame, boxes: tuple[wire.Box, ...], size: int, channels: int
    ) -> tuple[Any, Any]:
        """The frame at the decode crops of ``size`` need (a small object: a finer one), and
        the finder's mask of the objects in their squares (None before a background model).
        Raises PreprocessError for a frame that does not decode."""
        reduction = roi.crop_reduction(boxes, size)
        decoded = preprocess.decode_reduced(frame.payload, channels, reduction)
        return decoded, self._finder.object_mask(frame.camera_id, decoded, boxes)

    def _student_answers(
        self,
        frame: wire.Frame,
        boxes: tuple[wire.Box, ...],
        crops: list[Any],
        deployment: LoadedDeployment,
    ) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """The student's answers to a teacher camera's objects (``unknown`` without one),
        on the crops its edge half takes: the same as a split gateway sends it."""
        student = self.student
        if student is None:
            return (wire.UNKNOWN,) * len(boxes), (0.0,) * len(boxes)
        shape = student.edge.extractor.input_shape
        if shape != deployment.extractor.input_shape:
            crops = self._crops(frame, boxes, shape)
        return student.answer(np.stack(crops))

    def _forward_jpeg(
        self,
        frame: wire.Frame,
        chosen: list[roi.FoundObject],
        found: tuple[roi.FoundObject, ...],
    ) -> Forward:
        """Cloud-only: the frame's JPEG as it is, with the boxes, tracks and truth of the
        ``chosen`` objects, for the cloud to classify, and each one's mask in its crop
        square (:func:`edgelearn.roi.mask_windows`): the cloud cuts the crops this gateway
        would, with no background model of its own (a camera's frames are shared out
        among cloud consumers and machines; this gateway sees them all)."""
        tracks = tuple(item.track for item in chosen)
        boxes = tuple(item.box for item in chosen)
        sent_labels = self._labels_sent(frame, tracks, *ground_truth(frame, boxes))
        jpeg_as_is = codec.EncodedArray.jpeg(frame.payload)
        forward = self._forward(frame, Mode(RAW), "none", jpeg_as_is, 0, 0)
        assert isinstance(forward.envelope, wire.Feature)
        feature = dataclasses.replace(
            forward.envelope, tracks=tracks, boxes=boxes, masks=self._masks(frame, boxes),
            **sent_labels,
        )  # fmt: skip
        return Forward(feature, Mode(RAW), wire.encode(feature), found)

    def _masks(self, frame: wire.Frame, boxes: tuple[wire.Box, ...]) -> tuple[bytes, ...]:
        """The objects' masks at the decode the cloud cuts their crops from (1/4, or 1/2
        with a small object: :func:`edgelearn.roi.crop_reduction`, for a cloud-only CNN of
        the default input size), or () before the camera has a background model (the cloud
        then cuts whole squares, as this gateway would) or when the frame does not decode
        (the cloud counts it undecodable)."""
        if not boxes:
            return ()
        try:
            _, mask = self._decoded_with_mask(frame, boxes, preprocess.DEFAULT_INPUT_SIZE, 1)
        except preprocess.PreprocessError:
            return ()
        if mask is None:
            return ()
        return roi.mask_windows(mask, boxes, (frame.width, frame.height))

    def _labels_sent(
        self,
        frame: wire.Frame,
        tracks: tuple[int, ...],
        labels: tuple[int | None, ...],
        items: tuple[int | None, ...],
    ) -> dict[str, Any]:
        """The label fields of a Feature's objects: their truth, or, for a camera the
        teacher names, the teacher's labels of their tracks once it has any."""
        if frame.task == wire.TASK_TEACHER and self.teacher_labels is not None:
            taught = self.teacher_labels(frame.camera_id, tracks)
            if taught is not None:
                return {"items": items, **taught}
        return {"labels": labels, "items": items, **truth_source(labels)}

    def _is_learning_sample(self, labels: tuple[int | None, ...]) -> bool:
        """Whether this ``full`` keyframe goes up as its crops: every ``learning_sample``-th
        one with a labeled object (an unlabeled crop teaches the cloud nothing)."""
        if not self.learning_sample or all(label is None for label in labels):
            return False
        self._labeled_keyframes += 1
        return self._labeled_keyframes % self.learning_sample == 0

    def _model_input(self, jpeg: bytes, deployment: LoadedDeployment) -> Any:
        size, _, channels = deployment.extractor.input_shape
        try:
            return preprocess.to_model_input(
                preprocess.decode_reduced(jpeg, channels), size, channels
            )
        except preprocess.PreprocessError:
            return None

    def _forward(
        self,
        frame: wire.Frame,
        mode: Mode,
        model_version: str,
        encoded: codec.EncodedArray,
        held_back: int,
        held_mismatched: int,
    ) -> Forward:
        feature = encoded.feature(
            camera_id=frame.camera_id,
            seq=frame.seq,
            capture_ns=frame.capture_ns,
            gateway_id=self.gateway_id,
            label=frame.label,
            mode=str(mode),
            model_version=model_version,
            raw_bytes=len(frame.payload),
            held_back=held_back,
            held_mismatched=held_mismatched,
            task=frame.task,
            label_source="" if frame.label is None else wire.SOURCE_TRUTH,
        )
        return Forward(feature, mode, wire.encode(feature))

    def _edge_result(
        self,
        frame: wire.Frame,
        outputs: Any,
        deployment: LoadedDeployment,
        held: tuple[int, int] = (0, 0),
        objects: tuple[tuple[int, ...], tuple[wire.Box, ...], Truth] | None = None,
        taught: tuple[tuple[int, ...], tuple[float, ...]] | None = None,
    ) -> wire.Result:
        """``full``'s answer at the edge: for the whole frame (``held``: its held-back
        counts), or per object (``objects``: tracks, boxes, the truth; ``outputs`` stacked).
        A camera the teacher names gets ``taught`` (the student's answers) or ``unknown``."""
        count = 1 if objects is None else len(objects[0])
        if frame.task != wire.TASK_DATASET:  # the data set's classes would name nothing here
            classes, scores = taught or ((wire.UNKNOWN,) * count, (0.0,) * count)
        else:
            rows = deployment.extractor.output.dequantize(np.asarray(outputs)).reshape(count, -1)
            classes, scores = top_classes(rows)
        per_object: dict[str, Any] = {}
        label = frame.label
        if objects is not None:
            tracks, boxes, (labels, items) = objects
            per_object = dict(
                tracks=tracks, boxes=boxes, labels=labels, classes=classes, scores=scores,
                items=items,
            )  # fmt: skip
            label = labels[0]
        return wire.Result(
            camera_id=frame.camera_id,
            seq=frame.seq,
            capture_ns=frame.capture_ns,
            result_ns=time.time_ns(),
            gateway_id=self.gateway_id,
            mode=FULL,
            label=label,
            predicted=classes[0],
            score=scores[0],
            model_version=deployment.version,
            computed_at=wire.ComputedAt.EDGE,
            held_back=held[0],
            held_mismatched=held[1],
            task=frame.task,
            **per_object,
        )
