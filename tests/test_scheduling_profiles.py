"""CNN profiles: the cached table, its JSON format, and the FLOP rules on a hand-checked model."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

import pytest

from cloud.scheduling.errors import ProfileError
from cloud.scheduling.profiles import (
    load_profiles,
    profile_model,
    profiles_from_json,
    profiles_to_json,
)


def test_packaged_table_covers_the_papers_depths() -> None:
    profiles = load_profiles()
    assert len({p.architecture for p in profiles}) >= 5
    depths = [p.layer_count for p in profiles]
    assert min(depths) >= 5 and max(depths) <= 10
    for profile in profiles:
        flops = profile.cumulative_flops
        assert all(b >= a for a, b in itertools.pairwise(flops))
        assert all(r > 0 for r in profile.output_ratios)
        # Running the whole CNN on the edge shrinks the upload: the last split is small.
        assert profile.output_ratios[-1] < 0.1
        assert math.isclose(profile.total_flops, flops[-1] * math.prod(profile.input_shape))


def test_json_round_trip_and_rejection(tmp_path: Path) -> None:
    profiles = load_profiles()
    path = tmp_path / "table.json"
    path.write_text(profiles_to_json(profiles, "test"))
    assert load_profiles(path) == profiles
    with pytest.raises(ProfileError):
        profiles_from_json('{"format": 99, "profiles": []}')
    with pytest.raises(ProfileError):
        profiles_from_json('{"format": 1, "profiles": [{"architecture": "x"}]}')
    with pytest.raises(ProfileError):
        load_profiles(tmp_path / "missing.json")


@pytest.mark.training
def test_flop_rules_on_a_hand_checked_model() -> None:
    keras = pytest.importorskip("keras")
    layers = keras.layers
    inputs = keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, activation="relu", name="b1_conv")(inputs)  # -> 6x6x4
    x = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="b1_dw")(x)
    x = layers.MaxPooling2D(2, name="b2_pool")(x)  # -> 3x3x4
    x = layers.GlobalAveragePooling2D(name="b3_gap")(x)
    x = layers.Dense(5, name="b3_dense")(x)
    profile = profile_model(keras.Model(inputs, x), "hand")
    conv = 2 * 144 * 27 + 144 + 144  # multiply-adds, bias, ReLU
    depthwise = 2 * 144 * 9
    pool = 36 * 4
    head = 36 + 2 * 5 * 4 + 5
    assert [s.block_flops for s in profile.splits] == [conv + depthwise, pool, head]
    assert [s.output_ratio for s in profile.splits] == [144 / 192, 36 / 192, 5 / 192]
    assert profile.cumulative_flops[-1] == pytest.approx((conv + depthwise + pool + head) / 192)


@pytest.mark.training
def test_packaged_table_matches_a_fresh_build() -> None:
    pytest.importorskip("keras")
    from cloud.scheduling.profiles import build_profiles

    fresh, _ = build_profiles()
    packaged = load_profiles()
    assert [p.architecture for p in fresh] == [p.architecture for p in packaged]
    for new, old in zip(fresh, packaged, strict=True):
        assert new.output_ratios == pytest.approx(old.output_ratios)
        assert new.cumulative_flops == pytest.approx(old.cumulative_flops)
