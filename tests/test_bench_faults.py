"""``edgelearn bench faults --quick``: faults on a real 2-site stack, and nothing lost.

This is the end-to-end delivery check: the stack is the real one (mosquittos, gateway pools,
cloud, cameras as processes), and "nothing lost" is counted capture by capture between what
the edge brokers saw, what the cloud's ledger holds and what a subscriber on the cloud broker
saw. The suite runs the faults no other test makes (an edge broker killed, the cloud paused,
a full disk under a pool) and two that have their own tests at smaller scale (a pool worker
killed, bad frames into a pool). Those its own tests cover, each with one real stack part
killed or cut, are left to them: the cloud broker restarted, the bridge cut and the cloud
process killed (tests/test_delivery.py), tampered models (tests/test_gateway_service.py).
The benchmark runs them all.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from stack.launcher import edgelearn_command

SUITE_FAULTS = (
    "edge_broker_kill_and_restart",
    "gateway_worker_kill",
    "cloud_paused",
    "outbox_disk_full",
    "garbage_and_oversize_frames",
)


@pytest.mark.e2e
def test_bench_faults_quick_loses_nothing_and_recovers(
    tmp_path: Path, trained_registry: Path
) -> None:
    output = tmp_path / "faults.json"
    env = {**os.environ, "EDGELEARN_BENCH_REGISTRY": str(trained_registry), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [
            *edgelearn_command("bench", "faults", "--quick", "--output", str(output)),
            *("--faults", ",".join(SUITE_FAULTS)),
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(output.read_text())
    faults = report["faults"]
    assert set(faults) == set(SUITE_FAULTS)
    for name, fault in faults.items():
        assert fault["features_produced"] > 0, name
        assert fault["settled"], name
        given_up = sum(v for k, v in fault["counters"].items() if k.startswith("features_given_up"))
        # Nothing lost but what a policy gave up, counted (only a full disk may do that).
        assert fault["features_lost"] <= given_up, (name, fault)
        if name != "outbox_disk_full":
            assert given_up == 0, (name, fault)
        assert fault["recovery_seconds"] is not None, name
        assert fault["results_answered"] > 0, (name, fault)
        # Every answer the cloud recorded reaches the site at least once, except when a
        # broker is killed: one that had acknowledged an answer, and not yet passed it on,
        # loses it with its memory (mosquitto saves to disk every 10 s), and nothing sends
        # it again (counted: results_lost).
        if not name.endswith("broker_kill_and_restart"):
            assert fault["results_lost"] == 0, (name, fault)
    assert report["training_rows_double_counted"] == 0
    assert faults["edge_broker_kill_and_restart"]["restarts"] == {"broker-site-1": 1}
    assert faults["gateway_worker_kill"]["restarts"] == {"gateway-site-1 workers": 1}
    assert faults["outbox_disk_full"]["counters"]["outbox_failures"] > 0
    assert faults["outbox_disk_full"]["restarts"] == {}  # a full disk crashes no worker
    garbage = faults["garbage_and_oversize_frames"]
    dropped = {
        key.removeprefix("frames_dropped."): value
        for key, value in garbage["counters"].items()
        if key.startswith("frames_dropped.")
    }
    # Every bad frame is counted with its exact reason (a flood may also find a worker's
    # inbox full: worker_busy, counted too).
    bad = ("bad_magic", "truncated", "camera_mismatch", "oversize", "worker_busy")
    assert sum(dropped.get(reason, 0) for reason in bad) >= garbage["garbage_frames"], garbage
    for reason in ("bad_magic", "truncated", "camera_mismatch"):
        assert dropped.get(reason, 0) > 0, (reason, garbage)
    assert garbage["restarts"] == {}
    assert garbage["gateway_warning_lines"] < 20  # rate-limited, not one per frame


def test_an_unknown_fault_is_refused_before_anything_starts() -> None:
    from bench import faults as faults_bench
    from edgelearn.config import ConfigError

    with pytest.raises(ConfigError, match="no such fault: bridge_cat"):
        faults_bench.run(quick=True, only=("bridge_cut", "bridge_cat"))
    # the two faults of more cloud machines need more than one
    with pytest.raises(ConfigError, match="database_kill_and_restart"):
        faults_bench.run(quick=True, only=("database_kill_and_restart",))
