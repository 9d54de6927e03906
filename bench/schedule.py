"""Benchmark of every scheduler against the optimum, the LP bound and each other.

``run(quick)`` returns a JSON-able dict:

* ``fig4a`` - deployed tasks per scheduler per server count on the paper's 1000-task settings,
  with the LP-relaxation bound (no placement can beat it) and each scheduler's gap to it;
* ``optimum_small`` - the MILP (HiGHS) cannot prove optimality for 1000 tasks in minutes, so the
  gap to the *proven* optimum is measured on smaller instances of the same shape;
* ``milp_1000_tasks`` (full run only) - what the MILP reaches on 1000 tasks x 90 servers within
  its time limit, to show why the small instances are needed;
* ``timing_1000x90`` - median solve time of each scheduler at the largest size, and whether ours
  meets the targets (under 1 s; within 2 % of the optimum, checked against the LP bound, which
  is stricter because the bound is at least the optimum);
* ``online`` - Fig. 4b: deployed tasks over 1000 arrivals on 50 servers, plus final counts over
  several seeds in the full run.

Timings are wall-clock on whatever machine runs this (the reference numbers came from 2 shared
cores); ``machine`` records the core count.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from cloud.scheduling.exact import lp_relaxation_bound, solve_optimal
from cloud.scheduling.improved import lp_upper_bound
from cloud.scheduling.problem import Assignment, SchedulingProblem, check_assignment
from cloud.scheduling.simulate import (
    SimulationSettings,
    draw_network,
    offline_solvers,
    run_arrival_sequence,
)
from edgelearn.metrics import machine_info

Solver = Callable[[SchedulingProblem], Assignment]

_TIME_TARGET_SECONDS = 1.0
_GAP_TARGET_PERCENT = 2.0


def _timed(solve: Solver, problem: SchedulingProblem, repeats: int) -> tuple[Assignment, float]:
    times = []
    assignment = Assignment.unplaced(problem.task_count)
    for _ in range(repeats):
        start = time.perf_counter()
        assignment = solve(problem)
        times.append(time.perf_counter() - start)
    check_assignment(problem, assignment)
    return assignment, statistics.median(times)


def _gap_percent(deployed: int, reference: int) -> float:
    return round(100.0 * (reference - deployed) / reference, 2) if reference > 0 else 0.0


def _fig4a(settings: SimulationSettings, cross_check_lp: bool) -> dict[str, Any]:
    network = draw_network(settings)
    solvers = offline_solvers()
    rows: dict[str, Any] = {}
    for server_count in settings.server_counts:
        problem = network.problem(server_count)
        start = time.perf_counter()
        bound = lp_upper_bound(problem)
        entry: dict[str, Any] = {
            "lp_bound": bound,
            "lp_bound_seconds": round(time.perf_counter() - start, 2),
            "deployed": {},
            "gap_to_lp_bound_pct": {},
            "seconds": {},
        }
        if cross_check_lp:
            start = time.perf_counter()
            entry["full_lp_bound"] = lp_relaxation_bound(problem, time_limit=300)
            entry["full_lp_seconds"] = round(time.perf_counter() - start, 2)
        for name, solve in solvers.items():
            assignment, seconds = _timed(solve, problem, 1)
            entry["deployed"][name] = assignment.deployed_count
            entry["seconds"][name] = round(seconds, 3)
            entry["gap_to_lp_bound_pct"][name] = _gap_percent(assignment.deployed_count, bound)
        fixed = [v for k, v in entry["deployed"].items() if k.startswith("fixed_k")]
        entry["best_fixed_k"] = max(fixed)
        rows[str(server_count)] = entry
    return {
        "tasks": settings.task_count,
        "seed": settings.seed,
        "note": "lp_bound = floor of the LP relaxation by column generation (lp_upper_bound); "
        "full_lp_bound, where present, is the same bound from one HiGHS LP over all options. "
        "No placement beats it, so gaps to it over-state the gap to the true optimum",
        "by_servers": rows,
    }


def _optimum_small(
    sizes: list[tuple[int, int]], seeds: list[int], time_limit: float
) -> list[dict[str, Any]]:
    results = []
    for tasks, servers in sizes:
        for seed in seeds:
            settings = SimulationSettings(
                task_count=tasks, server_counts=(servers,), online_server_count=servers, seed=seed
            )
            problem = draw_network(settings).problem(servers)
            optimum = solve_optimal(problem, time_limit=time_limit, silence_solver=True)
            check_assignment(problem, optimum.assignment)
            reference = optimum.upper_bound
            entry: dict[str, Any] = {
                "tasks": tasks,
                "servers": servers,
                "seed": seed,
                "milp_deployed": optimum.deployed_count,
                "milp_proven_optimal": optimum.proven_optimal,
                "milp_upper_bound": optimum.upper_bound,
                "milp_lp_relaxation_bound": optimum.lp_relaxation_bound,
                "milp_seconds": round(optimum.solve_seconds, 2),
                "deployed": {},
                # Gap to the MILP's proven upper bound: the optimum itself when proven optimal.
                "gap_to_milp_bound_pct": {},
            }
            for name, solve in offline_solvers().items():
                assignment, _ = _timed(solve, problem, 1)
                entry["deployed"][name] = assignment.deployed_count
                entry["gap_to_milp_bound_pct"][name] = _gap_percent(
                    assignment.deployed_count, reference
                )
            # A heuristic above a proven bound would mean a bug in the bound or the checker.
            entry["above_bound"] = [
                name for name, count in entry["deployed"].items() if count > reference
            ]
            results.append(entry)
    return results


def _timing(settings: SimulationSettings, repeats: int) -> dict[str, Any]:
    server_count = max(settings.server_counts)
    problem = draw_network(settings).problem(server_count)
    start = time.perf_counter()
    bound = lp_upper_bound(problem)
    timing: dict[str, Any] = {
        "tasks": settings.task_count,
        "servers": server_count,
        "lp_bound": bound,
        "lp_bound_seconds": round(time.perf_counter() - start, 2),
        "repeats": repeats,
        "median_seconds": {},
        "deployed": {},
    }
    for name, solve in offline_solvers().items():
        assignment, seconds = _timed(solve, problem, repeats)
        timing["median_seconds"][name] = round(seconds, 3)
        timing["deployed"][name] = assignment.deployed_count
    targets = {}
    for name in ("lp_guided", "balanced_greedy"):
        gap = _gap_percent(timing["deployed"][name], bound)
        targets[name] = {
            "under_1s": timing["median_seconds"][name] < _TIME_TARGET_SECONDS,
            "gap_to_lp_bound_pct": gap,
            # The bound is at least the optimum, so this is sufficient, not necessary.
            "within_2pct_of_optimum_proven": gap <= _GAP_TARGET_PERCENT,
        }
    timing["targets"] = targets
    return timing


def _ahead_from(ours: np.ndarray, rival: np.ndarray) -> int | None:
    """1-based arrival from which ``ours`` stays strictly ahead to the end; None if never."""
    not_ahead = np.flatnonzero(ours <= rival)
    if not_ahead.size == 0:
        return 1
    last = int(not_ahead[-1])
    return None if last == ours.size - 1 else last + 2


def _online(settings: SimulationSettings, extra_seeds: list[int]) -> dict[str, Any]:
    results = run_arrival_sequence(draw_network(settings))
    checkpoints = list(range(99, settings.task_count, 100))
    online: dict[str, Any] = {
        "servers": settings.online_server_count,
        "tasks": settings.task_count,
        "seed": settings.seed,
        "deployed_at_arrivals": {
            "arrivals": [n + 1 for n in checkpoints],
            **{
                name: [int(r.deployed_after_arrival[n]) for n in checkpoints]
                for name, r in results.items()
            },
        },
        "final": {name: int(r.deployed_after_arrival[-1]) for name, r in results.items()},
        "evictions": {name: r.evictions for name, r in results.items()},
    }
    ours = results["online_threshold"].deployed_after_arrival
    for rival in ("fifo", "lbf"):
        online[f"ahead_of_{rival}_from_arrival"] = _ahead_from(
            ours, results[rival].deployed_after_arrival
        )
    if extra_seeds:
        finals = []
        for seed in extra_seeds:
            seeded = dataclasses.replace(settings, seed=seed)
            outcome = run_arrival_sequence(draw_network(seeded))
            finals.append(
                {"seed": seed, **{n: int(r.deployed_after_arrival[-1]) for n, r in outcome.items()}}
            )
        online["final_over_seeds"] = finals
    return online


def _milp_large(settings: SimulationSettings, time_limit: float) -> dict[str, Any]:
    server_count = max(settings.server_counts)
    problem = draw_network(settings).problem(server_count)
    optimum = solve_optimal(
        problem, time_limit=time_limit, lp_time_limit=time_limit, silence_solver=True
    )
    check_assignment(problem, optimum.assignment)
    return {
        "tasks": settings.task_count,
        "servers": server_count,
        "time_limit_s": time_limit,
        "proven_optimal": optimum.proven_optimal,
        "best_found": optimum.deployed_count,
        "upper_bound": optimum.upper_bound,
        "lp_relaxation_bound": optimum.lp_relaxation_bound,
        "variables": optimum.variable_count,
        "seconds": round(optimum.solve_seconds, 1),
        "message": optimum.message,
    }


def run(quick: bool) -> dict[str, Any]:
    """Benchmark; ``quick`` fits in about a minute on 2 cores, the full run in a few minutes."""
    started = time.perf_counter()
    settings = SimulationSettings()
    report: dict[str, Any] = {
        "quick": quick,
        "machine": machine_info(),
        "instance": {
            "tasks": settings.task_count,
            "server_capacity_flops": settings.server_capacity,
            "frame_size_bytes": list(settings.frame_size_range),
            "frame_rate_fps": list(settings.frame_rate_range),
            "uplink_bytes_per_s": list(settings.bandwidth_range),
            "reserve_bytes_per_s": settings.reserve,
            "latency_bound_s": settings.latency_bound,
        },
    }
    if quick:
        sweep = SimulationSettings(server_counts=(20, 50, 90))
        report["fig4a"] = _fig4a(sweep, cross_check_lp=False)
        report["optimum_small"] = _optimum_small([(60, 3), (100, 5)], [1, 2], time_limit=20)
        report["timing_1000x90"] = _timing(sweep, repeats=1)
        report["online"] = _online(settings, extra_seeds=[])
    else:
        report["fig4a"] = _fig4a(settings, cross_check_lp=True)
        report["optimum_small"] = _optimum_small(
            [(60, 3), (100, 5), (150, 7)], [1, 2, 3], time_limit=60
        )
        report["timing_1000x90"] = _timing(settings, repeats=3)
        report["online"] = _online(settings, extra_seeds=[1, 2, 3, 4, 5])
        report["milp_1000_tasks"] = _milp_large(settings, time_limit=60)
    report["optimum_small_note"] = (
        "MILP proves optimality only up to ~150 tasks within a minute; gaps to the proven "
        "optimum are measured there (same generator and shape, fewer tasks and servers)"
    )
    report["total_seconds"] = round(time.perf_counter() - started, 1)
    return report
