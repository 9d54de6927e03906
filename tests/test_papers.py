"""``edgelearn bench papers`` on a tiny budget: the papers' qualitative findings and the files.

One run of :func:`bench.papers.run` per module (two training-set sizes of a few hundred
rendered items, one or two epochs: about a minute on 2 cores). What must hold whatever the
budget: edge modes send far fewer uplink bytes than cloud-only for the same training set and
train faster; the byte counts agree with the model's shapes and the measured camera JPEGs;
keyframes only costs less than every frame; every output file is written and readable.
Accuracy is not asserted beyond being a fraction: a few epochs on a few hundred items say
nothing about the papers' accuracy claims.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench import papers
from cloud.models import cnn

pytestmark = [pytest.mark.training]

TINY = papers.Budget(
    sizes=(200, 400),
    held_out=200,
    cnn_epochs=((0, 2),),
    classifier_epochs=3,
    pretrain_items=200,
    pretrain_epochs=2,
    split_ks=(4, 8),
    pca_dim=16,
    dims=(8, 16),
    dims_items=200,
    autoencoder_epochs=1,
    jpeg_sample=6,
    stream_frames=40,
    stream_ks=(1, 8),
    seed=3,
)
EDGE_MODES = ("pca:16", "split:4", "split:8")


@pytest.fixture(scope="module")
def output_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("papers")


@pytest.fixture(scope="module")
def results(output_dir: Path) -> dict[str, Any]:
    return papers.run(True, output_dir=output_dir, budget=TINY)


def fig2(results: dict[str, Any]) -> dict[tuple[int, str], dict[str, Any]]:
    return {(row["n_train"], row["mode"]): row for row in results["fig2"]["rows"]}


def test_every_size_has_every_mode(results: dict[str, Any]) -> None:
    rows = fig2(results)
    assert set(rows) == {
        (size, mode) for size in TINY.sizes for mode in (papers.CLOUD_ONLY, *EDGE_MODES)
    }
    for row in rows.values():
        assert 0.0 <= row["held_out_accuracy"] <= 1.0
        assert row["training_seconds"] > 0


def test_edge_modes_send_far_fewer_bytes_than_cloud_only(results: dict[str, Any]) -> None:
    rows = fig2(results)
    for size in TINY.sizes:
        cloud = rows[size, papers.CLOUD_ONLY]["uplink_bytes"]
        for mode in EDGE_MODES:
            row = rows[size, mode]
            assert row["uplink_bytes"] < 0.25 * cloud, (size, mode)
            assert row["uplink_bytes_zstd"] < 0.25 * cloud, (size, mode)
            assert row["uplink_reduction"] == pytest.approx(1 - row["uplink_bytes"] / cloud)


def test_uplink_bytes_follow_the_measured_jpegs_and_the_model_shapes(
    results: dict[str, Any],
) -> None:
    rows = fig2(results)
    camera = results["fig2"]["camera_jpeg"]
    # A 720p JPEG is several times the 320x180 render the cloud trains on.
    assert camera["ratio_to_training_render"] > 2
    model = cnn.build_cnn()
    for size in TINY.sizes:
        assert rows[size, papers.CLOUD_ONLY]["uplink_bytes"] == pytest.approx(
            size * camera["bytes_mean"]
        )
        assert rows[size, "pca:16"]["uplink_bytes"] == size * 16
        for k in TINY.split_ks:
            per_item = math.prod(cnn.block_input_shape(model, k))
            assert rows[size, f"split:{k}"]["uplink_bytes"] == size * per_item
        # Twice the items, twice the bytes: the sets are nested, the cost per item fixed.
        assert (
            rows[TINY.sizes[-1], papers.CLOUD_ONLY]["uplink_bytes"]
            > rows[TINY.sizes[0], papers.CLOUD_ONLY]["uplink_bytes"]
        )


def test_edge_modes_train_faster_than_cloud_only(results: dict[str, Any]) -> None:
    rows = fig2(results)
    for mode in EDGE_MODES:
        edge = sum(rows[size, mode]["training_seconds"] for size in TINY.sizes)
        cloud = sum(rows[size, papers.CLOUD_ONLY]["training_seconds"] for size in TINY.sizes)
        assert edge < cloud, mode
    # The small dense networks on pooled or PCA features: several times faster, every size.
    for size in TINY.sizes:
        cloud = rows[size, papers.CLOUD_ONLY]["training_seconds"]
        for mode in ("pca:16", "split:8"):
            assert rows[size, mode]["training_seconds"] < 0.7 * cloud, (size, mode)


def test_feature_dimension_rows(results: dict[str, Any]) -> None:
    rows = results["fig5f"]["rows"]
    assert {(row["method"], row["dim"]) for row in rows} == {
        (method, dim) for method in ("pca", "autoencoder") for dim in TINY.dims
    }
    for row in rows:
        assert row["uplink_bytes_per_item"] == row["dim"]
        assert 0.0 <= row["held_out_accuracy"] <= 1.0


def test_stream_bitrates(results: dict[str, Any]) -> None:
    streams = results["paper003"]["streams"]
    assert "labeled scene (Fashion-MNIST)" in streams
    model = cnn.build_cnn()
    for name, stream in streams.items():
        assert stream["frames"] == TINY.stream_frames
        assert 0 < stream["keyframes"] < stream["frames"], name
        rows = {row["payload"]: row for row in stream["rows"]}
        for row in rows.values():
            assert 0 < row["kbps_keyframes_only"] < row["kbps_every_frame"], (name, row)
            assert row["kbps_every_frame"] == pytest.approx(
                row["bytes_per_frame"] * 8 * stream["fps"] / 1000
            )
        first = next(r for r in stream["rows"] if r.get("mode") == "split:1")
        assert first["bytes_per_frame"] == math.prod(cnn.block_input_shape(model, 1))
        assert first["paper_kbps_every_frame"] == papers.PAPER_FIRST_LAYER_KBPS
        coded = rows["split:1 int8 + zstd"]
        assert coded["bytes_per_frame"] < first["bytes_per_frame"]  # ReLU6 zeros compress
        jpeg = stream["rows"][0]
        assert jpeg["payload"].startswith("JPEG quality")
        assert jpeg["bytes_per_frame"] > rows["split:8 int8 + zstd"]["bytes_per_frame"]
        controlled = stream["rows"][1]
        # The controller is still converging over 40 frames; it must be near its target.
        assert 0.65 * 3000 < controlled["kbps_every_frame"] < 1.35 * 3000, name


def test_files_are_written(results: dict[str, Any], output_dir: Path) -> None:
    files = {name: Path(path) for name, path in results["files"].items()}
    assert set(files) == {"json", "markdown", "fig2_png", "fig5f_png", "paper003_png"}
    for path in files.values():
        assert path.parent == output_dir
        assert path.stat().st_size > 0
    for name in ("fig2_png", "fig5f_png", "paper003_png"):
        data = files[name].read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name
    stored = json.loads(files["json"].read_text())
    assert stored["fig2"]["rows"] == json.loads(json.dumps(results["fig2"]["rows"]))
    assert stored["machine"]["cpus"] >= 1
    assert stored["elapsed_seconds"] > 0
    text = files["markdown"].read_text()
    for heading in ("Paper 000, Fig. 2", "Paper 001, Fig. 5f", "Paper 003"):
        assert heading in text
    for mode in (papers.CLOUD_ONLY, *EDGE_MODES):
        assert f"| {mode} |" in text


def test_nested_subsets_grow_by_adding_items() -> None:
    sets = papers.nested_subsets(1000, [10, 100, 1000], seed=1)
    assert [len(s) for s in sets.values()] == [10, 100, 1000]
    assert set(sets[10]) <= set(sets[100]) <= set(sets[1000])
    assert np.array_equal(sets[1000], np.arange(1000))


def test_budget_checks_its_sizes() -> None:
    with pytest.raises(ValueError, match="increasing"):
        papers.Budget(**{**TINY.to_dict(), "sizes": (400, 200)})
    with pytest.raises(ValueError, match="dims_items"):
        papers.Budget(**{**TINY.to_dict(), "dims_items": 1000})
    with pytest.raises(ValueError, match="cnn_epochs"):
        papers.Budget(**{**TINY.to_dict(), "cnn_epochs": ((100, 2),)})
    scheduled = papers.Budget(**{**TINY.to_dict(), "cnn_epochs": ((0, 3), (300, 2), (400, 1))})
    assert [scheduled.cnn_epochs_for(n) for n in (200, 300, 399, 400, 10_000)] == [3, 2, 2, 1, 1]
