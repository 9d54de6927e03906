"""The cloud's training process: where every background training runs, one at a time.

Where it sits: ``edgelearn cloud`` starts one :class:`TrainingProcess` when it trains in the
background (the model grower's generations, :mod:`cloud.grower`; the continuous trainer's
runs, :mod:`cloud.trainer`). Jobs go to a process of its own, spawned (no copy of the
serving process's threads or TensorFlow state), in a session of its own and niced, so the
consumers' inference keeps its cores and its GIL: in-thread training took split:6's latency
p99 from tens of ms to 360 ms in bench drift. One worker: jobs run in the order they were
submitted, so the two trainers never train at once on two cores the stack needs.

Leaving the context stops the process; a job in progress is abandoned. Both trainers are a
:class:`BackgroundLoop`: a loop that sends its jobs here, run in a thread by its owner (the
cloud service: a named task of its TaskGroup).
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from cloud.lease import Lease

log = logging.getLogger(__name__)

Job = TypeVar("Job")
Result = TypeVar("Result")

NICENESS = 10


def _watch_parent(parent: int) -> None:
    """Exit as soon as ``parent`` is gone: a cloud killed with SIGKILL (a supervisor's last
    resort) must not leave its training running on the cores for minutes, orphaned. (Not
    ``PR_SET_PDEATHSIG``: that fires when the *thread* that spawned us ends, and the
    trainers share this process from threads of their own.)"""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _lower_priority() -> None:
    """A session of its own at nice 10, and TensorFlow on one thread: the process gets what
    the stack leaves of the cores, and two threads that wait on each other there trained 14%
    slower than one (measured beside the stack's cameras: 3.07 against 2.65 ms a crop). It
    ends with the process that started it.

    Why a session of its own: with autogroups (Linux's default) a nice value ranks a process
    only against the others of its session, here the cloud's, while the cameras and the
    gateway run in sessions of their own that the cloud's group, training included, took an
    equal share of the cores from. In a 5-camera ``edgelearn up``, putting the running
    training process below every session (``SCHED_IDLE``) took the capture-to-result p99
    from 163 to 77 ms (45 s windows, ``split:8``). ``SCHED_IDLE`` itself starves training on
    a host that is never idle; a group of its own niced to 10 gets about a tenth of what a
    busy session gets, and every idle cycle. (Without autogroups, ``os.nice`` does it.)"""
    parent = os.getppid()
    threading.Thread(target=_watch_parent, args=(parent,), name="parent", daemon=True).start()
    os.setsid()  # its own autogroup; _watch_parent ends it with the cloud
    with contextlib.suppress(OSError):  # no autogroups here: the nice value below does it
        Path("/proc/self/autogroup").write_text(str(NICENESS))
    os.nice(NICENESS)
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)


class TrainingProcess:
    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None

    def __enter__(self) -> TrainingProcess:
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_lower_priority,
        )
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop the process now; a job in progress raises in the thread waiting for it."""
        if self._pool is None:
            return
        processes = list(getattr(self._pool, "_processes", {}).values())
        self._pool.shutdown(wait=False, cancel_futures=True)
        for process in processes:
            process.terminate()
            process.join(10)
        self._pool = None

    def run(self, function: Callable[[Job], Result], job: Job) -> Result:
        """``function(job)`` in the training process (``function`` a module-level function,
        ``job`` picklable); blocks the calling thread until it returns or raises."""
        if self._pool is None:
            raise RuntimeError("the training process is not running")
        return self._pool.submit(function, job).result()


class BackgroundLoop:
    """A loop (:meth:`run_loop`) beside the consumers, whose jobs run in ``process`` (None:
    in the calling thread, for a caller driving the steps itself). Its owner runs it in a
    thread (it blocks: waits, judges, loads models) under the task name :attr:`name`, and
    stops it with :meth:`stop`; stopping ``process`` too abandons a job in progress, and the
    loop returns soon after."""

    name = "background"
    # With a store that cloud processes share, only the holder of this lease trains
    # (cloud.lease); the others poll it and take over when its holder is gone.
    lease: Lease | None = None
    LEASE_POLL = 5.0  # seconds between two tries of a lease another process holds

    def __init__(self, process: TrainingProcess | None) -> None:
        self._process = process
        self._stop = threading.Event()
        self._finished = threading.Event()

    def _may_train(self) -> bool:
        return self.lease is None or self.lease.hold()

    def _wait_for_lease(self) -> bool:
        """Until this process holds the lease (True), or the loop is stopped (False)."""
        while not self._may_train():
            if self._stop.wait(self.LEASE_POLL):
                return False
        return not self._stop.is_set()

    def run_loop(self) -> None:
        """The loop, until it is done or stopped; what escapes it is a bug, for the owner."""
        try:
            self._loop()
        finally:
            self._finished.set()

    def stop(self) -> None:
        """Start nothing more."""
        self._stop.set()

    def _loop(self) -> None:
        raise NotImplementedError

    def _every(self, seconds: float, step: Callable[[], object], what: str) -> None:
        """``step()`` every ``seconds`` until stopped; a step that fails is logged and the
        loop goes on (a failed run must not stop the trainer or the cloud)."""
        while not self._stop.wait(seconds):
            if not self._may_train():  # another cloud process trains
                continue
            try:
                step()
            except Exception:
                if self._stop.is_set():
                    return  # stopping: the abandoned job's process was stopped
                log.exception("%s step failed", what)

    def _run_job(self, function: Callable[[Job], Result], job: Job) -> Result:
        """``function(job)`` in the training process, or here when there is none."""
        return function(job) if self._process is None else self._process.run(function, job)
