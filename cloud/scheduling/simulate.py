"""Paper 003's simulation (Fig. 4a and 4b) on our CNN profiles: generator, runs, CSV and plots.

Settings from the paper: 1000 tasks; 20-90 edge servers in steps of 10; 290 GFLOPS per server
(NVIDIA Tegra K1); input of 100 kB-1 MB per task; CNNs of 5-10 layers; uplinks uniform in
10 Mb/s-1 Gb/s; latency bound 0.2 s. What the paper leaves open, and what we chose:

* **Input rate.** The paper gives an input *size* but the constraints need data *per time unit*
  (``d_ij``). We treat the size as one camera frame and draw a frame rate per task, uniform in
  15-30 frames/s (ordinary camera rates), so ``d_ij`` is 1.5-30 MB/s. With one frame per second
  every task would fit a handful of servers; at 15-30 frames/s a few hundred of the 1000 tasks
  fit 20 servers and most fit 90, the range the paper's figures show.
* **Units.** FLOP/s for capacity, bytes/s for bandwidth and ``d_ij``; the profiles give FLOPs per
  input byte. The latency term ``d_ij r_kj / b_ij`` is then the time to upload one second's worth
  of intermediate data, and ``Q = 0.2 s`` asks for an uplink share of five times the upload rate.
* **Reserve V.** 5 Mb/s on every uplink (half of the slowest one).
* **Per-server input ``d_ij``.** Cameras and servers are scattered on a unit square; a stream
  relayed to a farther server carries up to ``relay_overhead`` = 50 % more data (tunnelling and
  re-encoding across the camera network), so where a task runs matters a little.
* **Which CNN.** Each task runs one of the profiled architectures (``profiles.py``), uniformly.
* **Online bounds.** ``B_min``/``B_max`` for the online algorithm come from a separate history of
  1000 tasks drawn from the same distribution, never from the arrival sequence itself.

Everything is seeded from one integer through ``numpy.random.SeedSequence``; servers for a
smaller count are a prefix of the largest network, so the curves of Fig. 4a are nested.
"""

from __future__ import annotations

import csv
import functools
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cloud.scheduling.errors import InvalidProblemError
from cloud.scheduling.improved import lp_upper_bound, solve_balanced_greedy, solve_lp_guided
from cloud.scheduling.offline import solve_fixed_split, solve_paper_offline
from cloud.scheduling.online import (
    OnlineResult,
    density_bounds,
    solve_fifo,
    solve_lbf,
    solve_online_threshold,
)
from cloud.scheduling.problem import (
    Assignment,
    DeepLearningTasks,
    EdgeServers,
    FloatArray,
    IntArray,
    SchedulingProblem,
    check_assignment,
)
from cloud.scheduling.profiles import CnnProfile, load_profiles

MEGABIT = 1e6 / 8  # bytes per second in one Mb/s


@dataclass(frozen=True)
class SimulationSettings:
    """Every knob of the simulation; defaults are the paper's settings plus our choices above."""

    task_count: int = 1000
    server_counts: tuple[int, ...] = (20, 30, 40, 50, 60, 70, 80, 90)
    online_server_count: int = 50
    server_capacity: float = 290e9  # FLOP/s
    frame_size_range: tuple[float, float] = (100e3, 1e6)  # bytes
    frame_rate_range: tuple[float, float] = (15.0, 30.0)  # frames/s
    bandwidth_range: tuple[float, float] = (10 * MEGABIT, 1000 * MEGABIT)  # bytes/s
    reserve: float = 5 * MEGABIT  # V, bytes/s
    latency_bound: float = 0.2  # Q, seconds
    relay_overhead: float = 0.5
    history_task_count: int = 1000
    online_bound_quantile: float = 0.25
    seed: int = 2019

    def __post_init__(self) -> None:
        if self.task_count < 1:
            raise InvalidProblemError("task_count", "need at least one task")
        if not self.server_counts or min(self.server_counts) < 1:
            raise InvalidProblemError("server_counts", "need positive server counts")
        if self.online_server_count < 1:
            raise InvalidProblemError("online_server_count", "need at least one server")
        for name in ("frame_size_range", "frame_rate_range", "bandwidth_range"):
            low, high = getattr(self, name)
            if not (0 < low <= high and math.isfinite(high)):
                raise InvalidProblemError(name, f"need 0 < low <= high, got {(low, high)}")
        if self.reserve < 0 or self.reserve > self.bandwidth_range[0]:
            raise InvalidProblemError("reserve", "must lie between 0 and the slowest uplink")
        if not (self.server_capacity > 0 and self.latency_bound > 0 and self.relay_overhead >= 0):
            raise InvalidProblemError("server_capacity", "capacity and latency must be positive")
        if not (0 <= self.online_bound_quantile < 0.5):
            raise InvalidProblemError("online_bound_quantile", "must lie in [0, 0.5)")
        if self.history_task_count < 1:
            raise InvalidProblemError("history_task_count", "need at least one task")

    @property
    def largest_network(self) -> int:
        return max(*self.server_counts, self.online_server_count)


@dataclass(frozen=True, eq=False)
class CameraNetwork:
    """One random draw of servers, tasks, history and arrival order for a ``SimulationSettings``."""

    settings: SimulationSettings
    profiles: tuple[CnnProfile, ...]
    server_bandwidth: FloatArray
    server_position: FloatArray
    tasks: DeepLearningTasks
    task_rate: FloatArray  # bytes/s at the camera (frame size x frame rate)
    task_position: FloatArray
    history: DeepLearningTasks
    history_rate: FloatArray
    history_position: FloatArray
    arrival_order: IntArray
    task_architecture: tuple[str, ...] = field(default=())

    def problem(self, server_count: int, history: bool = False) -> SchedulingProblem:
        """The instance on the first ``server_count`` servers (or the history's tasks on them)."""
        if not 1 <= server_count <= self.server_bandwidth.size:
            raise InvalidProblemError(
                "server_count", f"must lie in 1..{self.server_bandwidth.size}"
            )
        settings = self.settings
        servers = EdgeServers(
            np.full(server_count, settings.server_capacity),
            self.server_bandwidth[:server_count],
            settings.reserve,
        )
        tasks, rate, position = (
            (self.history, self.history_rate, self.history_position)
            if history
            else (self.tasks, self.task_rate, self.task_position)
        )
        distance = np.linalg.norm(
            position[:, None, :] - self.server_position[None, :server_count, :], axis=2
        ) / math.sqrt(2)
        input_rate = rate[:, None] * (1 + settings.relay_overhead * distance)
        name = f"{'history' if history else 'tasks'}-{server_count}-servers-seed-{settings.seed}"
        return SchedulingProblem(servers, tasks, input_rate, name=name)


def _draw_tasks(
    rng: np.random.Generator,
    count: int,
    settings: SimulationSettings,
    profiles: Sequence[CnnProfile],
) -> tuple[DeepLearningTasks, FloatArray, FloatArray, tuple[str, ...]]:
    architecture = rng.integers(len(profiles), size=count)
    frame_size = rng.uniform(*settings.frame_size_range, size=count)
    frame_rate = rng.uniform(*settings.frame_rate_range, size=count)
    position = rng.uniform(size=(count, 2))
    tasks = DeepLearningTasks.from_layer_profiles(
        [profiles[a].output_ratios for a in architecture],
        [profiles[a].cumulative_flops for a in architecture],
        settings.latency_bound,
    )
    names = tuple(profiles[a].architecture for a in architecture)
    return tasks, frame_size * frame_rate, position, names


def draw_network(
    settings: SimulationSettings, profiles: Sequence[CnnProfile] | None = None
) -> CameraNetwork:
    """Draw servers, tasks, a task history and an arrival order, all from ``settings.seed``."""
    table = tuple(load_profiles() if profiles is None else profiles)
    server_rng, task_rng, history_rng, arrival_rng = (
        np.random.default_rng(s) for s in np.random.SeedSequence(settings.seed).spawn(4)
    )
    largest = settings.largest_network
    bandwidth = server_rng.uniform(*settings.bandwidth_range, size=largest)
    server_position = server_rng.uniform(size=(largest, 2))
    tasks, rate, position, names = _draw_tasks(task_rng, settings.task_count, settings, table)
    history, history_rate, history_position, _ = _draw_tasks(
        history_rng, settings.history_task_count, settings, table
    )
    return CameraNetwork(
        settings=settings,
        profiles=table,
        server_bandwidth=bandwidth,
        server_position=server_position,
        tasks=tasks,
        task_rate=rate,
        task_position=position,
        history=history,
        history_rate=history_rate,
        history_position=history_position,
        arrival_order=arrival_rng.permutation(settings.task_count).astype(np.int64),
        task_architecture=names,
    )


# --- Fig. 4a: offline schedulers against the number of servers -------------------------------

OfflineSolver = Callable[[SchedulingProblem], Assignment]


def offline_solvers(include_lp: bool = True) -> dict[str, OfflineSolver]:
    """The schedulers of Fig. 4a by name: ours, the paper's, and fixed ``k`` = 1..5."""
    solvers: dict[str, OfflineSolver] = {}
    if include_lp:
        solvers["lp_guided"] = _lp_guided_assignment
    solvers["balanced_greedy"] = solve_balanced_greedy
    solvers["paper_offline"] = solve_paper_offline
    for k in range(1, 6):
        solvers[f"fixed_k{k}"] = functools.partial(_fixed, split_layer=k)
    return solvers


def _lp_guided_assignment(problem: SchedulingProblem) -> Assignment:
    return solve_lp_guided(problem).assignment


def _fixed(problem: SchedulingProblem, split_layer: int) -> Assignment:
    return solve_fixed_split(problem, split_layer)


@dataclass(frozen=True)
class SweepRow:
    algorithm: str
    servers: int
    deployed: int
    seconds: float


def run_server_sweep(
    network: CameraNetwork,
    solvers: dict[str, OfflineSolver] | None = None,
    with_upper_bound: bool = True,
) -> list[SweepRow]:
    """Deployed tasks per scheduler per server count; every placement is checked.

    With ``with_upper_bound`` an ``lp_bound`` row per server count holds the floor of the LP
    relaxation (``lp_upper_bound``): no scheduler can deploy more.
    """
    chosen = offline_solvers() if solvers is None else solvers
    rows = []
    for server_count in network.settings.server_counts:
        problem = network.problem(server_count)
        if with_upper_bound:
            start = time.perf_counter()
            bound = lp_upper_bound(problem)
            rows.append(SweepRow("lp_bound", server_count, bound, time.perf_counter() - start))
        for name, solve in chosen.items():
            start = time.perf_counter()
            assignment = solve(problem)
            elapsed = time.perf_counter() - start
            check_assignment(problem, assignment)
            rows.append(SweepRow(name, server_count, assignment.deployed_count, elapsed))
    return rows


# --- Fig. 4b: online policies over one arrival sequence --------------------------------------


def run_arrival_sequence(network: CameraNetwork) -> dict[str, OnlineResult]:
    """Online threshold (two bound choices), FIFO and LBF on the same arrivals; all checked."""
    settings = network.settings
    problem = network.problem(settings.online_server_count)
    history = network.problem(settings.online_server_count, history=True)
    order = network.arrival_order
    results = {
        "online_threshold": solve_online_threshold(
            problem, order, density_bounds(history, settings.online_bound_quantile)
        ),
        "online_threshold_minmax": solve_online_threshold(
            problem, order, density_bounds(history, 0.0)
        ),
        "fifo": solve_fifo(problem, order),
        "lbf": solve_lbf(problem, order),
    }
    for result in results.values():
        check_assignment(problem, result.assignment)
    return results


# --- output ----------------------------------------------------------------------------------


def write_sweep_csv(rows: Sequence[SweepRow], path: Path) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["algorithm", "servers", "deployed_tasks", "solve_seconds"])
        for row in rows:
            writer.writerow([row.algorithm, row.servers, row.deployed, f"{row.seconds:.4f}"])


def write_sequence_csv(results: dict[str, OnlineResult], path: Path) -> None:
    names = list(results)
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["arrivals", *names])
        length = len(next(iter(results.values())).deployed_after_arrival) if results else 0
        for n in range(length):
            writer.writerow([n + 1, *(int(results[k].deployed_after_arrival[n]) for k in names)])


def plot_sweep(rows: Sequence[SweepRow], path: Path) -> None:
    """Fig. 4a: deployed tasks against the number of servers, one line per scheduler."""
    import matplotlib

    matplotlib.use("Agg")  # files only; never open a window, even where a display exists
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name in dict.fromkeys(row.algorithm for row in rows):
        points = [(row.servers, row.deployed) for row in rows if row.algorithm == name]
        xs, ys = zip(*points, strict=True)
        style = ":" if name == "lp_bound" else ("--" if name.startswith("fixed") else "-")
        axes.plot(xs, ys, style, marker="o", markersize=3, label=name)
    axes.set_xlabel("number of edge servers")
    axes.set_ylabel("deployed tasks")
    axes.set_title("Layer scheduling vs fixed split (cf. paper 003, Fig. 4a)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def plot_sequence(results: dict[str, OnlineResult], path: Path, server_count: int) -> None:
    """Fig. 4b: deployed tasks after each arrival, one line per online policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for name, result in results.items():
        counts = result.deployed_after_arrival
        axes.plot(np.arange(1, counts.size + 1), counts, label=name)
    axes.set_xlabel("arrived tasks")
    axes.set_ylabel("deployed tasks")
    axes.set_title(f"Online placement, {server_count} servers (cf. paper 003, Fig. 4b)")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


@dataclass(frozen=True)
class SimulationReport:
    sweep: list[SweepRow]
    sequence: dict[str, OnlineResult]
    files: tuple[Path, ...]


def run_simulation(
    settings: SimulationSettings,
    output_dir: Path,
    include_lp: bool = True,
    plots: bool = True,
) -> SimulationReport:
    """Both experiments; writes ``fig4a_servers.csv``, ``fig4b_online.csv`` and their PNGs."""
    output_dir.mkdir(parents=True, exist_ok=True)
    network = draw_network(settings)
    sweep = run_server_sweep(network, offline_solvers(include_lp), with_upper_bound=include_lp)
    sequence = run_arrival_sequence(network)
    files = [output_dir / "fig4a_servers.csv", output_dir / "fig4b_online.csv"]
    write_sweep_csv(sweep, files[0])
    write_sequence_csv(sequence, files[1])
    if plots:
        files += [output_dir / "fig4a_servers.png", output_dir / "fig4b_online.png"]
        plot_sweep(sweep, files[2])
        plot_sequence(sequence, files[3], settings.online_server_count)
    return SimulationReport(sweep, sequence, tuple(files))
