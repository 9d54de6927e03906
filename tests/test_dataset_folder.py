"""Bring your own data set: ``--dataset folder:PATH`` trains, serves and scores on a user's
class folders, and every kind of unusable folder is refused with its own message."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from bench.folders import grey_photos
from edgelearn.datasets import DatasetError, folder_split, parse_dataset
from edgelearn.ports import free_port
from stack import broker as broker_module

SHAPES = ("circle", "square", "triangle")


def make_shapes(root: Path, per_class: int = 40, seed: int = 0) -> Path:
    """Three classes of coloured shapes on dark ground, of any size and place."""
    rng = np.random.default_rng(seed)
    for name in SHAPES:
        (root / name).mkdir(parents=True)
        for index in range(per_class):
            size = int(rng.integers(48, 96))
            image = np.full((size, size, 3), rng.integers(0, 40, 3), np.uint8)
            colour = tuple(int(c) for c in rng.integers(90, 256, 3))
            centre = (size // 2 + int(rng.integers(-4, 5)), size // 2 + int(rng.integers(-4, 5)))
            radius = int(size * rng.uniform(0.28, 0.42))
            if name == "circle":
                cv2.circle(image, centre, radius, colour, -1, cv2.LINE_AA)
            elif name == "square":
                cv2.rectangle(
                    image,
                    (centre[0] - radius, centre[1] - radius),
                    (centre[0] + radius, centre[1] + radius),
                    colour,
                    -1,
                )
            else:
                points = np.array(
                    [
                        (centre[0], centre[1] - radius),
                        (centre[0] - radius, centre[1] + radius),
                        (centre[0] + radius, centre[1] + radius),
                    ],
                    np.int32,
                )
                cv2.fillPoly(image, [points], colour, cv2.LINE_AA)
            cv2.imwrite(str(root / name / f"{index:03d}.png"), image)
    return root


# --- bad folders -------------------------------------------------------------------------


def _load(path: Path) -> DatasetError:
    with pytest.raises(DatasetError) as caught:
        parse_dataset(f"folder:{path}").load()
    return caught.value


def test_each_kind_of_bad_folder_gets_its_own_message(tmp_path: Path) -> None:
    missing = _load(tmp_path / "nowhere")
    assert missing.reason == "missing" and "not found" in str(missing)

    (tmp_path / "flat").mkdir()
    cv2.imwrite(str(tmp_path / "flat" / "a.png"), np.zeros((8, 8, 3), np.uint8))
    flat = _load(tmp_path / "flat")
    assert flat.reason == "no_classes" and "sub-folder named after the class" in str(flat)

    one = make_shapes(tmp_path / "one", per_class=12)
    for name in SHAPES[1:]:
        for file in (one / name).iterdir():
            file.unlink()
        (one / name).rmdir()
    single = _load(one)
    assert single.reason == "one_class" and "circle" in str(single)

    broken = tmp_path / "broken"
    for name in SHAPES:
        (broken / name).mkdir(parents=True)
        (broken / name / "x.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    unreadable = _load(broken)
    assert unreadable.reason == "unreadable" and "could not be read" in str(unreadable)

    few = make_shapes(tmp_path / "few", per_class=12)
    for file in sorted((few / "square").iterdir())[:6]:
        file.write_bytes(b"truncated")  # readable no more: 6 squares left
    too_few = _load(few)
    assert too_few.reason == "too_few" and "square (6)" in str(too_few)

    with pytest.raises(ValueError, match="fashion-mnist or folder:PATH"):
        parse_dataset("imagenet")


def test_up_refuses_a_bad_folder_in_one_line_before_starting_anything(tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "stack", "up", "--dataset", f"folder:{tmp_path / 'none'}",
         "--run-dir", str(run_dir), "--edge-port", "0", "--cloud-port", "0"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "data set folder not found" in done.stderr
    assert [path.name for path in run_dir.iterdir()] == ["summary.json"]  # nothing started
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["exit_status"] == 2 and "not found" in summary["error"]


def test_a_folder_is_split_the_same_way_for_the_cloud_and_the_cameras(tmp_path: Path) -> None:
    from cameras.sources import parse_source
    from cloud.models.data import build_dataset

    folder = make_shapes(tmp_path / "shapes", per_class=20)
    data = parse_dataset(f"folder:{folder}").load()
    assert data.class_names == SHAPES and data.images.ndim == 4  # colour kept
    train_index, held_index = folder_split(len(data))
    assert not np.intersect1d(train_index, held_index).size
    assert len(held_index) == 12  # a fifth of 60
    shown = parse_source(f"folder-test:{folder}").load_data()
    assert shown is not None and len(shown) == len(held_index)
    np.testing.assert_array_equal(shown.labels, data.labels[held_index])
    rendered = build_dataset(150, 100, train_source=data, task="shapes")
    # more renders than training items: each item drawn in several scenes, none held out
    assert len(rendered.train) == 150 and len(rendered.held_out) == len(held_index)
    assert set(rendered.train.source_index.tolist()) == set(train_index.tolist())
    assert not np.array_equal(rendered.train.inputs[0], rendered.train.inputs[len(train_index)])


# --- end to end --------------------------------------------------------------------------


@pytest.mark.e2e
def test_up_trains_serves_and_scores_a_folder_of_grayscale_photos(tmp_path: Path) -> None:
    # Small grey photos, a quarter of them dark, all full-bleed: the kind of folder that once
    # crashed the first training (its dark half keyed transparent, as if a bright sprite).
    folder = grey_photos(tmp_path / "grey-photos", per_class=40)
    secrets = tmp_path / "secrets"
    broker_module.init_secrets(secrets, cameras=4, gateways=2)
    run_dir = tmp_path / "run"
    command = [
        sys.executable, "-m", "stack", "up", "--dataset", f"folder:{folder}",
        "--duration", "25", "--budget", "quick", "--no-grow", "--split-ks", "2",
        "--mode", "split:2", "--cameras", "2", "--video", "none", "--secrets", str(secrets),
        "--registry", str(tmp_path / "registry"), "--run-dir", str(run_dir),
        "--edge-port", str(free_port()), "--cloud-port", str(free_port()),
        "--prometheus-port", "0", "--no-prometheus", "--interval", "5",
    ]  # fmt: skip
    done = subprocess.run(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=900
    )
    assert done.returncode == 0, done.stdout[-3000:]
    cloud_log = (run_dir / "cloud.log").read_text()
    classes = ("baboon", "building", "fruits")
    assert f"trained generation 1 of 2 on folder:{folder} (3 classes: {', '.join(classes)}" in (
        cloud_log
    )
    assert "skipped" not in cloud_log.split("trained generation 1")[1].split("\n")[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["predicted"] and set(summary["predicted"]) <= set(classes)  # its names
    scored = summary["accuracy"]["split:2"]["run"]
    assert scored["objects"] > 0 and scored["items"] >= 3, scored
    for camera in ("cam-1", "cam-2"):
        assert camera in scored["cameras"], scored
    assert "classes predicted: " in done.stdout
