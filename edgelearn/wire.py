"""The wire format: every message that crosses a process boundary, and the MQTT topics.

Where it sits in the flow of a frame::

    camera --Frame--> gateway --Feature--> cloud --Result--> (anyone)
                        ^  \\--Status-->      |
                        |                     |
                        +---Model / Plan / Ack+

Every envelope is ``MAGIC (2 bytes) | VERSION (1) | KIND (1) | body``. The body is a fixed
sequence of fields per kind (integers little-endian, strings and blobs length-prefixed), and
its length must be consumed exactly: a truncated or over-long message is rejected, as is an
unknown magic, version or kind, an out-of-range enum or a value that fails the envelope's own
validation. Decoding raises exactly one exception type, :class:`WireError`, whose ``reason``
is a short, bounded string fit for a metric label (``truncated``, ``bad_magic``, ...).

Nothing else in the project parses bytes off the wire: the roles call :func:`decode` (or the
``decode_*`` helpers that also check the kind) and :func:`encode`.

**Versioning.** ``VERSION`` is the layout of every body. A change to any body (a field
added, removed or retyped) is a new ``VERSION``; a reader takes only its own version and
rejects any other as ``unknown_version``, counted, so two builds never misread each other's
bytes. Version 2 added the objects of a frame: the ground truth of a labeled scene's items
on :class:`Frame` (``truth_labels``, ``truth_boxes``), and on :class:`Feature` and
:class:`Result` the track id, box and label of each object the gateway found (its tensors
stacked along the payload's first axis). Version 3 added which data-set item each true
object is (``Frame.truth_items``, and ``items`` beside the labels of a Feature's and a
Result's objects): an accuracy says how many distinct items it rests on, and a trainer keeps
the items it trained on out of its evidence. Version 4 added tasks: each camera's objects are
named by a label set, the labeled data set its scenes render (``Frame.labeled``) or the
teacher's at its gateway (``person`` / ``other moving object``). A :class:`Feature` says its
camera's ``task``, where its objects' labels come from (``label_source``: ``truth`` or
``teacher:NAME``) and how sure that source was of each (``label_scores``); a :class:`Result`
says the task its classes index, and :data:`UNKNOWN` is the class of an object the serving
model was unsure of. Version 5 added ``masks`` to a cloud-only (``raw``) :class:`Feature`: for
each object, the gateway's mask of it within its crop square (:func:`edgelearn.roi.mask_windows`),
so the cloud cuts the crops the gateway would without a background model of each camera.
The topic layout has its own version (``v1``).

Topics live under ``edgelearn/v1/<site>/...``; ``site`` lets several camera sites share one
cloud broker and gives each test its own namespace. Per-role access rules in
``mosquitto/`` are written against the same layout (see :mod:`stack.broker`).
"""

from __future__ import annotations

import enum
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Final, TypeVar

from edgelearn.modes import Mode, ModeError

MAGIC: Final = b"EL"
VERSION: Final = 5
HEADER = struct.Struct("<2sBB")

# Bounds that keep a hostile message from making us allocate or loop without limit.
MAX_ID_LENGTH: Final = 64
MAX_TEXT_LENGTH: Final = 4096
MAX_PAYLOAD_BYTES: Final = 64 * 1024 * 1024
MAX_DIMENSIONS: Final = 8
MAX_MAP_ENTRIES: Final = 1024
MAX_ACK_ENTRIES: Final = 1024
TEACHER_KIND: Final = "teacher"  # a Model that serves no mode: the gateway's teacher
STUDENT_KIND: Final = "student"  # ... nor this: the teacher task's student, for ``full``
# Tasks: what names a camera's objects. A labeled camera's are the data set's classes; an
# unlabeled one's (a video, a real camera) are the teacher's, whatever the models learned.
TASK_DATASET: Final = "dataset"
TASK_TEACHER: Final = "teacher"
TASKS: Final = (TASK_DATASET, TASK_TEACHER)
TEACHER_CLASSES: Final = ("person", "other moving object")  # the teacher task's classes
UNKNOWN: Final = 0xFFFF  # a class index: the model was unsure, so it names no class
SOURCE_TRUTH: Final = "truth"  # a label rendered by a labeled scene (else "teacher:NAME")
MAX_FRAME_SIDE: Final = 8192
MAX_OBJECTS: Final = 64  # objects in one frame
MAX_MASK_BYTES: Final = 256 * 1024  # one object's mask window, packed (a 720p one: < 8 KiB)

Box = tuple[int, int, int, int]
"""(x0, y0, x1, y1) in pixels of the camera's frame, x1 and y1 exclusive."""


class WireError(ValueError):
    """A message that is not a valid envelope. ``reason`` is a bounded metric label."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class Kind(enum.IntEnum):
    FRAME = 1
    FEATURE = 2
    RESULT = 3
    MODEL = 4
    STATUS = 5
    PLAN = 6
    ACK = 7


class Encoding(enum.IntEnum):
    """How a camera frame's pixels are carried."""

    JPEG = 1


class Codec(enum.IntEnum):
    """How a feature payload is packed after quantisation (see :mod:`edgelearn.codec`)."""

    NONE = 0
    ZLIB = 1
    ZSTD = 2
    JPEG = 3  # the ``raw`` extractor forwards the camera's JPEG unchanged


class DType(enum.IntEnum):
    UINT8 = 1
    INT8 = 2
    FLOAT16 = 3
    FLOAT32 = 4

    @property
    def itemsize(self) -> int:
        return {DType.UINT8: 1, DType.INT8: 1, DType.FLOAT16: 2, DType.FLOAT32: 4}[self]


class ComputedAt(enum.IntEnum):
    EDGE = 1
    CLOUD = 2


# ---------------------------------------------------------------------------------------
# Field codecs: each writes one value and reads it back with strict bounds.


class _Reader:
    __slots__ = ("data", "offset")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.offset = 0

    def take(self, size: int) -> bytes:
        end = self.offset + size
        if size < 0 or end > len(self.data):
            raise WireError("truncated", f"need {size} bytes at offset {self.offset}")
        chunk = self.data[self.offset : end]
        self.offset = end
        return chunk

    def unpack(self, fmt: struct.Struct) -> tuple[Any, ...]:
        return fmt.unpack(self.take(fmt.size))


_U8 = struct.Struct("<B")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_I32 = struct.Struct("<i")
_F32 = struct.Struct("<f")
_F64 = struct.Struct("<d")


@dataclass(frozen=True)
class _FieldType:
    write: Callable[[bytearray, Any], None]
    read: Callable[[_Reader], Any]


def _number(fmt: struct.Struct) -> _FieldType:
    def write(out: bytearray, value: Any) -> None:
        try:
            out += fmt.pack(value)
        except struct.error as exc:
            raise WireError("out_of_range", str(exc)) from exc

    def read(reader: _Reader) -> Any:
        return reader.unpack(fmt)[0]

    return _FieldType(write, read)


def _text(length_fmt: struct.Struct, limit: int) -> _FieldType:
    def write(out: bytearray, value: str) -> None:
        raw = value.encode("utf-8")
        if len(raw) > limit:
            raise WireError("too_long", f"{len(raw)} > {limit} bytes")
        out += length_fmt.pack(len(raw)) + raw

    def read(reader: _Reader) -> str:
        (length,) = reader.unpack(length_fmt)
        if length > limit:
            raise WireError("too_long", f"{length} > {limit} bytes")
        try:
            return reader.take(length).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise WireError("bad_text", str(exc)) from exc

    return _FieldType(write, read)


def _blob(limit: int) -> _FieldType:
    def write(out: bytearray, value: bytes) -> None:
        if len(value) > limit:
            raise WireError("too_long", f"{len(value)} > {limit} bytes")
        out += _U32.pack(len(value)) + value

    def read(reader: _Reader) -> bytes:
        (length,) = reader.unpack(_U32)
        if length > limit:
            raise WireError("too_long", f"{length} > {limit} bytes")
        return reader.take(length)

    return _FieldType(write, read)


def _fixed_bytes(size: int) -> _FieldType:
    def write(out: bytearray, value: bytes) -> None:
        if len(value) != size:
            raise WireError("bad_length", f"expected {size} bytes, got {len(value)}")
        out += value

    return _FieldType(write, lambda reader: reader.take(size))


def _optional(fmt: struct.Struct) -> _FieldType:
    """A label or an item: present flag then value, so 0 stays a valid one."""
    both = struct.Struct("<B" + fmt.format.lstrip("<"))
    absent = b"\x00" * both.size

    def write(out: bytearray, value: int | None) -> None:
        try:
            out += absent if value is None else both.pack(1, value)
        except struct.error as exc:
            raise WireError("out_of_range", str(exc)) from exc

    def read(reader: _Reader) -> int | None:
        present, value = reader.unpack(both)
        if present not in (0, 1) or (present == 0 and value != 0):
            raise WireError("bad_optional", f"flag {present}")
        return int(value) if present else None

    return _FieldType(write, read)


def _shape() -> _FieldType:
    def write(out: bytearray, value: tuple[int, ...]) -> None:
        out += _U8.pack(len(value)) + b"".join(_U32.pack(dim) for dim in value)

    def read(reader: _Reader) -> tuple[int, ...]:
        (ndim,) = reader.unpack(_U8)
        if ndim > MAX_DIMENSIONS:
            raise WireError("bad_shape", f"{ndim} dimensions")
        return tuple(reader.unpack(_U32)[0] for _ in range(ndim))

    return _FieldType(write, read)


def _box() -> _FieldType:
    fmt = struct.Struct("<4H")

    def write(out: bytearray, value: Box) -> None:
        out += fmt.pack(*value)

    def read(reader: _Reader) -> Box:
        x0, y0, x1, y1 = reader.unpack(fmt)
        return (int(x0), int(y0), int(x1), int(y1))

    return _FieldType(write, read)


def _sequence(item: _FieldType, limit: int) -> _FieldType:
    """A tuple of items of one type: a count, then the items."""

    def write(out: bytearray, value: tuple[Any, ...]) -> None:
        if len(value) > limit:
            raise WireError("too_long", f"{len(value)} items")
        out += _U16.pack(len(value))
        for element in value:
            item.write(out, element)

    def read(reader: _Reader) -> tuple[Any, ...]:
        (count,) = reader.unpack(_U16)
        if count > limit:
            raise WireError("too_long", f"{count} items")
        return tuple(item.read(reader) for _ in range(count))

    return _FieldType(write, read)


def _text_map(value_type: _FieldType) -> _FieldType:
    key = _text(_U8, MAX_ID_LENGTH)

    def write(out: bytearray, value: Mapping[str, Any]) -> None:
        if len(value) > MAX_MAP_ENTRIES:
            raise WireError("too_long", f"{len(value)} map entries")
        out += _U16.pack(len(value))
        for name in sorted(value):
            key.write(out, name)
            value_type.write(out, value[name])

    def read(reader: _Reader) -> dict[str, Any]:
        (count,) = reader.unpack(_U16)
        if count > MAX_MAP_ENTRIES:
            raise WireError("too_long", f"{count} map entries")
        result = {}
        for _ in range(count):
            name = key.read(reader)
            if name in result:
                raise WireError("duplicate_key", name)
            result[name] = value_type.read(reader)
        return result

    return _FieldType(write, read)


def _enum(enum_type: type[enum.IntEnum]) -> _FieldType:
    def write(out: bytearray, value: enum.IntEnum) -> None:
        out += _U8.pack(int(value))

    def read(reader: _Reader) -> enum.IntEnum:
        (raw,) = reader.unpack(_U8)
        try:
            return enum_type(raw)
        except ValueError as exc:
            raise WireError("bad_enum", f"{enum_type.__name__}={raw}") from exc

    return _FieldType(write, read)


U8 = _number(_U8)
U16 = _number(_U16)
U32 = _number(_U32)
U64 = _number(_U64)
I32 = _number(_I32)
F32 = _number(_F32)
F64 = _number(_F64)
IDENT = _text(_U8, MAX_ID_LENGTH)
TEXT = _text(_U16, MAX_TEXT_LENGTH)
PAYLOAD = _blob(MAX_PAYLOAD_BYTES)
LABEL = _optional(_U16)
ITEM = _optional(_U32)
SHAPE = _shape()
BOXES = _sequence(_box(), MAX_OBJECTS)
LABELS = _sequence(LABEL, MAX_OBJECTS)
ITEMS = _sequence(ITEM, MAX_OBJECTS)
CLASSES = _sequence(U16, MAX_OBJECTS)
TRACKS = _sequence(U32, MAX_OBJECTS)
SCORES = _sequence(F32, MAX_OBJECTS)
NAMES = _sequence(_text(_U8, MAX_ID_LENGTH), MAX_OBJECTS)
MASKS = _sequence(_blob(MAX_MASK_BYTES), MAX_OBJECTS)
SHA256 = _fixed_bytes(32)
SIGNATURE = _fixed_bytes(64)


def _wire(field_type: _FieldType, **kwargs: Any) -> Any:
    """A dataclass field that knows its wire type (kept in the field's metadata)."""
    return field(metadata={"wire": field_type}, **kwargs)


# ---------------------------------------------------------------------------------------
# Validation helpers shared by the envelopes' __post_init__.


def _check(condition: bool, reason: str, detail: str) -> None:
    if not condition:
        raise WireError(reason, detail)


def _check_ident(name: str, value: str) -> None:
    """Identifiers become topic levels and broker user names: keep them plain."""
    _check(0 < len(value) <= MAX_ID_LENGTH, "bad_id", f"{name} length {len(value)}")
    _check(
        all(ch.isalnum() or ch in "-_." for ch in value),
        "bad_id",
        f"{name} {value!r} has characters outside [A-Za-z0-9-_.]",
    )


def _check_mode(name: str, value: str) -> None:
    """Mode fields hold a mode's one text form (:class:`edgelearn.modes.Mode`)."""
    try:
        _check(str(Mode.parse(value)) == value, "bad_mode", f"{name} {value!r}")
    except ModeError as exc:
        raise WireError("bad_mode", f"{name}: {exc}") from exc


def _check_boxes(
    boxes: tuple[Box, ...], width: int | None = None, height: int | None = None
) -> None:
    for x0, y0, x1, y1 in boxes:
        _check(x0 < x1 and y0 < y1, "bad_box", f"box {(x0, y0, x1, y1)}")
        if width is not None and height is not None:
            _check(x1 <= width and y1 <= height, "bad_box", f"box {(x0, y0, x1, y1)} outside")


def _check_objects(
    tracks: tuple[int, ...], boxes: tuple[Box, ...], *others: tuple[Any, ...]
) -> None:
    _check(
        all(len(other) == len(tracks) for other in (boxes, *others)),
        "bad_count",
        "objects' tracks, boxes and labels differ in length",
    )
    _check_boxes(boxes)


def _check_items(items: tuple[int | None, ...], tracks: tuple[int, ...]) -> None:
    _check(len(items) in (0, len(tracks)), "bad_count", "objects' items and tracks differ")


def _check_task(name: str, value: str) -> None:
    _check(value in TASKS, "bad_task", f"{name} {value!r}")


def _check_labels(source: str, scores: tuple[float, ...], labels: tuple[int | None, ...]) -> None:
    """A label source is ``truth`` or ``teacher:NAME`` (none without labels), with a score in
    [0, 1] per object or none."""
    if source.startswith("teacher:"):
        _check_ident("label_source", source.removeprefix("teacher:"))
    else:
        _check(source in ("", SOURCE_TRUTH), "bad_source", f"label_source {source!r}")
    _check(len(scores) in (0, len(labels)), "bad_count", "label scores and labels differ")
    for value in scores:
        _check(math.isfinite(value) and 0 <= value <= 1, "bad_score", f"label score {value}")


def _check_finite(name: str, value: float) -> None:
    _check(math.isfinite(value), "not_finite", f"{name}={value}")


class Envelope:
    """Base of the envelope dataclasses: a kind and field-driven encoding."""

    KIND: ClassVar[Kind]


@dataclass(frozen=True)
class Frame(Envelope):
    """One camera frame, as published by a camera to ``frames/<camera_id>``."""

    KIND: ClassVar[Kind] = Kind.FRAME
    camera_id: str = _wire(IDENT)
    seq: int = _wire(U64)
    capture_ns: int = _wire(U64)
    width: int = _wire(U16)
    height: int = _wire(U16)
    encoding: Encoding = _wire(_enum(Encoding))
    label: int | None = _wire(LABEL)
    payload: bytes = _wire(PAYLOAD)
    # A labeled scene of several items: each item's class and box (ground truth, scored
    # per object); ``label`` is then None. ``truth_items``: which item of its data set each
    # one is (one item seen in many frames is one piece of evidence); () when not known.
    truth_labels: tuple[int, ...] = _wire(CLASSES, default=())
    truth_boxes: tuple[Box, ...] = _wire(BOXES, default=())
    truth_items: tuple[int | None, ...] = _wire(ITEMS, default=())
    # 1: this camera renders ground truth, and its truth fields are all of it (a frame with
    # none has nothing of the data set in view); 0: a video or a real camera, no labels.
    labeled: int = _wire(U8, default=0)

    def __post_init__(self) -> None:
        _check_ident("camera_id", self.camera_id)
        _check(self.labeled in (0, 1), "bad_flag", f"labeled {self.labeled}")
        _check(0 < self.width <= MAX_FRAME_SIDE, "bad_size", f"width {self.width}")
        _check(0 < self.height <= MAX_FRAME_SIDE, "bad_size", f"height {self.height}")
        _check(len(self.payload) > 0, "empty_payload", "frame has no pixels")
        _check(
            len(self.truth_labels) == len(self.truth_boxes)
            and len(self.truth_items) in (0, len(self.truth_labels)),
            "bad_count",
            "truth labels, boxes and items differ in length",
        )
        _check_boxes(self.truth_boxes, self.width, self.height)

    @property
    def task(self) -> str:
        """What names this camera's objects: the data set when it renders ground truth
        (flagged, or any truth on this frame), else the teacher."""
        if self.labeled or self.truth_boxes or self.label is not None:
            return TASK_DATASET
        return TASK_TEACHER


@dataclass(frozen=True)
class Feature(Envelope):
    """What a gateway forwards for one (key)frame: the frame's identity and its features.

    ``raw_bytes`` is the size of the camera's JPEG the features replace, so the cloud can
    account for what cloud-only would have sent. ``held_back`` counts the frames of this
    camera the keyframe filter held back since the previous feature; they take the previous
    feature's result when accuracy is counted per frame. ``held_mismatched`` counts those
    whose ground-truth label differed from the previous feature's label (a scene change the
    filter missed), so the cloud can score them as errors without every label travelling.
    """

    KIND: ClassVar[Kind] = Kind.FEATURE
    camera_id: str = _wire(IDENT)
    seq: int = _wire(U64)
    capture_ns: int = _wire(U64)
    gateway_id: str = _wire(IDENT)
    label: int | None = _wire(LABEL)
    mode: str = _wire(IDENT)
    model_version: str = _wire(IDENT)
    dtype: DType = _wire(_enum(DType))
    shape: tuple[int, ...] = _wire(SHAPE)
    scale: float = _wire(F32)
    zero_point: int = _wire(I32)
    codec: Codec = _wire(_enum(Codec))
    raw_bytes: int = _wire(U32)
    held_back: int = _wire(U16)
    held_mismatched: int = _wire(U16)
    payload: bytes = _wire(PAYLOAD)
    # The objects of this frame (none: the whole frame's centre square was extracted).
    # Their tensors are stacked: ``shape[0] == len(tracks)``, except for a JPEG payload
    # (``raw``), whose objects the cloud cuts out of the JPEG itself.
    tracks: tuple[int, ...] = _wire(TRACKS, default=())
    boxes: tuple[Box, ...] = _wire(BOXES, default=())
    labels: tuple[int | None, ...] = _wire(LABELS, default=())
    items: tuple[int | None, ...] = _wire(ITEMS, default=())  # () : not known
    # The camera's task (TASKS); where the labels come from, and how sure that source was of
    # each object's (the teacher's score; 1 for truth); () when none is labeled.
    task: str = _wire(IDENT, default=TASK_DATASET)
    label_source: str = _wire(IDENT, default="")
    label_scores: tuple[float, ...] = _wire(SCORES, default=())
    # ``raw`` only: each object's mask in its crop square (edgelearn.roi.mask_windows), or ()
    masks: tuple[bytes, ...] = _wire(MASKS, default=())

    def __post_init__(self) -> None:
        _check_ident("camera_id", self.camera_id)
        _check_ident("gateway_id", self.gateway_id)
        _check_objects(self.tracks, self.boxes, self.labels)
        _check(len(self.masks) in (0, len(self.tracks)), "bad_count", "objects' masks differ")
        _check_items(self.items, self.tracks)
        _check_task("task", self.task)
        _check_labels(self.label_source, self.label_scores, self.labels)
        if self.tracks and self.codec is not Codec.JPEG:
            _check(
                self.shape[:1] == (len(self.tracks),),
                "bad_shape",
                f"shape {self.shape} for {len(self.tracks)} objects",
            )
        _check_mode("mode", self.mode)
        _check_ident("model_version", self.model_version)
        _check_finite("scale", self.scale)
        _check(self.scale > 0, "bad_quantization", f"scale {self.scale}")
        _check(len(self.shape) > 0, "bad_shape", "no dimensions")
        _check(all(d > 0 for d in self.shape), "bad_shape", f"shape {self.shape}")
        _check(
            math.prod(self.shape) * self.dtype.itemsize <= MAX_PAYLOAD_BYTES,
            "bad_shape",
            f"shape {self.shape} too large",
        )
        if self.codec is Codec.NONE:
            expected = math.prod(self.shape) * self.dtype.itemsize
            _check(
                len(self.payload) == expected,
                "bad_length",
                f"payload {len(self.payload)} bytes, shape needs {expected}",
            )
        _check(len(self.payload) > 0, "empty_payload", "feature has no data")
        _check(self.held_mismatched <= self.held_back, "bad_count", "mismatched > held back")


@dataclass(frozen=True)
class Result(Envelope):
    """A prediction for one frame, published to ``results/<camera_id>`` by the cloud (and,
    in ``full`` mode, by a gateway on its feature topic). ``held_back``/``held_mismatched``
    as in :class:`Feature`: the frames this result also answers for."""

    KIND: ClassVar[Kind] = Kind.RESULT
    camera_id: str = _wire(IDENT)
    seq: int = _wire(U64)
    capture_ns: int = _wire(U64)
    result_ns: int = _wire(U64)
    gateway_id: str = _wire(IDENT)
    mode: str = _wire(IDENT)
    label: int | None = _wire(LABEL)
    predicted: int = _wire(U16)
    score: float = _wire(F32)
    model_version: str = _wire(IDENT)
    computed_at: ComputedAt = _wire(_enum(ComputedAt))
    held_back: int = _wire(U16)
    held_mismatched: int = _wire(U16)
    # Per object, when the frame's objects were classified (``predicted``/``score``/``label``
    # then describe the first): track, box, true label (None: unlabeled), class, score, and
    # the true item (None: unlabeled; () when not known).
    tracks: tuple[int, ...] = _wire(TRACKS, default=())
    boxes: tuple[Box, ...] = _wire(BOXES, default=())
    labels: tuple[int | None, ...] = _wire(LABELS, default=())
    classes: tuple[int, ...] = _wire(CLASSES, default=())
    scores: tuple[float, ...] = _wire(SCORES, default=())
    items: tuple[int | None, ...] = _wire(ITEMS, default=())
    # The task whose classes ``predicted``/``classes`` index (UNKNOWN: unsure of it).
    task: str = _wire(IDENT, default=TASK_DATASET)
    # The class names of ``classes`` (per object) or of ``predicted`` (a whole frame), as
    # the cloud answered them ("unknown" for UNKNOWN); () when not named (an edge answer on
    # its way to the cloud). What the JSON object events (cloud.events) carry.
    names: tuple[str, ...] = _wire(NAMES, default=())

    def __post_init__(self) -> None:
        _check_ident("camera_id", self.camera_id)
        _check_ident("gateway_id", self.gateway_id)
        _check_task("task", self.task)
        _check_objects(self.tracks, self.boxes, self.labels, self.classes, self.scores)
        _check(
            not self.names or len(self.names) == max(1, len(self.classes)),
            "bad_names",
            f"{len(self.names)} names for {max(1, len(self.classes))} answers",
        )
        _check_items(self.items, self.tracks)
        for value in self.scores:
            _check_finite("score", value)
            _check(0.0 <= value <= 1.0, "bad_score", f"score {value}")
        _check_mode("mode", self.mode)
        _check_ident("model_version", self.model_version)
        _check_finite("score", self.score)
        _check(0.0 <= self.score <= 1.0, "bad_score", f"score {self.score}")
        _check(self.held_mismatched <= self.held_back, "bad_count", "mismatched > held back")


@dataclass(frozen=True)
class Model(Envelope):
    """A model deployment, retained on ``models/<gateway_id or all>/<slot>`` where the slot
    (:attr:`edgelearn.modes.Mode.slot`) names the mode it serves, so each mode keeps its own
    retained copy.

    ``signature`` is Ed25519 over :meth:`signed_bytes` (the artifact's sha256 and the
    metadata that decides how it is used); receivers verify it before loading anything.
    """

    KIND: ClassVar[Kind] = Kind.MODEL
    name: str = _wire(IDENT)
    version: str = _wire(IDENT)
    kind: str = _wire(IDENT)
    split_k: int = _wire(U16)
    input_shape: tuple[int, ...] = _wire(SHAPE)
    metadata_json: str = _wire(TEXT)
    sha256: bytes = _wire(SHA256)
    key_id: str = _wire(IDENT)
    signature: bytes = _wire(SIGNATURE)
    artifact: bytes = _wire(PAYLOAD)

    def __post_init__(self) -> None:
        _check_ident("name", self.name)
        _check_ident("version", self.version)
        _check_ident("kind", self.kind)
        _check_ident("key_id", self.key_id)

    @property
    def mode(self) -> Mode:
        """The gateway mode this deployment serves (a teacher or a student serves none)."""
        return Mode.of(self.kind, self.split_k)

    @property
    def slot(self) -> str:
        """Its retained topic's last level: the mode's slot, ``teacher`` or ``student``."""
        return self.kind if self.kind in (TEACHER_KIND, STUDENT_KIND) else self.mode.slot

    def signed_bytes(self) -> bytes:
        """The bytes the signature covers: everything except the signature and artifact
        (the artifact is covered through its sha256, which receivers recompute)."""
        out = bytearray(b"edgelearn-model-v1\x00")
        for name, field_type in (
            ("name", IDENT),
            ("version", IDENT),
            ("kind", IDENT),
            ("split_k", U16),
            ("input_shape", SHAPE),
            ("metadata_json", TEXT),
            ("sha256", SHA256),
            ("key_id", IDENT),
        ):
            field_type.write(out, getattr(self, name))
        return bytes(out)


@dataclass(frozen=True)
class Status(Envelope):
    """A gateway worker's retained status on ``status/<gateway_id>/<worker>``; also its
    last will (``online=0``)."""

    KIND: ClassVar[Kind] = Kind.STATUS
    gateway_id: str = _wire(IDENT)
    worker: int = _wire(U16)
    online: int = _wire(U8)
    time_ns: int = _wire(U64)
    mode: str = _wire(IDENT)
    model_version: str = _wire(IDENT)
    capacity_fps: dict[str, float] = _wire(_text_map(F64))
    uplink_bytes_per_second: float = _wire(F64)
    queue_depths: dict[str, int] = _wire(_text_map(U32))
    note: str = _wire(TEXT)
    # What the cloud's planner needs (cloud.planner): the frames arriving at this worker, the
    # fraction its keyframe filter kept, and the uplink's capacity as configured on the
    # gateway (0: not configured).
    input_fps: float = _wire(F64, default=0.0)
    input_bytes_per_second: float = _wire(F64, default=0.0)
    keyframe_ratio: float = _wire(F64, default=1.0)
    uplink_capacity_bytes_per_second: float = _wire(F64, default=0.0)

    def __post_init__(self) -> None:
        _check_ident("gateway_id", self.gateway_id)
        _check(self.online in (0, 1), "bad_flag", f"online {self.online}")
        _check_mode("mode", self.mode)
        _check_ident("model_version", self.model_version)
        for name in (
            "uplink_bytes_per_second",
            "input_fps",
            "input_bytes_per_second",
            "uplink_capacity_bytes_per_second",
        ):
            _check_finite(name, getattr(self, name))
            _check(getattr(self, name) >= 0, "bad_rate", f"{name} {getattr(self, name)}")
        _check_finite("keyframe_ratio", self.keyframe_ratio)
        _check(0 <= self.keyframe_ratio <= 1, "bad_ratio", f"keyframe_ratio {self.keyframe_ratio}")
        for name, value in self.capacity_fps.items():
            _check_finite(f"capacity_fps[{name}]", value)


@dataclass(frozen=True)
class Plan(Envelope):
    """The cloud's retained plan for a gateway on ``plans/<gateway_id>``: what to run."""

    KIND: ClassVar[Kind] = Kind.PLAN
    gateway_id: str = _wire(IDENT)
    plan_version: int = _wire(U64)
    mode: str = _wire(IDENT)
    keyframes: int = _wire(U8)
    keyframe_threshold: float = _wire(F32)
    keyframe_max_interval: int = _wire(U16)

    def __post_init__(self) -> None:
        _check_ident("gateway_id", self.gateway_id)
        _check_mode("mode", self.mode)
        _check(self.keyframes in (0, 1), "bad_flag", f"keyframes {self.keyframes}")
        _check_finite("keyframe_threshold", self.keyframe_threshold)
        _check(self.keyframe_threshold >= 0, "bad_threshold", f"{self.keyframe_threshold}")


Capture = tuple[str, int, int]  # (camera_id, seq, capture_ns): one frame, whatever came of it


def capture_of(envelope: Frame | Feature | Result) -> Capture:
    """What identifies a frame end to end. ``seq`` alone does not: a camera that restarts
    counts from 0 again, so the capture time tells its frames apart."""
    return (envelope.camera_id, envelope.seq, envelope.capture_ns)


@dataclass(frozen=True)
class Ack(Envelope):
    """The cloud's receipt, on ``acks/<gateway_id>``: the features (or edge results) of that
    gateway it has answered and stored, the capture ``(cameras[i], seqs[i], captures[i])``.
    A gateway keeps every feature in its outbox until an Ack names it (at-least-once
    delivery whatever the brokers do); the cloud acknowledges a duplicate again."""

    KIND: ClassVar[Kind] = Kind.ACK
    gateway_id: str = _wire(IDENT)
    cameras: tuple[str, ...] = _wire(_sequence(IDENT, MAX_ACK_ENTRIES))
    seqs: tuple[int, ...] = _wire(_sequence(U64, MAX_ACK_ENTRIES))
    captures: tuple[int, ...] = _wire(_sequence(U64, MAX_ACK_ENTRIES))
    # the cloud consumer that answered them (its client id; "" unnamed): a gateway paces
    # its re-sends by how far each consumer has got (gateway.outbox)
    consumer: str = _wire(IDENT, default="")

    def __post_init__(self) -> None:
        _check_ident("gateway_id", self.gateway_id)
        if self.consumer:
            _check_ident("consumer", self.consumer)
        _check(
            len(self.cameras) == len(self.seqs) == len(self.captures),
            "bad_count",
            "cameras, seqs and captures differ in length",
        )
        _check(len(self.cameras) > 0, "empty_payload", "an ack names no feature")
        for camera_id in self.cameras:
            _check_ident("camera_id", camera_id)

    @classmethod
    def of(cls, gateway_id: str, captures: Sequence[Capture], consumer: str = "") -> Ack:
        cameras, seqs, times = zip(*captures, strict=True)
        return cls(gateway_id, cameras, seqs, times, consumer)

    def entries(self) -> list[Capture]:
        return list(zip(self.cameras, self.seqs, self.captures, strict=True))


ENVELOPES: Final[dict[Kind, type[Envelope]]] = {
    cls.KIND: cls for cls in (Frame, Feature, Result, Model, Status, Plan, Ack)
}


def encode(envelope: Envelope) -> bytes:
    """Serialise an envelope; raises :class:`WireError` if a value does not fit its field."""
    out = bytearray(HEADER.pack(MAGIC, VERSION, envelope.KIND))
    for item in fields(envelope):  # type: ignore[arg-type]
        item.metadata["wire"].write(out, getattr(envelope, item.name))
    return bytes(out)


def decode(data: bytes | bytearray | memoryview) -> Envelope:
    """Parse any envelope. Raises :class:`WireError` (and nothing else) on bad input."""
    data = bytes(data)
    if len(data) < HEADER.size:
        raise WireError("truncated", f"{len(data)} bytes is shorter than the header")
    magic, version, kind_value = HEADER.unpack_from(data)
    if magic != MAGIC:
        raise WireError("bad_magic", repr(magic))
    if version != VERSION:
        raise WireError("unknown_version", f"version {version}, this build reads {VERSION}")
    try:
        kind = Kind(kind_value)
    except ValueError as exc:
        raise WireError("unknown_kind", str(kind_value)) from exc
    cls = ENVELOPES[kind]
    reader = _Reader(data)
    reader.offset = HEADER.size
    values = {item.name: item.metadata["wire"].read(reader) for item in fields(cls)}  # type: ignore[arg-type]
    if reader.offset != len(data):
        raise WireError("trailing_bytes", f"{len(data) - reader.offset} bytes after {kind.name}")
    try:
        return cls(**values)
    except WireError:
        raise
    except (TypeError, ValueError) as exc:  # a validator tripping on a strange value
        raise WireError("invalid", str(exc)) from exc


E = TypeVar("E", bound=Envelope)


def decode_as(data: bytes | bytearray | memoryview, cls: type[E]) -> E:
    """Decode and insist on one kind (a status on the frame topic is a rejected envelope)."""
    envelope = decode(data)
    if not isinstance(envelope, cls):
        raise WireError("wrong_kind", f"expected {cls.KIND.name}, got {envelope.KIND.name}")
    return envelope


# ---------------------------------------------------------------------------------------
# Topics.

ROOT: Final = "edgelearn/v1"
DEFAULT_SITE: Final = "site"
ANY_SITE: Final = "+"  # subscribers only: one cloud serves every site bridged into it
ALL_GATEWAYS: Final = "all"


@dataclass(frozen=True)
class Topics:
    """Topic names of one site. ``Topics("lab").frame("cam-1")`` and so on."""

    site: str = DEFAULT_SITE

    def __post_init__(self) -> None:
        if self.site != ANY_SITE:
            _check_ident("site", self.site)

    @classmethod
    def of(cls, topic: str) -> Topics:
        """The topics of the site ``topic`` belongs to (``edgelearn/v1/<site>/...``)."""
        return cls(topic_level(topic, 2))

    @property
    def base(self) -> str:
        return f"{ROOT}/{self.site}"

    def frame(self, camera_id: str) -> str:
        return f"{self.base}/frames/{camera_id}"

    def feature(self, gateway_id: str, camera_id: str) -> str:
        return f"{self.base}/features/{gateway_id}/{camera_id}"

    def result(self, camera_id: str) -> str:
        return f"{self.base}/results/{camera_id}"

    def model(self, gateway_id: str, mode: Mode) -> str:
        """Where the deployment serving ``mode`` is retained for ``gateway_id`` (or all)."""
        return f"{self.base}/models/{gateway_id}/{mode.slot}"

    def deployment(self, gateway_id: str, model: Model) -> str:
        """Where ``model`` is retained for ``gateway_id`` (or all): its slot's topic."""
        return f"{self.base}/models/{gateway_id}/{model.slot}"

    def models_for(self, gateway_id: str) -> str:
        """Filter for the deployments addressed to ``gateway_id`` (not those for all)."""
        return f"{self.base}/models/{gateway_id}/+"

    def plan(self, gateway_id: str) -> str:
        return f"{self.base}/plans/{gateway_id}"

    def status(self, gateway_id: str, worker: int = 0) -> str:
        return f"{self.base}/status/{gateway_id}/{worker}"

    def ack(self, gateway_id: str) -> str:
        return f"{self.base}/acks/{gateway_id}"

    # Filters for subscribers.
    def all_frames(self) -> str:
        return f"{self.base}/frames/+"

    @staticmethod
    def bridge_states() -> str:
        """Where an edge broker says whether each of its bridges to the cloud is up (``1``)
        or down (``0``): ``edgelearn/bridges/<bridge>/up``, retained, local to that
        broker (mosquitto's bridge notifications). Not under a site: one edge broker may
        carry every site."""
        return "edgelearn/bridges/+/up"

    def all_features(self) -> str:
        return f"{self.base}/features/+/+"

    def all_results(self) -> str:
        return f"{self.base}/results/+"

    def all_status(self) -> str:
        return f"{self.base}/status/+/+"

    def all_acks(self) -> str:
        return f"{self.base}/acks/+"


def shared(group: str, topic_filter: str) -> str:
    """The MQTT v5 shared-subscription form: members of ``group`` split the messages."""
    _check_ident("group", group)
    return f"$share/{group}/{topic_filter}"


def topic_level(topic: str, index: int) -> str:
    """One level of a topic: ``topic_level(t, -1)`` is the camera id of a frame topic."""
    levels = topic.split("/")
    return levels[index] if -len(levels) <= index < len(levels) else ""
