"""Cloud core without sockets: per-frame scoring of held-back frames, the feature store."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cloud.consumer import Scoreboard
from cloud.feature_store import FeatureStore
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
        extractor="split:3",
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


def test_feature_store_is_sharded_append_only_and_round_trips(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path, shard_size=4)
    rng = np.random.default_rng(0)
    arrays = [rng.integers(-128, 127, (3, 3, 2), dtype=np.int8) for _ in range(10)]
    for seq, values in enumerate(arrays):
        store.append(_feature(seq, seq % 10, values), values, wire_bytes=100)
    store.append(_feature(99, None, arrays[0]), arrays[0], wire_bytes=100)  # unlabeled: skipped
    shards = sorted((tmp_path / "split-3" / "v1").glob("shard-*.npz"))
    assert len(shards) == 2  # 8 features written in two full shards, 2 still buffered
    first_shard = shards[0].read_bytes()
    store.flush()
    assert len(list((tmp_path / "split-3" / "v1").glob("shard-*.npz"))) == 3
    assert shards[0].read_bytes() == first_shard  # existing shards never rewritten
    loaded = FeatureStore(tmp_path).load("split:3", "v1")
    assert np.array_equal(loaded.values, np.stack(arrays))
    assert loaded.labels.tolist() == list(range(10))
    assert (loaded.scale, loaded.zero_point, loaded.uplink_bytes) == (np.float32(0.1), -3, 1000)
    assert FeatureStore(tmp_path).kinds() == [("split:3", "v1")]
