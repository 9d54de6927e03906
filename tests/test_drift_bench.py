"""``edgelearn bench drift --quick``: the world changes mid-run; a static cloud and a
learning one score the same features, and the learning one's trainer runs. Its ``--drift``
parser, camera plan and per-object comparison, without a stack."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from bench import drift
from edgelearn import wire
from edgelearn.config import ConfigError
from edgelearn.datasets import load_fashion_mnist
from stack.observer import Scored, scored_objects
from stack.report import render_from_json

QUICK_DRIFT = "size=0.16-0.26+classes=0,2,4"
# --quick's stack on a shorter run (50 s, the drift at 15 s; --quick's 65 and 20), the
# trainer triggered by 50 labeled objects (100): the suite checks what is compared and
# counted; `edgelearn bench drift` measures the adaptation.
SHORT = dataclasses.replace(
    drift.Budget.of(True), drift_at=15.0, duration=50.0, recent=12.0, learn_every=50
)


@pytest.mark.e2e
def test_quick_drift_benchmark_compares_static_and_learning_on_the_same_objects(
    tmp_path: Path, trained_registry: Path
) -> None:
    registry = tmp_path / "registry"  # the learning arm promotes into it
    shutil.copytree(trained_registry, registry)
    result = drift.run(
        quick=True, output_dir=tmp_path / "out", registry=registry, drift=QUICK_DRIFT,
        budget=SHORT,
    )  # fmt: skip
    written = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert written["benchmark"] == "drift" and written["mode"] == "split:2"
    budget = SHORT
    series = result["series"]
    assert series[-1]["t"] >= budget.duration - budget.interval
    final = result["final"]
    # The counter windows start at a reading of two processes taken moments apart, so their
    # object counts may differ by what was in flight then; same objects are checked below.
    assert final["learning"]["objects"] > 0 and final["static"]["objects"] > 0
    assert final["learning"]["cameras"].keys() == final["static"]["cameras"].keys()
    assert result["drift"]["spec"] == QUICK_DRIFT and result["drift"]["new_camera"] is None
    assert sorted(final["learning"]["cameras"]) == ["cam-1", "cam-2", "cam-3"]
    # From the results themselves: both arms counted on exactly the same objects
    objects = result["objects"]
    assert objects["same_objects"]
    assert objects["objects"]["learning"] == objects["objects"]["static"] > 0
    assert objects["items"]["learning"] == objects["items"]["static"] > 0
    assert objects["trained_items"] >= 0
    for stretch in ("recent", "after_drift", "before_drift"):
        for which in ("never_trained", "all_objects"):
            compared = objects[stretch][which]
            learning, static = compared["learning"], compared["static"]
            assert compared["same_objects"], (stretch, which)
            assert learning["objects"] == static["objects"] and learning["items"] == static["items"]
            assert learning.keys() >= {"accuracy", "low", "high", "objects", "items", "cameras"}
    after = objects["after_drift"]["never_trained"]
    assert after["learning"]["objects"] > 0 and after["learning_minus_static"] is not None
    assert after["learning_minus_static"]["objects"] == after["learning"]["objects"]
    assert "half_recovered_after_minutes" in objects["recovery"]
    assert objects["recovery"]["before_drift_learning"]["objects"] > 0
    trainer = result["trainer"]
    assert trainer["started"] >= 1  # arrivals started a run (on a loaded host it may not end)
    assert trainer["promotions"] + trainer["rejections"] <= trainer["runs"] <= trainer["started"]
    assert result["model_pushes"]["bytes"] == 0  # a split's cloud half: nothing to push
    assert result["gateway"]["uplink_reduction"] > 0.9
    assert result["latency"]["whole_run"]["count"] > 0
    charts = render_from_json(written, tmp_path / "charts")
    assert sorted(path.name for path in charts) == ["drift.png", "drift_per_camera.png"]


# --- without a stack ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("none", drift.DriftSpec()),
        ("backgrounds", drift.DriftSpec(backgrounds=True)),
        (" new-camera + light=0.6 ", drift.DriftSpec(light=0.6, new_camera=True)),
        ("noise=8+size=0.16-0.26", drift.DriftSpec(noise=8.0, heights=(0.16, 0.26))),
        ("classes=0,2,4", drift.DriftSpec(classes=(0, 2, 4))),
        (
            "backgrounds+size=0.16-0.26+classes=0,2,4,6,5,7,9+new-camera",
            drift.DEFAULT_DRIFT,
        ),
    ],
)
def test_drift_spec_parses_and_prints_back(text: str, expected: drift.DriftSpec) -> None:
    spec = drift.DriftSpec.parse(text)
    assert spec == expected
    assert drift.DriftSpec.parse(str(spec)) == spec
    assert spec.changes_nothing == (text == "none")


def test_the_default_drift_is_the_old_one() -> None:
    spec = drift.DEFAULT_DRIFT
    assert spec.backgrounds and spec.new_camera
    assert spec.heights == (0.16, 0.26) and spec.classes == (0, 2, 4, 6, 5, 7, 9)
    assert spec.light is None and spec.noise is None


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("", "empty"),
        ("backgrounds+", "empty"),
        ("wind=3", "no change 'wind'"),
        ("backgrounds+backgrounds", "twice"),
        ("none+backgrounds", "alone"),
        ("backgrounds=1", "takes no value"),
        ("light", "needs a value"),
        ("light=0", "gain > 0"),
        ("light=dark", "not a number"),
        ("light=nan", "not a number"),
        ("noise=-1", ">= 0"),
        ("size=0.3", "LO-HI"),
        ("size=0.3-0.2", "LO <= HI"),
        ("size=0.2-0.9", "HI <= 0.45"),
        ("classes=", "numbers"),
        ("classes=1,-2", "numbers"),
        ("classes=1,1", "distinct"),
        ("classes=10", "0..9"),
    ],
)
def test_a_bad_drift_spec_says_what_is_wrong(text: str, says: str) -> None:
    with pytest.raises(drift.DriftSpecError, match=says) as raised:
        drift.DriftSpec.parse(text)
    assert isinstance(raised.value, ConfigError)  # the CLI prints it as one line


def test_a_bad_mode_is_a_config_error() -> None:
    assert drift.parse_mode("full").kind == "full"
    with pytest.raises(ConfigError, match="--mode"):
        drift.parse_mode("split")


def test_camera_plan_keeps_a_scene_going_unless_backgrounds_change() -> None:
    kept = drift.plan_cameras(drift.DriftSpec.parse("size=0.16-0.26"), 2, 100, 50)
    assert sorted(kept) == ["cam-1", "cam-2"]
    before, after = kept["cam-2"]
    assert before == drift.SceneRun(drift.FIRST_SEED + 1, 0, 100)
    # the same scene, from the frame it was at (new items), smaller
    assert after == drift.SceneRun(drift.FIRST_SEED + 1, 100, 50, heights=(0.16, 0.26))
    control = drift.plan_cameras(drift.DriftSpec(), 2, 100, 50)
    assert control["cam-1"][1] == drift.SceneRun(drift.FIRST_SEED, 100, 50)
    moved = drift.plan_cameras(
        drift.DriftSpec.parse("backgrounds+light=0.5+new-camera"), 2, 100, 50
    )
    assert moved["cam-1"][1] == drift.SceneRun(drift.DRIFT_SEED, 0, 50, light=0.5)
    assert moved["cam-3"] == (None, drift.SceneRun(drift.DRIFT_SEED + 2, 0, 50, light=0.5))
    seeds = {run.seed for runs in moved.values() for run in runs if run is not None}
    assert len(seeds) == 5  # the new camera's scene was never seen


def test_a_scene_names_items_by_test_set_index_and_leaves_out_what_it_is_told() -> None:
    test = load_fashion_mnist("test")
    shots = drift.render_run(drift.SceneRun(7, 40, 3, classes=(5, 9)), test)
    labels = [label for _, frame_labels, _, _ in shots for label in frame_labels]
    items = [item for _, _, _, frame_items in shots for item in frame_items]
    assert labels and set(labels) <= {5, 9}
    assert np.array_equal(test.labels[items], labels)
    # after a drift, the items shown before it are left out
    again = drift.render_run(drift.SceneRun(7, 40, 3, classes=(5, 9)), test, set(items))
    shown_again = {item for _, _, _, frame_items in again for item in frame_items}
    assert shown_again and not shown_again & set(items)


def _scored(camera: str, seq: int, item: int, correct: bool) -> Scored:
    return Scored(0.0, camera, "split:2", item, correct, seq=seq, track=0, label=1)


def test_compare_pairs_the_arms_object_by_object_and_flags_a_difference() -> None:
    # 100 objects of 10 items; the learning arm gets 66 right, the static one 50
    learning = drift.by_object(
        [_scored("cam-1", seq, seq // 10, seq % 3 != 0) for seq in range(100)], "split:2"
    )
    static = drift.by_object(
        [_scored("cam-1", seq, seq // 10, seq % 2 == 0) for seq in range(100)], "split:2"
    )
    same = drift.compare(learning, static, fps=10.0, span=(0.0, 10.0))
    assert same["same_objects"] and same["learning"]["objects"] == same["static"]["objects"] == 100
    assert same["learning"]["items"] == 10
    difference = same["learning_minus_static"]
    assert difference["objects"] == 100 and difference["items"] == 10
    assert difference["gain"] == pytest.approx((66 - 50) / 100)
    assert difference["low"] <= difference["gain"] <= difference["high"]
    # items the learner trained on are left out of both
    unseen = drift.compare(learning, static, fps=10.0, span=(0.0, 10.0), trained={0, 1})
    assert unseen["learning"]["objects"] == unseen["static"]["objects"] == 80
    # an object one arm never answered is flagged, not hidden
    del static[("cam-1", 5, 0)]
    short = drift.compare(learning, static, fps=10.0, span=(0.0, 5.0))
    assert not short["same_objects"]
    assert (short["objects_only_learning"], short["objects_only_static"]) == (1, 0)
    assert short["learning_minus_static"]["objects"] == 49


def test_recovery_is_the_first_rolling_window_back_above_halfway() -> None:
    # one object a second, each its own item: the learner 90% right before the drift at
    # 20 s, 40% after it until 60 s, then always; the static one 40% after the drift
    budget = drift.Budget(3, 1.0, 20.0, 100.0, 5.0, 2, "quick", 100, 10.0)
    learning = drift.by_object(
        [
            _scored("cam-1", seq, seq, seq % 10 != 0 if seq < 20 else seq >= 60 or seq % 5 < 2)
            for seq in range(100)
        ],
        "split:2",
    )
    static = drift.by_object(
        [_scored("cam-1", seq, seq, seq % 5 < 2) for seq in range(20, 100)], "split:2"
    )
    found = drift.recovery(learning, static, budget, trained=set())
    assert found["before_drift_learning"]["accuracy"] == 0.9
    assert found["after_drift_static"]["accuracy"] == 0.4
    assert found["loss"] == 0.5
    # [45, 75) is the first window where the learner beats the static arm on the same
    # objects by a quarter (9 of 30 objects): 55 s after the drift
    assert found["half_recovered_after_minutes"] == round(55 / 60, 2)
    assert found["recovered_window"]["learning_minus_static"] == 0.3
    # a drift that cost nothing: nothing to win back
    easy = drift.by_object([_scored("cam-1", seq, seq, True) for seq in range(100)], "split:2")
    flat = drift.recovery(learning, easy, budget, trained=set())
    assert flat["loss"] < 0 and flat["half_recovered_after_minutes"] is None


def test_each_observed_object_says_which_object_it_was_and_what_was_answered() -> None:
    result = wire.Result(
        "cam-2", 41, 5_000, 6_000, "gw-1", "split:2", None, 3, 0.9, "v1",
        wire.ComputedAt.CLOUD, 0, 0, tracks=(7, 8), boxes=((0, 0, 10, 10), (20, 20, 30, 30)),
        labels=(3, None), classes=(3, 5), scores=(0.9, 0.6), items=(1234, None),
    )  # fmt: skip
    (scored,) = scored_objects(result, at=2.5)  # the unlabeled object is no evidence
    assert (scored.camera, scored.seq, scored.track, scored.item) == ("cam-2", 41, 7, 1234)
    assert (scored.label, scored.predicted, scored.correct) == (3, 3, True)
    assert (scored.at, scored.capture_ns) == (2.5, 5_000)
    assert drift.by_object([scored], "split:2") == {("cam-2", 41, 7): scored}
