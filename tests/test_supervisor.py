"""What keeps ``edgelearn up`` running: restarts within a budget, and totals that never go
backwards when a process starts counting from zero again."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from stack.launcher import ChildProcesses
from stack.supervisor import RESTART_BUDGET, CounterTotals, Supervisor
from tests.support.waiting import wait_for

URL = "http://gateway/metrics"


def _text(**values: float) -> str:
    lines = []
    for camera, value in values.items():
        lines.append(f'edgelearn_gateway_frames_received_total{{camera="{camera}"}} {value}')
    lines.append("edgelearn_gateway_outbox_items 3")
    return "\n".join(lines) + "\n"


def test_counters_carry_on_across_a_restart_and_a_missing_series() -> None:
    texts: list[str | None] = [
        _text(a=10, b=5),
        None,  # down: what it counted is kept
        _text(a=2),  # started again from zero; b not counted yet
        _text(a=4, b=1),
    ]
    totals = CounterTotals(lambda url: texts.pop(0))
    seen = []
    for _ in range(4):
        _, merged = totals.read([URL])
        seen.append(merged.by_label("edgelearn_gateway_frames_received_total", "camera"))
    assert seen == [
        {"a": 10, "b": 5},
        {"a": 10, "b": 5},
        {"a": 12, "b": 5},
        {"a": 14, "b": 6},
    ]


def test_a_gauge_is_not_summed_across_restarts() -> None:
    texts = [_text(a=1), _text(a=0)]
    totals = CounterTotals(lambda url: texts.pop(0))
    totals.read([URL])
    _, merged = totals.read([URL])
    assert merged.total("edgelearn_gateway_outbox_items") == 3


def test_a_child_that_keeps_dying_is_restarted_within_its_budget_then_failed(
    tmp_path: Path,
) -> None:
    children = ChildProcesses(tmp_path, echo=False)
    try:
        quitter = children.start(
            "quitter", [sys.executable, "-c", "raise SystemExit(3)"], dict(os.environ)
        )
        sleeper = children.start(
            "sleeper", [sys.executable, "-c", "import signal; signal.pause()"], dict(os.environ)
        )
        restarted = []
        supervisor = Supervisor([quitter, sleeper], on_restart=restarted.append)
        events: list[str] = []

        def failed() -> bool:
            events.extend(supervisor.check())
            return supervisor.failed() == ["quitter"]

        wait_for(failed, 60, "the quitter to spend its restart budget")
        assert len(restarted) == RESTART_BUDGET
        assert supervisor.health["quitter"].last_exit == 3
        assert supervisor.health["sleeper"].state == "running"
        assert "quitter failed" in supervisor.line() and "sleeper" not in supervisor.line()
        assert events[-1].endswith("not restarting")
        assert sleeper.process.poll() is None  # the rest keeps running
    finally:
        children.stop()
