"""The stack's launcher: waiting on what a child prints, however much it printed before."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgelearn import wire
from stack.launcher import (
    KEPT_LINES,
    ChildProcesses,
    Site,
    StackError,
    StackSettings,
    _start_cameras,
    child_env,
    video_sources,
)
from tests.support.broker import BrokerUnderTest
from tests.support.mqtt import open_probe
from tests.support.waiting import wait_for

SAMPLES = Path("/usr/share/doc/opencv-doc/examples/data")  # Debian's opencv-doc (setup.sh)


def _talker(tmp_path: Path, lines: int) -> list[str]:
    """A child that prints ``lines`` lines, then 'pushed' once ``go`` exists, then exits."""
    script = textwrap.dedent(
        f"""
        import pathlib, time
        for number in range({lines}):
            print(f"line {{number}}", flush=True)
        go = pathlib.Path({str(tmp_path / "go")!r})
        deadline = time.monotonic() + 60
        while not go.exists() and time.monotonic() < deadline:
            time.sleep(0.01)  # the test's signal; bounded
        print("pushed", flush=True)
        """
    )
    return [sys.executable, "-c", script]


def test_a_wait_sees_a_line_printed_after_more_than_the_kept_lines(tmp_path: Path) -> None:
    children = ChildProcesses(tmp_path, echo=False)
    try:
        talker = children.start("talker", _talker(tmp_path, KEPT_LINES + 100), dict(os.environ))
        seen = children.wait_for_line(talker, f"line {KEPT_LINES + 99}", timeout=30)
        assert seen == KEPT_LINES + 100
        (tmp_path / "go").touch()
        assert children.wait_for_line(talker, "pushed", timeout=30, after=seen) == seen + 1
        assert talker.line_count == KEPT_LINES + 101
        assert len(talker.lines) == KEPT_LINES
    finally:
        children.stop()
    assert (tmp_path / "talker.log").read_text().count("\n") == KEPT_LINES + 101


def test_a_wait_for_a_child_that_exits_says_so_with_its_last_lines(tmp_path: Path) -> None:
    children = ChildProcesses(tmp_path, echo=False)
    try:
        quitter = children.start(
            "quitter",
            [sys.executable, "-c", "print('no models here'); raise SystemExit(3)"],
            dict(os.environ),
        )
        with pytest.raises(StackError, match="quitter exited with 3") as caught:
            children.wait_for_line(quitter, "pushed", timeout=30)
        assert "no models here" in str(caught.value)
    finally:
        children.stop()


def _items_per_frame(
    broker: BrokerUnderTest, tmp_path: Path, site: str, seed: int, frames: int = 45
) -> dict[tuple[str, int], tuple[int | None, ...]]:
    """Start the stack's labeled cameras as ``edgelearn up --seed seed`` starts them (the
    launcher's own command) and read, per (camera, frame), which items it showed."""
    settings = StackSettings(
        run_dir=tmp_path / f"run-{site}", labeled_cameras=2, videos=(), site=site, echo=False
    )
    settings.run_dir.mkdir(parents=True)
    probe = open_probe(broker, "observer")
    probe.subscribe(wire.Topics(site).all_frames(), qos=0)
    children = ChildProcesses(settings.run_dir, echo=False)
    edge = SimpleNamespace(port=broker.port)  # the session's broker is the site's
    env = child_env(broker.secrets_dir)
    try:
        _start_cameras(children, settings, Site(site, "gw-1", edge), 1, seed, env)  # type: ignore[arg-type]

        def shown() -> dict[tuple[str, int], tuple[int | None, ...]]:
            decoded = [wire.decode_as(payload, wire.Frame) for payload in probe.payloads()]
            return {(f.camera_id, f.seq): f.truth_items for f in decoded if f.seq < frames}

        wait_for(lambda: len(shown()) >= 2 * frames * 0.8, 60, f"{frames} frames a camera")
        return shown()
    finally:
        children.stop()
        probe.close()


def test_the_same_seed_shows_the_same_items_and_another_seed_others(
    broker: BrokerUnderTest, tmp_path: Path, site: str
) -> None:
    first = _items_per_frame(broker, tmp_path, f"{site}a", seed=41)
    again = _items_per_frame(broker, tmp_path, f"{site}b", seed=41)
    other = _items_per_frame(broker, tmp_path, f"{site}c", seed=977)
    both = first.keys() & again.keys()
    assert len(both) > 40  # frames both runs sent (a camera may skip one it was late for)
    assert all(first[frame] == again[frame] for frame in both)
    items = {item for shown in first.values() for item in shown}
    assert len(items) >= 3  # 0-3 items a camera at a time, walking in and out
    assert not items & {item for shown in other.values() for item in shown}


def test_every_video_and_every_video_of_a_folder_is_a_camera_of_its_own(
    broker: BrokerUnderTest, tmp_path: Path, site: str
) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    (folder / "b-megamind.avi").symlink_to(SAMPLES / "Megamind.avi")
    (folder / "a-tree.avi").symlink_to(SAMPLES / "tree.avi")
    (folder / "notes.txt").write_text("not a video")
    settings = StackSettings(
        run_dir=tmp_path / "run",
        labeled_cameras=0,
        videos=(str(SAMPLES / "vtest.avi"), str(folder)),
        site=site,
        echo=False,
    )
    assert settings.cameras_per_site == 3
    settings.run_dir.mkdir(parents=True)
    probe = open_probe(broker, "observer")
    probe.subscribe(wire.Topics(site).all_frames(), qos=0)
    children = ChildProcesses(settings.run_dir, echo=False)
    edge = SimpleNamespace(port=broker.port)  # the session's broker is the site's
    try:
        started = _start_cameras(
            children,
            settings,
            Site(site, "gw-1", edge),
            1,
            7,
            child_env(broker.secrets_dir),  # type: ignore[arg-type]
        )
        assert [child.name for child in started] == ["video", "video-2", "video-3"]

        def cameras() -> set[str]:
            return {wire.decode_as(p, wire.Frame).camera_id for p in probe.payloads()}

        wait_for(lambda: len(cameras()) == 3, 60, "frames from three video cameras")
    finally:
        children.stop()
        probe.close()
    assert cameras() == {"cam-1", "cam-2", "cam-3"}
    sources = [(settings.run_dir / f"{name}.toml").read_text() for name in ("video-2", "video-3")]
    assert "a-tree.avi" in sources[0] and "b-megamind.avi" in sources[1]  # sorted by name


def test_videos_that_are_not_there_are_refused_before_anything_starts(tmp_path: Path) -> None:
    with pytest.raises(StackError, match=r"video .*nothing\.avi is missing"):
        video_sources([str(tmp_path / "nothing.avi")])
    with pytest.raises(StackError, match="no video in"):
        video_sources([str(tmp_path)])
    assert video_sources(["rtsp://camera.local/stream1"]) == ["rtsp://camera.local/stream1"]
