"""``edgelearn bench pipeline --quick`` produces its JSON with every mode, on and off."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from bench import pipeline as pipeline_bench

# --quick's stack, modes and scenes, played at 24 fps (15), less of the every-object
# baseline (60 frames a camera, 90 in --quick) and one retraining epoch (3): the suite checks
# that every mode runs and is counted and scored, not the figures (`edgelearn bench
# pipeline` measures those). (150 frames a camera left the offline account no object that
# stood long enough to count.)
SMALL = dataclasses.replace(
    pipeline_bench.Budget.of(quick=True), fps=24, frames_off=60, retrain_epochs=1
)


@pytest.mark.e2e
def test_quick_pipeline_benchmark_covers_every_mode(tmp_path: Path, trained_registry: Path) -> None:
    registry = tmp_path / "registry"
    shutil.copytree(trained_registry, registry)
    result = pipeline_bench.run(
        quick=True, output_dir=tmp_path / "out", registry=registry, budget=SMALL
    )
    written = json.loads((tmp_path / "out" / "pipeline.json").read_text())
    expected = {"raw", "pca", "autoencoder", "split:2", "full"}
    assert {row["mode"] for row in written["modes"].values()} == expected
    assert {(row["mode"], row["keyframes"]) for row in written["modes"].values()} == {
        (mode, keyframes) for mode in expected for keyframes in (False, True)
    }
    rows = result["modes"]
    cloud_only = rows["raw"]
    assert cloud_only["reduction"] == 0.0 and cloud_only["results"] > 0
    for key, row in rows.items():  # the same frames for every mode, keyframes on and off
        same = rows["raw keyframes" if row["keyframes"] else "raw"]["frames_published"]
        assert row["frames_published"] == same, key
        assert row["results"] > 0, key
        assert row["accuracy"] is not None and row["evidence"]["items"] >= 5, key
        evidence = row["evidence"]
        assert evidence["low"] <= evidence["accuracy"] <= evidence["high"], key
    assert rows["raw keyframes"]["frames_published"] > cloud_only["frames_published"]
    # where the accuracy goes, on the same scenes, offline: the stages add up
    for mode, account in result["losses"].items():
        figures = account["accuracy"]
        assert figures["ideal"]["accuracy"] - sum(account["losses"].values()) == pytest.approx(
            figures["sent"]["accuracy"], abs=1e-3
        ), mode
    # The edge modes send far less than cloud-only over the bridge, and no raw frame crossed.
    for mode in ("pca", "autoencoder", "full"):
        assert rows[f"{mode} keyframes"]["reduction"] > 0.99, mode
    assert (
        rows["split:2 keyframes"]["uplink_bytes_per_frame"] < cloud_only["uplink_bytes_per_frame"]
    )
    assert result["raw_frames_on_cloud_broker"] == 0
    assert (tmp_path / "out" / "pipeline.md").read_text().count("\n") > 10
    assert list((tmp_path / "out").glob("*.png"))
