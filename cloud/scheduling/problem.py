"""The layer-placement problem of paper 003 as plain, validated data, and its constraint checker.

Where this sits: the cloud decides, for every deep-learning task fed by the camera network, on
which edge server (gateway) its first ``k`` layers run; the edge server then uploads the layer-``k``
output instead of the raw input. This module only describes that decision; the solvers live
beside it (``offline``, ``online``, ``improved``, ``exact``) and no module here does I/O.

Notation (paper 003, "Scheduling problem and solution"), with the indices we use in arrays:

* server ``i`` (0-based, ``M`` of them): service capacity ``c_i`` (FLOP per time unit) and uplink
  bandwidth ``b_i`` (bytes per time unit); a reserve ``V`` is kept free on every uplink for the
  edge/cloud control traffic, so ``b_i - V`` is what tasks may use;
* task ``j`` (0-based, ``T`` of them) with ``N_j`` layers; for ``k`` in ``1..N_j``:
  ``r_kj`` = size of the layer-``k`` output / size of the input, and ``l_kj`` = computation per
  unit of input for the first ``k`` layers (cumulative, so non-decreasing in ``k``);
* ``d_ij`` = input data per time unit of task ``j`` at server ``i``; ``Q_j`` = latency bound.

Running the first ``k`` layers of task ``j`` on server ``i`` costs ``l_kj * d_ij`` capacity and
needs an uplink share ``b_ij`` with ``d_ij * r_kj / b_ij <= Q_j``. Handing out more bandwidth than
that never helps another task, so a placement implicitly reserves exactly
``b_ij = d_ij * r_kj / Q_j``, and the paper's bandwidth and latency constraints together become
``sum_j b_ij <= b_i - V`` on every server. Each task runs on at most one server (the paper's text
can also be read as "a task is deployed on every server that holds some of its input"; we schedule
a task as one stream, which is how the camera network feeds a gateway). The goal is the largest
number of deployed tasks.

Arrays are laid out task-major: ``d`` is ``input_rate[j, i]`` and the option demands are
``[j, i, k - 1]``; entries for ``k > N_j`` are ``inf`` so that they never fit anywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
import numpy.typing as npt

from cloud.scheduling.errors import (
    ConstraintViolation,
    InfeasibleAssignmentError,
    InvalidProblemError,
)

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]

UNPLACED = -1
"""``Assignment.server`` value of a task that is not deployed."""

PLACEMENT_SLACK = 1e-9
"""Relative slack solvers allow when deciding that an option fits; absorbs float summation only."""

CHECK_TOLERANCE = 1e-6
"""Relative tolerance of ``find_violations``. Looser than ``PLACEMENT_SLACK`` because the MILP
solver's own primal feasibility tolerance is 1e-7 on the (normalised) rows."""


def _frozen_float_array(name: str, values: npt.ArrayLike, ndim: int) -> FloatArray:
    array = np.array(values, dtype=np.float64, copy=True)
    if array.ndim != ndim:
        raise InvalidProblemError(name, f"expected {ndim}-D array, got shape {array.shape}")
    array.setflags(write=False)
    return array


def _require_finite_non_negative(name: str, array: FloatArray) -> None:
    if not np.all(np.isfinite(array)):
        raise InvalidProblemError(name, "must be finite")
    if np.any(array < 0):
        raise InvalidProblemError(name, "must be non-negative")


@dataclass(frozen=True, eq=False)
class EdgeServers:
    """Edge servers ``e_i``: capacity ``c_i``, uplink bandwidth ``b_i`` and the reserve ``V``."""

    capacity: FloatArray
    bandwidth: FloatArray
    reserve: float = 0.0

    def __post_init__(self) -> None:
        capacity = _frozen_float_array("capacity", self.capacity, 1)
        bandwidth = _frozen_float_array("bandwidth", self.bandwidth, 1)
        object.__setattr__(self, "capacity", capacity)
        object.__setattr__(self, "bandwidth", bandwidth)
        object.__setattr__(self, "reserve", float(self.reserve))
        if capacity.shape != bandwidth.shape:
            raise InvalidProblemError(
                "bandwidth", f"shape {bandwidth.shape} differs from capacity {capacity.shape}"
            )
        if capacity.size == 0:
            raise InvalidProblemError("capacity", "need at least one server")
        _require_finite_non_negative("capacity", capacity)
        _require_finite_non_negative("bandwidth", bandwidth)
        if not (np.isfinite(self.reserve) and self.reserve >= 0):
            raise InvalidProblemError("reserve", "must be finite and non-negative")
        if np.any(bandwidth < self.reserve):
            raise InvalidProblemError("bandwidth", "every uplink must be at least the reserve V")

    @property
    def count(self) -> int:
        return int(self.capacity.size)

    @cached_property
    def available_bandwidth(self) -> FloatArray:
        """``b_i - V``: the uplink share tasks may reserve."""
        available = self.bandwidth - self.reserve
        available.setflags(write=False)
        return available


@dataclass(frozen=True, eq=False)
class DeepLearningTasks:
    """Tasks ``t_j``: per-split output ratios ``r_kj``, cumulative compute ``l_kj``, bound ``Q_j``.

    ``output_ratio`` and ``cumulative_flops`` have shape ``(T, K)`` with ``K = max N_j``; column
    ``k - 1`` describes splitting after layer ``k``. Entries past a task's ``layer_count`` are
    ignored (stored as NaN). Use ``from_layer_profiles`` for ragged per-task lists.
    """

    output_ratio: FloatArray
    cumulative_flops: FloatArray
    layer_count: IntArray
    latency_bound: FloatArray

    def __post_init__(self) -> None:
        ratio = np.array(self.output_ratio, dtype=np.float64, copy=True)
        flops = np.array(self.cumulative_flops, dtype=np.float64, copy=True)
        layers = np.array(self.layer_count, dtype=np.int64, copy=True)
        latency = _frozen_float_array("latency_bound", self.latency_bound, 1)
        if ratio.ndim != 2 or ratio.shape != flops.shape:
            raise InvalidProblemError(
                "output_ratio", f"need matching 2-D arrays, got {ratio.shape} and {flops.shape}"
            )
        task_count, max_layers = ratio.shape
        if task_count == 0 or max_layers == 0:
            raise InvalidProblemError("output_ratio", "need at least one task and one layer")
        if layers.shape != (task_count,) or latency.shape != (task_count,):
            raise InvalidProblemError("layer_count", "need one layer count and bound per task")
        if np.any(layers < 1) or np.any(layers > max_layers):
            raise InvalidProblemError("layer_count", f"must lie in 1..{max_layers}")
        valid = np.arange(max_layers)[None, :] < layers[:, None]
        if not np.all(np.isfinite(ratio[valid])) or np.any(ratio[valid] <= 0):
            raise InvalidProblemError("output_ratio", "must be finite and positive")
        if not np.all(np.isfinite(flops[valid])) or np.any(flops[valid] < 0):
            raise InvalidProblemError("cumulative_flops", "must be finite and non-negative")
        # l_kj counts the first k layers, so it can only grow with k.
        steps = np.diff(np.where(valid, flops, 0.0), axis=1)
        if np.any(steps[valid[:, 1:]] < 0):
            raise InvalidProblemError("cumulative_flops", "must be non-decreasing in k")
        if not np.all(np.isfinite(latency)) or np.any(latency <= 0):
            raise InvalidProblemError("latency_bound", "must be finite and positive")
        ratio[~valid] = np.nan
        flops[~valid] = np.nan
        for name, array in (("output_ratio", ratio), ("cumulative_flops", flops)):
            array.setflags(write=False)
            object.__setattr__(self, name, array)
        layers.setflags(write=False)
        object.__setattr__(self, "layer_count", layers)
        object.__setattr__(self, "latency_bound", latency)

    @classmethod
    def from_layer_profiles(
        cls,
        output_ratios: Sequence[npt.ArrayLike],
        cumulative_flops: Sequence[npt.ArrayLike],
        latency_bound: npt.ArrayLike,
    ) -> DeepLearningTasks:
        """Build from ragged per-task lists (task ``j`` has ``len(output_ratios[j])`` layers)."""
        if len(output_ratios) != len(cumulative_flops):
            raise InvalidProblemError("cumulative_flops", "need one profile per task")
        ratios = [np.atleast_1d(np.asarray(r, dtype=np.float64)) for r in output_ratios]
        flop_lists = [np.atleast_1d(np.asarray(f, dtype=np.float64)) for f in cumulative_flops]
        layers = np.array([r.size for r in ratios], dtype=np.int64)
        if any(r.size != f.size for r, f in zip(ratios, flop_lists, strict=True)):
            raise InvalidProblemError("cumulative_flops", "ratio and FLOP lists differ in length")
        width = int(layers.max()) if layers.size else 0
        ratio = np.full((len(layers), width), np.nan)
        flops = np.full((len(layers), width), np.nan)
        for j, (r, f) in enumerate(zip(ratios, flop_lists, strict=True)):
            ratio[j, : r.size] = r
            flops[j, : f.size] = f
        latency = np.broadcast_to(np.asarray(latency_bound, dtype=np.float64), layers.shape)
        return cls(ratio, flops, layers, latency)

    @property
    def count(self) -> int:
        return int(self.layer_count.size)

    @property
    def max_layers(self) -> int:
        return int(self.output_ratio.shape[1])

    @cached_property
    def split_valid(self) -> BoolArray:
        """``[j, k - 1]`` is True when task ``j`` has a layer ``k``."""
        valid = np.arange(self.max_layers)[None, :] < self.layer_count[:, None]
        valid.setflags(write=False)
        return valid


@dataclass(frozen=True, eq=False)
class SchedulingProblem:
    """One instance: servers, tasks and the input rate ``d_ij`` (stored as ``input_rate[j, i]``)."""

    servers: EdgeServers
    tasks: DeepLearningTasks
    input_rate: FloatArray
    name: str = field(default="")

    def __post_init__(self) -> None:
        rate = _frozen_float_array("input_rate", self.input_rate, 2)
        if rate.shape != (self.tasks.count, self.servers.count):
            raise InvalidProblemError(
                "input_rate",
                f"expected shape (tasks, servers) = {(self.tasks.count, self.servers.count)},"
                f" got {rate.shape}",
            )
        _require_finite_non_negative("input_rate", rate)
        object.__setattr__(self, "input_rate", rate)

    @property
    def task_count(self) -> int:
        return self.tasks.count

    @property
    def server_count(self) -> int:
        return self.servers.count

    @property
    def max_layers(self) -> int:
        return self.tasks.max_layers

    @cached_property
    def capacity_demand(self) -> FloatArray:
        """``l_kj * d_ij`` at ``[j, i, k - 1]``; ``inf`` where task ``j`` has no layer ``k``."""
        flops = np.where(self.tasks.split_valid, self.tasks.cumulative_flops, np.inf)
        with np.errstate(invalid="ignore", over="ignore"):
            demand = self.input_rate[:, :, None] * flops[:, None, :]
        # 0 * inf is NaN for a task with no input at a server; such splits still do not exist.
        demand[np.isnan(demand)] = np.inf
        demand.setflags(write=False)
        return demand

    @cached_property
    def bandwidth_demand(self) -> FloatArray:
        """``d_ij * r_kj / Q_j`` at ``[j, i, k - 1]``: the least uplink share meeting ``Q_j``."""
        ratio = np.where(self.tasks.split_valid, self.tasks.output_ratio, np.inf)
        with np.errstate(over="ignore"):
            per_input = ratio / self.tasks.latency_bound[:, None]
        with np.errstate(invalid="ignore", over="ignore"):
            demand = self.input_rate[:, :, None] * per_input[:, None, :]
        demand[np.isnan(demand)] = np.inf
        demand.setflags(write=False)
        return demand

    @cached_property
    def option_possible(self) -> BoolArray:
        """``[j, i, k - 1]`` is True when that split fits on server ``i`` while it is empty."""
        cap = self.servers.capacity[None, :, None]
        bw = self.servers.available_bandwidth[None, :, None]
        possible = (self.capacity_demand <= cap * (1 + PLACEMENT_SLACK)) & (
            self.bandwidth_demand <= bw * (1 + PLACEMENT_SLACK)
        )
        possible.setflags(write=False)
        return possible


@dataclass(frozen=True, eq=False)
class Assignment:
    """A solution: ``server[j]`` hosts the first ``split_layer[j]`` layers of task ``j``.

    Unplaced tasks have ``server == UNPLACED`` and ``split_layer == 0``. Validation here covers
    only the shape of the answer; ``find_violations`` checks it against a problem.
    """

    server: IntArray
    split_layer: IntArray

    def __post_init__(self) -> None:
        server = np.array(self.server, dtype=np.int64, copy=True)
        split = np.array(self.split_layer, dtype=np.int64, copy=True)
        if server.ndim != 1 or server.shape != split.shape:
            raise InvalidProblemError("split_layer", "need two 1-D arrays of equal length")
        if np.any((server == UNPLACED) != (split == 0)):
            raise InvalidProblemError("split_layer", "must be 0 exactly for unplaced tasks")
        server.setflags(write=False)
        split.setflags(write=False)
        object.__setattr__(self, "server", server)
        object.__setattr__(self, "split_layer", split)

    @classmethod
    def unplaced(cls, task_count: int) -> Assignment:
        return cls(np.full(task_count, UNPLACED), np.zeros(task_count, dtype=np.int64))

    @property
    def task_count(self) -> int:
        return int(self.server.size)

    @property
    def placed(self) -> BoolArray:
        placed: BoolArray = self.server != UNPLACED
        return placed

    @property
    def deployed_count(self) -> int:
        return int(np.count_nonzero(self.placed))


def server_loads(
    problem: SchedulingProblem, assignment: Assignment
) -> tuple[FloatArray, FloatArray]:
    """Capacity and bandwidth used on each server; the assignment must index validly."""
    placed = np.flatnonzero(assignment.placed)
    servers = assignment.server[placed]
    splits = assignment.split_layer[placed] - 1
    capacity = np.bincount(
        servers,
        weights=problem.capacity_demand[placed, servers, splits],
        minlength=problem.server_count,
    )
    bandwidth = np.bincount(
        servers,
        weights=problem.bandwidth_demand[placed, servers, splits],
        minlength=problem.server_count,
    )
    return capacity.astype(np.float64), bandwidth.astype(np.float64)


def find_violations(
    problem: SchedulingProblem, assignment: Assignment
) -> tuple[ConstraintViolation, ...]:
    """Every constraint ``assignment`` breaks on ``problem``; empty when it is feasible."""
    if assignment.task_count != problem.task_count:
        return (
            ConstraintViolation(
                "server_index",
                None,
                None,
                f"assignment covers {assignment.task_count} tasks, problem has "
                f"{problem.task_count}",
            ),
        )
    violations: list[ConstraintViolation] = []
    placed = assignment.placed
    bad_server = placed & ((assignment.server < 0) | (assignment.server >= problem.server_count))
    for j in np.flatnonzero(bad_server):
        violations.append(
            ConstraintViolation(
                "server_index", None, int(j), f"task {j} on unknown server {assignment.server[j]}"
            )
        )
    bad_split = placed & (
        (assignment.split_layer < 1) | (assignment.split_layer > problem.tasks.layer_count)
    )
    for j in np.flatnonzero(bad_split):
        violations.append(
            ConstraintViolation(
                "split_layer",
                None,
                int(j),
                f"task {j} split after layer {assignment.split_layer[j]} of "
                f"{problem.tasks.layer_count[j]}",
            )
        )
    if violations:
        return tuple(violations)
    capacity_used, bandwidth_used = server_loads(problem, assignment)
    limits = (
        ("capacity", capacity_used, problem.servers.capacity),
        ("bandwidth", bandwidth_used, problem.servers.available_bandwidth),
    )
    for kind, used, limit in limits:
        for i in np.flatnonzero(used > limit * (1 + CHECK_TOLERANCE)):
            violations.append(
                ConstraintViolation(
                    kind, int(i), None, f"server {i} {kind} {used[i]:.6g} > {limit[i]:.6g}"
                )
            )
    return tuple(violations)


def check_assignment(problem: SchedulingProblem, assignment: Assignment) -> None:
    """Raise ``InfeasibleAssignmentError`` listing every violated constraint, if any."""
    violations = find_violations(problem, assignment)
    if violations:
        raise InfeasibleAssignmentError(violations)
