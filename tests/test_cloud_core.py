"""Cloud core without sockets: per-frame scoring of held-back frames, the feature store, the
process's one set of metrics."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from prometheus_client import CollectorRegistry

from cloud.feature_store import Arrival, FeatureStore
from cloud.metrics import CloudMetrics
from cloud.serving import Scoreboard
from edgelearn import wire


def test_held_back_frames_take_the_previous_keyframes_answer() -> None:
    board = Scoreboard()
    first = board.record("cam-1", "split:3", label=4, predicted=4, held_back=0, held_mismatched=0)
    assert (first.frames, first.correct) == (1, 1)
    # 9 frames were held back after the first keyframe; 2 of them showed another item.
    second = board.record("cam-1", "split:3", label=7, predicted=1, held_back=9, held_mismatched=2)
    assert (second.frames, second.correct) == (10, 7)
    # After a wrong keyframe, the frames it answered for are wrong too.
    third = board.record("cam-1", "split:3", label=7, predicted=7, held_back=5, held_mismatched=0)
    assert (third.frames, third.correct) == (6, 1)
    assert board.accuracy("cam-1", "split:3") == (1 + 7 + 1) / 17
    assert board.record("cam-2", "raw", None, 3, 4, 0).frames == 0  # no ground truth


def _feature(seq: int, label: int | None, values: np.ndarray) -> wire.Feature:
    return wire.Feature(
        camera_id="cam-1",
        seq=seq,
        capture_ns=seq,
        gateway_id="gw-1",
        label=label,
        mode="split:3",
        model_version="v1",
        dtype=wire.DType.INT8,
        shape=values.shape,
        scale=0.1,
        zero_point=-3,
        codec=wire.Codec.NONE,
        raw_bytes=50_000,
        held_back=0,
        held_mismatched=0,
        payload=values.tobytes(),
    )


def test_feature_store_records_each_capture_once_and_survives_a_restart(
    tmp_path: Path,
) -> None:
    store = FeatureStore(tmp_path)
    rng = np.random.default_rng(0)
    arrays = [rng.integers(-128, 127, (3, 3, 2), dtype=np.int8) for _ in range(10)]
    arrivals = [
        Arrival("site-1", _feature(seq, seq % 10, values), 100, values)
        for seq, values in enumerate(arrays)
    ]
    unlabeled = Arrival("site-1", _feature(99, None, arrays[0]), 100, arrays[0])
    assert store.record([*arrivals[:6], unlabeled]) == [True] * 7
    # A retry batch: six seen before, four new; the same capture at another site is new.
    elsewhere = Arrival("site-2", arrivals[0].envelope, 100, arrays[0])
    assert store.record([*arrivals, elsewhere]) == [False] * 6 + [True] * 4 + [True]
    # A camera that restarted counts from 0 again: same seq, another capture time, new.
    restarted = dataclasses.replace(arrivals[0].envelope, capture_ns=10**18)
    assert store.record([Arrival("site-1", restarted, 100, arrays[0])]) == [True]
    store.close()

    reopened = FeatureStore(tmp_path)  # a restarted cloud still knows what it acknowledged
    assert reopened.record(arrivals[:3]) == [False] * 3
    assert reopened.arrived() == 13  # site-1: 10 + unlabeled + restarted; site-2: 1
    loaded = reopened.load("split:3", "v1")
    # Unlabeled features teach nothing: 10 + the other site's copy + the restarted camera's.
    assert len(loaded.labels) == 12
    assert np.array_equal(loaded.values[:10], np.stack(arrays))
    assert loaded.labels[:10].tolist() == list(range(10))
    assert (loaded.scale, loaded.zero_point, loaded.uplink_bytes) == (np.float32(0.1), -3, 1200)
    assert reopened.kinds() == [("split:3", "v1")]


def test_a_ledger_only_store_keeps_no_features() -> None:
    store = FeatureStore(None, keep_features=False)
    values = np.zeros((3, 3, 2), np.int8)
    arrival = Arrival("site", _feature(1, 3, values), 100, values)
    assert store.record([arrival, arrival]) == [True, False]
    assert store.kinds() == []


def test_a_raw_frame_of_objects_is_kept_as_the_crops_the_consumer_cut(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path)
    jpeg = b"\xff\xd8" + bytes(300) + b"\xff\xd9"  # what crossed the uplink
    crops = np.random.default_rng(1).integers(0, 255, (3, 8, 8, 1), dtype=np.uint8)
    frame = wire.Feature(
        camera_id="cam-1", seq=1, capture_ns=1, gateway_id="gw-1", label=None,
        mode="raw", model_version="none", dtype=wire.DType.UINT8, shape=(len(jpeg),),
        scale=1.0, zero_point=0, codec=wire.Codec.JPEG, raw_bytes=len(jpeg), held_back=0,
        held_mismatched=0, payload=jpeg, tracks=(4, 5, 6),
        boxes=((0, 0, 9, 9), (20, 0, 29, 9), (40, 0, 49, 9)), labels=(2, None, 7),
    )  # fmt: skip
    assert store.record([Arrival("site-1", frame, 302, crops)]) == [True]
    loaded = store.load("raw", "none")
    assert loaded.jpegs == []  # the objects, not the frame
    assert np.array_equal(loaded.values, crops[[0, 2]])  # the unlabeled one teaches nothing
    assert loaded.labels.tolist() == [2, 7] and loaded.uplink_bytes == 2 * (302 // 2)


def test_consumers_sharing_the_process_metrics_count_their_queues_together() -> None:
    registry = CollectorRegistry()
    metrics = CloudMetrics(registry)
    metrics.watch_queue(lambda: 2)
    metrics.watch_queue(lambda: 3)  # a second consumer: no duplicate series
    assert registry.get_sample_value("edgelearn_cloud_queue_depth") == 5
