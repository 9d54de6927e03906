"""The cloud's training process: a process of its own, below everything the stack serves."""

from __future__ import annotations

import os
import sys

import pytest

from cloud.background import TrainingProcess


def _where_it_runs(_: None) -> tuple[int, int, int, int]:
    import tensorflow as tf

    return (
        os.getpid(),
        os.sched_getscheduler(0),
        tf.config.threading.get_intra_op_parallelism_threads(),
        tf.config.threading.get_inter_op_parallelism_threads(),
    )


@pytest.mark.training  # spawns a process that imports TensorFlow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="SCHED_IDLE is Linux's")
def test_training_runs_in_another_process_at_idle_priority_on_one_thread() -> None:
    with TrainingProcess() as process:
        pid, policy, intra, inter = process.run(_where_it_runs, None)
    assert pid != os.getpid()
    # Idle, not only niced: a nice value ranks it only within the cloud's own session
    # (autogroup), and the cameras' and gateway's sessions would lose cores to it.
    assert policy == os.SCHED_IDLE
    assert (intra, inter) == (1, 1)
    with pytest.raises(RuntimeError, match="not running"):
        process.run(_where_it_runs, None)
