"""What keeps ``edgelearn up`` running when one of its parts fails.

* :class:`Supervisor` watches every part of the stack (brokers and child processes alike, as
  :class:`Part`) and restarts one that exited, at most ``RESTART_BUDGET`` times in
  ``BUDGET_WINDOW`` seconds; past that the part is *failed* and stays down, and the rest of
  the stack keeps running. A part that is alive but makes no progress while the part that
  feeds it does (or whose ``/metrics`` stopped answering) is reported *hung* after
  ``HUNG_AFTER`` seconds; it is not killed, since a hung process is evidence to look at.
* :class:`CounterTotals` reads every ``/metrics`` endpoint and keeps counters monotonic
  across restarts, as Prometheus's ``increase()`` does: when a counter goes down (its process
  started again from zero) the last value seen is kept as an offset. A summary's totals never
  go backwards.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from edgelearn.metrics import Samples, parse_samples

log = logging.getLogger(__name__)

RESTART_BUDGET = 5  # restarts of one part ...
BUDGET_WINDOW = 600.0  # ... within this many seconds, then it stays down
HUNG_AFTER = 15.0  # seconds without progress while its input grows
_CUMULATIVE = ("_total", "_count", "_sum", "_bucket")


class Part(Protocol):
    """A broker or a child process the supervisor can check and start again."""

    name: str

    def exit_code(self) -> int | None:
        """None while it runs."""

    def restart(self) -> None:
        """Start it again with the same command, ports and data."""

    def responsive(self) -> bool:
        """Whether it answers (its port, its /metrics)."""


@dataclass
class Health:
    state: str = "running"  # running | restarting | hung | failed | stopped
    restarts: int = 0
    last_exit: int | None = None
    note: str = ""
    restart_times: list[float] = field(default_factory=list)
    unresponsive_since: float | None = None
    stalled_since: float | None = None


@dataclass
class Progress:
    """How a part shows it works: its own activity, and the activity of what feeds it."""

    own: Callable[[], float | None]
    upstream: Callable[[], float | None]
    last_own: float | None = None
    last_upstream: float | None = None


class Supervisor:
    def __init__(
        self,
        parts: Iterable[Part],
        *,
        on_restart: Callable[[Part], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.parts = list(parts)
        self._on_restart = on_restart or (lambda part: None)
        self.health = {part.name: Health() for part in self.parts}
        self.progress: dict[str, Progress] = {}
        self._clock = clock

    def watch_progress(self, name: str, progress: Progress) -> None:
        self.progress[name] = progress

    def check(self) -> list[str]:
        """One round: restart what died, mark what hangs. Returns what changed, to print."""
        events: list[str] = []
        now = self._clock()
        for part in self.parts:
            health = self.health[part.name]
            if health.state in ("failed", "stopped"):
                continue
            code = part.exit_code()
            if code is not None:
                events.append(self._exited(part, health, code, now))
                continue
            events += self._check_hung(part, health, now)
        return events

    def _exited(self, part: Part, health: Health, code: int, now: float) -> str:
        health.last_exit = code
        if code == 0:  # it finished what it had to do (a camera at the end of its video)
            health.state, health.note = "stopped", "finished"
            return f"{part.name} finished"
        health.restart_times = [t for t in health.restart_times if now - t < BUDGET_WINDOW]
        if len(health.restart_times) >= RESTART_BUDGET:
            health.state = "failed"
            health.note = f"exited with {code}; {RESTART_BUDGET} restarts in {BUDGET_WINDOW:.0f} s"
            return f"{part.name} {health.note}: not restarting"
        health.restart_times.append(now)
        health.restarts += 1
        try:
            part.restart()
        except Exception as exc:  # a restart that cannot start is a failure, not a crash of up
            health.state = "failed"
            health.note = f"exited with {code}; restart failed: {exc}"
            return f"{part.name} {health.note}"
        self._on_restart(part)
        health.state = "running"
        health.note = f"restarted after exit {code}"
        health.unresponsive_since = health.stalled_since = None
        return f"{part.name} exited with {code}: restarted ({health.restarts} so far)"

    def _check_hung(self, part: Part, health: Health, now: float) -> list[str]:
        if part.responsive():
            health.unresponsive_since = None
        elif health.unresponsive_since is None:
            health.unresponsive_since = now
        stalled = self._stalled(part.name, now)
        since = [t for t in (health.unresponsive_since, stalled) if t is not None]
        hung = bool(since) and now - min(since) >= HUNG_AFTER
        if hung and health.state != "hung":
            health.state = "hung"
            health.note = (
                "not answering" if health.unresponsive_since is not None else "no progress"
            ) + f" for {now - min(since):.0f} s"
            return [f"{part.name} looks hung: {health.note}"]
        if not hung and health.state == "hung":
            health.state, health.note = "running", "recovered from a hang"
            return [f"{part.name} is working again"]
        return []

    def _stalled(self, name: str, now: float) -> float | None:
        """Since when the part's own activity stood still while its input grew."""
        progress = self.progress.get(name)
        health = self.health[name]
        if progress is None:
            return None
        own, upstream = progress.own(), progress.upstream()
        if own is None or upstream is None:
            return health.stalled_since
        grew_input = progress.last_upstream is not None and upstream > progress.last_upstream
        moved = progress.last_own is None or own > progress.last_own
        progress.last_own, progress.last_upstream = own, upstream
        if moved:
            health.stalled_since = None
        elif grew_input and health.stalled_since is None:
            health.stalled_since = now
        return health.stalled_since

    def stopped(self, name: str) -> None:
        """The part was stopped on purpose (the stack is stopping)."""
        self.health[name].state = "stopped"

    def line(self) -> str:
        """One line for the summary: what is not simply running."""
        notes = [
            f"{name} {health.state}" + (f" ({health.note})" if health.note else "")
            for name, health in self.health.items()
            if health.state != "running" or health.restarts
        ]
        return "all parts running" if not notes else "; ".join(notes)

    def failed(self) -> list[str]:
        return [name for name, health in self.health.items() if health.state == "failed"]

    def report(self) -> dict[str, dict[str, object]]:
        return {
            name: {
                "state": health.state,
                "restarts": health.restarts,
                "last_exit": health.last_exit,
                "note": health.note,
            }
            for name, health in self.health.items()
        }


class CounterTotals:
    """Every endpoint's samples, counters kept monotonic across restarts of its process.
    Thread-safe: the supervisor marks restarts while readers (the summary, a benchmark)
    read."""

    def __init__(self, fetch: Callable[[str], str | None]) -> None:
        self._fetch = fetch
        self._lock = threading.Lock()
        self._last: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}
        self._offset: dict[tuple[str, str, tuple[tuple[str, str], ...]], float] = {}

    def restarted(self, url: str) -> None:
        """The process behind ``url`` started again: what it counted so far is kept."""
        with self._lock:
            for key, value in self._last.items():
                if key[0] == url:
                    self._offset[key] = self._offset.get(key, 0.0) + value
                    self._last[key] = 0.0

    def read(self, urls: Iterable[str]) -> tuple[dict[str, Samples], Samples]:
        """Per URL and merged: the samples, counters with their offsets added."""
        per_url: dict[str, Samples] = {}
        rows: list[tuple[str, dict[str, str], float]] = []
        unreachable = []
        for url in urls:
            text = self._fetch(url)
            parsed = None if text is None else parse_samples(text).rows
            with self._lock:
                if parsed is None:
                    unreachable.append(url)
                    kept = self._kept(url)
                else:
                    fresh = tuple(self._adjust(url, row) for row in parsed)
                    # A series a restarted process has not counted yet still holds what it had.
                    present = {
                        (url, name, tuple(sorted(labels.items()))) for name, labels, _ in fresh
                    }
                    kept = fresh + self._kept(url, skip=present)
            per_url[url] = Samples(kept, () if text is not None else (url,))
            rows += kept
        return per_url, Samples(tuple(rows), tuple(unreachable))

    def _adjust(
        self, url: str, row: tuple[str, dict[str, str], float]
    ) -> tuple[str, dict[str, str], float]:
        name, labels, value = row
        if not name.endswith(_CUMULATIVE):
            return row
        key = (url, name, tuple(sorted(labels.items())))
        last = self._last.get(key)
        if last is not None and value < last:  # the process started again from zero
            self._offset[key] = self._offset.get(key, 0.0) + last
        self._last[key] = value
        return name, labels, value + self._offset.get(key, 0.0)

    def _kept(
        self, url: str, skip: set[tuple[str, str, tuple[tuple[str, str], ...]]] | None = None
    ) -> tuple[tuple[str, dict[str, str], float], ...]:
        """What an endpoint counted so far in the series it does not report now (it is down,
        restarting, or started again and has not counted those yet)."""
        skip = skip or set()
        return tuple(
            (name, dict(labels), value + self._offset.get((u, name, labels), 0.0))
            for (u, name, labels), value in self._last.items()
            if u == url and (u, name, labels) not in skip
        )


def children_of(pid: int) -> list[int]:
    """The direct children of process ``pid`` (Linux: every thread's ``children`` list);
    [] when it is gone."""
    found = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            found += [int(child) for child in (task / "children").read_text().split()]
    return found
