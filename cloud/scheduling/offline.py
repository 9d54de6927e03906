"""Paper 003's offline layer scheduler and the fixed-``k`` baseline it is compared with (Fig. 4a).

Both place tasks one at a time, first-fit over the servers in index order, in the paper's order
(ascending largest input); they differ only in how many layers go to the edge.
"""

from __future__ import annotations

import numpy as np

from cloud.scheduling.errors import InvalidProblemError
from cloud.scheduling.placement_state import PlacementState
from cloud.scheduling.problem import Assignment, BoolArray, IntArray, SchedulingProblem


def paper_task_order(problem: SchedulingProblem) -> IntArray:
    """Tasks in ascending order of their largest input ``max_i d_ij`` (ties by index)."""
    largest_input = problem.input_rate.max(axis=1)
    order: IntArray = np.argsort(largest_input, kind="stable").astype(np.int64)
    return order


def preferred_split(problem: SchedulingProblem) -> IntArray:
    """The paper's ``k*`` per task (1-based): the split saving the most upload per unit compute.

    Reconstructed: the OCR reads "finds out k*, which maximizes the value of i - lk"; we read it as
    ``(1 - r_kj) / l_kj``, the fraction of the input no longer uploaded per FLOP spent on the edge.
    A split with ``l_kj = 0`` that reduces data is taken as infinitely good; if no split reduces
    data, the least-bad one (largest, i.e. least negative, value) is kept. Other readings we
    tried (minimum ``r_kj l_kj``, maximum ``1 - r_kj``, always ``k = 1``, always ``k = N_j``)
    deploy 5-15 % fewer tasks on the paper's settings, so this is also the charitable one.
    """
    tasks = problem.tasks
    saving = 1.0 - tasks.output_ratio
    flops = tasks.cumulative_flops
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        score = np.where(flops > 0, saving / flops, np.sign(saving) * np.inf)
    score = np.where(tasks.split_valid & ~np.isnan(score), score, -np.inf)
    # A task whose only splits score NaN/-inf still needs some k: fall back to k = 1.
    best: IntArray = (np.argmax(score, axis=1) + 1).astype(np.int64)
    return best


def nearest_fitting_split(fitting: BoolArray, preferred: int) -> int:
    """The fitting ``k`` closest to ``preferred``; on a tie the larger ``k`` (it uploads less)."""
    ks = np.flatnonzero(fitting) + 1
    distance = np.abs(ks - preferred) * 2 - (ks > preferred)
    return int(ks[np.argmin(distance)])


def solve_paper_offline(problem: SchedulingProblem) -> Assignment:
    """Paper 003's offline algorithm, as we read it.

    1. For every task compute ``k*`` (``preferred_split``) and its largest input ``max_i d_ij``.
    2. Visit tasks in ascending order of that largest input (small tasks first).
    3. For a task, traverse the servers in index order; on the first server where some split fits,
       deploy it with ``k*`` if ``k*`` fits there, otherwise with the fitting ``k`` nearest to
       ``k*`` ("if a server lacks capacity or bandwidth, change k").
    4. A task that fits nowhere with any ``k`` is not deployed.

    Complexity: ``O(T log T + T * M * K)`` time and ``O(M * K)`` extra memory for ``T`` tasks,
    ``M`` servers and at most ``K`` layers per task (the paper bounds it by ``O(|T| |E|^2 K)``;
    checking one server is ``O(K)`` here because each server keeps running totals).
    """
    state = PlacementState(problem)
    preferred = preferred_split(problem)
    for task in paper_task_order(problem):
        fitting = state.fitting_options(int(task))
        servers = np.flatnonzero(fitting.any(axis=1))
        if servers.size == 0:
            continue
        server = int(servers[0])
        split = nearest_fitting_split(fitting[server], int(preferred[task]))
        state.place(int(task), server, split)
    return state.to_assignment()


def solve_fixed_split(problem: SchedulingProblem, split_layer: int) -> Assignment:
    """Baseline "fixed mode": every task runs exactly its first ``split_layer`` layers at the edge.

    Same task order and first-fit over servers as ``solve_paper_offline``, with no choice of
    ``k``; a task with fewer layers runs whole on the edge (``k = N_j``). ``O(T log T + T * M)``.
    """
    if split_layer < 1:
        raise InvalidProblemError("split_layer", f"must be >= 1, got {split_layer}")
    state = PlacementState(problem)
    splits = np.minimum(split_layer, problem.tasks.layer_count)
    for task in paper_task_order(problem):
        k = int(splits[task])
        fitting = state.fitting_options(int(task))[:, k - 1]
        servers = np.flatnonzero(fitting)
        if servers.size:
            state.place(int(task), int(servers[0]), k)
    return state.to_assignment()
