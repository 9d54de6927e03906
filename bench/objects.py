"""``edgelearn bench objects``: the gateway's object finder (:mod:`edgelearn.roi`) against the
rendered ground truth, and what crops do for the models.

Four measurements, in one run:

* **Detection.** ``cameras`` :class:`cameras.scene.ObjectScene` cameras (0-3 items each,
  walking in and out through the frame's edges) as 720p JPEGs; boxes matched to the true
  boxes at IoU 0.5. The first ``warmup`` frames are not scored: the model starts from the
  first frame, items and all, and learns the empty scene as items move. True items with under
  1% of the frame in view (stepping in or out) are neither required nor counted as false.
* **No false objects**: empty scenes under a steep lighting ramp (gain 0.7 to 1.3 and offset
  -10 to +10 grey levels in 10 s) with sensor noise: every object found is a false one.
* **Cost** of the ROI step per 720p frame on one core: the 1/8 decode (which the keyframe
  filter already makes) and the background model, boxes and tracks on top of it.
* **Real video**: opencv-doc's ``vtest.avi`` (people walking across a square), as a camera
  shows it (720p): objects in view per frame and objects entering per minute.
* **Accuracy on crops** (``--quick``: small and short, a smoke test only): the CNN and
  PCA + classifier trained and tested on (a) the whole frame's centre square, as the gateway
  fed its models before objects, (b) object crops as the gateway cuts them (box and mask
  from the 1/8-scale foreground, :func:`edgelearn.roi.crop`), (c) crops at the rendered
  (true) box, unmasked, and (d) the bare 28x28 items upscaled: the ceilings. The models of
  (b) are also scored on what gateways send (:func:`gateway_crops`: objects found, tracked
  and cut by the gateway's code as items walk through scenes), over ``gateway_items``
  distinct items: a pipeline's per-object score over a few minutes rests on a few dozen
  items (each is sent many times), too few to tell 80% from 85%.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from cameras.scene import ItemPose, Lighting, ObjectScene, compose, make_background
from cameras.sources import fit_to
from edgelearn import preprocess, roi
from edgelearn.datasets import load_fashion_mnist
from edgelearn.detection import BoxScore, score_boxes
from edgelearn.preprocess import HD_720P

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")


def _small(image: np.ndarray) -> np.ndarray:
    small = roi.small_grey(preprocess.encode_jpeg(image, 85))
    assert small is not None
    return small


def detection(cameras: int, frames: int, warmup: int) -> dict[str, Any]:
    data = load_fashion_mnist("test")
    total = BoxScore()
    per_camera: dict[str, dict[str, float | None]] = {}
    for camera in range(cameras):
        scene = ObjectScene(data, seed=100 + camera)
        finder = roi.ObjectFinder()
        score = BoxScore()
        for index in range(frames):
            frame = scene.render(index)
            found = finder.update("cam", _small(frame.image))
            if index >= warmup:
                truth = [item.box for item in frame.objects]
                score += score_boxes(truth, [item.box for item in found], HD_720P)
        per_camera[f"cam-{camera + 1}"] = {
            "recall": _round(score.recall()),
            "precision": _round(score.precision()),
        }
        total += score
    return {
        "cameras": cameras,
        "frames_per_camera": frames,
        "warmup_frames": warmup,
        "true_objects": total.hits + total.misses,
        "recall": _round(total.recall()),
        "precision": _round(total.precision()),
        "boxes_over_items_partly_in_view": total.ignored,
        "per_camera": per_camera,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def lighting_ramp(scenes: int, frames: int) -> dict[str, Any]:
    false = 0
    for seed in range(scenes):
        background = make_background(np.random.default_rng(seed))
        finder = roi.ObjectFinder()
        for index in range(frames):
            gain = 0.7 + 0.6 * index / frames
            light = Lighting(
                gain=(gain, gain * 1.02, gain * 0.98), offset=-10 + 20 * index / frames
            )
            image = compose(
                background,
                None,
                ItemPose(),
                light,
                (1.0, 1.0, 1.0),
                np.random.default_rng([seed, index]),
            )
            false += len(finder.update("cam", _small(image)))
    return {"empty_scenes": scenes, "frames_each": frames, "objects_found": false}


def cost(frames: int) -> dict[str, Any]:
    cv2.setNumThreads(1)  # one core, as a gateway worker has
    scene = ObjectScene(load_fashion_mnist("test"), seed=7)
    jpegs = [preprocess.encode_jpeg(scene.render(i).image, 85) for i in range(frames)]
    started = time.perf_counter()
    smalls = [roi.small_grey(jpeg) for jpeg in jpegs]
    decode = time.perf_counter() - started
    finder = roi.ObjectFinder()
    started = time.perf_counter()
    for small in smalls:
        assert small is not None
        finder.update("cam", small)
    model = time.perf_counter() - started
    cv2.setNumThreads(-1)
    return {
        "frames": frames,
        "decode_eighth_ms": round(1e3 * decode / frames, 3),
        "objects_ms": round(1e3 * model / frames, 3),
        "note": "objects_ms is the ROI step's own cost; the 1/8 decode is the keyframe "
        "filter's, made once for both",
    }


def video(frames: int) -> dict[str, Any] | None:
    if not VTEST.is_file():
        return None
    capture = cv2.VideoCapture(str(VTEST))
    fps = capture.get(cv2.CAP_PROP_FPS) or 10.0
    finder = roi.ObjectFinder()
    per_frame: list[int] = []
    entered = 0
    try:
        while len(per_frame) < frames:
            ok, image = capture.read()
            if not ok:
                break
            found = finder.update("vtest", _small(fit_to(np.asarray(image, np.uint8), (1280, 720))))
            per_frame.append(len(found))
            entered += sum(1 for item in found if item.reason == "appeared")
    finally:
        capture.release()
    minutes = len(per_frame) / fps / 60
    return {
        "frames": len(per_frame),
        "fps": fps,
        "objects_in_view_mean": round(float(np.mean(per_frame)), 2),
        "frames_with_objects": round(float(np.mean([n > 0 for n in per_frame])), 3),
        "entered_per_minute": round(entered / minutes, 1),
    }


GATEWAY_PERIOD = 60
"""Frames of an :class:`ObjectScene` lane's cycle in :func:`gateway_crops`: the shortest the
scene allows (4 walks of 12 frames and a dwell), so that many items pass in few frames."""


def gateway_crops(
    items: int, input_size: int, *, first_seed: int = 300, warmup: int = GATEWAY_PERIOD
) -> tuple[np.ndarray, np.ndarray, int]:
    """The crops a gateway sends of Fashion-MNIST *test* items walking through
    :class:`ObjectScene` cameras (keyframes on: each object when it appears, moves, settles),
    cut exactly as :meth:`gateway.pipeline.FramePipeline` cuts them (:func:`edgelearn.roi.crop`
    of the 1/4 decode with the background model's mask), until ``items`` distinct items have
    been sent: ``(crops, labels, items)``. An object found where no item is (or on two at
    once) has no label and is left out, as the cloud leaves it out of its score."""
    data = load_fashion_mnist("test")
    crops: list[np.ndarray] = []
    labels: list[int] = []
    seen: set[tuple[int, int]] = set()
    camera = 0
    while len(seen) < items:
        scene = ObjectScene(data, seed=first_seed + camera, period_frames=GATEWAY_PERIOD)
        finder = roi.ObjectFinder()
        for number in range(warmup + 20 * GATEWAY_PERIOD):
            frame = scene.render(number)
            jpeg = preprocess.encode_jpeg(frame.image, 80)
            small = roi.small_grey(jpeg)
            assert small is not None
            found = [item for item in finder.update("cam", small) if item.send]
            if number < warmup or not found:
                continue
            truth = [item.box for item in frame.objects]
            matched = roi.match([item.box for item in found], truth, 0.5)
            decoded = preprocess.decode_reduced(jpeg, 1)
            for found_index, true_index in matched.items():
                crops.append(
                    roi.crop(
                        decoded,
                        found[found_index].box,
                        HD_720P,
                        input_size,
                        1,
                        mask=finder.object_mask("cam", decoded),
                    )
                )
                labels.append(frame.objects[true_index].label)
                seen.add((camera, frame.objects[true_index].item))
        camera += 1
    return np.stack(crops), np.asarray(labels, np.int64), len(seen)


def accuracy(
    n_train: int, n_held_out: int, epochs: int, pca_dim: int, gateway_items: int
) -> dict[str, Any]:
    from cloud.models import features, training
    from cloud.models.data import RenderedDataset, RenderedSplit, RenderSettings, build_dataset
    from cloud.models.training import StoredFeatures
    from edgelearn.artifacts import PcaExtractor

    def bare(split: str, count: int, seed: int, size: int) -> RenderedSplit:
        source = load_fashion_mnist(split)
        index = np.sort(np.random.default_rng([seed, 0]).permutation(len(source))[:count])
        images = np.stack(
            [
                cv2.resize(source.images[i], (size, size), interpolation=cv2.INTER_LINEAR)
                for i in index
            ]
        )[..., None]
        labels = np.asarray(source.labels[index], np.int64)
        return RenderedSplit(images, labels, np.zeros(count, np.int64), index.astype(np.int64))

    size = preprocess.DEFAULT_INPUT_SIZE
    results: dict[str, Any] = {"n_train": n_train, "n_held_out": n_held_out, "cnn_epochs": epochs}
    for name in ("centre_square", "object_crops", "true_box_crops", "bare_items"):
        started = time.perf_counter()
        if name == "bare_items":
            classes = load_fashion_mnist("test").class_names
            data = RenderedDataset(
                bare("train", n_train, 0, size), bare("test", n_held_out, 1, size), classes
            )
        else:
            settings = RenderSettings(
                input_size=size,
                objects=name != "centre_square",
                true_boxes=name == "true_box_crops",
            )
            data = build_dataset(n_train, n_held_out, settings=settings)
        render = time.perf_counter() - started
        cnn = training.train_cnn(data, epochs=epochs)
        projection = features.fit_pca(data.train.inputs, pca_dim)
        extractor = PcaExtractor(projection)
        train = StoredFeatures(
            extractor.run_batch(data.train.inputs), data.train.labels, extractor.output
        )
        held = StoredFeatures(
            extractor.run_batch(data.held_out.inputs), data.held_out.labels, extractor.output
        )
        pca = training.train_feature_classifier(train, held, classes=data.num_classes)
        results[name] = {
            "cnn": round(cnn.held_out_accuracy, 4),
            f"pca{pca_dim}": round(pca.held_out_accuracy, 4),
            "render_seconds": round(render, 1),
            "cnn_train_seconds": round(cnn.wall_seconds, 1),
        }
        if name == "object_crops":  # the same models on what a gateway sends
            started = time.perf_counter()
            inputs, labels, items = gateway_crops(gateway_items, size)
            features_sent = StoredFeatures(extractor.run_batch(inputs), labels, extractor.output)
            results["gateway_crops"] = {
                "objects": int(labels.size),
                "distinct_items": items,
                "cnn": round(training.accuracy(cnn.model, inputs, labels), 4),
                f"pca{pca_dim}": round(
                    training.accuracy(pca.model, features_sent.dequantized(), labels), 4
                ),
                "seconds": round(time.perf_counter() - started, 1),
            }
    return results


SIZES = {  # quick, full
    True: {"cameras": 2, "frames": 300, "scenes": 2, "ramp": 100, "cost": 100, "video": 200,
           "n_train": 1500, "n_held_out": 400, "epochs": 4, "gateway_items": 60},
    False: {"cameras": 8, "frames": 900, "scenes": 8, "ramp": 150, "cost": 400, "video": 10_000,
            "n_train": 6000, "n_held_out": 1000, "epochs": 6, "gateway_items": 1000},
}  # fmt: skip


def run(quick: bool = False) -> dict[str, Any]:
    size = SIZES[quick]
    return {
        "quick": quick,
        "detection": detection(cameras=size["cameras"], frames=size["frames"], warmup=150),
        "lighting_ramp": lighting_ramp(scenes=size["scenes"], frames=size["ramp"]),
        "cost": cost(frames=size["cost"]),
        "video": video(frames=size["video"]),
        "accuracy": accuracy(
            n_train=size["n_train"],
            n_held_out=size["n_held_out"],
            epochs=size["epochs"],
            pca_dim=32,
            gateway_items=size["gateway_items"],
        ),
    }
