"""The stack's launcher: waiting on what a child prints, however much it printed before."""

from __future__ import annotations

import os
import sys
import textwrap
from pathlib import Path

import pytest

from stack.launcher import KEPT_LINES, ChildProcesses, StackError


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
