"""A benchmark run's odds and ends: waiting on another process, a work directory, the
warnings a run logged, and percentiles."""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np


class LoggedWarnings:
    """WARNING and ERROR messages a run logged, counted by message with digits folded (so
    one message about many frames counts as one kind)."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, message: str) -> None:
        self.counts[re.sub(r"\d+", "N", message.strip())] += 1

    def summary(self, examples: int = 5) -> dict[str, Any]:
        return {
            "warnings_and_errors": sum(self.counts.values()),
            "most_common": dict(self.counts.most_common(examples)),
        }

    @classmethod
    def in_log(cls, log_file: Path) -> LoggedWarnings:
        """The WARNING and ERROR lines of a child process's log file."""
        found = cls()
        for line in log_file.read_text(errors="replace").splitlines():
            if "WARNING" in line or "ERROR" in line:
                found.add(line)
        return found

    @contextlib.contextmanager
    def attached(self) -> Iterator[LoggedWarnings]:
        """Count the records of this process while the block runs."""
        warnings = self

        class Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                warnings.add(f"{record.name}: {record.getMessage()}")

        handler = Handler(logging.WARNING)
        root = logging.getLogger()
        root.addHandler(handler)
        try:
            yield self
        finally:
            root.removeHandler(handler)


def poll_until(condition: Callable[[], bool], timeout: float) -> bool:
    """Poll ``condition`` (another process's state) until true or ``timeout`` seconds have
    passed; whether it came true."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)  # polling another process's state, bounded by the timeout
    return True


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """:func:`poll_until`, and a RuntimeError naming ``what`` if it did not come true."""
    if not poll_until(condition, timeout):
        raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")


@contextlib.contextmanager
def work_dir(part: str) -> Iterator[Path]:
    """A temporary directory for one benchmark run, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix=f"edgelearn-bench-{part}-") as directory:
        yield Path(directory)


def quantile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (linear between samples), or None without samples."""
    return float(np.quantile(np.asarray(values, np.float64), q)) if len(values) else None


def percentiles_ms(values_ns: Sequence[int]) -> dict[str, float | int | None]:
    """p50/p90/p99/max/mean in milliseconds of nanosecond durations."""
    if not values_ns:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    array = np.asarray(values_ns, dtype=np.float64) / 1e6
    summary: dict[str, float | int | None] = {"count": len(values_ns)}
    for name, q in (("p50", 0.5), ("p90", 0.9), ("p99", 0.99)):
        summary[name] = round(float(np.quantile(array, q)), 2)
    summary["max"] = round(float(array.max()), 2)
    summary["mean"] = round(float(array.mean()), 2)
    return summary
