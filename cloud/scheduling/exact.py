"""The exact optimum, used as the yardstick for every heuristic.

``solve_optimal`` writes the problem as a 0/1 integer program and hands it to HiGHS through
``scipy.optimize.milp``; ``solve_by_enumeration`` is a brute force for tiny instances that the
tests use to check the MILP itself.

Integer program: one binary ``x[j, i, k]`` per option that fits on an empty server, and

    maximise    sum x
    subject to  sum_{i,k} x[j, i, k]                       <= 1   for every task j
                sum_{j,k} x[j, i, k] * l_kj d_ij / c_i       <= 1   for every server i
                sum_{j,k} x[j, i, k] * d_ij r_kj / Q_j / (b_i - V) <= 1   for every server i

Server rows are normalised so HiGHS's absolute tolerances are relative ones. Options dominated on
the same server (another ``k`` needs no more capacity and no more bandwidth) are dropped: swapping
to the dominating ``k`` never breaks feasibility, so the optimum is unchanged and the model smaller.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.sparse

from cloud.scheduling.errors import InvalidProblemError
from cloud.scheduling.placement_state import PlacementState
from cloud.scheduling.problem import (
    UNPLACED,
    Assignment,
    BoolArray,
    IntArray,
    SchedulingProblem,
)

# HiGHS reports an objective bound that may sit a hair above an integer; never round that up.
_BOUND_EPSILON = 1e-6


@dataclass(frozen=True)
class OptimalResult:
    """What the MILP found within its time limit.

    ``upper_bound`` is proven: no placement deploys more tasks. When ``proven_optimal`` is False,
    ``lp_relaxation_bound`` holds the (floored) LP-relaxation bound, which needs no branching.
    """

    assignment: Assignment
    deployed_count: int
    upper_bound: int
    proven_optimal: bool
    lp_relaxation_bound: int | None
    solve_seconds: float
    variable_count: int
    message: str


def undominated_options(problem: SchedulingProblem) -> BoolArray:
    """Options possible on an empty server and not dominated by another split on that server."""
    capacity = problem.capacity_demand
    bandwidth = problem.bandwidth_demand
    possible = problem.option_possible
    keep = possible.copy()
    for k in range(problem.max_layers):
        # Split k is dominated by some k' that is no worse in both and strictly better in one;
        # among identical splits keep the smallest k.
        no_worse = (capacity <= capacity[:, :, k : k + 1]) & (
            bandwidth <= bandwidth[:, :, k : k + 1]
        )
        better = (capacity < capacity[:, :, k : k + 1]) | (bandwidth < bandwidth[:, :, k : k + 1])
        earlier_equal = np.zeros_like(no_worse)
        earlier_equal[:, :, :k] = True
        dominators = possible & no_worse & (better | earlier_equal)
        dominators[:, :, k] = False
        keep[:, :, k] &= ~dominators.any(axis=2)
    return keep


def placement_rows(
    problem: SchedulingProblem, tasks: IntArray, servers: IntArray, splits: IntArray
) -> scipy.sparse.csr_array:
    """The constraint rows of the placement LP/MILP, one column per candidate option
    ``(tasks[i], servers[i], splits[i])``: each task placed at most once, then each server's
    capacity and bandwidth demand as a fraction of its limit (rows of 1 are full)."""
    count = tasks.size
    capacity = problem.servers.capacity
    bandwidth = problem.servers.available_bandwidth
    cap_demand = problem.capacity_demand[tasks, servers, splits]
    bw_demand = problem.bandwidth_demand[tasks, servers, splits]
    # A zero limit only admits zero-demand options (option_possible); their coefficient is 0.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cap_row = np.where(cap_demand > 0, cap_demand / capacity[servers], 0.0)
        bw_row = np.where(bw_demand > 0, bw_demand / bandwidth[servers], 0.0)
    columns = np.arange(count)
    task_count, server_count = problem.task_count, problem.server_count
    return scipy.sparse.csr_array(
        (
            np.concatenate([np.ones(count), cap_row, bw_row]),
            (
                np.concatenate([tasks, task_count + servers, task_count + server_count + servers]),
                np.concatenate([columns, columns, columns]),
            ),
        ),
        shape=(task_count + 2 * server_count, count),
    )


def _build_model(
    problem: SchedulingProblem, options: BoolArray
) -> tuple[IntArray, IntArray, IntArray, scipy.sparse.csr_array, np.ndarray]:
    tasks, servers, splits = (axis.astype(np.int64) for axis in np.nonzero(options))
    matrix = placement_rows(problem, tasks, servers, splits)
    upper = np.ones(problem.task_count + 2 * problem.server_count)
    return tasks, servers, splits, matrix, upper


def _assignment_from_solution(
    problem: SchedulingProblem,
    tasks: IntArray,
    servers: IntArray,
    splits: IntArray,
    x: np.ndarray | None,
) -> Assignment:
    server = np.full(problem.task_count, UNPLACED, dtype=np.int64)
    split = np.zeros(problem.task_count, dtype=np.int64)
    if x is not None:
        chosen = np.flatnonzero(x > 0.5)
        server[tasks[chosen]] = servers[chosen]
        split[tasks[chosen]] = splits[chosen] + 1
    return Assignment(server, split)


def lp_relaxation_bound(problem: SchedulingProblem, time_limit: float = 60.0) -> int | None:
    """Floor of the LP-relaxation optimum (an upper bound on deployed tasks), None on time-out."""
    tasks, _, _, matrix, upper = _build_model(problem, undominated_options(problem))
    if tasks.size == 0:
        return 0
    result = scipy.optimize.linprog(
        -np.ones(tasks.size),
        A_ub=matrix,
        b_ub=upper,
        bounds=(0, 1),
        method="highs",
        options={"time_limit": time_limit},
    )
    if result.status != 0:
        return None
    return math.floor(-float(result.fun) + _BOUND_EPSILON)


@contextlib.contextmanager
def _native_stdout_silenced() -> Iterator[None]:
    """Point file descriptor 1 at /dev/null for the duration.

    HiGHS's MIP code prints stray debug lines ("HighsMipSolverData::...") with C stdio, past
    Python's ``sys.stdout``; they would corrupt JSON a caller prints. Not thread-safe: other
    threads' output to fd 1 is dropped meanwhile, so it is opt-in.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as devnull:
            os.dup2(devnull.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def solve_optimal(
    problem: SchedulingProblem,
    time_limit: float = 30.0,
    lp_time_limit: float = 30.0,
    silence_solver: bool = False,
) -> OptimalResult:
    """Maximum number of deployable tasks via HiGHS branch-and-cut, within ``time_limit`` seconds.

    Returns the best placement found (empty if HiGHS found none in time) with a proven upper
    bound. The solution is re-checked against the exact constraints: HiGHS's feasibility tolerance
    (1e-7 on normalised rows) lies inside ``problem.CHECK_TOLERANCE``.
    """
    start = time.perf_counter()
    options = undominated_options(problem)
    tasks, servers, splits, matrix, upper = _build_model(problem, options)
    count = int(tasks.size)
    if count == 0:
        return OptimalResult(
            Assignment.unplaced(problem.task_count), 0, 0, True, None, 0.0, 0, "nothing fits"
        )
    with _native_stdout_silenced() if silence_solver else contextlib.nullcontext():
        result = scipy.optimize.milp(
            -np.ones(count),
            integrality=np.ones(count),
            bounds=scipy.optimize.Bounds(0, 1),
            constraints=scipy.optimize.LinearConstraint(matrix, -np.inf, upper),
            # Gap 0: the objective is a count, so the default relative gap (1e-4) could stop one
            # task short of the optimum on 1000-task instances.
            options={"time_limit": time_limit, "mip_rel_gap": 0.0},
        )
    elapsed = time.perf_counter() - start
    x = None if result.x is None else np.asarray(result.x)
    assignment = _assignment_from_solution(problem, tasks, servers, splits, x)
    deployed = assignment.deployed_count
    dual_bound = getattr(result, "mip_dual_bound", None)
    if dual_bound is None or not math.isfinite(dual_bound):
        upper_bound = problem.task_count
    else:
        upper_bound = min(problem.task_count, math.floor(-float(dual_bound) + _BOUND_EPSILON))
    proven = result.status == 0 or deployed >= upper_bound
    lp_bound = None
    if proven:
        upper_bound = deployed
    else:
        lp_bound = lp_relaxation_bound(problem, lp_time_limit)
        if lp_bound is not None:
            upper_bound = min(upper_bound, lp_bound)
    return OptimalResult(
        assignment=assignment,
        deployed_count=deployed,
        upper_bound=upper_bound,
        proven_optimal=proven,
        lp_relaxation_bound=lp_bound,
        solve_seconds=elapsed,
        variable_count=count,
        message=str(result.message),
    )


def solve_by_enumeration(problem: SchedulingProblem, max_nodes: int = 2_000_000) -> Assignment:
    """Exhaustive depth-first search; only for tiny instances (the tests' ground truth).

    Every task is tried on every server with every split, plus "not deployed", pruning branches
    that cannot beat the best count found. Raises ``InvalidProblemError`` beyond ``max_nodes``.
    """
    state = PlacementState(problem)
    possible = problem.option_possible
    choices = [
        [(int(i), int(k) + 1) for i, k in zip(*np.nonzero(possible[j]), strict=True)]
        for j in range(problem.task_count)
    ]
    best = [state.to_assignment()]
    best_count = [0]
    nodes = [0]

    def search(task: int) -> None:
        nodes[0] += 1
        if nodes[0] > max_nodes:
            raise InvalidProblemError("problem", f"too large to enumerate ({max_nodes} nodes)")
        if state.deployed_count + (problem.task_count - task) <= best_count[0]:
            return
        if task == problem.task_count:
            best_count[0] = state.deployed_count
            best[0] = state.to_assignment()
            return
        for server, split in choices[task]:
            if state.fits(task, server, split):
                state.place(task, server, split)
                search(task + 1)
                state.remove(task)
        search(task + 1)

    search(0)
    return best[0]
