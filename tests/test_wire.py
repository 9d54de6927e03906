"""Wire format: every envelope round-trips, and nothing but WireError comes out of decode."""

from __future__ import annotations

import dataclasses
import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgelearn import wire
from edgelearn.modes import PCA, Mode

ident = st.text(
    alphabet=st.sampled_from("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_."),
    min_size=1,
    max_size=wire.MAX_ID_LENGTH,
)
mode = st.sampled_from(["raw", "pca", "autoencoder", "split:1", "split:12", "full"])
u16 = st.integers(0, 2**16 - 1)
u32 = st.integers(0, 2**32 - 1)
u64 = st.integers(0, 2**64 - 1)
label = st.none() | u16
item = st.none() | u32
blob = st.binary(min_size=1, max_size=2048)
f32 = st.floats(width=32, allow_nan=False, allow_infinity=False)
text = st.text(max_size=200)


@st.composite
def boxes(
    draw: st.DrawFn, count: int, width: int = 2**16 - 1, height: int = 2**16 - 1
) -> tuple[wire.Box, ...]:
    out = []
    for _ in range(count):
        x0, y0 = draw(st.integers(0, width - 1)), draw(st.integers(0, height - 1))
        out.append((x0, y0, draw(st.integers(x0 + 1, width)), draw(st.integers(y0 + 1, height))))
    return tuple(out)


@st.composite
def frames(draw: st.DrawFn) -> wire.Frame:
    width = draw(st.integers(1, wire.MAX_FRAME_SIDE))
    height = draw(st.integers(1, wire.MAX_FRAME_SIDE))
    count = draw(st.integers(0, 4))
    return wire.Frame(
        camera_id=draw(ident),
        seq=draw(u64),
        capture_ns=draw(u64),
        width=width,
        height=height,
        encoding=draw(st.sampled_from(wire.Encoding)),
        label=draw(label),
        payload=draw(blob),
        truth_labels=tuple(draw(st.lists(u16, min_size=count, max_size=count))),
        truth_boxes=draw(boxes(count, width, height)),
        truth_items=tuple(draw(st.lists(item, min_size=count, max_size=count))),
        labeled=draw(st.integers(0, 1)),
    )


@st.composite
def features(draw: st.DrawFn) -> wire.Feature:
    dtype = draw(st.sampled_from(wire.DType))
    codec = draw(st.sampled_from(wire.Codec))
    shape = tuple(draw(st.lists(st.integers(1, 16), min_size=1, max_size=4)))
    count = draw(st.integers(0, 3))
    if count and codec is not wire.Codec.JPEG:
        shape = (count, *shape[1:])
    size = 1
    for dim in shape:
        size *= dim
    payload = (
        draw(st.binary(min_size=size * dtype.itemsize, max_size=size * dtype.itemsize))
        if codec is wire.Codec.NONE
        else draw(blob)
    )
    return wire.Feature(
        camera_id=draw(ident),
        seq=draw(u64),
        capture_ns=draw(u64),
        gateway_id=draw(ident),
        label=draw(label),
        mode=draw(mode),
        model_version=draw(ident),
        dtype=dtype,
        shape=shape,
        scale=draw(st.floats(2.0**-20, 2.0**20, width=32)),
        zero_point=draw(st.integers(-(2**31), 2**31 - 1)),
        codec=codec,
        raw_bytes=draw(u32),
        held_back=(held := draw(u16)),
        held_mismatched=draw(st.integers(0, held)),
        payload=payload,
        tracks=tuple(draw(st.lists(u32, min_size=count, max_size=count))),
        boxes=draw(boxes(count)),
        labels=tuple(draw(st.lists(label, min_size=count, max_size=count))),
        items=tuple(draw(st.lists(item, min_size=count, max_size=count))),
        task=draw(st.sampled_from(wire.TASKS)),
        label_source=draw(st.sampled_from(["", wire.SOURCE_TRUTH]))
        or draw(ident.map("teacher:{}".format) | st.just("")),
        label_scores=tuple(
            draw(st.lists(st.floats(0, 1, width=32), min_size=count, max_size=count))
        )
        if draw(st.booleans())
        else (),
        masks=tuple(draw(st.lists(st.binary(max_size=40), min_size=count, max_size=count)))
        if draw(st.booleans())
        else (),
    )


@st.composite
def results(draw: st.DrawFn) -> wire.Result:
    count = draw(st.integers(0, 3))

    def several(strategy: st.SearchStrategy[object]) -> tuple[object, ...]:
        return tuple(draw(st.lists(strategy, min_size=count, max_size=count)))

    return wire.Result(
        camera_id=draw(ident),
        seq=draw(u64),
        capture_ns=draw(u64),
        result_ns=draw(u64),
        gateway_id=draw(ident),
        mode=draw(mode),
        label=draw(label),
        predicted=draw(u16),
        score=draw(st.floats(0, 1, width=32)),
        model_version=draw(ident),
        computed_at=draw(st.sampled_from(wire.ComputedAt)),
        held_back=7,
        held_mismatched=draw(st.integers(0, 7)),
        tracks=several(u32),  # type: ignore[arg-type]
        boxes=draw(boxes(count)),
        labels=several(label),  # type: ignore[arg-type]
        classes=several(u16),  # type: ignore[arg-type]
        scores=several(st.floats(0, 1, width=32)),  # type: ignore[arg-type]
        items=several(item),  # type: ignore[arg-type]
        task=draw(st.sampled_from(wire.TASKS)),
    )


models = st.builds(
    wire.Model,
    name=ident,
    version=ident,
    kind=ident,
    split_k=u16,
    input_shape=st.lists(st.integers(1, 512), max_size=4).map(tuple),
    metadata_json=text,
    sha256=st.binary(min_size=32, max_size=32),
    key_id=ident,
    signature=st.binary(min_size=64, max_size=64),
    artifact=st.binary(max_size=4096),
)
statuses = st.builds(
    wire.Status,
    gateway_id=ident,
    worker=u16,
    online=st.integers(0, 1),
    time_ns=u64,
    mode=mode,
    model_version=ident,
    capacity_fps=st.dictionaries(ident, st.floats(0, 1e6), max_size=6),
    uplink_bytes_per_second=st.floats(0, 1e12),
    queue_depths=st.dictionaries(ident, u32, max_size=6),
    note=text,
    input_fps=st.floats(0, 1e6),
    input_bytes_per_second=st.floats(0, 1e12),
    keyframe_ratio=st.floats(0, 1),
    uplink_capacity_bytes_per_second=st.floats(0, 1e12),
)
plans = st.builds(
    wire.Plan,
    gateway_id=ident,
    plan_version=u64,
    mode=mode,
    keyframes=st.integers(0, 1),
    keyframe_threshold=st.floats(0, 1000, width=32),
    keyframe_max_interval=u16,
)
any_envelope = frames() | features() | results() | models | statuses | plans


@given(any_envelope)
@settings(max_examples=300)
def test_every_envelope_round_trips(envelope: wire.Envelope) -> None:
    data = wire.encode(envelope)
    assert data[:2] == wire.MAGIC and data[2] == wire.VERSION and data[3] == envelope.KIND
    assert wire.decode(data) == envelope
    assert wire.decode_as(data, type(envelope)) == envelope


def test_every_kind_is_covered_by_the_strategies() -> None:
    assert set(wire.ENVELOPES) == set(wire.Kind)


def _corpus() -> list[bytes]:
    return [
        wire.encode(wire.Frame("cam-1", 7, 99, 1280, 720, wire.Encoding.JPEG, 3, b"\xff\xd8jpeg")),
        wire.encode(
            wire.Status("gw-1", 0, 1, 5, "split:3", "v1", {"raw": 30.0}, 1e6, {"c": 1}, "")
        ),
        wire.encode(wire.Plan("gw-1", 2, "pca", 1, 0.1, 30)),
        wire.encode(
            wire.Result(
                "cam-1", 1, 2, 3, "gw-1", "full", None, 4, 0.5, "v1", wire.ComputedAt.EDGE, 0, 0
            )
        ),
    ]


def test_random_and_mutated_bytes_raise_only_wire_error() -> None:
    """100,000 inputs: random bytes, and valid envelopes with bytes flipped, cut or added."""
    rng = random.Random(20261123)
    valid = _corpus()
    reasons: set[str] = set()
    accepted = 0
    for index in range(100_000):
        if index % 4 == 0:
            data = bytes(rng.getrandbits(8) for _ in range(rng.randrange(0, 64)))
            if index % 8 == 0:  # give random bodies a valid header so parsing goes deep
                data = struct.pack("<2sBB", wire.MAGIC, wire.VERSION, rng.randrange(0, 8)) + data
        else:
            data = bytearray(rng.choice(valid))
            operation = rng.randrange(4)
            if operation == 0:
                for _ in range(rng.randrange(1, 4)):
                    data[rng.randrange(len(data))] = rng.getrandbits(8)
            elif operation == 1:
                del data[rng.randrange(len(data)) :]
            elif operation == 2:
                data += bytes(rng.getrandbits(8) for _ in range(rng.randrange(1, 8)))
            else:
                position = rng.randrange(len(data))
                data[position:position] = bytes(rng.getrandbits(8) for _ in range(4))
            data = bytes(data)
        try:
            wire.decode(data)
            accepted += 1  # a flip inside a payload or a value can still be valid
        except wire.WireError as exc:
            reasons.add(exc.reason)
    assert accepted < 100_000 * 0.5
    # The typed error names its cause; several distinct causes must have been seen.
    assert {"truncated", "bad_magic", "trailing_bytes", "unknown_kind"} <= reasons


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (b"", "truncated"),
        (b"XX\x01\x01", "bad_magic"),
        (b"EL\x01\x01", "unknown_version"),  # version 1: before objects were on the wire
        (b"EL\x02\x01", "unknown_version"),  # version 2: before items were on the wire
        (b"EL\x03\x01", "unknown_version"),  # version 3: before tasks were on the wire
        (b"EL\x04\x01", "unknown_version"),  # version 4: before a raw frame's masks
        (b"EL\x06\x01", "unknown_version"),
        (b"EL\x05\x63", "unknown_kind"),
    ],
)
def test_header_errors_carry_their_reason(data: bytes, reason: str) -> None:
    with pytest.raises(wire.WireError) as caught:
        wire.decode(data)
    assert caught.value.reason == reason


def test_exact_length_is_enforced() -> None:
    data = wire.encode(wire.Frame("cam-1", 1, 2, 1280, 720, wire.Encoding.JPEG, None, b"jpeg"))
    with pytest.raises(wire.WireError, match="trailing_bytes"):
        wire.decode(data + b"\x00")
    with pytest.raises(wire.WireError, match="truncated"):
        wire.decode(data[:-1])


def test_construction_validates() -> None:
    with pytest.raises(wire.WireError, match="bad_id"):
        wire.Frame("cam/1", 1, 2, 1280, 720, wire.Encoding.JPEG, None, b"x")  # would split a topic
    with pytest.raises(wire.WireError, match="bad_length"):
        wire.Feature(
            "c",
            1,
            2,
            "g",
            None,
            "pca",
            "v",
            wire.DType.INT8,
            (4,),
            0.1,
            0,
            wire.Codec.NONE,
            10,
            0,
            0,
            b"abc",
        )
    with pytest.raises(wire.WireError, match="bad_score"):
        wire.Result("c", 1, 2, 3, "g", "full", None, 1, 1.5, "v", wire.ComputedAt.EDGE, 0, 0)


def test_objects_are_validated() -> None:
    frame = wire.Frame("c", 1, 2, 1280, 720, wire.Encoding.JPEG, None, b"x")
    with pytest.raises(wire.WireError, match="bad_box"):  # past the frame's edge
        dataclasses.replace(frame, truth_labels=(3,), truth_boxes=((0, 0, 1281, 10),))
    with pytest.raises(wire.WireError, match="bad_count"):
        dataclasses.replace(frame, truth_labels=(3, 4), truth_boxes=((0, 0, 10, 10),))
    feature = wire.Feature(
        "c", 1, 2, "g", None, "pca", "v", wire.DType.INT8, (2, 4), 0.5, 0, wire.Codec.NONE,
        10, 0, 0, bytes(8), tracks=(1, 2), boxes=((0, 0, 5, 5), (5, 5, 9, 9)), labels=(1, None),
    )  # fmt: skip
    assert wire.decode(wire.encode(feature)) == feature
    with pytest.raises(wire.WireError, match="bad_shape"):  # two objects, one tensor
        dataclasses.replace(feature, shape=(1, 8))
    with pytest.raises(wire.WireError, match="bad_box"):
        dataclasses.replace(feature, boxes=((0, 0, 5, 5), (9, 9, 5, 5)))
    with pytest.raises(wire.WireError, match="bad_count"):
        dataclasses.replace(feature, labels=(1,))
    masked = dataclasses.replace(feature, masks=(b"one", b"two"))
    assert wire.decode(wire.encode(masked)).masks == (b"one", b"two")
    with pytest.raises(wire.WireError, match="bad_count"):  # one object without its mask
        dataclasses.replace(feature, masks=(b"one",))


def test_tasks_and_label_sources_are_validated() -> None:
    """A label says where it came from (the truth, or a named teacher) and how sure that
    source was; a task is one the cloud knows; an unlabeled camera's frames are the
    teacher's task."""
    feature = wire.Feature(
        "c", 1, 2, "g", None, "split:8", "v", wire.DType.INT8, (2, 4), 0.5, 0, wire.Codec.NONE,
        10, 0, 0, bytes(8), tracks=(1, 2), boxes=((0, 0, 5, 5), (5, 5, 9, 9)), labels=(0, None),
        task=wire.TASK_TEACHER, label_source="teacher:teacher-person", label_scores=(0.875, 0.0),
    )  # fmt: skip
    assert wire.decode(wire.encode(feature)) == feature
    for bad, reason in (
        ({"task": "imagenet"}, "bad_task"),
        ({"label_source": "oracle"}, "bad_source"),
        ({"label_source": "teacher:a/b"}, "bad_id"),
        ({"label_scores": (0.9,)}, "bad_count"),
        ({"label_scores": (0.9, 1.5)}, "bad_score"),
    ):
        with pytest.raises(wire.WireError, match=reason):
            dataclasses.replace(feature, **bad)
    result = wire.Result(
        "c", 1, 2, 3, "g", "split:8", 0, wire.UNKNOWN, 0.4, "v", wire.ComputedAt.CLOUD, 0, 0,
        task=wire.TASK_TEACHER,
    )  # fmt: skip
    assert wire.decode(wire.encode(result)).predicted == wire.UNKNOWN
    video = wire.Frame("c", 1, 2, 1280, 720, wire.Encoding.JPEG, None, b"x")
    assert video.task == wire.TASK_TEACHER
    assert dataclasses.replace(video, labeled=1).task == wire.TASK_DATASET  # nothing in view
    assert dataclasses.replace(video, label=3).task == wire.TASK_DATASET


def test_decode_as_rejects_the_wrong_kind() -> None:
    data = wire.encode(wire.Plan("gw-1", 1, "raw", 0, 0.0, 1))
    with pytest.raises(wire.WireError, match="wrong_kind"):
        wire.decode_as(data, wire.Frame)


def test_topics() -> None:
    topics = wire.Topics("lab")
    assert topics.frame("cam-1") == "edgelearn/v1/lab/frames/cam-1"
    assert topics.feature("gw-1", "cam-1") == "edgelearn/v1/lab/features/gw-1/cam-1"
    assert wire.shared("workers", topics.all_frames()) == "$share/workers/edgelearn/v1/lab/frames/+"
    assert topics.model("all", Mode(PCA)) == "edgelearn/v1/lab/models/all/pca"
    assert topics.model("gw-1", Mode.split(3)) == "edgelearn/v1/lab/models/gw-1/split-3"
    assert wire.topic_level(topics.status("gw-2", 1), -2) == "gw-2"
    assert wire.topic_level(topics.frame("cam-9"), -1) == "cam-9"
    with pytest.raises(wire.WireError):
        wire.Topics("a/b")
