"""Our offline schedulers, built to beat paper 003's offline algorithm, and a fast LP bound.

Why the paper's algorithm leaves tasks out: it visits tasks by input size rather than by what they
cost with their best split, it takes a split that saves the most upload per FLOP regardless of
what the server has left, and it packs servers first-fit. Servers then run out of one resource
while the other idles, and the network ends up holding the wrong tasks. Two remedies, in
increasing strength and run time:

``solve_balanced_greedy`` (no LP; ~0.2 s for 1000 tasks x 90 servers on 2 shared cores)
    1. *Order by priced size.* A task's size is its cheapest option's
       ``capacity share + ratio * bandwidth share`` (shares of that server's limits); cheapest
       tasks go first, which is what maximises a count. Two ``ratio`` values are tried and the
       better result kept.
    2. *Balanced placement.* Each task takes the fitting (server, split) minimising
       ``capacity share / capacity left + bandwidth share / bandwidth left``: the server and split
       that lean on whichever resource that server has more of, so both run out together.
    3. *Relocate-and-insert.* For every task still out, find one deployed task whose removal
       makes room and that fits on another server (any split); move it, insert the new one.

``solve_lp_guided`` (LP diving; ~1 s; within 2 % of the LP bound on the paper's settings)
    1. Solve the LP relaxation of the integer program in ``exact`` over a window of columns: the
       options priced within 5 % of the task's cheapest under one global price per FLOP/s and
       per byte/s (``pooled_price``). On the paper's settings the LP's bandwidth duals are
       proportional to each uplink and its capacity duals nearly equal, i.e. prices really are
       global, so the optimal columns lie in that window; it is ~5 % of all options.
    2. Fix every task the LP places with weight >= ``fix_threshold``, shrink the servers by what
       they took, re-solve the LP for the rest over a wider (30 %) window, repeat.
    3. Finish with the balanced fill and relocate-and-insert; also run the balanced greedy and
       keep the better placement (it wins on small instances where rounding strands capacity).
    The first LP's duals price *every* option, which gives a valid upper bound on the optimum
    for free (``lagrangian_bound``).

``lp_upper_bound`` turns the same pricing into column generation and returns the floor of the
full LP relaxation in about a second, instead of ~12 s for one LP over all 900k options.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import scipy.optimize
import scipy.sparse

from cloud.scheduling.exact import placement_rows
from cloud.scheduling.placement_state import PlacementState
from cloud.scheduling.problem import (
    UNPLACED,
    Assignment,
    BoolArray,
    FloatArray,
    IntArray,
    SchedulingProblem,
)

DEFAULT_PRICE_RATIOS = (0.3, 1.0)
"""Bandwidth-versus-capacity weights tried by the greedy ordering. Any value in 0.2-1 works on the
paper's settings; two of them cover instances where bandwidth, not capacity, binds."""

DEFAULT_WINDOW_RATIOS = (0.2, 0.6)
"""Global bandwidth-versus-capacity price ratios whose near-cheapest options form the LP window;
the LP duals on the paper's settings sit between them (about 0.4)."""

# Windows are relative to a task's cheapest priced option; fractions of 1.
_FIRST_WINDOW = 0.05
_LATER_WINDOW = 0.3
_INTEGRAL = 1 - 1e-7
_MAX_RELOCATION_CANDIDATES = 64


def resource_shares(problem: SchedulingProblem) -> tuple[FloatArray, FloatArray]:
    """Each option's share of its server's capacity and of its available bandwidth.

    ``inf`` for options that do not fit an empty server; 0 for zero demand (also on a server
    whose limit is 0, where only zero-demand options are possible).
    """
    capacity = problem.servers.capacity[None, :, None]
    bandwidth = problem.servers.available_bandwidth[None, :, None]
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        cap_share = np.where(problem.capacity_demand > 0, problem.capacity_demand / capacity, 0.0)
        bw_share = np.where(problem.bandwidth_demand > 0, problem.bandwidth_demand / bandwidth, 0.0)
    possible = problem.option_possible
    return np.where(possible, cap_share, np.inf), np.where(possible, bw_share, np.inf)


def priced_size(cap_share: FloatArray, bw_share: FloatArray, ratio: float) -> FloatArray:
    """``capacity share + ratio * bandwidth share`` of each task's cheapest option (inf: none)."""
    cost = cap_share + ratio * bw_share
    sizes: FloatArray = cost.reshape(cost.shape[0], -1).min(axis=1)
    return sizes


def _left_share(used: FloatArray, limit: FloatArray) -> FloatArray:
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        left = np.where(limit > 0, 1.0 - used / limit, 1.0)
    # A full server keeps a tiny positive denominator: its options are masked as non-fitting
    # anyway, and this avoids dividing by zero for the ones that are.
    return np.maximum(left, 1e-12)


def _place_balanced(
    state: PlacementState, task: int, cap_share: FloatArray, bw_share: FloatArray
) -> bool:
    fitting = state.fitting_options(task)
    if not fitting.any():
        return False
    problem = state.problem
    cap_left = _left_share(state.capacity_used, problem.servers.capacity)[:, None]
    bw_left = _left_share(state.bandwidth_used, problem.servers.available_bandwidth)[:, None]
    score = (cap_share[task] / cap_left + bw_share[task] / bw_left).ravel()
    candidates = np.flatnonzero(fitting.ravel())
    best = int(candidates[np.argmin(score[candidates])])
    server, split_index = divmod(best, problem.max_layers)
    state.place(task, server, split_index + 1)
    return True


def _fill_balanced(
    state: PlacementState, order: IntArray, cap_share: FloatArray, bw_share: FloatArray
) -> None:
    for task in order:
        if state.server[task] == UNPLACED:
            _place_balanced(state, int(task), cap_share, bw_share)


def _relocate_and_insert(
    state: PlacementState, task: int, cap_share: FloatArray, bw_share: FloatArray
) -> bool:
    """Insert ``task`` by moving one deployed task to another server; True if it worked."""
    problem = state.problem
    cap_demand = problem.capacity_demand
    bw_demand = problem.bandwidth_demand
    free_cap = state.capacity_limit - state.capacity_used
    free_bw = state.bandwidth_limit - state.bandwidth_used
    placed = np.flatnonzero(state.server != UNPLACED)
    if placed.size == 0:
        return False
    hosts = state.server[placed]
    splits = state.split_layer[placed] - 1
    own_cap = cap_demand[placed, hosts, splits]
    own_bw = bw_demand[placed, hosts, splits]
    # Would `task` fit on t's server if t left? (placed x splits)
    fits_after = (cap_demand[task][hosts] - free_cap[hosts, None] <= own_cap[:, None]) & (
        bw_demand[task][hosts] - free_bw[hosts, None] <= own_bw[:, None]
    )
    candidates = np.flatnonzero(fits_after.any(axis=1))[:_MAX_RELOCATION_CANDIDATES]
    if candidates.size == 0:
        return False
    movers = placed[candidates]
    # Can t go to another server as things stand? (candidates x servers x splits)
    movable = (cap_demand[movers] <= free_cap[None, :, None]) & (
        bw_demand[movers] <= free_bw[None, :, None]
    )
    movable[np.arange(candidates.size), hosts[candidates], :] = False
    for c in np.flatnonzero(movable.reshape(candidates.size, -1).any(axis=1)):
        mover = int(movers[c])
        source = int(hosts[candidates[c]])
        old_split = int(state.split_layer[mover])
        score = np.where(movable[c], cap_share[mover] + bw_share[mover], np.inf)
        target, target_index = divmod(int(np.argmin(score)), problem.max_layers)
        state.remove(mover)
        # Re-check with the state's own arithmetic: the vectorised test above used differences
        # of floats and may disagree in the last bit.
        if state.fits(mover, target, target_index + 1):
            state.place(mover, target, target_index + 1)
            splits_here = [
                k for k in range(1, problem.max_layers + 1) if state.fits(task, source, k)
            ]
            if splits_here:
                best = min(splits_here, key=lambda k: cap_share[task, source, k - 1])
                state.place(task, source, best)
                return True
            state.remove(mover)
        state.place(mover, source, old_split)
    return False


def improve_by_relocation(
    state: PlacementState,
    order: IntArray,
    cap_share: FloatArray,
    bw_share: FloatArray,
    max_rounds: int = 5,
) -> int:
    """Local search: insert unplaced tasks (in ``order``) directly or by moving one other task.

    Repeats until a round inserts nothing; returns how many tasks were added.
    """
    added = 0
    for _ in range(max_rounds):
        round_added = 0
        for task in order:
            task_index = int(task)
            if state.server[task_index] != UNPLACED:
                continue
            if _place_balanced(state, task_index, cap_share, bw_share) or _relocate_and_insert(
                state, task_index, cap_share, bw_share
            ):
                round_added += 1
        added += round_added
        if round_added == 0:
            break
    return added


def _greedy_order(
    problem: SchedulingProblem, cap_share: FloatArray, bw_share: FloatArray, ratio: float
) -> IntArray:
    sizes = priced_size(cap_share, bw_share, ratio)
    order = np.argsort(sizes, kind="stable")
    order = order[np.isfinite(sizes[order])]
    return order.astype(np.int64)


def _best_greedy(
    problem: SchedulingProblem,
    cap_share: FloatArray,
    bw_share: FloatArray,
    price_ratios: tuple[float, ...],
) -> Assignment:
    best = Assignment.unplaced(problem.task_count)
    for ratio in price_ratios:
        order = _greedy_order(problem, cap_share, bw_share, ratio)
        state = PlacementState(problem)
        _fill_balanced(state, order, cap_share, bw_share)
        improve_by_relocation(state, order, cap_share, bw_share)
        if state.deployed_count > best.deployed_count:
            best = state.to_assignment()
    return best


def solve_balanced_greedy(
    problem: SchedulingProblem, price_ratios: tuple[float, ...] = DEFAULT_PRICE_RATIOS
) -> Assignment:
    """Priced ordering + balanced placement + relocate-and-insert; best over ``price_ratios``.

    ``O(R (T log T + T M K) + L)`` for ``R`` ratios, where ``L``, the local search, is
    ``O(U (P K + C M K))`` per round for ``U`` unplaced tasks, ``P`` placed tasks and at most
    ``C = 64`` relocation candidates.
    """
    cap_share, bw_share = resource_shares(problem)
    return _best_greedy(problem, cap_share, bw_share, price_ratios)


@dataclass(frozen=True)
class GuidedResult:
    """``solve_lp_guided``'s placement and the upper bound its first LP proves."""

    assignment: Assignment
    upper_bound: int
    lp_rounds: int


def pooled_price(problem: SchedulingProblem, ratio: float) -> FloatArray:
    """Each option's cost at one capacity price and one bandwidth price for the whole network.

    ``capacity demand / mean capacity + ratio * bandwidth demand / mean available bandwidth``;
    ``inf`` for options that fit no empty server. Uniform prices per FLOP/s and per byte/s are
    what the LP duals look like on the paper's settings (bandwidth duals proportional to each
    uplink, capacity duals within a few percent of each other).
    """
    mean_capacity = float(problem.servers.capacity.mean()) or 1.0
    mean_bandwidth = float(problem.servers.available_bandwidth.mean()) or 1.0
    with np.errstate(over="ignore", invalid="ignore"):
        cost = (
            problem.capacity_demand / mean_capacity
            + ratio * problem.bandwidth_demand / mean_bandwidth
        )
    priced: FloatArray = np.where(problem.option_possible, cost, np.inf)
    return priced


def _column_windows(
    problem: SchedulingProblem,
    options: BoolArray,
    widths: tuple[float, ...],
    ratios: tuple[float, ...],
) -> list[BoolArray]:
    """For each width, the options priced within it (a fraction) of their task's cheapest
    under any of ``ratios``."""
    windows = [np.zeros_like(options) for _ in widths]
    for ratio in ratios:
        cost = np.where(options, pooled_price(problem, ratio), np.inf)
        cheapest = cost.reshape(cost.shape[0], -1).min(axis=1)[:, None, None]
        for window, width in zip(windows, widths, strict=True):
            window |= cost <= cheapest * (1 + width)
    return [window & options for window in windows]


def _solve_residual_lp(
    state: PlacementState, columns: BoolArray, method: str
) -> tuple[FloatArray, IntArray, IntArray, IntArray, FloatArray] | None:
    """LP relaxation for the unplaced tasks on what the servers have left.

    Returns (x, task, server, split index, duals) or None if there is nothing to solve.
    """
    problem = state.problem
    free_cap = np.maximum(state.capacity_limit - state.capacity_used, 0.0)
    free_bw = np.maximum(state.bandwidth_limit - state.bandwidth_used, 0.0)
    # Mask only the rows of unplaced tasks: later rounds touch a small fraction of the array.
    waiting = np.flatnonzero(state.server == UNPLACED)
    usable = (
        columns[waiting]
        & (problem.capacity_demand[waiting] <= free_cap[None, :, None])
        & (problem.bandwidth_demand[waiting] <= free_bw[None, :, None])
    )
    rows, servers, splits = (axis.astype(np.int64) for axis in np.nonzero(usable))
    tasks = waiting[rows]
    count = tasks.size
    if count == 0:
        return None
    capacity = problem.servers.capacity
    bandwidth = problem.servers.available_bandwidth
    with np.errstate(divide="ignore", invalid="ignore"):
        cap_rhs = np.where(capacity > 0, free_cap / capacity, 0.0)
        bw_rhs = np.where(bandwidth > 0, free_bw / bandwidth, 0.0)
    matrix = placement_rows(problem, tasks, servers, splits)
    upper = np.concatenate([np.ones(problem.task_count), cap_rhs, bw_rhs])
    result = scipy.optimize.linprog(
        -np.ones(count), A_ub=matrix, b_ub=upper, bounds=(0, 1), method=method
    )
    if result.status != 0 or result.x is None:
        return None
    duals = np.maximum(-np.asarray(result.ineqlin.marginals, dtype=np.float64), 0.0)
    return np.asarray(result.x, dtype=np.float64), tasks, servers, splits, duals


def lagrangian_bound(
    problem: SchedulingProblem,
    cap_share: FloatArray,
    bw_share: FloatArray,
    server_duals: FloatArray,
) -> float:
    """Upper bound on deployable tasks from server prices (any non-negative prices work).

    With capacity prices ``p_i`` and bandwidth prices ``q_i``, every task is worth at most
    ``max(0, 1 - min_option(p_i a + q_i g))`` beyond what it pays, and the servers can be "sold"
    for ``sum(p_i + q_i)``: the LP dual objective at those prices, valid over *all* options.
    """
    server_count = problem.server_count
    capacity_price = server_duals[:server_count][None, :, None]
    bandwidth_price = server_duals[server_count:][None, :, None]
    with np.errstate(invalid="ignore", over="ignore"):
        cost = capacity_price * cap_share + bandwidth_price * bw_share
    cost = np.where(problem.option_possible, cost, np.inf)
    profit = np.maximum(0.0, 1.0 - cost.reshape(problem.task_count, -1).min(axis=1))
    return float(profit.sum() + server_duals.sum())


def solve_lp_guided(
    problem: SchedulingProblem,
    price_ratios: tuple[float, ...] = DEFAULT_PRICE_RATIOS,
    window_ratios: tuple[float, ...] = DEFAULT_WINDOW_RATIOS,
    first_window: float = _FIRST_WINDOW,
    later_window: float = _LATER_WINDOW,
    fix_threshold: float = 0.9,
    max_rounds: int = 12,
) -> GuidedResult:
    """LP diving over priced column windows, then the balanced greedy fill and local search.

    Each round is one HiGHS LP over at most ``T * M * K`` columns (in practice ~5 % of them
    first, ~30 % later); rounds stop when one fixes nothing. See the module docstring.
    """
    cap_share, bw_share = resource_shares(problem)
    # Dominated options are left in: they are priced no better than what dominates them, so few
    # enter a window, and the LP ignores them anyway; filtering would cost more than it saves.
    first, later = _column_windows(
        problem, problem.option_possible, (first_window, later_window), window_ratios
    )
    state = PlacementState(problem)
    upper_bound = problem.task_count
    rounds = 0
    for round_index in range(max_rounds):
        # The first LP is the big one; HiGHS's interior point (with crossover, so the solution is
        # still a vertex) solves it ~40 % faster than simplex; the small later ones suit simplex.
        solved = (
            _solve_residual_lp(state, first, "highs-ipm")
            if round_index == 0
            else _solve_residual_lp(state, later, "highs-ds")
        )
        if solved is None:
            break
        rounds += 1
        x, tasks, servers, splits, duals = solved
        if round_index == 0:
            bound = lagrangian_bound(problem, cap_share, bw_share, duals[problem.task_count :])
            upper_bound = min(upper_bound, math.floor(bound + 1e-6))
        fixed = 0
        for column in np.argsort(-x, kind="stable"):
            if x[column] < min(fix_threshold, _INTEGRAL):
                break
            task = int(tasks[column])
            server = int(servers[column])
            split = int(splits[column]) + 1
            if state.server[task] == UNPLACED and state.fits(task, server, split):
                state.place(task, server, split)
                fixed += 1
        if fixed == 0:
            break
    order = _greedy_order(problem, cap_share, bw_share, price_ratios[0])
    _fill_balanced(state, order, cap_share, bw_share)
    improve_by_relocation(state, order, cap_share, bw_share)
    assignment = state.to_assignment()
    # With few servers, rounding the LP can strand more capacity than greedy packing does
    # (e.g. 78 vs 79 of an optimal 81 on 100 tasks x 5 servers); the greedy costs a fraction of
    # the LP, so run it too and keep the better placement.
    greedy = _best_greedy(problem, cap_share, bw_share, price_ratios[:1])
    if greedy.deployed_count > assignment.deployed_count:
        assignment = greedy
    return GuidedResult(assignment, max(upper_bound, assignment.deployed_count), rounds)


def lp_upper_bound(
    problem: SchedulingProblem,
    window_ratios: tuple[float, ...] = DEFAULT_WINDOW_RATIOS,
    max_rounds: int = 6,
) -> int:
    """Floor of the LP-relaxation bound, by column generation instead of one huge LP.

    Solves the LP over the first column window, prices *every* option with its duals (which
    gives a valid upper bound, ``lagrangian_bound``), adds the options that price out
    profitably and repeats until the bound's floor meets the restricted LP's value. On the
    paper's settings one or two rounds suffice: ~1 s instead of ~12 s for the full LP at
    1000 tasks x 90 servers. Never below the true optimum, whatever ``max_rounds``.
    """
    if not problem.option_possible.any():
        return 0
    cap_share, bw_share = resource_shares(problem)
    options = problem.option_possible
    (columns,) = _column_windows(problem, options, (_FIRST_WINDOW,), window_ratios)
    empty = PlacementState(problem)
    best = float(problem.task_count)
    task_count = problem.task_count
    server_count = problem.server_count
    for _ in range(max_rounds):
        solved = _solve_residual_lp(empty, columns, "highs-ipm")
        if solved is None:
            break
        x, _, _, _, duals = solved
        best = min(best, lagrangian_bound(problem, cap_share, bw_share, duals[task_count:]))
        if math.floor(best + 1e-6) <= math.floor(float(x.sum()) + 1e-6):
            break
        capacity_price = duals[task_count : task_count + server_count][None, :, None]
        bandwidth_price = duals[task_count + server_count :][None, :, None]
        with np.errstate(invalid="ignore", over="ignore"):
            reduced = (
                1.0
                - duals[:task_count][:, None, None]
                - capacity_price * cap_share
                - bandwidth_price * bw_share
            )
        profitable = options & ~columns & (reduced > 1e-9)
        if not profitable.any():
            break
        columns |= profitable
    return min(task_count, math.floor(best + 1e-6))
