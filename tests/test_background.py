"""The cloud's training process: a process of its own, below everything the stack serves."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cloud.background import NICENESS, TrainingProcess


def _where_it_runs(_: None) -> tuple[int, int, int, str, int, int]:
    import tensorflow as tf

    autogroup = Path("/proc/self/autogroup")
    return (
        os.getpid(),
        os.getsid(0),
        os.getpriority(os.PRIO_PROCESS, 0),
        autogroup.read_text() if autogroup.exists() else "",
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )


@pytest.mark.training  # spawns a process that imports TensorFlow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sessions, autogroups")
def test_training_runs_niced_in_a_session_of_its_own_on_one_thread() -> None:
    with TrainingProcess() as process:
        pid, session, nice, autogroup, intra, inter = process.run(_where_it_runs, None)
    assert pid != os.getpid()
    # A session (so an autogroup) of its own: niced within the cloud's session only, it
    # would take an equal share from the cameras' and the gateway's sessions.
    assert session == pid != os.getsid(0)
    assert nice >= NICENESS
    if autogroup:  # "/autogroup-N nice 10" where the kernel has autogroups
        assert autogroup.split()[-1] == str(NICENESS), autogroup
    assert (intra, inter) == (1, 1)
    with pytest.raises(RuntimeError, match="not running"):
        process.run(_where_it_runs, None)
