"""``edgelearn bench drift --quick``: the world changes mid-run; a static cloud and a
learning one score the same features, and the learning one's trainer runs."""

from __future__ import annotations

import json
from pathlib import Path

from bench import drift
from stack.report import render_from_json


def test_quick_drift_benchmark_compares_static_and_learning_on_the_same_objects(
    tmp_path: Path, trained_registry: Path
) -> None:
    result = drift.run(quick=True, output_dir=tmp_path / "out", registry=trained_registry)
    written = json.loads((tmp_path / "out" / "drift.json").read_text())
    assert written["benchmark"] == "drift" and written["mode"] == "split:2"
    budget = drift.Budget.of(True)
    series = result["series"]
    assert series[-1]["t"] >= budget.duration - budget.interval
    final = result["final"]
    # the same features reach both clouds: each camera scored as many objects in each
    assert final["learning"]["objects"] == final["static"]["objects"] > 0
    assert final["learning"]["cameras"].keys() == final["static"]["cameras"].keys()
    new_camera = result["drift"]["new_camera"]
    assert new_camera not in (result["before_drift"]["learning"] or {}).get("cameras", {})
    assert new_camera in final["learning"]["cameras"]  # it joined at the drift
    trainer = result["trainer"]
    assert trainer["started"] >= 1  # arrivals started a run (on a loaded host it may not end)
    assert trainer["promotions"] + trainer["rejections"] <= trainer["runs"] <= trainer["started"]
    assert result["model_pushes"]["bytes"] == 0  # a split's cloud half: nothing to push
    assert result["gateway"]["uplink_reduction"] > 0.9
    assert result["latency"]["whole_run"]["count"] > 0
    charts = render_from_json(written, tmp_path / "charts")
    assert sorted(path.name for path in charts) == ["drift.png", "drift_per_camera.png"]
