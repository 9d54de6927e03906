"""A user's own detector for the tests, made here from the packaged person detector: a
LiteRT model with the outputs of LiteRT's detection postprocess (boxes, classes, scores,
count), the form in which the TF Object Detection API exports its TFLite models and in which
Coral's and Frigate's detectors ship. Nothing is downloaded: it is the same network as the
packaged teacher (the cloud's own cut of the graph, :mod:`cloud.models.teacher`), with the
box decoding and the suppression as TensorFlow ops that LiteRT runs as builtins, and a uint8
input, as the quantised detectors users have take."""

from __future__ import annotations

from pathlib import Path

MAX_DETECTIONS = 25


def tflite_person_detector(folder: Path) -> tuple[Path, Path]:
    """``(detector.tflite, labelmap.txt)`` in ``folder``: class id 0 is ``person``."""
    import tensorflow as tf

    from cloud.models import teacher

    graph = tf.compat.v1.GraphDef()
    graph.ParseFromString(teacher.packaged_graph().read_bytes())
    nodes = {node.name: node for node in graph.node}
    artifact = teacher.person_teacher()
    middle = teacher._middle(tf, graph, nodes)

    def imported() -> None:
        tf.import_graph_def(middle, name="")

    wrapped = tf.compat.v1.wrap_function(imported, [])
    network = wrapped.prune(
        wrapped.graph.get_tensor_by_name(teacher._NEW_INPUT + ":0"),
        [
            wrapped.graph.get_tensor_by_name(teacher._OUT_BOXES + ":0"),
            wrapped.graph.get_tensor_by_name(teacher._OUT_LOGITS + ":0"),
        ],
    )
    anchors = tf.constant(artifact.anchors)
    scales = [float(v) for v in artifact.box_scales]
    size = teacher.INPUT_SIZE

    @tf.function(input_signature=[tf.TensorSpec([1, size, size, 3], tf.uint8)])
    def detector(image: tf.Tensor) -> dict[str, tf.Tensor]:
        scaled = tf.cast(image, tf.float32) * artifact.input_scale + artifact.input_offset
        encodings, logits = network(scaled)
        encodings = tf.reshape(encodings, [-1, 4])
        height = anchors[:, 2] - anchors[:, 0]
        width = anchors[:, 3] - anchors[:, 1]
        cy = anchors[:, 0] + height / 2 + encodings[:, 0] / scales[0] * height
        cx = anchors[:, 1] + width / 2 + encodings[:, 1] / scales[1] * width
        hh = tf.exp(encodings[:, 2] / scales[2]) * height / 2
        hw = tf.exp(encodings[:, 3] / scales[3]) * width / 2
        boxes = tf.stack([cy - hh, cx - hw, cy + hh, cx + hw], axis=1)
        scores = tf.sigmoid(tf.reshape(logits, [tf.shape(boxes)[0], -1])[:, 1])
        chosen, kept = tf.image.non_max_suppression_padded(
            boxes, scores, MAX_DETECTIONS, iou_threshold=artifact.nms_iou,
            score_threshold=0.05, pad_to_max_output_size=True,
        )  # fmt: skip
        valid = tf.range(MAX_DETECTIONS) < kept
        picked_scores = tf.where(valid, tf.gather(scores, chosen), 0.0)
        return {
            "detection_boxes": tf.clip_by_value(tf.gather(boxes, chosen), 0.0, 1.0)[None],
            "detection_classes": tf.zeros([1, MAX_DETECTIONS], tf.float32),
            "detection_scores": picked_scores[None],
            "num_detections": tf.cast(tf.reshape(kept, [1]), tf.float32),
        }

    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [detector.get_concrete_function()], detector
    )
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.target_spec.supported_types = [tf.float16]
    model = folder / "detector.tflite"
    model.write_bytes(converter.convert())
    labels = folder / "labelmap.txt"
    labels.write_text("0 person\n")  # the form Coral's label maps take
    return model, labels
