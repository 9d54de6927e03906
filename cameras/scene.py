"""A labeled data set shown to a camera: one item at a time, large, in a simple real scene.

This is the labeled source in the flow of a frame (source -> JPEG -> transport): each frame
shows one item of a :class:`~edgelearn.datasets.LabeledImages` at about 60% of the frame
height, centred with a little motion, over a textured wall-and-floor background, under slowly
drifting lighting and with sensor noise. An item dwells for ``dwell_frames`` frames, then the
next slides in; every frame carries the label of the item in view.

The rendering is one pure function, :func:`render_item`, which the cloud's trainer also calls
(once per training item, often at a smaller ``size``) so training data looks like what the
cameras send. Every length is a fraction of the frame and the noise level is scaled with the
frame height, so a small render looks like a downscaled 720p frame.

Cost at 720p is a few milliseconds per frame: the background is built once per scene at a
quarter of the resolution, the item is warped only inside its bounding box, lighting is one
``cv2.transform`` pass and the noise comes from a cached noise field at a random offset.

Every source (this one, and :mod:`cameras.sources`) yields a :class:`SourceFrame`: a 1280x720
BGR ``uint8`` image and, when the scene is labeled, the ground-truth class of what is in
view, through the small :class:`FrameSource` interface. Sources are plain, synchronous and
deterministic given a seed; the camera service calls them from a worker thread.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Final, Protocol

import cv2
import numpy as np
import numpy.typing as npt

from edgelearn.datasets import LabeledImages
from edgelearn.preprocess import HD_720P

Image = npt.NDArray[np.uint8]
"""A BGR image, shape (height, width, 3), dtype uint8 (OpenCV's layout)."""


Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) in pixels, x1 and y1 exclusive (as :mod:`edgelearn.roi` gives them)."""


@dataclass(frozen=True)
class TrueObject:
    """One item in view, as rendered: its class, the box of its visible pixels and its
    index in the data set (which tells one item from another of its class)."""

    label: int
    box: Box
    item: int


@dataclass(frozen=True)
class SourceFrame:
    """One image from a source and the label of the item in view (None when unlabeled).

    Scenes with several items (:class:`ObjectScene`) list each in ``objects``, with its box;
    their ``label`` is None, since no one label describes the frame."""

    image: Image
    label: int | None = None
    objects: tuple[TrueObject, ...] = ()
    labeled: bool = False  # rendered with its ground truth: label and objects are all of it


class FrameSource(Protocol):
    """A camera's picture: an endless sequence of frames that can also be skipped over.

    ``skip`` advances past frames the camera did not send (it fell behind), so the picture
    stays in step with wall time and labels stay aligned with what a real camera would show.
    """

    def read(self) -> SourceFrame:
        """The next frame."""
        ...

    def skip(self, count: int) -> None:
        """Advance past ``count`` frames without rendering them."""
        ...

    def close(self) -> None:
        """Release files or decoders the source holds."""
        ...


class RenderedSource:
    """A :class:`FrameSource` whose frame ``i`` is a pure function of ``i``
    (:meth:`render`): reading renders the next index, skipping only counts, and there is
    nothing to release."""

    _next: int = 0

    def render(self, frame_index: int) -> SourceFrame:
        raise NotImplementedError

    def read(self) -> SourceFrame:
        frame = self.render(self._next)
        self._next += 1
        return frame

    def skip(self, count: int) -> None:
        self._next += max(0, count)

    def close(self) -> None:
        """Nothing to release."""


ITEM_HEIGHT: Final = 0.6
"""Height of the item as a fraction of the frame height."""

NOISE_SIGMA_720P: Final = 3.0
"""Standard deviation of the sensor noise, in grey levels, at 720 rows (scaled with height)."""

# A grayscale item's pixel value at which it becomes opaque: Fashion-MNIST items are drawn
# bright on exact black, so the soft edge comes from the upscaled item itself.
_ALPHA_KNEE: Final = 24.0
_NOISE_PAD: Final = 64
_EDGE_KERNEL: Final = np.ones((3, 3), np.uint8)


@dataclass(frozen=True)
class ItemPose:
    """Where the item is: centre offset as fractions of the frame's width and height,
    its height as a fraction of the frame height, and its rotation in degrees."""

    dx: float = 0.0
    dy: float = 0.0
    height: float = ITEM_HEIGHT
    angle: float = 0.0


@dataclass(frozen=True)
class Lighting:
    """Global light on the scene: per-channel (B, G, R) gain and an offset in grey levels."""

    gain: tuple[float, float, float] = (1.0, 1.0, 1.0)
    offset: float = 0.0


def random_pose(rng: np.random.Generator) -> ItemPose:
    """A pose near the centre: a few percent off, 55-65% of the height, a few degrees turned."""
    return ItemPose(
        dx=float(rng.uniform(-0.05, 0.05)),
        dy=float(rng.uniform(-0.03, 0.03)),
        height=float(rng.uniform(0.55, 0.65)),
        angle=float(rng.uniform(-6.0, 6.0)),
    )


def random_lighting(rng: np.random.Generator) -> Lighting:
    """Daylight to dim indoor light with a slight colour cast."""
    level = float(rng.uniform(0.8, 1.15))
    cast = rng.uniform(0.95, 1.05, 3)
    return Lighting(
        gain=(level * float(cast[0]), level * float(cast[1]), level * float(cast[2])),
        offset=float(rng.uniform(-8.0, 8.0)),
    )


def dimmed(lighting: Lighting, gain: float) -> Lighting:
    """``lighting`` with every channel's gain times ``gain`` (below 1: a darker scene)."""
    blue, green, red = lighting.gain
    return replace(lighting, gain=(blue * gain, green * gain, red * gain))


def random_tint(rng: np.random.Generator) -> tuple[float, float, float]:
    """The colour of a grayscale item (clothes come in colours): a muted multiplier."""
    base = rng.uniform(0.55, 1.0, 3)
    return (float(base[0]), float(base[1]), float(base[2]))


def make_background(rng: np.random.Generator, size: tuple[int, int] = HD_720P) -> Image:
    """A wall above a floor, with blotchy low-frequency texture and a light gradient.

    Built at a quarter of the resolution and scaled up (it has no fine detail; the sensor
    noise supplies that), so it costs about a millisecond at 720p.
    """
    width, height = size
    small_w, small_h = max(8, width // 4), max(8, height // 4)
    wall = rng.uniform(90.0, 180.0) * rng.uniform(0.8, 1.2, 3)
    floor = rng.uniform(50.0, 140.0) * rng.uniform(0.8, 1.2, 3)
    horizon = rng.uniform(0.62, 0.85) * small_h
    rows = np.arange(small_h, dtype=np.float32)[:, None, None]
    base = np.where(rows < horizon, wall, floor).astype(np.float32)
    base = np.broadcast_to(base, (small_h, small_w, 3)).copy()
    # Texture grids are a fixed number of cells per frame, so the look is size-independent.
    # Mostly brightness variation with a little colour, like paint and floor boards.
    blotch_cells = rng.normal(0.0, 14.0, (6, 10, 1)) + rng.normal(0.0, 3.0, (6, 10, 3))
    blotches = cv2.resize(
        blotch_cells.astype(np.float32),
        (small_w, small_h),
        interpolation=cv2.INTER_CUBIC,
    )
    grain = cv2.resize(
        np.repeat(rng.normal(0.0, 6.0, (45, 80, 1)), 3, axis=2).astype(np.float32),
        (small_w, small_h),
        interpolation=cv2.INTER_LINEAR,
    )
    xs = np.linspace(-0.5, 0.5, small_w, dtype=np.float32)[None, :, None]
    ys = np.linspace(-0.5, 0.5, small_h, dtype=np.float32)[:, None, None]
    light = 1.0 + rng.uniform(-0.3, 0.3) * xs - 0.15 * (xs**2 + ys**2)
    small = np.clip((base + blotches + grain) * light, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR))


_noise_lock = threading.Lock()


_RAMP: Final = np.repeat(np.arange(256, dtype=np.uint8).reshape(256, 1, 1), 3, axis=2)
"""Every grey level in each of three channels: :func:`compose_many` lights this."""

NoiseBank = tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]


def _noise_bank(width: int, height: int, sigma_720p: float = NOISE_SIGMA_720P) -> NoiseBank:
    # Cameras render in worker threads; build each size's field once, not once per thread.
    with _noise_lock:
        return _make_noise_bank(width, height, sigma_720p)


@functools.lru_cache(maxsize=8)
def _make_noise_bank(width: int, height: int, sigma_720p: float = NOISE_SIGMA_720P) -> NoiseBank:
    """A fixed field of Gaussian sensor noise for this frame size, a little larger than the
    frame; frames add a slice at a random offset, which is far cheaper than drawing fresh
    noise per pixel. Its sigma is ``sigma_720p`` (by default :data:`NOISE_SIGMA_720P`)
    scaled by ``height / 720`` (a smaller render looks like a downscaled 720p frame, whose
    noise averages out). Kept as its upward and its downward part, each in bytes."""
    sigma = sigma_720p * height / 720.0
    rng = np.random.default_rng(0x5EED)
    field = rng.normal(0.0, sigma, (height + _NOISE_PAD, width + _NOISE_PAD, 3))
    noise = np.rint(field).astype(np.int16)
    brighter = np.clip(noise, 0, 255).astype(np.uint8)
    darker = np.clip(-noise, 0, 255).astype(np.uint8)
    for part in (brighter, darker):
        part.flags.writeable = False
    return brighter, darker


Opacity = npt.NDArray[np.uint8] | None
"""An item's opacity per pixel, (h, w) 0..255; None: a sprite, its brightness is its opacity
(:attr:`edgelearn.datasets.LabeledImages.alpha`)."""

Placed = tuple[npt.NDArray[np.uint8], ItemPose, tuple[float, float, float], Opacity]
"""One item in a scene: its pixels, where it stands, its tint (grayscale items), its opacity."""


def _paste_item(
    frame: Image,
    item: npt.NDArray[np.uint8],
    pose: ItemPose,
    tint: tuple[float, float, float],
    opacity: Opacity = None,
) -> Box | None:
    """Warp ``item`` into ``frame`` in place, touching only its bounding box; returns the
    box of its visible pixels (opacity over one half), None if none is in the frame. A
    colour item without ``opacity`` is opaque all over."""
    height, width = frame.shape[:2]
    item_h, item_w = item.shape[:2]
    scale = pose.height * height / item_h
    centre_x = width / 2 + pose.dx * width
    centre_y = height / 2 + pose.dy * height
    matrix = cv2.getRotationMatrix2D((item_w / 2, item_h / 2), pose.angle, scale)
    matrix[0, 2] += centre_x - item_w / 2
    matrix[1, 2] += centre_y - item_h / 2
    corners = np.array([[0, 0, 1], [item_w, 0, 1], [0, item_h, 1], [item_w, item_h, 1]], float)
    mapped = corners @ matrix.T
    x0 = max(0, math.floor(mapped[:, 0].min()))
    y0 = max(0, math.floor(mapped[:, 1].min()))
    x1 = min(width, math.ceil(mapped[:, 0].max()) + 1)
    y1 = min(height, math.ceil(mapped[:, 1].max()) + 1)
    if x1 <= x0 or y1 <= y0:
        return None  # entirely outside the frame (an item sliding in)
    matrix[0, 2] -= x0
    matrix[1, 2] -= y0
    box = (x1 - x0, y1 - y0)
    region = frame[y0:y1, x0:x1]
    to_colour = np.asarray(tint, np.float32).reshape(3, 1)  # grey in, grey times tint out
    if opacity is None and item.ndim == 2:  # a sprite
        warped = cv2.warpAffine(item, matrix, box, flags=cv2.INTER_LINEAR)  # black outside
        alpha = np.minimum(np.asarray(warped, np.float32) * (1.0 / _ALPHA_KNEE), 1.0)
        # The item's edge pixels are anti-aliased against black; colouring them from their
        # brighter neighbours (a dilation) lets the edge fade into the background instead of
        # drawing a dark rim around every item.
        solid = np.where(item < _ALPHA_KNEE, cv2.dilate(item, _EDGE_KERNEL), item)
        grey = cv2.warpAffine(solid, matrix, box, flags=cv2.INTER_LINEAR)  # black outside
        colour = cv2.transform(cv2.max(grey, warped)[:, :, None], to_colour)
    else:
        colour = cv2.warpAffine(item, matrix, box, flags=cv2.INTER_LINEAR)  # black outside
        if item.ndim == 2:
            colour = cv2.transform(colour[:, :, None], to_colour)
        if opacity is None:
            opacity = np.full((item_h, item_w), 255, np.uint8)
        mask = cv2.warpAffine(opacity, matrix, box, flags=cv2.INTER_LINEAR)
        alpha = np.asarray(mask, np.float32) * (1.0 / 255.0)
    frame[y0:y1, x0:x1] = cv2.blendLinear(colour, region, alpha, 1.0 - alpha)
    rows = np.flatnonzero((alpha > 0.5).any(axis=1))
    cols = np.flatnonzero((alpha > 0.5).any(axis=0))
    if rows.size == 0:
        return None
    return (x0 + int(cols[0]), y0 + int(rows[0]), x0 + int(cols[-1]) + 1, y0 + int(rows[-1]) + 1)


def compose(
    background: Image,
    item: npt.NDArray[np.uint8] | None,
    pose: ItemPose,
    lighting: Lighting,
    tint: tuple[float, float, float],
    noise_rng: np.random.Generator,
    opacity: Opacity = None,
) -> Image:
    """The deterministic core: background + item at ``pose`` + lighting + sensor noise.

    ``item`` is (h, w) grayscale (drawn in ``tint``) or (h, w, 3) BGR, its ``opacity`` as
    :data:`Opacity` says (a colour item without one is an opaque picture); ``None`` renders
    the empty scene.
    """
    placed: list[Placed] = [] if item is None else [(item, pose, tint, opacity)]
    return compose_many(background, placed, lighting, noise_rng)[0]


def compose_many(
    background: Image,
    items: list[Placed],
    lighting: Lighting,
    noise_rng: np.random.Generator,
    noise_sigma_720p: float = NOISE_SIGMA_720P,
) -> tuple[Image, list[Box | None]]:
    """:func:`compose` for any number of items, painted in order; also returns each item's
    visible box (None when none of it shows: outside the frame, or transparent). The sensor
    noise has ``noise_sigma_720p`` grey levels at 720 rows (scaled with the height)."""
    scene = background.copy()
    boxes = [_paste_item(scene, *placed) for placed in items]
    height, width = scene.shape[:2]
    gain_b, gain_g, gain_r = lighting.gain
    light = np.array(
        [
            [gain_b, 0, 0, lighting.offset],
            [0, gain_g, 0, lighting.offset],
            [0, 0, gain_r, lighting.offset],
        ],
        dtype=np.float32,
    )
    # The light is a gain per channel and an offset: a table of 256 values per channel,
    # made by the very transform it replaces (so every pixel comes out the same), applied
    # in one lookup pass: a quarter of the cost of transforming 720p pixels one by one.
    frame = cv2.LUT(scene, cv2.transform(_RAMP, light))
    if noise_sigma_720p * height / 720.0 >= 0.25:
        brighter, darker = _noise_bank(width, height, noise_sigma_720p)
        off_y, off_x = (int(v) for v in noise_rng.integers(0, _NOISE_PAD, 2))
        window = (slice(off_y, off_y + height), slice(off_x, off_x + width))
        # A pixel's noise is either up or down: two saturating passes of bytes give what one
        # signed pass of 16-bit values gave, at half the cost.
        frame = cv2.subtract(cv2.add(frame, brighter[window]), darker[window])
    return np.ascontiguousarray(frame, dtype=np.uint8), boxes


def render_item(
    item: npt.NDArray[np.uint8],
    rng: np.random.Generator,
    size: tuple[int, int] = HD_720P,
    *,
    background: Image | None = None,
    pose: ItemPose | None = None,
    lighting: Lighting | None = None,
    opacity: Opacity = None,
) -> Image:
    """Render ONE item into a camera-like scene with random background, noise, position,
    rotation, colour (grayscale items) and lighting, all drawn from ``rng``.

    ``size`` is (width, height); the look is resolution-independent (the item is ~60% of the
    frame height, centred within a few percent). Pass ``background``/``pose``/``lighting``
    to fix any of them. Returns a BGR uint8 image of shape (height, width, 3).
    """
    if background is None:
        background = make_background(rng, size)
    elif background.shape[:2] != (size[1], size[0]):
        raise ValueError(f"background is {background.shape[1::-1]}, size is {size}")
    if pose is None:
        pose = random_pose(rng)
    if lighting is None:
        lighting = random_lighting(rng)
    tint = random_tint(rng) if item.ndim == 2 else (1.0, 1.0, 1.0)
    return compose(background, item, pose, lighting, tint, rng, opacity)


OBJECT_HEIGHTS: Final = (0.28, 0.45)
"""Range of an item's height, as a fraction of the frame height, in :class:`ObjectScene`."""


def random_object_pose(
    rng: np.random.Generator, heights: tuple[float, float] = OBJECT_HEIGHTS
) -> ItemPose:
    """Anywhere an :class:`ObjectScene` item stands: across the frame, ``heights`` of its
    height (by default 28-45%: :data:`OBJECT_HEIGHTS`). The draws are the same whatever
    ``heights`` is, so only the item's size changes with it."""
    return ItemPose(
        dx=float(rng.uniform(-0.33, 0.33)),
        dy=float(rng.uniform(-0.15, 0.15)),
        height=float(rng.uniform(*heights)),
        angle=float(rng.uniform(-6.0, 6.0)),
    )


@dataclass(frozen=True)
class RenderedObject:
    """One item as an :class:`ObjectScene` shows it: the frame, the box of the item's
    visible pixels, and the same frame without the item (what a background model learns)."""

    image: Image
    box: Box
    empty: Image


class Unrenderable(ValueError):
    """An item with nothing to show (every pixel of it transparent): no view of it exists."""


def render_object(
    item: npt.NDArray[np.uint8],
    rng: np.random.Generator,
    size: tuple[int, int] = HD_720P,
    opacity: Opacity = None,
    heights: tuple[float, float] = OBJECT_HEIGHTS,
) -> RenderedObject:
    """One item at a random place, size (within ``heights``, fractions of the frame
    height), background, light, tint and noise from ``rng``: the cloud's training renders,
    which it crops with :mod:`edgelearn.roi` as the gateways crop their objects. Raises
    :class:`Unrenderable` for an item none of which shows."""
    background = make_background(rng, size)
    pose = random_object_pose(rng, heights)
    lighting = random_lighting(rng)
    tint = random_tint(rng) if item.ndim == 2 else (1.0, 1.0, 1.0)
    image, boxes = compose_many(background, [(item, pose, tint, opacity)], lighting, rng)
    box = boxes[0]
    if box is None:  # a pose inside the frame: the item itself is invisible
        raise Unrenderable("no pixel of the item is opaque")
    empty, _ = compose_many(background, [], lighting, rng)
    return RenderedObject(image, box, empty)


class LabeledScene(RenderedSource):
    """A static camera watching items of a labeled data set pass one at a time.

    Frame ``i`` shows item slot ``i // dwell_frames``; slots walk through the data set in a
    seeded random order, epoch after epoch, never showing the same item twice in a row (when
    the data set has more than one). Each frame is a pure function of ``(seed, i)``, so
    :meth:`skip` is free and two scenes with the same seed are identical.
    """

    def __init__(
        self,
        data: LabeledImages,
        *,
        seed: int = 0,
        dwell_frames: int = 30,
        size: tuple[int, int] = HD_720P,
        entry_frames: int | None = None,
    ) -> None:
        if dwell_frames < 1:
            raise ValueError(f"dwell_frames must be >= 1, got {dwell_frames}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        self.data = data
        self.seed = seed
        self.dwell_frames = dwell_frames
        self.size = size
        self.entry_frames = min(5, dwell_frames // 5) if entry_frames is None else entry_frames
        scene_rng = np.random.default_rng([seed, 0])
        self._background = make_background(scene_rng, size)
        self._base_lighting = random_lighting(scene_rng)
        self._drift_phase = scene_rng.uniform(0.0, 2 * math.pi, 4)
        self._permutations: dict[int, npt.NDArray[np.int64]] = {}

    # -- which item is in view -------------------------------------------------------------

    def _permutation(self, epoch: int) -> npt.NDArray[np.int64]:
        cached = self._permutations.get(epoch)
        if cached is None:
            cached = self._raw_permutation(epoch)
            if epoch > 0 and len(cached) > 2:
                previous_last = self._raw_permutation(epoch - 1)[-1]
                if cached[0] == previous_last:  # no item twice in a row across epochs
                    cached[0], cached[1] = cached[1], cached[0]
            if len(self._permutations) >= 4:
                self._permutations.pop(next(iter(self._permutations)))
            self._permutations[epoch] = cached
        return cached

    def _raw_permutation(self, epoch: int) -> npt.NDArray[np.int64]:
        # For two items, alternating is the only order without repeats.
        count = len(self.data)
        if count <= 2:
            return np.arange(count, dtype=np.int64)
        return np.random.default_rng([self.seed, 1, epoch]).permutation(count).astype(np.int64)

    def item_index(self, frame_index: int) -> int:
        """The data set index of the item in view in frame ``frame_index``."""
        slot = frame_index // self.dwell_frames
        count = len(self.data)
        return int(self._permutation(slot // count)[slot % count])

    def label_at(self, frame_index: int) -> int:
        return int(self.data.labels[self.item_index(frame_index)])

    # -- rendering -------------------------------------------------------------------------

    def _pose(self, slot: int, step: int) -> tuple[ItemPose, tuple[float, float, float]]:
        item_rng = np.random.default_rng([self.seed, 2, slot])
        base = random_pose(item_rng)
        tint = random_tint(item_rng)
        phase = item_rng.uniform(0.0, 2 * math.pi, 3)
        period = item_rng.uniform(40.0, 90.0)
        angle_now = 2 * math.pi * step / period
        dx = base.dx + 0.012 * math.sin(angle_now + phase[0])
        dy = base.dy + 0.008 * math.sin(0.7 * angle_now + phase[1])
        angle = base.angle + 1.5 * math.sin(0.5 * angle_now + phase[2])
        if step < self.entry_frames:
            # Slide in from the right edge, easing out, over the first few frames.
            remaining = 1.0 - (step + 1) / (self.entry_frames + 1)
            dx += 0.7 * remaining**2
        return replace(base, dx=dx, dy=dy, angle=angle), tint

    def _lighting(self, frame_index: int) -> Lighting:
        # Slow drift, periods of tens of seconds at 15 fps.
        phase = self._drift_phase
        swing = [1.0 + 0.06 * math.sin(2 * math.pi * frame_index / 600.0 + p) for p in phase[:3]]
        gain = self._base_lighting.gain
        return Lighting(
            gain=(gain[0] * swing[0], gain[1] * swing[1], gain[2] * swing[2]),
            offset=self._base_lighting.offset
            + 5.0 * math.sin(2 * math.pi * frame_index / 900.0 + phase[3]),
        )

    def render(self, frame_index: int) -> SourceFrame:
        """Frame ``frame_index`` of this scene (a pure function of the seed and index)."""
        if frame_index < 0:
            raise ValueError(f"frame_index must be >= 0, got {frame_index}")
        slot, step = divmod(frame_index, self.dwell_frames)
        index = self.item_index(frame_index)
        pose, tint = self._pose(slot, step)
        item = self.data.images[index]
        if item.ndim == 3:
            tint = (1.0, 1.0, 1.0)
        image = compose(
            self._background,
            item,
            pose,
            self._lighting(frame_index),
            tint,
            np.random.default_rng([self.seed, 3, frame_index]),
            self.data.opacity(index),
        )
        return SourceFrame(image=image, label=int(self.data.labels[index]), labeled=True)

    def frames(self) -> Iterator[SourceFrame]:
        """Endless frames from the current position."""
        while True:
            yield self.read()


class ObjectScene(LabeledScene):
    """A static camera watching up to three items at once, as a real camera sees people
    pass: each of three lanes (the left, middle and right thirds of the frame) has an item
    walk in through its own edge (the left lane's from the left, the right lane's from the
    right, the middle's from the bottom), stand a while with a little sway, and walk out
    the way it came; then the lane stays empty a while. Items differ in place and size
    (28-45% of the frame height), and lanes are out of step, so 0 to 3 items are in view.

    Every frame lists what is in view in ``objects`` (label and visible box); ``label`` is
    None. Same background, lighting drift and noise as :class:`LabeledScene`; items walk
    through the data set in the same seeded order. A pure function of ``(seed, i)``.
    """

    LANES: Final = 3
    WALK_FRAMES: Final = 12

    def __init__(
        self,
        data: LabeledImages,
        *,
        seed: int = 0,
        period_frames: int = 150,
        walk_frames: int = WALK_FRAMES,
        size: tuple[int, int] = HD_720P,
        heights: tuple[float, float] = OBJECT_HEIGHTS,
        light_gain: float = 1.0,
        noise_sigma: float = NOISE_SIGMA_720P,
    ) -> None:
        """``heights``: the range of item heights, as fractions of the frame's (a camera
        further away sees smaller items). ``light_gain`` multiplies the scene's light (0.6:
        a darker room); ``noise_sigma``: the sensor noise, in grey levels at 720 rows (a
        worse sensor, a higher gain). The defaults render what the scene always rendered."""
        if period_frames < 4 * walk_frames or walk_frames < 1:
            raise ValueError(f"period_frames {period_frames} must be >= 4 * walk_frames >= 4")
        if not 0 < heights[0] <= heights[1] <= OBJECT_HEIGHTS[1]:
            raise ValueError(f"item heights {heights}: within (0, {OBJECT_HEIGHTS[1]}]")
        if not (math.isfinite(light_gain) and light_gain > 0):
            raise ValueError(f"light_gain must be a positive number, got {light_gain}")
        if not (math.isfinite(noise_sigma) and noise_sigma >= 0):
            raise ValueError(f"noise_sigma must be a number >= 0, got {noise_sigma}")
        super().__init__(data, seed=seed, dwell_frames=period_frames, size=size, entry_frames=0)
        self.period_frames = period_frames
        self.walk_frames = walk_frames
        self.heights = heights
        self.light_gain = light_gain
        self.noise_sigma = noise_sigma

    def _lighting(self, frame_index: int) -> Lighting:
        lighting = super()._lighting(frame_index)
        if self.light_gain == 1.0:
            return lighting
        return dimmed(lighting, self.light_gain)

    def _lane_pose(
        self, lane: int, frame_index: int
    ) -> tuple[int, ItemPose, tuple[float, float, float]] | None:
        """The data set index, pose and tint of the item in ``lane``, or None (empty)."""
        period, walk = self.period_frames, self.walk_frames
        shifted = frame_index + (lane * period) // self.LANES
        episode, step = divmod(shifted, period)
        rng = np.random.default_rng([self.seed, 5, lane, episode])
        gap = int(rng.integers(0, int(0.4 * period) + 1))
        height = float(rng.uniform(*self.heights))
        # Lanes are a third of the frame wide and items at most 45% of its height: a
        # little room is left between neighbours, as between people walking past.
        home_dx = (lane + 0.5) / self.LANES - 0.5 + float(rng.uniform(-0.015, 0.015))
        home_dy = float(rng.uniform(-0.15, 0.15))
        base_angle = float(rng.uniform(-6.0, 6.0))
        tint = random_tint(rng)
        phase = rng.uniform(0.0, 2 * math.pi, 3)
        if step < gap:
            return None
        step -= gap
        dwell = period - gap - 2 * walk
        sway = 2 * math.pi * step / 60.0
        dx = home_dx + 0.008 * math.sin(sway + phase[0])
        dy = home_dy + 0.006 * math.sin(0.7 * sway + phase[1])
        angle = base_angle + 1.5 * math.sin(0.5 * sway + phase[2])
        if step < walk:
            away = 1.0 - (step + 1) / (walk + 1)  # 1 outside the frame .. 0 home
            away = away**2  # easing out as it arrives
        elif step >= walk + dwell:
            away = ((step - walk - dwell + 1) / (walk + 1)) ** 2
        else:
            away = 0.0
        width_fraction = height * self.size[1] / self.size[0]
        if lane == 0:
            dx -= away * (home_dx + 0.5 + width_fraction / 2)
        elif lane == self.LANES - 1:
            dx += away * (0.5 - home_dx + width_fraction / 2)
        else:
            dy += away * (0.5 - home_dy + height / 2)
        item_slot = episode * self.LANES + lane
        count = len(self.data)
        index = int(self._permutation(item_slot // count)[item_slot % count])
        return index, ItemPose(dx=dx, dy=dy, height=height, angle=angle), tint

    def empty(self, frame_index: int) -> Image:
        """Frame ``frame_index`` with no item in view: the same wall, light and sensor noise.
        What a perfect background model of this camera would hold at that moment."""
        image, _ = compose_many(
            self._background,
            [],
            self._lighting(frame_index),
            np.random.default_rng([self.seed, 3, frame_index]),
            self.noise_sigma,
        )
        return image

    def render(self, frame_index: int) -> SourceFrame:
        if frame_index < 0:
            raise ValueError(f"frame_index must be >= 0, got {frame_index}")
        placed: list[Placed] = []
        labels = []
        for lane in range(self.LANES):
            in_view = self._lane_pose(lane, frame_index)
            if in_view is None:
                continue
            index, pose, tint = in_view
            item = self.data.images[index]
            colour = (1.0, 1.0, 1.0) if item.ndim == 3 else tint
            placed.append((item, pose, colour, self.data.opacity(index)))
            labels.append((int(self.data.labels[index]), index))
        image, boxes = compose_many(
            self._background,
            placed,
            self._lighting(frame_index),
            np.random.default_rng([self.seed, 3, frame_index]),
            self.noise_sigma,
        )
        objects = tuple(
            TrueObject(label, box, index)
            for (label, index), box in zip(labels, boxes, strict=True)
            if box
        )
        return SourceFrame(image=image, label=None, objects=objects, labeled=True)
