"""Objects in view: a per-camera background model, boxes, tracks and the crops models see.

Where it sits in the flow of a frame::

    JPEG --1/8 decode (160x90 grey)--> ObjectFinder.update --> boxes (720p pixels), tracks
         --1/4 decode (320x180; 1/2 when an object is small: crop_reduction)
                                     --> crop(box) --> model input (square, margin, normalised)

The gateway runs it on every frame of a camera (the camera's frames all reach one worker),
the cloud runs the very same code on the JPEGs of the cloud-only mode, and the trainer cuts
its crops with :func:`crop`, so every mode sees its objects alike.

**Background model.** A running average of the blurred 1/8-scale grey frame, updated only
where no object is (``learning_rate``), so an item that stops in view stays an object; an
object that stays still for ``absorb_after`` frames is taken into the background (a parked
car, a moved chair). When most of the view differs from the model for ``scene_frames``
frames on end (the camera was moved, the scene or its lights were changed), no object is that
big for that long: the model starts again from the frame. Before comparing, each frame's
global light is fitted to the background (``frame ~ gain * background + offset``, least
squares on the pixels that look like background, refitted once without the outliers), so a
lighting ramp or the camera's auto-exposure does not light up the whole frame. Sensor noise
is washed out by the 1/8 decode (libjpeg averages 8x8 blocks) and a 5x5 blur; what remains is
cut by ``pixel_delta`` grey levels.

**Boxes.** The foreground mask is closed (fills holes inside an item), opened (removes
specks), split into connected regions (``cv2.connectedComponentsWithStats``), regions under
``min_area`` (fraction of the frame) are dropped, and boxes that overlap or lie within
``merge_gap`` of each other (one item split by a stripe of its own colour) are merged.

**Tracks.** Greedy IoU matching (``match_iou``) of this frame's boxes to the tracks of the
previous frames, falling back to centre distance for a fast mover; an unmatched box starts
a track with the camera's next id, and a track unseen for ``max_missed`` frames ends.

**Which objects to send** (:meth:`ObjectFinder.update` marks them ``send``): the keyframe
rule of :mod:`edgelearn.keyframes`, run per track (appeared, moving, settled, refresh), never
while an object touches the frame's edge. An empty scene sends nothing.

numpy + OpenCV only (the gateway imports it).
"""

from __future__ import annotations

import logging
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import cv2
import numpy as np
import numpy.typing as npt

from edgelearn import preprocess
from edgelearn.keyframes import Cadence, KeyframeSettings, Reason
from edgelearn.preprocess import HD_720P, PreprocessError

Image = npt.NDArray[np.uint8]
Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) in pixels of the full frame, x1 and y1 exclusive."""

log = logging.getLogger(__name__)

SMALL_720P: Final = (HD_720P[0] // 8, HD_720P[1] // 8)
"""(width, height) of the background model's frame: :func:`small_grey` of a 720p JPEG."""

_CLOSE: Final = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
_OPEN: Final = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))


@dataclass(frozen=True)
class RoiSettings:
    pixel_delta: float = 8.0  # grey levels (after the light fit) that count as foreground
    learning_rate: float = 0.05  # background update per frame, where no object is
    absorb_after: int = 450  # frames an object may stay still before it becomes background
    scene_change: float = 0.5  # of the view in the foreground: the scene itself changed...
    scene_frames: int = 10  # ...when it stays so for this many frames on end
    min_area: float = 0.002  # of the frame; smaller regions are noise
    merge_gap: float = 0.01  # of the frame width; boxes this close are one object
    match_iou: float = 0.3
    max_missed: int = 5  # frames a track survives without a box

    def __post_init__(self) -> None:
        if self.pixel_delta <= 0 or not 0 < self.learning_rate <= 1:
            raise ValueError("roi pixel_delta must be > 0 and learning_rate in (0, 1]")
        if self.max_missed < 0:
            raise ValueError("roi max_missed must be >= 0")


@dataclass(frozen=True)
class FoundObject:
    """One object in one frame. ``send`` says whether the keyframe rule picked it."""

    track: int
    box: Box
    send: bool
    reason: Reason | None = None


@dataclass
class _Track:
    track: int
    box: Box
    missed: int = 0
    anchor: Box | None = None  # the box where it last moved (None: where it appeared)
    cadence: Cadence = field(default_factory=Cadence)


@dataclass
class CameraObjects:
    """The state of one camera: its background, its tracks and its next track id."""

    background: npt.NDArray[np.float32]
    scale: tuple[float, float]  # full-frame pixels per small pixel (x, y)
    frame_size: tuple[int, int]
    tracks: list[_Track] = field(default_factory=list)
    next_track: int = 1
    mask: npt.NDArray[np.uint8] | None = None  # the last frame's foreground, small scale
    light: tuple[float, float] = (1.0, 0.0)  # the last frame's: frame ~ gain * bg + offset
    changed: int = 0  # frames on end in which most of the view differed from the model
    restarts: int = 0  # times the model started again from a frame (the scene changed)


def small_grey(jpeg: bytes) -> npt.NDArray[np.uint8] | None:
    """The 1/8-scale grey decode the background model works on (160x90 for 720p), blurred;
    ``None`` if the JPEG does not decode."""
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_REDUCED_GRAYSCALE_8)
    if image is None or image.size == 0:
        return None
    return np.asarray(cv2.GaussianBlur(image, (5, 5), 0), np.uint8)


def reduce_frame(frame: Image, size: tuple[int, int]) -> npt.NDArray[np.uint8]:
    """What :func:`small_grey` makes of a 720p frame, from a render of it at any size (BGR
    or grey): grey, resized to ``size`` (width, height; :data:`SMALL_720P`), blurred."""
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    small = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
    return np.asarray(cv2.GaussianBlur(small, (5, 5), 0), np.uint8)


def match(a: Sequence[Box], b: Sequence[Box], min_iou: float) -> dict[int, int]:
    """Greedy one-to-one matching by IoU, best pairs first: ``{index in a: index in b}`` for
    the pairs overlapping by ``min_iou`` or more."""
    pairs = sorted(
        ((iou(x, y), i, j) for i, x in enumerate(a) for j, y in enumerate(b)), reverse=True
    )
    matched: dict[int, int] = {}
    taken: set[int] = set()
    for overlap, i, j in pairs:
        if overlap < min_iou:
            break
        if i not in matched and j not in taken:
            matched[i] = j
            taken.add(j)
    return matched


def iou(a: Box, b: Box) -> float:
    width = min(a[2], b[2]) - max(a[0], b[0])
    height = min(a[3], b[3]) - max(a[1], b[1])
    if width <= 0 or height <= 0:
        return 0.0
    inter = width * height
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def _fit_light(
    frame: npt.NDArray[np.float32], background: npt.NDArray[np.float32]
) -> tuple[float, float]:
    """gain, offset with ``frame ~ gain * background + offset``: least squares on every third
    pixel of every third row, leaving out those off the median offset by more than 2.5
    times their median distance (the objects)."""
    x = background[::3, ::3].ravel()
    y = frame[::3, ::3].ravel()
    difference = y - x
    middle = difference.size // 2
    offset = float(np.partition(difference, middle)[middle])
    residual = np.abs(difference - offset)
    keep = residual <= max(3.0, 2.5 * float(np.partition(residual, middle)[middle]))
    xs, ys = x[keep], y[keep]
    if xs.size < 16:
        return 1.0, offset
    mean_x, mean_y = float(xs.mean()), float(ys.mean())
    centred = xs - mean_x
    spread = float(np.dot(centred, centred))
    if spread < 16.0 * xs.size:  # a flat background: an offset is all one can fit
        return 1.0, mean_y - mean_x
    gain = float(np.dot(centred, ys - mean_y)) / spread
    return gain, mean_y - gain * mean_x


def foreground(
    frame: npt.NDArray[np.float32],
    background: npt.NDArray[np.float32],
    pixel_delta: float,
    light: tuple[float, float] | None = None,
) -> npt.NDArray[np.uint8]:
    """Where ``frame`` differs from ``background`` by more than ``pixel_delta`` grey levels
    once the frame's global ``light`` (gain, offset: fitted here when not given) is applied
    to the background; closed, then opened. Both at small scale (:func:`small_grey`).
    1 = object, 0 = background."""
    gain, offset = light if light is not None else _fit_light(frame, background)
    difference = np.abs(frame - (gain * background + offset))
    mask = np.asarray(difference > pixel_delta, np.uint8)
    mask = np.asarray(cv2.morphologyEx(mask, cv2.MORPH_CLOSE, _CLOSE), np.uint8)
    return np.asarray(cv2.morphologyEx(mask, cv2.MORPH_OPEN, _OPEN), np.uint8)


OBJECT_DELTA: Final = 10.0
"""Grey levels, at the finer decode, that set an object's pixel apart from the background."""
_SPECK: Final = cv2.getStructuringElement(cv2.MORPH_RECT, (2, 2))


def object_mask(
    frame: npt.NDArray[np.uint8],
    background: npt.NDArray[np.float32],
    coarse: npt.NDArray[np.uint8],
    light: tuple[float, float],
    pixel_delta: float = OBJECT_DELTA,
    within: Sequence[Box] = (),
) -> npt.NDArray[np.uint8]:
    """The objects' pixels at ``frame``'s finer scale (the gateway's 1/4 decode, grey or
    BGR): within the ``coarse`` foreground (:func:`foreground`, small scale) grown by a
    pixel, where ``frame`` differs from the small-scale ``background`` (scaled up, in this
    frame's ``light``) by more than ``pixel_delta``; specks removed, holes filled.

    The coarse mask is cut at 1/8 scale after a blur and a closing, so it spills about a
    fifth beyond the item and fills its gaps (between a trouser's legs, under a bag's
    handle): a ring of wall around every crop. This one keeps the item's own outline and
    fills only what the item encloses. Training cuts its crops with it too, against the
    exact empty scene, so both see an object alike.

    ``within``: only these rectangles (``frame``'s pixels) are worked out, each on its own,
    and the rest is 0. :class:`ObjectFinder` passes the squares its crops are cut from,
    which saves most of the work for small objects; a hole is then filled when the object
    encloses it inside its square (measured: the same crops, see tests/test_roi.py)."""
    grey = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
    height, width = grey.shape[:2]
    gain, offset = light
    # The light applied at small scale, then scaled up: linear either way, 16x fewer pixels.
    lit = np.asarray(gain * background + offset, np.float32)
    expected = cv2.resize(lit, (width, height), interpolation=cv2.INTER_LINEAR)
    near = cv2.resize(cv2.dilate(coarse, _OPEN), (width, height), interpolation=cv2.INTER_NEAREST)
    mask = np.zeros((height, width), np.uint8)
    for x0, y0, x1, y1 in within or [(0, 0, width, height)]:
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(width, x1), min(height, y1)
        if x1 <= x0 or y1 <= y0:
            continue
        rows, cols = slice(y0, y1), slice(x0, x1)
        seen = cv2.sepFilter2D(grey[rows, cols], cv2.CV_32F, _BLUR, _BLUR)  # 3x3 Gaussian
        differs = cv2.absdiff(seen, expected[rows, cols]) > pixel_delta
        part = np.asarray(differs & (near[rows, cols] > 0), np.uint8)
        part = np.asarray(cv2.morphologyEx(part, cv2.MORPH_OPEN, _SPECK), np.uint8)
        mask[rows, cols] |= _fill_holes(part)
    return mask


_BLUR: Final = cv2.getGaussianKernel(3, 0).astype(np.float32)
_MASK_PAD: Final = 3  # pixels around a crop's square: the blur and the opening see past it


def _fill_holes(mask: npt.NDArray[np.uint8]) -> npt.NDArray[np.uint8]:
    """``mask`` with every region of background it encloses (not reachable from outside
    the image) filled."""
    height, width = mask.shape
    outside = np.ones((height + 2, width + 2), np.uint8)  # a border of background
    np.subtract(1, mask, out=outside[1:-1, 1:-1])
    cv2.floodFill(outside, None, (0, 0), (2,))  # background reachable from outside: 2
    return np.asarray(mask | (outside[1:-1, 1:-1] == 1), np.uint8)


def fit_light(
    frame: npt.NDArray[np.float32], background: npt.NDArray[np.float32]
) -> tuple[float, float]:
    """(gain, offset) with ``frame ~ gain * background + offset`` (see :func:`foreground`)."""
    return _fit_light(frame, background)


def _edges(image: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    gx = cv2.Sobel(image, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(image, cv2.CV_32F, 0, 1, ksize=3)
    return np.asarray(np.abs(gx) + np.abs(gy), np.float32)


def _outline(mask: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
    return np.asarray(cv2.morphologyEx(mask, cv2.MORPH_GRADIENT, _OPEN), np.float32)


def _is_ghost(
    labels: npt.NDArray[np.int32],
    index: int,
    rect: tuple[int, int, int, int],
    frame_edges: npt.NDArray[np.float32],
    background_edges: npt.NDArray[np.float32],
    outline: npt.NDArray[np.float32],
) -> bool:
    """A region whose outline is an edge of the background model but not of the frame is
    what *was* there (the model started with an object in view that has since left): a
    ghost. A real object's outline is an edge in the frame."""
    x, y, w, h = rect
    window = (slice(max(0, y - 1), y + h + 1), slice(max(0, x - 1), x + w + 1))
    near = cv2.dilate((labels[window] == index).astype(np.uint8), _OPEN) > 0
    on_outline = (outline[window] > 0) & near
    if not on_outline.any():
        return False
    return float(background_edges[window][on_outline].mean()) > 1.5 * float(
        frame_edges[window][on_outline].mean()
    )


def _merge(boxes: list[Box], gap: int) -> list[Box]:
    merged = True
    while merged:
        merged = False
        for i in range(len(boxes)):
            for j in range(i + 1, len(boxes)):
                a, b = boxes[i], boxes[j]
                if (
                    a[0] - gap < b[2]
                    and b[0] - gap < a[2]
                    and a[1] - gap < b[3]
                    and b[1] - gap < a[3]
                ):
                    boxes[i] = (min(a[0], b[0]), min(a[1], b[1]), max(a[2], b[2]), max(a[3], b[3]))
                    del boxes[j]
                    merged = True
                    break
            if merged:
                break
    return boxes


def _centre_distance(a: Box, b: Box) -> float:
    return float(np.hypot((a[0] + a[2] - b[0] - b[2]) / 2, (a[1] + a[3] - b[1] - b[3]) / 2))


class ObjectFinder:
    """Per-camera background models and trackers. Not thread-safe: one per worker."""

    def __init__(
        self, settings: RoiSettings | None = None, keyframes: KeyframeSettings | None = None
    ) -> None:
        self.settings = settings or RoiSettings()
        self.keyframes = keyframes or KeyframeSettings()  # which objects to send
        self._cameras: dict[str, CameraObjects] = {}

    def restarts(self, camera_id: str) -> int:
        """How often ``camera_id``'s background model started again (its scene changed)."""
        state = self._cameras.get(camera_id)
        return 0 if state is None else state.restarts

    def mask(self, camera_id: str) -> npt.NDArray[np.uint8] | None:
        """The foreground of ``camera_id``'s last frame (small scale, 1 = object)."""
        state = self._cameras.get(camera_id)
        return None if state is None else state.mask

    def object_mask(
        self,
        camera_id: str,
        frame: npt.NDArray[np.uint8],
        boxes: Sequence[Box] = (),
    ) -> npt.NDArray[np.uint8] | None:
        """What :func:`crop` keeps of ``camera_id``'s last frame: :func:`object_mask` of
        ``frame`` (a finer decode of it, grey or BGR) against this camera's background;
        with ``boxes`` (full-frame pixels), worked out only in the squares :func:`crop`
        cuts around them (:func:`crop_square`), a few pixels wider for the blur."""
        state = self._cameras.get(camera_id)
        if state is None or state.mask is None:
            return None
        height, width = frame.shape[:2]
        sx, sy = width / state.frame_size[0], height / state.frame_size[1]
        within = [
            (
                int(np.floor(left * sx)) - _MASK_PAD,
                int(np.floor(top * sy)) - _MASK_PAD,
                int(np.ceil(right * sx)) + _MASK_PAD,
                int(np.ceil(bottom * sy)) + _MASK_PAD,
            )
            for left, top, right, bottom in map(crop_square, boxes)
        ]
        return object_mask(frame, state.background, state.mask, state.light, within=within)

    def update(
        self,
        camera_id: str,
        small: npt.NDArray[np.uint8],
        frame_size: tuple[int, int] = HD_720P,
    ) -> list[FoundObject]:
        """This frame's objects of ``camera_id``; ``small`` is :func:`small_grey` of it and
        ``frame_size`` the (width, height) its boxes are given in."""
        if small.ndim != 2 or small.size == 0:
            raise PreprocessError("bad_shape", f"small frame of shape {small.shape}")
        frame = small.astype(np.float32)
        state = self._cameras.get(camera_id)
        if state is None or state.background.shape != frame.shape or state.frame_size != frame_size:
            scale = (frame_size[0] / frame.shape[1], frame_size[1] / frame.shape[0])
            self._cameras[camera_id] = CameraObjects(frame.copy(), scale, frame_size)
            return []  # the first frame is the background: nothing to compare with yet
        boxes, mask = self._boxes(state, frame)
        state.changed = state.changed + 1 if mask.mean() > self.settings.scene_change else 0
        if state.changed >= self.settings.scene_frames:
            restarted = CameraObjects(frame.copy(), state.scale, frame_size)
            restarted.next_track, restarted.restarts = state.next_track, state.restarts + 1
            self._cameras[camera_id] = restarted
            log.info("%s: most of the view changed for %d frames: its background model starts "
                     "again from this frame", camera_id, state.changed)  # fmt: skip
            return []  # a new scene: this frame is its background
        found = self._track(state, boxes)
        self._learn(state, frame, mask)
        return found

    # -- foreground and boxes ----------------------------------------------------------

    def _boxes(
        self, state: CameraObjects, frame: npt.NDArray[np.float32]
    ) -> tuple[list[Box], npt.NDArray[np.uint8]]:
        settings = self.settings
        state.light = _fit_light(frame, state.background)
        mask = foreground(frame, state.background, settings.pixel_delta, state.light)
        count, found, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
        labels = np.asarray(found, np.int32)
        height, width = frame.shape
        min_pixels = settings.min_area * width * height
        boxes: list[Box] = []
        ghosts = np.zeros_like(mask)
        edges: tuple[npt.NDArray[np.float32], ...] | None = None
        for index in range(1, count):
            x, y, w, h, area = (int(v) for v in stats[index])
            if area < min_pixels:
                continue
            if edges is None:
                edges = (_edges(frame), _edges(state.background), _outline(mask))
            if _is_ghost(labels, index, (x, y, w, h), *edges):
                ghosts[labels == index] = 1
                continue
            boxes.append((x, y, x + w, y + h))
        if ghosts.any():  # what was there has gone
            state.background[ghosts > 0] = _in_reference_light(frame, state.light)[ghosts > 0]
            mask[ghosts > 0] = 0
        state.mask = mask
        boxes = _merge(boxes, max(1, round(settings.merge_gap * width)))
        sx, sy = state.scale
        full_w, full_h = state.frame_size
        scaled = [
            (
                max(0, int(x0 * sx)),
                max(0, int(y0 * sy)),
                min(full_w, int(np.ceil(x1 * sx))),
                min(full_h, int(np.ceil(y1 * sy))),
            )
            for x0, y0, x1, y1 in boxes
        ]
        return scaled, mask

    def _learn(
        self, state: CameraObjects, frame: npt.NDArray[np.float32], mask: npt.NDArray[np.uint8]
    ) -> None:
        """Learn the background where no object is: outside the foreground and outside the
        box of every live track. The box matters: the blur leaves an object's rim under the
        threshold, and learning there ate a still object from its edge inwards (its mask
        shrank frame by frame, and its crops with it). A track still for ``absorb_after``
        frames is taken in at once.

        The model is kept in one reference light: what it learns is the frame with this
        frame's fitted light undone. Learning the lit frame instead left the part under a
        still object in the light of when the object arrived, while the rest followed the
        room's light: after 10 s of drift the two differed by more than the threshold, and
        the object's fainter parts fell out of its mask."""
        settings = self.settings
        rate = np.where(mask > 0, 0.0, settings.learning_rate).astype(np.float32)
        sx, sy = state.scale
        height, width = rate.shape
        for track in state.tracks:
            x0, y0, x1, y1 = track.box
            rows = slice(max(0, int(y0 / sy) - 1), min(height, int(np.ceil(y1 / sy)) + 1))
            cols = slice(max(0, int(x0 / sx) - 1), min(width, int(np.ceil(x1 / sx)) + 1))
            absorbed = track.missed == 0 and track.cadence.still >= settings.absorb_after
            rate[rows, cols] = 1.0 if absorbed else 0.0
        state.background += rate * (_in_reference_light(frame, state.light) - state.background)

    # -- tracks and what to send -------------------------------------------------------

    def _track(self, state: CameraObjects, boxes: list[Box]) -> list[FoundObject]:
        settings = self.settings
        matched_tracks = match([t.box for t in state.tracks], boxes, settings.match_iou)
        matched_boxes = set(matched_tracks.values())
        # A fast mover overlaps little with where it was: match on centre distance.
        for ti, track in enumerate(state.tracks):
            if ti in matched_tracks:
                continue
            size = max(track.box[2] - track.box[0], track.box[3] - track.box[1])
            nearest = min(
                (bi for bi in range(len(boxes)) if bi not in matched_boxes),
                key=lambda bi: _centre_distance(track.box, boxes[bi]),
                default=None,
            )
            if nearest is not None and _centre_distance(track.box, boxes[nearest]) < size:
                matched_tracks[ti] = nearest
                matched_boxes.add(nearest)
        found: list[FoundObject] = []
        kept: list[_Track] = []
        for ti, track in enumerate(state.tracks):
            if ti not in matched_tracks:
                track.missed += 1
                if track.missed <= settings.max_missed:
                    kept.append(track)
                continue
            box = boxes[matched_tracks[ti]]
            moved = _shift(track.anchor or track.box, box) > self.keyframes.move_fraction
            if moved:
                track.anchor = box
            track.box, track.missed = box, 0
            found.append(self._found(track, moved, state.frame_size))
            kept.append(track)
        for bi, box in enumerate(boxes):
            if bi in matched_boxes:
                continue
            track = _Track(state.next_track, box, anchor=box)
            state.next_track += 1
            found.append(self._found(track, True, state.frame_size))
            kept.append(track)
        state.tracks = kept
        return found

    def _found(self, track: _Track, moved: bool, frame_size: tuple[int, int]) -> FoundObject:
        """The object of ``track`` this frame, with its keyframe reason, sent when the
        reason says so (every frame with keyframes off), but never while it touches the
        frame's edge: part of it is out of view (it is walking in or out), and a part is no
        view to classify. Its first whole view is its ``appeared``."""
        reason = track.cadence.step(moved, self.keyframes)
        x0, y0, x1, y1 = track.box
        at_edge = x0 <= 0 or y0 <= 0 or x1 >= frame_size[0] or y1 >= frame_size[1]
        send = not at_edge and (reason is not None or not self.keyframes.enabled)
        if send:
            track.cadence.sent()
        return FoundObject(track.track, track.box, send, reason if send else None)

    @staticmethod
    def at_edge(item: FoundObject, frame_size: tuple[int, int]) -> bool:
        """Whether ``item`` touches the frame's edge (partly out of view)."""
        x0, y0, x1, y1 = item.box
        return x0 <= 0 or y0 <= 0 or x1 >= frame_size[0] or y1 >= frame_size[1]


def _in_reference_light(
    frame: npt.NDArray[np.float32], light: tuple[float, float]
) -> npt.NDArray[np.float32]:
    """``frame`` with its fitted light (``frame ~ gain * background + offset``) undone."""
    gain, offset = light
    return np.asarray((frame - offset) / max(gain, 0.25), np.float32)


def _shift(a: Box, b: Box) -> float:
    """How far box ``b`` is from ``a``, as a fraction of ``a``'s larger side."""
    size = max(1, a[2] - a[0], a[3] - a[1])
    return max(abs(a[i] - b[i]) for i in range(4)) / size


# --- crops ----------------------------------------------------------------------------

CROP_MARGIN: Final = 0.15
"""Added around a box on every side, as a fraction of its larger side."""

CROP_RULE: Final = "objects/2"
"""Names how :func:`crop` cuts an object (with :func:`object_mask`, scaled to its peak), in
the registry's ``preprocessing`` of a model trained on such crops. A model trained on
another rule's crops (``objects``: a coarse mask, a mean and a spread) would be fed what it
never saw: the cloud trains such a registry again, and a gateway feeds it whole frames."""


FINE_BELOW: Final = 1.5
"""An object whose crop square would be under this many model inputs wide at 1/4 is cut
from the 1/2 decode (:func:`crop_reduction`)."""


def crop_reduction(boxes: Sequence[Box], input_size: int, margin: float = CROP_MARGIN) -> int:
    """The decode objects' crops are cut from (``boxes`` in full-frame pixels): the
    gateway's 1/4, or 1/2 when the smallest one's square (:func:`crop_square`) would be
    under :data:`FINE_BELOW` times ``input_size`` pixels at 1/4 (at 48 px inputs: items
    under about 31% of a 720p frame's height).

    Why: a small item at 1/4 has lost detail the model needs. Rendered items of seven
    classes (700 each, the same items at both scales) scored at 1/4 and 1/2: 74.6 and
    77.3% at 16-20% of the frame's height, 78.4 and 80.0% at 20-24%, 81.6 and 82.7% at
    24-28%, 82.4 and 84.0% at 28-32%; at the cameras' usual 28-45%, 84.1% at either. The
    finer decode costs about 0.5 ms more a frame here (the mask at 4x the pixels), so
    only frames with a small object pay it."""
    if not boxes:
        return preprocess.REDUCTION
    smallest = min(max(x1 - x0, y1 - y0) for x0, y0, x1, y1 in boxes)
    side = smallest * (1 + 2 * margin) / preprocess.REDUCTION
    return preprocess.FINE_REDUCTION if side < FINE_BELOW * input_size else preprocess.REDUCTION


def crop_square(box: Box, margin: float = CROP_MARGIN) -> Box:
    """The square around ``box`` with ``margin``, in the same pixels; it may reach past the
    frame (:func:`crop` pads those parts)."""
    x0, y0, x1, y1 = box
    side = max(x1 - x0, y1 - y0)
    side = max(1, round(side * (1 + 2 * margin)))
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    left, top = round(cx - side / 2), round(cy - side / 2)
    return (left, top, left + side, top + side)


def _square_pixels(square: Box, scale: tuple[float, float]) -> Box:
    """``square`` (full-frame pixels) in an image of ``scale`` (its pixels per full-frame
    pixel), at least one pixel wide and high; it may reach past the image."""
    left, top, right, bottom = square
    x0, y0 = int(np.floor(left * scale[0])), int(np.floor(top * scale[1]))
    x1 = max(x0 + 1, int(np.ceil(right * scale[0])))
    y1 = max(y0 + 1, int(np.ceil(bottom * scale[1])))
    return x0, y0, x1, y1


def _square_of(
    image: npt.NDArray[Any], square: Box, scale: tuple[float, float]
) -> npt.NDArray[Any]:
    """The pixels of ``square`` (full-frame pixels) in ``image`` (``scale`` = its pixels per
    full-frame pixel), edge-padded where the square leaves the image."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = _square_pixels(square, scale)
    inside = image[max(0, y0) : min(height, y1), max(0, x0) : min(width, x1)]
    if inside.size == 0:
        raise PreprocessError("bad_shape", f"square {square} is outside the frame")
    pad = (max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width))
    if any(pad):
        inside = cv2.copyMakeBorder(inside, *pad, cv2.BORDER_REPLICATE)
    return np.asarray(inside)


def crop(
    frame: Image,
    box: Box,
    frame_size: tuple[int, int],
    input_size: int,
    channels: int = 1,
    margin: float = CROP_MARGIN,
    mask: npt.NDArray[np.uint8] | None = None,
) -> Image:
    """The model input of one object: the square around ``box`` (given in ``frame_size``
    pixels; ``frame`` may be a reduced decode of that frame) with ``margin``, edge-padded
    where it leaves the frame, resized to ``input_size``, ``uint8 (input_size, input_size, C)``.

    With ``mask`` (the objects of the whole frame at any scale, :func:`object_mask`) the
    object is cut out: the background around it is black, as items are drawn in their data
    set, and its pixels are scaled so that its brightest (the 98th percentile over the
    object) is 230: light and a tint multiply an item's grey, so a scale undoes them and
    keeps its dark parts dark (a mean and spread per crop made a plain light garment grey
    with a bright rim; measured on 20,000 items, 48 px: 85.8% held out, against 85.0%).
    Without a mask, the whole square is scaled alike.
    """
    if channels not in (1, 3):
        raise PreprocessError("bad_channels", f"{channels} (1 = grayscale, 3 = BGR)")
    if frame.ndim == 3 and frame.shape[2] == 1:
        frame = frame[:, :, 0]
    if frame.ndim == 3 and channels == 1:
        frame = np.asarray(cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY), np.uint8)
    elif frame.ndim == 2 and channels == 3:
        frame = np.asarray(cv2.cvtColor(frame, cv2.COLOR_GRAY2BGR), np.uint8)
    square = crop_square(box, margin)
    height, width = frame.shape[:2]
    inside = _square_of(frame, square, (width / frame_size[0], height / frame_size[1]))
    resized = cv2.resize(inside, (input_size, input_size), interpolation=cv2.INTER_AREA)
    values = resized.reshape(input_size, input_size, channels).astype(np.float32)
    if mask is None:
        weight = np.ones((input_size, input_size, 1), np.float32)
    else:
        rows, cols = mask.shape[:2]
        cut = _square_of(mask, square, (cols / frame_size[0], rows / frame_size[1]))
        soft = cv2.resize(
            cut.astype(np.float32), (input_size, input_size), interpolation=cv2.INTER_LINEAR
        )
        weight = np.asarray(soft, np.float32).reshape(input_size, input_size, 1)
        if float(weight.sum()) < 1.0:  # no foreground in the square: keep all of it
            weight = np.ones_like(weight)
    inside = values[weight[:, :, 0] > 0.5]
    peak = float(np.percentile(inside, 98)) if inside.size else float(values.max())
    normalised = values * (230.0 / max(peak, 16.0)) * weight
    return np.ascontiguousarray(np.clip(normalised, 0, 255), np.uint8)


# --- an object's mask, sent with a cloud-only frame ---------------------------------------

_MASK_HEADER: Final = struct.Struct("<6H")  # mask width, height; window left, top, width, height
MAX_MASK_SIDE: Final = 4096


def mask_windows(
    mask: npt.NDArray[np.uint8], boxes: Sequence[Box], frame_size: tuple[int, int]
) -> tuple[bytes, ...]:
    """What :func:`crop` reads of ``mask`` (the objects of a whole frame at any scale,
    :func:`object_mask`) for each of ``boxes``: its crop square, clipped to the frame, as
    packed bits (zlib) behind a header with the mask's size and the window.

    Why: a ``raw`` frame goes up as the camera's JPEG with the boxes the gateway found, and
    the cloud cuts the crops. Cutting them as the gateway would needs the camera's
    background model, which only the gateway keeps whole: cloud consumers and cloud
    machines share a camera's frames message by message. With these the cloud keeps no
    state per camera (issue 24, item 4). A 720p frame's object costs a few hundred bytes
    against the JPEG's tens of kilobytes."""
    rows, cols = mask.shape[:2]
    if not (0 < rows <= MAX_MASK_SIDE and 0 < cols <= MAX_MASK_SIDE):
        raise ValueError(f"a mask of {cols}x{rows}")
    scale = (cols / frame_size[0], rows / frame_size[1])
    windows = []
    for box in boxes:
        x0, y0, x1, y1 = _square_pixels(crop_square(box), scale)
        x0, y0, x1, y1 = max(0, x0), max(0, y0), min(cols, x1), min(rows, y1)
        x1, y1 = max(x0, x1), max(y0, y1)
        bits = np.packbits(mask[y0:y1, x0:x1] > 0)
        header = _MASK_HEADER.pack(cols, rows, x0, y0, x1 - x0, y1 - y0)
        windows.append(header + zlib.compress(bits.tobytes(), 6))
    return tuple(windows)


def mask_from_windows(windows: Sequence[bytes]) -> npt.NDArray[np.uint8] | None:
    """The inverse of :func:`mask_windows`: a whole-frame mask (0 or 1) with the windows'
    pixels, 0 elsewhere, for :func:`crop`; None for no windows. Raises
    :class:`PreprocessError` (``bad_mask``) for bytes that are not such windows."""
    if not windows:
        return None
    mask: npt.NDArray[np.uint8] | None = None
    for window in windows:
        if len(window) < _MASK_HEADER.size:
            raise PreprocessError("bad_mask", f"{len(window)} bytes")
        cols, rows, x0, y0, width, height = _MASK_HEADER.unpack_from(window)
        if not (0 < rows <= MAX_MASK_SIDE and 0 < cols <= MAX_MASK_SIDE):
            raise PreprocessError("bad_mask", f"a mask of {cols}x{rows}")
        if x0 + width > cols or y0 + height > rows:
            raise PreprocessError("bad_mask", f"window {x0},{y0} {width}x{height} of {cols}x{rows}")
        if mask is None:
            mask = np.zeros((rows, cols), np.uint8)
        elif mask.shape != (rows, cols):
            raise PreprocessError("bad_mask", "windows of masks of different sizes")
        expected = (width * height + 7) // 8
        inflate = zlib.decompressobj()
        try:  # bounded: a hostile window does not inflate past what its size needs
            packed = inflate.decompress(window[_MASK_HEADER.size :], expected + 1)
        except zlib.error as exc:
            raise PreprocessError("bad_mask", str(exc)) from exc
        if len(packed) != expected or not inflate.eof or inflate.unused_data:
            raise PreprocessError("bad_mask", f"{len(packed)} bytes of bits, expected {expected}")
        bits = np.unpackbits(np.frombuffer(packed, np.uint8), count=width * height)
        mask[y0 : y0 + height, x0 : x0 + width] |= bits.reshape(height, width)
    return mask
