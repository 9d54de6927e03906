"""Where live accuracy goes, stage by stage, on scenes like ``edgelearn up``'s.

The gateway's code replayed offline on labeled :class:`cameras.scene.ObjectScene` cameras
(Fashion-MNIST *test* items, 0-3 in view, lanes cycling every 150 frames as the stack's
cameras do): every frame is rendered at 720p, JPEG-encoded, and goes through the gateway's
own :class:`edgelearn.roi.ObjectFinder` and keyframe rule; every object it sends is cut
three ways, each classified by the same served model:

1. **sent**: the gateway's box and the gateway's mask (its running background model): exactly
   what a gateway sends (:func:`edgelearn.roi.crop` of the 1/4 decode);
2. **ideal mask**: the gateway's box, the mask against the true empty scene (what a perfect
   background model holds: :meth:`cameras.scene.ObjectScene.empty`), with the same rule;
3. **ideal**: the true (rendered) box and the ideal mask.

So ``ideal - (ideal - ideal mask) - (ideal mask - sent) = sent``: the box costs
``ideal - ideal_mask`` and the running background model ``ideal_mask - sent``; what is left
under ``ideal`` is the model on the crop. Objects are also counted where the finder loses
them: items wholly in view that were never sent with a label (**missed**), and objects sent
that match no item at IoU 0.5 (**unlabeled**: two items merged, a part of one, or a false
box; the cloud cannot score them). Accuracy is split by how long the item had stood in view
when it was sent, since a background model that learns under a still item swallows it.

Every accuracy is an :class:`edgelearn.evidence.Evidence`: objects, distinct items and a 95%
interval from resampling items. Cameras are rendered in two threads (OpenCV releases the GIL).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import numpy.typing as npt

from cameras.scene import ObjectScene
from edgelearn import preprocess, roi
from edgelearn.datasets import LabeledImages, load_fashion_mnist
from edgelearn.evidence import item_accuracy
from edgelearn.preprocess import HD_720P

CROPS: Final = ("ideal", "ideal_mask", "sent")
"""The three cuts of every sent object, from the ceiling down to what is sent."""
STOOD_BUCKETS: Final = ((0, 20), (20, 40), (40, 60), (60, 10_000))
"""Frames an item had been wholly in view when it was sent (15 frames = 1 s)."""

Classify = Callable[[npt.NDArray[np.uint8]], npt.NDArray[np.int64]]
"""Model inputs ``(N, S, S, C)`` -> predicted classes ``(N,)``: one served mode."""


@dataclass(frozen=True)
class SentObject:
    camera: str
    frame: int
    track: int
    item: int
    label: int
    stood: int  # frames the item had been wholly in view
    box_iou: float  # of the gateway's box with the true one
    mask_cover: float  # share of the ideal mask under the true box that the gateway's holds


@dataclass
class Replay:
    """The labeled objects a gateway sent, and their three crops (aligned with ``objects``)."""

    objects: list[SentObject] = field(default_factory=list)
    crops: dict[str, list[npt.NDArray[np.uint8]]] = field(
        default_factory=lambda: {name: [] for name in CROPS}
    )
    unlabeled: int = 0  # objects sent that match no true item
    in_view: set[tuple[str, int]] = field(default_factory=set)  # (camera, item) wholly seen
    frames: int = 0

    def merge(self, other: Replay) -> None:
        self.objects += other.objects
        for name in CROPS:
            self.crops[name] += other.crops[name]
        self.unlabeled += other.unlabeled
        self.in_view |= other.in_view
        self.frames += other.frames

    def inputs(self, name: str) -> npt.NDArray[np.uint8]:
        return np.stack(self.crops[name])

    @property
    def missed(self) -> int:
        """Items wholly in view, never sent with a label."""
        sent = {(sent.camera, sent.item) for sent in self.objects}
        return len(self.in_view - sent)


def _whole(box: roi.Box, size: tuple[int, int]) -> bool:
    return box[0] > 0 and box[1] > 0 and box[2] < size[0] and box[3] < size[1]


def replay_camera(
    data: LabeledImages,
    camera: str,
    seed: int,
    frames: int,
    *,
    input_size: int,
    channels: int = 1,
    warmup: int = 150,
    quality: int = 80,
    settings: roi.RoiSettings | None = None,
) -> Replay:
    """One camera's scene through the gateway's object finder and keyframe rule; the
    first ``warmup`` frames teach the background model and are not counted."""
    settings = settings or roi.RoiSettings()
    scene = ObjectScene(data, seed=seed)
    finder = roi.ObjectFinder(settings)
    first_whole: dict[int, int] = {}
    replay = Replay()
    for number in range(frames):
        rendered = scene.render(number)
        jpeg = preprocess.encode_jpeg(rendered.image, quality)
        small = roi.small_grey(jpeg)
        assert small is not None
        found = finder.update(camera, small)
        truth = [item for item in rendered.objects if _whole(item.box, HD_720P)]
        for item in truth:
            first_whole.setdefault(item.item, number)
        if number < warmup:
            continue
        replay.frames += 1
        replay.in_view.update((camera, item.item) for item in truth)
        chosen = [item for item in found if item.send]
        if not chosen:
            continue
        matched = roi.match([item.box for item in chosen], [item.box for item in truth], 0.5)
        replay.unlabeled += len(chosen) - len(matched)
        if not matched:
            continue
        decoded = preprocess.decode_reduced(jpeg, channels)
        empty_small = roi.small_grey(preprocess.encode_jpeg(scene.empty(number), quality))
        assert empty_small is not None
        empty = empty_small.astype(np.float32)
        light = roi.fit_light(small.astype(np.float32), empty)
        coarse = roi.foreground(small.astype(np.float32), empty, settings.pixel_delta, light)
        ideal = roi.object_mask(decoded, empty, coarse, light)
        mask = finder.object_mask(camera, decoded)
        assert mask is not None
        for chosen_index, true_index in sorted(matched.items()):
            box = chosen[chosen_index].box
            true = truth[true_index]
            x0, y0, x1, y1 = (v // preprocess.REDUCTION for v in true.box)
            under = ideal[y0 : y1 + 1, x0 : x1 + 1] > 0
            cover = (
                float((mask[y0 : y1 + 1, x0 : x1 + 1][under] > 0).mean()) if under.any() else 1.0
            )
            cuts = {
                "sent": (box, mask),
                "ideal_mask": (box, ideal),
                "ideal": (true.box, ideal),
            }
            for name, (cut_box, cut_mask) in cuts.items():
                replay.crops[name].append(
                    roi.crop(decoded, cut_box, HD_720P, input_size, channels, mask=cut_mask)
                )
            replay.objects.append(
                SentObject(
                    camera,
                    number,
                    chosen[chosen_index].track,
                    true.item,
                    true.label,
                    number - first_whole[true.item],
                    roi.iou(box, true.box),
                    cover,
                )
            )
    return replay


def replay(
    cameras: int,
    frames: int,
    *,
    first_seed: int,
    input_size: int,
    channels: int = 1,
    warmup: int = 150,
    settings: roi.RoiSettings | None = None,
    data: LabeledImages | None = None,
) -> Replay:
    """:func:`replay_camera` of ``cam-1``..``cam-N`` (seeds ``first_seed``...), merged."""
    source = data or load_fashion_mnist("test")

    def one(index: int) -> Replay:
        return replay_camera(
            source,
            f"cam-{index + 1}",
            first_seed + index,
            frames,
            input_size=input_size,
            channels=channels,
            warmup=warmup,
            settings=settings,
        )

    merged = Replay()
    with ThreadPoolExecutor(max_workers=2, thread_name_prefix="replay") as pool:
        for part in pool.map(one, range(cameras)):
            merged.merge(part)
    return merged


def account(replay: Replay, classify: Classify) -> dict[str, Any]:
    """Each crop's accuracy (overall, per camera, by time stood), the stages' losses, and
    what the finder lost; every accuracy with its distinct items and interval."""
    labels = np.asarray([sent.label for sent in replay.objects], np.int64)
    keys = [(sent.camera, sent.item) for sent in replay.objects]
    stood = np.asarray([sent.stood for sent in replay.objects])
    box_iou = np.asarray([sent.box_iou for sent in replay.objects])
    mask_cover = np.asarray([sent.mask_cover for sent in replay.objects])
    cameras = np.asarray([sent.camera for sent in replay.objects])
    correct = {
        name: np.asarray(classify(replay.inputs(name)) == labels) if len(labels) else labels > 0
        for name in CROPS
    }
    overall = {name: item_accuracy(correct[name], keys) for name in CROPS}

    def accuracy(name: str) -> float:
        value = overall[name].accuracy
        return 0.0 if value is None else value

    by_camera = {
        camera: {
            name: item_accuracy(
                correct[name][cameras == camera], _select(keys, cameras == camera)
            ).as_dict()
            for name in CROPS
        }
        for camera in sorted(set(cameras.tolist()), key=lambda c: (len(c), c))
    }
    by_stood = {}
    for low, high in STOOD_BUCKETS:
        chosen = (stood >= low) & (stood < high)
        label = f"{low}-{high - 1}" if high < 10_000 else f"{low}+"
        by_stood[label] = {
            **{
                name: item_accuracy(correct[name][chosen], _select(keys, chosen)).as_dict()
                for name in CROPS
            },
            "box_iou_mean": _mean([float(v) for v in box_iou[chosen]]),
            "mask_cover_mean": _mean([float(v) for v in mask_cover[chosen]]),
        }
    return {
        "objects": len(labels),
        "items": len(set(keys)),
        "frames": replay.frames,
        "accuracy": {name: overall[name].as_dict() for name in CROPS},
        "losses": {
            "box (true box -> gateway box)": round(accuracy("ideal") - accuracy("ideal_mask"), 4),
            "background model (ideal mask -> gateway mask)": round(
                accuracy("ideal_mask") - accuracy("sent"), 4
            ),
        },
        "finder": {
            "items_in_view": len(replay.in_view),
            "items_missed": replay.missed,
            "objects_unlabeled": replay.unlabeled,
        },
        "by_camera": by_camera,
        "by_stood_frames": by_stood,
    }


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _select(keys: Sequence[tuple[str, int]], chosen: npt.NDArray[np.bool_]) -> list[Any]:
    return [key for key, keep in zip(keys, chosen, strict=True) if keep]


def served(registry: Any, mode: Any) -> Classify:
    """The path that serves ``mode`` from ``registry``: the int8 edge half (LiteRT or PCA,
    the gateway's code) and the float cloud half (``raw``: the cloud-only CNN on the crop;
    ``full``: the int8 whole CNN)."""
    from cloud.registry import EDGE
    from edgelearn.artifacts import load_edge_artifact
    from edgelearn.modes import FULL, RAW

    entry = registry.serving(mode)
    if mode.kind == RAW:
        model = registry.load_cloud_model(entry)
        return lambda inputs: _argmax(model.predict(inputs, batch_size=256, verbose=0))
    extractor = load_edge_artifact(entry.kind, entry.read(EDGE), entry.metadata.get("quantization"))
    if mode.kind == FULL:
        return lambda inputs: _argmax(extractor.output.dequantize(extractor.run_batch(inputs)))
    upper = registry.load_cloud_model(entry)

    def classify(inputs: npt.NDArray[np.uint8]) -> npt.NDArray[np.int64]:
        features = extractor.output.dequantize(extractor.run_batch(inputs))
        return _argmax(upper.predict(features, batch_size=256, verbose=0))

    return classify


def _argmax(probabilities: Any) -> npt.NDArray[np.int64]:
    return np.asarray(np.argmax(np.asarray(probabilities), axis=1), np.int64)
