"""Layer-placement scheduler: problem model, checker, every solver's feasibility, exactness."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from cloud.scheduling.errors import InfeasibleAssignmentError, InvalidProblemError
from cloud.scheduling.exact import (
    lp_relaxation_bound,
    solve_by_enumeration,
    solve_optimal,
    undominated_options,
)
from cloud.scheduling.improved import lp_upper_bound, solve_balanced_greedy, solve_lp_guided
from cloud.scheduling.offline import preferred_split, solve_fixed_split, solve_paper_offline
from cloud.scheduling.online import (
    density_bounds,
    solve_fifo,
    solve_lbf,
    solve_online_threshold,
    threshold,
)
from cloud.scheduling.problem import (
    UNPLACED,
    Assignment,
    DeepLearningTasks,
    EdgeServers,
    SchedulingProblem,
    check_assignment,
    find_violations,
    server_loads,
)

# --- helpers ---------------------------------------------------------------------------------


def random_problem(
    rng: np.random.Generator, tasks: int, servers: int, max_layers: int, load: float = 2.0
) -> SchedulingProblem:
    """A small instance where capacity and bandwidth both bind (about ``load`` x oversubscribed).

    Ratios fall with depth while compute grows, the trade-off the real CNN profiles show.
    """
    layers = rng.integers(1, max_layers + 1, size=tasks)
    ratios = [np.sort(rng.uniform(0.05, 1.5, size=n))[::-1] for n in layers]
    flops = [np.cumsum(rng.uniform(0.2, 1.0, size=n)) for n in layers]
    task_model = DeepLearningTasks.from_layer_profiles(ratios, flops, rng.uniform(0.5, 1.0, tasks))
    rate = rng.uniform(0.5, 1.5, size=(tasks, servers))
    # Size servers so that the tasks' mid-depth demands oversubscribe them by `load`.
    typical_cap = float(np.mean([f[len(f) // 2] for f in flops])) * tasks / servers / load
    typical_bw = float(np.mean([r[len(r) // 2] for r in ratios])) * 1.5 * tasks / servers / load
    reserve = 0.1
    return SchedulingProblem(
        EdgeServers(
            rng.uniform(0.5, 1.5, servers) * typical_cap,
            reserve + rng.uniform(0.5, 1.5, servers) * typical_bw,
            reserve,
        ),
        task_model,
        rate,
    )


def heuristics(problem: SchedulingProblem, order: np.ndarray) -> dict[str, Assignment]:
    solutions = {
        "paper_offline": solve_paper_offline(problem),
        "balanced_greedy": solve_balanced_greedy(problem),
        "lp_guided": solve_lp_guided(problem).assignment,
        "online_threshold": solve_online_threshold(problem, order).assignment,
        "fifo": solve_fifo(problem, order).assignment,
        "lbf": solve_lbf(problem, order).assignment,
    }
    for k in range(1, problem.max_layers + 1):
        solutions[f"fixed_k{k}"] = solve_fixed_split(problem, k)
    return solutions


# --- the model -------------------------------------------------------------------------------


def small_problem() -> SchedulingProblem:
    tasks = DeepLearningTasks.from_layer_profiles(
        [[0.5, 0.1], [0.8]], [[2.0, 10.0], [1.0]], latency_bound=[0.5, 0.25]
    )
    servers = EdgeServers(np.array([10.0, 4.0]), np.array([3.0, 2.0]), reserve=1.0)
    return SchedulingProblem(servers, tasks, np.array([[1.0, 2.0], [0.5, 1.0]]))


def test_demands_follow_the_paper_formulas() -> None:
    problem = small_problem()
    # capacity l_kj * d_ij; bandwidth d_ij * r_kj / Q_j; missing layers never fit.
    assert problem.capacity_demand[0, 1, 1] == pytest.approx(10.0 * 2.0)
    assert problem.bandwidth_demand[0, 1, 0] == pytest.approx(2.0 * 0.5 / 0.5)
    assert problem.bandwidth_demand[1, 0, 0] == pytest.approx(0.5 * 0.8 / 0.25)
    assert math.isinf(problem.capacity_demand[1, 0, 1])
    assert list(problem.servers.available_bandwidth) == [2.0, 1.0]
    assert problem.option_possible[0, 0, 0] and not problem.option_possible[0, 1, 1]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"capacity": [-1.0, 4.0]}, "capacity"),
        ({"bandwidth": [3.0, 0.5]}, "bandwidth"),  # below the reserve
        ({"capacity": [np.nan, 4.0]}, "capacity"),
        ({"capacity": [1.0]}, "bandwidth"),
    ],
)
def test_servers_reject_bad_arrays(change: dict[str, list[float]], field: str) -> None:
    arguments = {"capacity": [10.0, 4.0], "bandwidth": [3.0, 2.0], **change}
    with pytest.raises(InvalidProblemError) as caught:
        EdgeServers(np.array(arguments["capacity"]), np.array(arguments["bandwidth"]), 1.0)
    assert caught.value.field == field


def test_tasks_reject_decreasing_compute_and_bad_ratios() -> None:
    with pytest.raises(InvalidProblemError, match="non-decreasing"):
        DeepLearningTasks.from_layer_profiles([[0.5, 0.2]], [[3.0, 2.0]], 0.2)
    with pytest.raises(InvalidProblemError, match="positive"):
        DeepLearningTasks.from_layer_profiles([[0.0]], [[1.0]], 0.2)
    with pytest.raises(InvalidProblemError, match="latency_bound"):
        DeepLearningTasks.from_layer_profiles([[0.5]], [[1.0]], 0.0)


def test_problem_rejects_mismatched_input_rate() -> None:
    problem = small_problem()
    with pytest.raises(InvalidProblemError) as caught:
        SchedulingProblem(problem.servers, problem.tasks, np.ones((2, 3)))
    assert caught.value.field == "input_rate"


def test_arrays_are_read_only() -> None:
    problem = small_problem()
    with pytest.raises(ValueError):
        problem.input_rate[0, 0] = 5.0
    with pytest.raises(ValueError):
        problem.capacity_demand[0, 0, 0] = 5.0


def test_assignment_requires_split_zero_exactly_when_unplaced() -> None:
    with pytest.raises(InvalidProblemError):
        Assignment(np.array([UNPLACED, 0]), np.array([1, 1]))
    with pytest.raises(InvalidProblemError):
        Assignment(np.array([0, 1]), np.array([0, 1]))
    assert Assignment.unplaced(3).deployed_count == 0


# --- the checker -----------------------------------------------------------------------------


def test_checker_accepts_a_feasible_placement_and_reports_loads() -> None:
    problem = small_problem()
    # Task 0 on server 0 after layer 2 (cap 10, bw 0.2); task 1 on server 1 (cap 1, bw 4 > 1).
    feasible = Assignment(np.array([0, UNPLACED]), np.array([2, 0]))
    check_assignment(problem, feasible)
    capacity, bandwidth = server_loads(problem, feasible)
    assert capacity[0] == pytest.approx(10.0) and bandwidth[0] == pytest.approx(0.2)


def test_checker_names_every_broken_constraint() -> None:
    problem = small_problem()
    over_bandwidth = Assignment(np.array([0, 1]), np.array([2, 1]))
    kinds = {(v.kind, v.server) for v in find_violations(problem, over_bandwidth)}
    assert kinds == {("bandwidth", 1)}
    over_capacity = Assignment(np.array([1, UNPLACED]), np.array([2, 0]))
    assert {v.kind for v in find_violations(problem, over_capacity)} == {"capacity"}
    with pytest.raises(InfeasibleAssignmentError) as caught:
        check_assignment(problem, over_capacity)
    assert caught.value.violations[0].server == 1


def test_checker_rejects_missing_layers_unknown_servers_and_wrong_length() -> None:
    problem = small_problem()
    no_such_layer = Assignment(np.array([UNPLACED, 0]), np.array([0, 2]))
    assert [v.kind for v in find_violations(problem, no_such_layer)] == ["split_layer"]
    no_such_server = Assignment(np.array([5, UNPLACED]), np.array([1, 0]))
    assert [v.kind for v in find_violations(problem, no_such_server)] == ["server_index"]
    assert find_violations(problem, Assignment.unplaced(3))


# --- paper details we reconstructed ----------------------------------------------------------


def test_preferred_split_maximises_saving_per_flop() -> None:
    tasks = DeepLearningTasks.from_layer_profiles(
        [[0.5, 0.1], [0.9, 0.1, 0.01]], [[1.0, 10.0], [1.0, 2.0, 100.0]], 0.2
    )
    problem = SchedulingProblem(EdgeServers(np.ones(1), np.ones(1)), tasks, np.ones((2, 1)))
    # Task 0: 0.5/1 beats 0.9/10; task 1: 0.9/2 beats 0.1/1 and 0.99/100.
    assert list(preferred_split(problem)) == [1, 2]


def test_threshold_is_the_online_knapsack_curve() -> None:
    low, high = 2.0, 50.0
    z = np.array([0.0, 1.0 / (1.0 + math.log(high / low)), 1.0])
    assert threshold(z, low, high) == pytest.approx([low / math.e, low, high])


# --- exactness -------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_milp_matches_brute_force_and_beats_every_heuristic(seed: int) -> None:
    rng = np.random.default_rng(seed)
    problem = random_problem(rng, tasks=7, servers=2, max_layers=3)
    optimum = solve_optimal(problem, time_limit=20)
    check_assignment(problem, optimum.assignment)
    brute_force = solve_by_enumeration(problem)
    check_assignment(problem, brute_force)
    assert optimum.proven_optimal
    assert optimum.deployed_count == brute_force.deployed_count
    # The instances must be tight for this to mean anything.
    assert optimum.deployed_count < problem.task_count
    for name, assignment in heuristics(problem, rng.permutation(problem.task_count)).items():
        assert assignment.deployed_count <= optimum.deployed_count, name


def test_milp_reports_its_bound_when_stopped_early() -> None:
    problem = random_problem(np.random.default_rng(11), tasks=120, servers=6, max_layers=4)
    result = solve_optimal(problem, time_limit=0.05, lp_time_limit=10)
    check_assignment(problem, result.assignment)
    assert result.deployed_count <= result.upper_bound <= problem.task_count
    if not result.proven_optimal:
        assert result.lp_relaxation_bound is not None
        assert result.upper_bound <= result.lp_relaxation_bound


def test_dominated_splits_are_dropped_but_never_all() -> None:
    problem = random_problem(np.random.default_rng(3), tasks=20, servers=3, max_layers=5)
    kept = undominated_options(problem)
    assert np.all(kept <= problem.option_possible)
    has_option = problem.option_possible.any(axis=2)
    assert np.array_equal(kept.any(axis=2), has_option)


@pytest.mark.parametrize("seed", [5, 6])
def test_bounds_sit_above_the_optimum(seed: int) -> None:
    problem = random_problem(np.random.default_rng(seed), tasks=12, servers=2, max_layers=3)
    guided = solve_lp_guided(problem)
    optimum = solve_optimal(problem, time_limit=20)
    assert optimum.proven_optimal
    assert guided.assignment.deployed_count <= optimum.deployed_count <= guided.upper_bound
    assert optimum.deployed_count <= lp_upper_bound(problem)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_column_generation_reaches_the_full_lp_bound(seed: int) -> None:
    problem = random_problem(np.random.default_rng(seed), tasks=80, servers=5, max_layers=6)
    assert lp_upper_bound(problem) == lp_relaxation_bound(problem)


# --- every solver, any instance --------------------------------------------------------------


@st.composite
def problems(draw: st.DrawFn) -> SchedulingProblem:
    task_count = draw(st.integers(1, 8))
    server_count = draw(st.integers(1, 3))
    max_layers = draw(st.integers(1, 4))
    layers = draw(hnp.arrays(np.int64, task_count, elements=st.integers(1, max_layers)))
    ratio = draw(hnp.arrays(np.float64, (task_count, max_layers), elements=st.floats(0.01, 3.0)))
    steps = draw(hnp.arrays(np.float64, (task_count, max_layers), elements=st.floats(0.0, 5.0)))
    latency = draw(hnp.arrays(np.float64, task_count, elements=st.floats(0.05, 1.0)))
    capacity = draw(hnp.arrays(np.float64, server_count, elements=st.floats(0.0, 20.0)))
    reserve = draw(st.floats(0.0, 1.0))
    spare = draw(hnp.arrays(np.float64, server_count, elements=st.floats(0.0, 20.0)))
    rate = draw(hnp.arrays(np.float64, (task_count, server_count), elements=st.floats(0.0, 5.0)))
    tasks = DeepLearningTasks(ratio, np.cumsum(steps, axis=1), layers, latency)
    return SchedulingProblem(EdgeServers(capacity, reserve + spare, reserve), tasks, rate)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(problem=problems(), data=st.data())
def test_every_solver_returns_a_feasible_placement(
    problem: SchedulingProblem, data: st.DataObject
) -> None:
    order = np.array(data.draw(st.permutations(range(problem.task_count))), dtype=np.int64)
    solutions = heuristics(problem, order)
    optimum = solve_optimal(problem, time_limit=10)
    solutions["optimum"] = optimum.assignment
    for name, assignment in solutions.items():
        assert find_violations(problem, assignment) == (), name
    if optimum.proven_optimal:
        for name, assignment in solutions.items():
            assert assignment.deployed_count <= optimum.deployed_count, name


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(problem=problems(), data=st.data())
def test_online_counts_track_the_placement(problem: SchedulingProblem, data: st.DataObject) -> None:
    order = np.array(data.draw(st.permutations(range(problem.task_count))), dtype=np.int64)
    threshold_run = solve_online_threshold(problem, order, density_bounds(problem, 0.0))
    counts = threshold_run.deployed_after_arrival
    # The threshold policy never evicts, so its count never drops.
    assert np.all(np.diff(counts) >= 0) and threshold_run.evictions == 0
    for run in (threshold_run, solve_fifo(problem, order), solve_lbf(problem, order)):
        assert run.deployed_after_arrival.size == problem.task_count
        assert run.deployed_after_arrival[-1] == run.assignment.deployed_count
        # A task that has not arrived yet cannot be deployed.
        assert run.deployed_after_arrival[0] <= 1


def test_solvers_reject_malformed_requests() -> None:
    problem = small_problem()
    with pytest.raises(InvalidProblemError) as caught:
        solve_fifo(problem, np.array([0, 0]))
    assert caught.value.field == "arrival_order"
    with pytest.raises(InvalidProblemError):
        solve_online_threshold(problem, np.array([1, 0]), bounds=(2.0, 1.0))
    with pytest.raises(InvalidProblemError):
        solve_fixed_split(problem, 0)
