"""Mutable bookkeeping for the heuristics: where each task sits and what each server has left.

Solvers build one ``PlacementState`` per run, place and remove tasks through it, and hand back the
frozen ``Assignment``. Keeping the arithmetic here means every heuristic uses the same notion of
"fits" (``problem.PLACEMENT_SLACK``), so none can pass the checker by a different rounding rule.
"""

from __future__ import annotations

import numpy as np

from cloud.scheduling.problem import (
    PLACEMENT_SLACK,
    UNPLACED,
    Assignment,
    BoolArray,
    FloatArray,
    IntArray,
    SchedulingProblem,
)


class PlacementState:
    """Current placement of every task plus the capacity and bandwidth used on every server."""

    def __init__(self, problem: SchedulingProblem) -> None:
        self.problem = problem
        self.server: IntArray = np.full(problem.task_count, UNPLACED, dtype=np.int64)
        self.split_layer: IntArray = np.zeros(problem.task_count, dtype=np.int64)
        self.capacity_used: FloatArray = np.zeros(problem.server_count)
        self.bandwidth_used: FloatArray = np.zeros(problem.server_count)
        self.capacity_limit: FloatArray = problem.servers.capacity * (1 + PLACEMENT_SLACK)
        self.bandwidth_limit: FloatArray = problem.servers.available_bandwidth * (
            1 + PLACEMENT_SLACK
        )
        self.deployed_count = 0

    def fitting_options(self, task: int) -> BoolArray:
        """``[i, k - 1]`` is True when ``task`` split after layer ``k`` fits on server ``i`` now.

        The task's own current load is not subtracted: ask while it is unplaced.
        """
        capacity = self.problem.capacity_demand[task] + self.capacity_used[:, None]
        bandwidth = self.problem.bandwidth_demand[task] + self.bandwidth_used[:, None]
        fits: BoolArray = (capacity <= self.capacity_limit[:, None]) & (
            bandwidth <= self.bandwidth_limit[:, None]
        )
        return fits

    def fits(self, task: int, server: int, split_layer: int) -> bool:
        capacity = (
            self.capacity_used[server] + self.problem.capacity_demand[task, server, split_layer - 1]
        )
        bandwidth = (
            self.bandwidth_used[server]
            + self.problem.bandwidth_demand[task, server, split_layer - 1]
        )
        return bool(
            capacity <= self.capacity_limit[server] and bandwidth <= self.bandwidth_limit[server]
        )

    def place(self, task: int, server: int, split_layer: int) -> None:
        if self.server[task] != UNPLACED:
            raise RuntimeError(f"task {task} is already on server {self.server[task]}")
        self.server[task] = server
        self.split_layer[task] = split_layer
        self.capacity_used[server] += self.problem.capacity_demand[task, server, split_layer - 1]
        self.bandwidth_used[server] += self.problem.bandwidth_demand[task, server, split_layer - 1]
        self.deployed_count += 1

    def remove(self, task: int) -> None:
        server = int(self.server[task])
        if server == UNPLACED:
            raise RuntimeError(f"task {task} is not placed")
        split = int(self.split_layer[task])
        self.capacity_used[server] -= self.problem.capacity_demand[task, server, split - 1]
        self.bandwidth_used[server] -= self.problem.bandwidth_demand[task, server, split - 1]
        self.server[task] = UNPLACED
        self.split_layer[task] = 0
        self.deployed_count -= 1

    def to_assignment(self) -> Assignment:
        return Assignment(self.server.copy(), self.split_layer.copy())
