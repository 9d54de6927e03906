"""The paper's qualitative findings, reproduced on our CNN profiles and the paper's settings.

Fig. 4a: a scheduler that chooses the split per task deploys more than any fixed split.
Fig. 4b: over a long arrival sequence the online threshold policy ends ahead of FIFO and LBF.
The offline checks use a 0.3-scale instance of the same shape (300 tasks on 6/15/27 servers,
i.e. 1000 tasks on 20/50/90); the online one needs the full 1000 arrivals, because the threshold
policy only overtakes late in the sequence (as in the paper's figure).
"""

from __future__ import annotations

import numpy as np
import pytest

from cloud.scheduling.improved import solve_balanced_greedy, solve_lp_guided
from cloud.scheduling.offline import solve_fixed_split, solve_paper_offline
from cloud.scheduling.online import density_bounds, solve_fifo, solve_lbf, solve_online_threshold
from cloud.scheduling.problem import check_assignment
from cloud.scheduling.simulate import SimulationSettings, draw_network


def reduced(seed: int = 2019) -> SimulationSettings:
    return SimulationSettings(
        task_count=300,
        server_counts=(6, 15, 27),
        online_server_count=15,
        history_task_count=300,
        seed=seed,
    )


@pytest.mark.parametrize("seed", [2019, 7])
def test_choosing_the_split_beats_every_fixed_split(seed: int) -> None:
    network = draw_network(reduced(seed))
    for server_count in network.settings.server_counts:
        problem = network.problem(server_count)
        best_fixed = max(solve_fixed_split(problem, k).deployed_count for k in range(1, 6))
        guided = solve_lp_guided(problem)
        greedy = solve_balanced_greedy(problem)
        paper = solve_paper_offline(problem)
        for assignment in (guided.assignment, greedy, paper):
            check_assignment(problem, assignment)
        assert guided.assignment.deployed_count > best_fixed
        assert greedy.deployed_count > best_fixed
        assert guided.assignment.deployed_count > paper.deployed_count
        assert guided.assignment.deployed_count <= guided.upper_bound
    # The paper's own offline algorithm also beats every fixed split once servers are many; with
    # few servers it loses to k = 5 on our profiles (see the benchmark), so only the largest
    # network is asserted.
    assert paper.deployed_count > best_fixed


def test_more_servers_deploy_more_tasks() -> None:
    network = draw_network(reduced())
    deployed = [
        solve_lp_guided(network.problem(n)).assignment.deployed_count
        for n in network.settings.server_counts
    ]
    assert deployed == sorted(deployed) and deployed[0] < deployed[-1]
    # Neither trivially everything nor nothing: the comparison is meaningful.
    assert deployed[0] > 0.2 * 300 and deployed[-1] < 300


@pytest.mark.parametrize("seed", [2019, 3])
def test_online_threshold_ends_ahead_of_fifo_and_lbf(seed: int) -> None:
    network = draw_network(SimulationSettings(seed=seed))
    server_count = network.settings.online_server_count
    problem = network.problem(server_count)
    history = network.problem(server_count, history=True)
    order = network.arrival_order
    online = solve_online_threshold(problem, order, density_bounds(history))
    fifo = solve_fifo(problem, order)
    lbf = solve_lbf(problem, order)
    for run in (online, fifo, lbf):
        check_assignment(problem, run.assignment)
    final = online.deployed_after_arrival[-1]
    assert final > fifo.deployed_after_arrival[-1]
    assert final > lbf.deployed_after_arrival[-1]
    # Early on, when every policy still admits everything, FIFO and LBF are not behind.
    early = len(order) // 10
    assert fifo.deployed_after_arrival[early] >= online.deployed_after_arrival[early]
    # FIFO and LBF do evict once full; the threshold policy never does.
    assert fifo.evictions > 0 and lbf.evictions > 0 and online.evictions == 0
    assert np.all(np.diff(online.deployed_after_arrival) >= 0)
