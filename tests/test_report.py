"""``edgelearn report`` from a recorded run: the JSON a pipeline benchmark writes.

(The Prometheus source is tested in test_observability.py, on that module's real run.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.image import imread

from stack import report

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def benchmark_results() -> dict[str, Any]:
    """The shape of ``edgelearn bench pipeline --output F.json``: run facts, then per mode."""
    return {
        "machine": {"cpus": 2, "python": "3.11.7", "note": "shared machine"},
        "quick": True,
        "elapsed_seconds": 95.2,
        "frames": 600,
        "modes": {
            "raw": {
                "uplink_bytes_per_frame": 96_512.0,
                "reduction": 0.0,
                "accuracy": 0.912,
                "latency_p50_seconds": 0.018,
                "latency_p99_seconds": 0.044,
                "keyframe_ratio": 1.0,
                "training_seconds": 310.0,
            },
            "pca": {
                "uplink_bytes_per_frame": 41.0,
                "reduction": 0.9996,
                "accuracy": 0.81,
                "latency_p50_seconds": 0.006,
                "latency_p99_seconds": 0.015,
                "keyframe_ratio": 0.31,
                "training_seconds": 12.5,
            },
            "split:3": {
                "uplink_bytes_per_frame": 3_900.0,
                "reduction": 0.959,
                "accuracy": 0.905,
                "latency_p50_seconds": 0.027,
                "latency_p99_seconds": 0.058,
                "keyframe_ratio": 0.31,
                "training_seconds": 104.0,
            },
            "full": {
                "uplink_bytes_per_frame": 38.0,
                "reduction": 0.9996,
                "accuracy": 0.9,
                "latency_p50_seconds": 0.031,
                "latency_p99_seconds": 0.049,
                "keyframe_ratio": 0.31,
            },
        },
    }


def assert_real_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE, path.name
    assert len(data) > 10_000, f"{path.name} is suspiciously small"
    pixels = imread(path)
    assert pixels.shape[0] > 300 and pixels.shape[1] > 500
    # Not a blank canvas: the bars and text give many distinct colours.
    colours = np.unique(pixels.reshape(-1, pixels.shape[-1]).round(2), axis=0)
    assert len(colours) > 20, path.name


def test_render_from_json_draws_every_chart(tmp_path: Path) -> None:
    files = report.render_from_json(benchmark_results(), tmp_path)
    assert [path.name for path in files] == [
        "uplink_bytes_per_mode.png",
        "reduction_ratio.png",
        "latency.png",
        "accuracy.png",
        "accuracy_vs_uplink.png",
        "keyframe_ratio.png",
        "training_seconds.png",
    ]
    for path in files:
        assert path.parent == tmp_path
        assert_real_png(path)


def test_modes_are_grouped_with_keyframes_on_and_off_side_by_side() -> None:
    values = {"split:8 keyframes": 0.9, "raw": 0.8, "split:8": 0.91, "pca keyframes": 0.7}
    groups = report._by_keyframes(values)
    assert groups == {
        "every frame": {"raw": 0.8, "split:8": 0.91},
        "keyframes on": {"split:8": 0.9, "pca": 0.7},
    }
    assert report._by_keyframes({"raw": 1.0}) == {"every frame": {"raw": 1.0}}


def test_missing_figures_are_skipped_and_said(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = benchmark_results()
    for figures in data["modes"].values():
        figures.pop("accuracy")
        figures.pop("training_seconds", None)
    del data["modes"]["pca"]["latency_p99_seconds"]
    data["modes"]["full"]["keyframe_ratio"] = "n/a"  # not a number: skipped, not a crash
    data["modes"]["split:3"]["reduction"] = float("nan")
    source = tmp_path / "bench.json"
    source.write_text(json.dumps(data))
    out = tmp_path / "charts"
    status = report.cli(["--from-json", str(source), "--output-dir", str(out)])
    printed = capsys.readouterr()
    assert status == 0
    written = [Path(line) for line in printed.out.split()]
    assert [path.name for path in written] == [
        "uplink_bytes_per_mode.png",
        "reduction_ratio.png",
        "latency.png",
        "keyframe_ratio.png",
    ]
    assert all(path.exists() for path in written)
    assert "skipped accuracy: no mode has accuracy" in printed.err
    assert "latency_p99_seconds: no value for pca" in printed.err
    assert "keyframe_ratio: no value for full" in printed.err
    assert "reduction: no value for split:3" in printed.err
    assert not (out / "accuracy.png").exists()


def test_a_json_with_nothing_to_draw_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    source = tmp_path / "bench.json"
    source.write_text(json.dumps({"modes": {"raw": {"frames": 10}}}))
    assert report.cli(["--from-json", str(source), "--output-dir", str(tmp_path / "out")]) == 1
    assert "nothing to draw" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content", ['{"quick": true}', '{"modes": {}}', "[1, 2]", "{not json", '{"modes": 3}']
)
def test_bad_input_is_one_line_and_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: str
) -> None:
    source = tmp_path / "bench.json"
    source.write_text(content)
    assert report.cli(["--from-json", str(source), "--output-dir", str(tmp_path / "out")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("edgelearn report: ") and error.count("\n") == 1


def test_modes_may_be_a_list(tmp_path: Path) -> None:
    data = {"modes": [{"mode": "raw", "accuracy": 0.9}, {"mode": "pca", "accuracy": 0.8}]}
    files = report.render_from_json(data, tmp_path)
    assert [path.name for path in files] == ["accuracy.png"]


def test_render_from_json_requires_modes(tmp_path: Path) -> None:
    with pytest.raises(report.ReportError, match="modes"):
        report.render_from_json({"frames": 3}, tmp_path)


def test_a_source_is_required() -> None:
    with pytest.raises(SystemExit):
        report.cli(["--output-dir", "x"])


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90.0), ("15m", 900.0), ("1h30m", 5400.0), ("2d", 172800.0), ("500ms", 0.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert report.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "15", "m", "15 m", "-5m", "0s", "5x"])
def test_parse_duration_refuses_nonsense(text: str) -> None:
    with pytest.raises(ValueError):
        report.parse_duration(text)
