"""Running an ``edgelearn`` role's command as a user does: a subprocess, its exit status and
its stderr."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping


def run_role(
    role: str, *args: str, timeout: float = 60, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``edgelearn ROLE ARGS...`` (as ``python -m stack``), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "stack", role, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        env=None if env is None else dict(env),
    )


def assert_one_line_error(result: subprocess.CompletedProcess[str], role: str, *words: str) -> None:
    """A user's mistake: exit status 2 and one line on stderr, ``edgelearn ROLE: ...``,
    naming every one of ``words``; no traceback."""
    assert result.returncode == 2, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert lines[0].startswith(f"edgelearn {role}: ")
    for word in words:
        assert word in lines[0], lines[0]
