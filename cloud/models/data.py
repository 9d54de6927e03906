"""Training and held-out data for the cloud's models: labeled items rendered as camera frames.

Where it sits: the cloud trains on what a gateway would feed its models, so every item goes
through the camera path: :func:`cameras.scene.render_item` draws it into a scene, the frame
is JPEG-encoded and decoded, and :func:`edgelearn.preprocess.to_model_input` makes the model
input (``uint8 (S, S, C)``). By default frames are rendered at the gateway's *reduced* size
(320x180) and decoded in full, which is what the gateway's reduced decode of a 720p frame
gives, for about a tenth of the cost; :func:`camera_frames` renders real 720p frames from
:class:`cameras.scene.LabeledScene` and decodes them exactly as the gateway does, so the two
can be compared (see :func:`cloud.models.evaluation.compare_render_paths`).

Everything is seeded: item ``i`` of a split is rendered from ``rng([seed, split, i])``, so
a data set of 2,000 items is the first 2,000 of one of 60,000, whatever ``workers`` is.
numpy + OpenCV only (no TensorFlow).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NamedTuple

import numpy as np
import numpy.typing as npt

from cameras.scene import (
    OBJECT_HEIGHTS,
    LabeledScene,
    RenderedObject,
    Unrenderable,
    render_item,
    render_object,
)
from edgelearn import preprocess, roi
from edgelearn.datasets import LabeledImages, folder_split, load_fashion_mnist
from edgelearn.preprocess import FINE_REDUCTION, REDUCTION

log = logging.getLogger(__name__)

_TRAIN_STREAM: Final = 1
_HELD_OUT_STREAM: Final = 2
_CHUNK: Final = 256


@dataclass(frozen=True)
class RenderSettings:
    """How items become model input. ``render_size`` is (width, height).

    ``reduced_decode`` selects the gateway's 1/4-scale decode (use it with 720p renders);
    otherwise the JPEG is decoded in full (use it with renders at the reduced size).
    """

    input_size: int = preprocess.DEFAULT_INPUT_SIZE
    channels: int = preprocess.DEFAULT_CHANNELS
    render_size: tuple[int, int] = preprocess.REDUCED_720P
    reduced_decode: bool = False
    jpeg_quality: int = 85
    objects: bool = True  # items placed as ObjectScene does, cropped by edgelearn.roi;
    # False: one item in the middle, the centre square (the whole-frame models)
    true_boxes: bool = False  # objects cut at their rendered box, unmasked (a ceiling)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.input_size, self.input_size, self.channels)

    @classmethod
    def camera(
        cls,
        input_size: int = preprocess.DEFAULT_INPUT_SIZE,
        channels: int = 1,
        jpeg_quality: int = 85,
    ) -> RenderSettings:
        """The real camera path: 720p frames, reduced decode."""
        return cls(input_size, channels, preprocess.HD_720P, True, jpeg_quality)

    def _decode(self, jpeg: bytes) -> npt.NDArray[np.uint8]:
        if self.reduced_decode:
            return preprocess.decode_reduced(jpeg, self.channels)
        return preprocess.decode_full(jpeg, self.channels)

    def jpeg_to_input(self, jpeg: bytes) -> npt.NDArray[np.uint8]:
        """The model input of a rendered frame's centre square (the whole-frame path)."""
        return preprocess.to_model_input(self._decode(jpeg), self.input_size, self.channels)

    def object_input(
        self, jpeg: bytes, rendered: RenderedObject, rng: np.random.Generator
    ) -> npt.NDArray[np.uint8]:
        """The model input of a rendered object, cut as a gateway cuts it: the foreground
        against the empty scene at the background model's scale (:func:`edgelearn.roi.
        foreground`) gives its box, :func:`edgelearn.roi.object_mask` its pixels, and
        :func:`edgelearn.roi.crop` cuts it out. An item the mask misses (its colour is the
        wall's) is cut at its true box, moved a little as the detector's boxes are."""
        decoded = self._decode(jpeg)
        if self.true_boxes:
            return roi.crop(decoded, rendered.box, self.render_size, self.input_size, self.channels)
        small = roi.reduce_frame(decoded, roi.SMALL_720P).astype(np.float32)
        empty = roi.reduce_frame(rendered.empty, roi.SMALL_720P).astype(np.float32)
        light = roi.fit_light(small, empty)
        coarse = roi.foreground(small, empty, roi.RoiSettings().pixel_delta, light)
        mask = roi.object_mask(decoded, empty, coarse, light)
        rows, cols = np.nonzero(coarse)
        if rows.size:
            sx = self.render_size[0] / coarse.shape[1]
            sy = self.render_size[1] / coarse.shape[0]
            box = (
                int(cols.min() * sx),
                int(rows.min() * sy),
                int(np.ceil((cols.max() + 1) * sx)),
                int(np.ceil((rows.max() + 1) * sy)),
            )
        else:
            box = detector_like(rendered.box, rng)
        if self.reduced_decode and roi.crop_reduction([box], self.input_size) != REDUCTION:
            decoded = preprocess.decode_reduced(jpeg, self.channels, FINE_REDUCTION)
            mask = roi.object_mask(decoded, empty, coarse, light)  # a small object, as a
            # gateway cuts it: from the finer decode
        return roi.crop(decoded, box, self.render_size, self.input_size, self.channels, mask=mask)


BOX_JITTER: Final = 0.04
"""How far (fraction of the box's size, each side) a training box strays from the true one,
as the detector's boxes do: it works at 1/8 scale, so its edges are 8 pixels coarse at 720p."""


def detector_like(box: roi.Box, rng: np.random.Generator) -> roi.Box:
    """``box`` with each side moved by up to :data:`BOX_JITTER` of the box's size."""
    x0, y0, x1, y1 = box
    dx, dy = BOX_JITTER * (x1 - x0), BOX_JITTER * (y1 - y0)
    shift = rng.uniform(-1.0, 1.0, 4)
    return (
        round(x0 + shift[0] * dx),
        round(y0 + shift[1] * dy),
        max(round(x1 + shift[2] * dx), round(x0 + shift[0] * dx) + 1),
        max(round(y1 + shift[3] * dy), round(y0 + shift[1] * dy) + 1),
    )


@dataclass(frozen=True, eq=False)
class RenderedSplit:
    """Model inputs and labels; ``jpeg_bytes`` is each rendered frame's JPEG size (what a
    camera would have sent at ``render_size``), ``source_index`` the item it shows and
    ``render_pass`` which of its renders it is (an item shown again is in new scenes).
    ``skipped``: items that could not be rendered and are not here."""

    inputs: npt.NDArray[np.uint8]
    labels: npt.NDArray[np.int64]
    jpeg_bytes: npt.NDArray[np.int64]
    source_index: npt.NDArray[np.int64]
    render_pass: npt.NDArray[np.int64] | None = None  # None: every row is a first render
    skipped: int = 0

    def __post_init__(self) -> None:
        count = self.inputs.shape[0]
        if self.inputs.dtype != np.uint8 or self.inputs.ndim != 4:
            raise ValueError(
                f"inputs must be uint8 (N,H,W,C), got {self.inputs.dtype} {self.inputs.shape}"
            )
        for name in ("labels", "jpeg_bytes", "source_index"):
            if getattr(self, name).shape != (count,):
                raise ValueError(f"{name} shape {getattr(self, name).shape}, expected ({count},)")
        if self.render_pass is not None and self.render_pass.shape != (count,):
            raise ValueError(f"render_pass shape {self.render_pass.shape}, expected ({count},)")

    def __len__(self) -> int:
        return int(self.inputs.shape[0])

    def take(self, count: int) -> RenderedSplit:
        """The first ``count`` items (the same items a smaller data set would have had)."""
        return RenderedSplit(
            self.inputs[:count],
            self.labels[:count],
            self.jpeg_bytes[:count],
            self.source_index[:count],
            None if self.render_pass is None else self.render_pass[:count],
        )

    def rows_of(self, items: npt.NDArray[np.int64], render_pass: int = 0) -> dict[int, int]:
        """Which row holds render ``render_pass`` of each of ``items`` that this split has."""
        passes = self.render_pass if self.render_pass is not None else np.zeros(len(self), int)
        wanted = set(items.tolist())
        return {
            int(item): row
            for row, (item, number) in enumerate(zip(self.source_index, passes, strict=True))
            if number == render_pass and int(item) in wanted
        }


@dataclass(frozen=True, eq=False)
class RenderedDataset:
    train: RenderedSplit
    held_out: RenderedSplit
    class_names: tuple[str, ...]
    settings: RenderSettings = field(default_factory=RenderSettings)
    seed: int = 0
    task: str = "fashion-mnist"

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return self.settings.input_shape

    def save(self, path: Path) -> None:
        """Cache a (large) rendered data set: renders of 60,000 items take minutes."""
        buffer = io.BytesIO()
        arrays = {
            f"{name}_{part}": getattr(getattr(self, name), part)
            for name in ("train", "held_out")
            for part in ("inputs", "labels", "jpeg_bytes", "source_index")
        }
        np.savez(
            buffer,
            class_names=np.asarray(self.class_names),
            settings=np.asarray(
                [
                    self.settings.input_size,
                    self.settings.channels,
                    *self.settings.render_size,
                    int(self.settings.reduced_decode),
                    self.settings.jpeg_quality,
                    int(self.settings.objects),
                ]
            ),
            seed=np.int64(self.seed),
            task=np.asarray(self.task),
            **arrays,
        )
        path.write_bytes(buffer.getvalue())

    @classmethod
    def load(cls, path: Path) -> RenderedDataset:
        with np.load(path, allow_pickle=False) as archive:
            splits = [
                RenderedSplit(
                    np.asarray(archive[f"{name}_inputs"]),
                    np.asarray(archive[f"{name}_labels"]),
                    np.asarray(archive[f"{name}_jpeg_bytes"]),
                    np.asarray(archive[f"{name}_source_index"]),
                )
                for name in ("train", "held_out")
            ]
            size, channels, width, height, reduced, quality, *objects = (
                int(v) for v in archive["settings"]
            )
            return cls(
                train=splits[0],
                held_out=splits[1],
                class_names=tuple(str(name) for name in archive["class_names"]),
                settings=RenderSettings(
                    size,
                    channels,
                    (width, height),
                    bool(reduced),
                    quality,
                    bool(objects[:1] == [1]),
                ),
                seed=int(archive["seed"]),
                task=str(archive["task"]),
            )


class Renders(NamedTuple):
    """Rendered items as model inputs: ``inputs[j]`` shows item ``shown[j]``, its frame was
    ``jpeg_bytes[j]`` bytes. Items with nothing to show are left out (``skipped``)."""

    inputs: npt.NDArray[np.uint8]
    jpeg_bytes: npt.NDArray[np.int64]
    shown: npt.NDArray[np.int64]
    skipped: int


def render_inputs(
    images: npt.NDArray[np.uint8],
    *,
    seed: int,
    stream: int = 0,
    indices: Sequence[int] | npt.NDArray[np.int64] | None = None,
    settings: RenderSettings | None = None,
    workers: int = 2,
    opacity: npt.NDArray[np.uint8] | None = None,
    heights: tuple[float, float] = OBJECT_HEIGHTS,
) -> Renders:
    """Render ``images[indices]`` (with ``opacity[indices]``, see
    :attr:`edgelearn.datasets.LabeledImages.alpha`) and run the camera path; objects
    (``settings.objects``) stand ``heights`` of the frame height tall (the cameras' range
    by default; :mod:`cloud.conditions` renders at the sizes it estimates from arrivals).

    Item ``indices[j]`` is drawn from ``rng([seed, stream, indices[j]])``. OpenCV releases
    the GIL, so ``workers`` threads render in parallel. An item none of which is opaque
    cannot be rendered: it is skipped, counted and logged, and the rest go on.
    """
    settings = settings or RenderSettings()
    chosen = np.arange(images.shape[0]) if indices is None else np.asarray(indices, dtype=np.int64)
    count = int(chosen.shape[0])
    inputs = np.empty((count, *settings.input_shape), dtype=np.uint8)
    jpeg_bytes = np.empty(count, dtype=np.int64)
    shown = np.ones(count, dtype=bool)

    def render_chunk(start: int) -> None:
        for position in range(start, min(start + _CHUNK, count)):
            index = int(chosen[position])
            rng = np.random.default_rng([seed, stream, index])
            alpha = None if opacity is None else opacity[index]
            try:
                if settings.objects:
                    rendered = render_object(
                        images[index], rng, settings.render_size, alpha, heights
                    )
                    jpeg = preprocess.encode_jpeg(rendered.image, settings.jpeg_quality)
                    inputs[position] = settings.object_input(jpeg, rendered, rng)
                else:
                    frame = render_item(images[index], rng, settings.render_size, opacity=alpha)
                    jpeg = preprocess.encode_jpeg(frame, settings.jpeg_quality)
                    inputs[position] = settings.jpeg_to_input(jpeg)
            except Unrenderable:
                shown[position] = False
                continue
            jpeg_bytes[position] = len(jpeg)

    starts = range(0, count, _CHUNK)
    if workers <= 1 or count <= _CHUNK:
        for start in starts:
            render_chunk(start)
    else:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="render") as pool:
            list(pool.map(render_chunk, starts))
    skipped = int(count - shown.sum())
    if skipped:
        log.warning(
            "skipped %d of %d items that cannot be rendered (nothing of them is opaque): %s",
            skipped, count, ", ".join(str(int(i)) for i in chosen[~shown][:10]),
        )  # fmt: skip
    return Renders(inputs[shown], jpeg_bytes[shown], chosen[shown], skipped)


def _sample(count: int, available: int, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    if not 0 < count <= available:
        raise ValueError(f"asked for {count} items, the source has {available}")
    return np.sort(rng.permutation(available)[:count]).astype(np.int64)


def _render_split(
    source: LabeledImages,
    index: npt.NDArray[np.int64],
    *,
    seed: int,
    stream: int,
    settings: RenderSettings,
    workers: int,
    passes: int = 1,
    reuse: RenderedSplit | None = None,
) -> RenderedSplit:
    """``source``'s items ``index`` rendered as model inputs; an index repeated over
    ``passes`` draws each pass's scenes from a stream of its own (an item in new scenes).
    Rows of ``reuse`` (a split rendered before with the same seed, stream and settings) are
    taken as they are: an item's render is a pure function of its index."""
    inputs, labels, jpeg_bytes, shown = [], [], [], []
    skipped = 0
    per_pass = -(-len(index) // passes)
    for number in range(passes):
        wanted = index[number * per_pass : (number + 1) * per_pass]
        done = reuse.rows_of(wanted, number) if reuse is not None else {}
        fresh = render_inputs(
            source.images,
            seed=seed,
            stream=stream + 16 * number,
            indices=np.asarray([i for i in wanted if int(i) not in done], np.int64),
            settings=settings,
            workers=workers,
            opacity=source.alpha,
        )
        skipped += fresh.skipped
        made = {int(item): row for row, item in enumerate(fresh.shown)}
        for item in wanted.tolist():
            if item in done:
                assert reuse is not None
                inputs.append(reuse.inputs[done[item]])
                jpeg_bytes.append(reuse.jpeg_bytes[done[item]])
            elif item in made:
                inputs.append(fresh.inputs[made[item]])
                jpeg_bytes.append(fresh.jpeg_bytes[made[item]])
            else:
                continue
            labels.append(int(source.labels[item]))
            shown.append((item, number))
    return RenderedSplit(
        np.stack(inputs) if inputs else np.empty((0, *settings.input_shape), np.uint8),
        np.asarray(labels, np.int64),
        np.asarray(jpeg_bytes, np.int64),
        np.asarray([item for item, _ in shown], np.int64),
        np.asarray([number for _, number in shown], np.int64),
        skipped,
    )


def build_dataset(
    n_train: int,
    n_held_out: int,
    *,
    seed: int = 0,
    settings: RenderSettings | None = None,
    train_source: LabeledImages | None = None,
    held_out_source: LabeledImages | None = None,
    task: str | None = None,
    workers: int = 2,
    reuse: RenderedDataset | None = None,
) -> RenderedDataset:
    """Render ``n_train`` training and ``n_held_out`` held-out items (taking the renders of
    ``reuse``, a data set built before with the same seed and settings, as they are).

    Defaults to Fashion-MNIST (``train`` split for training, ``test`` split held out). With a
    ``train_source`` and no ``held_out_source`` (a user's folder,
    :func:`edgelearn.datasets.load_image_folder`), the set is split by
    :func:`edgelearn.datasets.folder_split` (the cameras show the same held-out part): at most
    ``n_held_out`` of its held-out items, and ``n_train`` renders of its training items, each
    item rendered again in other scenes when there are fewer items than ``n_train``. Items
    are otherwise sampled without replacement by a seeded permutation.
    """
    settings = settings or RenderSettings()
    if train_source is None:
        train_source = load_fashion_mnist("train")
        held_out_source = held_out_source or load_fashion_mnist("test")
        task = task or "fashion-mnist"
    rng = np.random.default_rng([seed, 0])
    repeats = 1
    if held_out_source is None:
        # One set, split in two: the held-out items never appear in training.
        train_all, held_all = folder_split(len(train_source), seed)
        held_index = held_all[:n_held_out]
        repeats = -(-n_train // len(train_all))  # ceil
        train_index = np.tile(train_all, repeats)[:n_train] if repeats > 1 else (
            np.sort(rng.permutation(train_all)[:n_train]).astype(np.int64)
        )  # fmt: skip
        held_out_source = train_source
    else:
        train_index = _sample(n_train, len(train_source), rng)
        held_index = _sample(n_held_out, len(held_out_source), rng)
    if held_out_source.class_names != train_source.class_names:
        raise ValueError("training and held-out sets have different classes")

    return RenderedDataset(
        train=_render_split(
            train_source,
            train_index,
            seed=seed,
            stream=_TRAIN_STREAM,
            settings=settings,
            workers=workers,
            passes=repeats,
            reuse=None if reuse is None else reuse.train,
        ),
        held_out=_render_split(
            held_out_source,
            held_index,
            seed=seed,
            stream=_HELD_OUT_STREAM,
            settings=settings,
            workers=workers,
            reuse=None if reuse is None else reuse.held_out,
        ),
        class_names=train_source.class_names,
        settings=settings,
        seed=seed,
        task=task or "custom",
    )


def camera_frames(
    source: LabeledImages,
    count: int,
    *,
    seed: int = 0,
    cameras: int = 4,
    settings: RenderSettings | None = None,
) -> RenderedSplit:
    """``count`` camera frames of ``cameras`` cameras' items (in the order of a
    :class:`LabeledScene` of each, one new item per frame), JPEG, decoded per ``settings``:
    by default 720p and the gateway's reduced decode (real camera frames); with
    reduced-size settings the *same* frames rendered small (scenes are
    resolution-independent), for a paired comparison of the two paths. With
    ``settings.objects`` each item is an object (:func:`render_object`) cut as the gateway
    cuts it; otherwise the scene's frame and its centre square."""
    settings = settings or RenderSettings.camera()
    scenes = [
        LabeledScene(source, seed=seed * 1000 + camera, dwell_frames=1, size=settings.render_size)
        for camera in range(cameras)
    ]
    inputs = np.empty((count, *settings.input_shape), dtype=np.uint8)
    labels = np.empty(count, dtype=np.int64)
    jpeg_bytes = np.empty(count, dtype=np.int64)
    index = np.empty(count, dtype=np.int64)
    for position in range(count):
        scene = scenes[position % cameras]
        frame_index = position // cameras
        item = scene.item_index(frame_index)
        if settings.objects:  # the item as an object, the same scene at either size
            rng = np.random.default_rng([seed, position % cameras, frame_index])
            rendered = render_object(source.images[item], rng, settings.render_size)
            jpeg = preprocess.encode_jpeg(rendered.image, settings.jpeg_quality)
            inputs[position] = settings.object_input(jpeg, rendered, rng)
        else:
            frame = scene.render(frame_index)
            jpeg = preprocess.encode_jpeg(frame.image, settings.jpeg_quality)
            inputs[position] = settings.jpeg_to_input(jpeg)
        labels[position] = int(source.labels[item])
        jpeg_bytes[position] = len(jpeg)
        index[position] = item
    return RenderedSplit(inputs, labels, jpeg_bytes, index)
