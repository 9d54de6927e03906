"""``edgelearn schedule ...``: command-line shell around the scheduler simulation.

The lead wires it in as ``configure(schedule_parser)`` and dispatches parsed arguments to
``main(args)``. Only argument handling and printing live here; the work is ``simulate``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from cloud.scheduling.errors import SchedulingError
from cloud.scheduling.simulate import SimulationSettings, run_simulation

_DEFAULTS = SimulationSettings()


def _server_counts(text: str) -> tuple[int, ...]:
    """Parse "20,30,40" or a range "20-90:10" into server counts."""
    try:
        if "-" in text:
            span, _, step = text.partition(":")
            low, high = (int(v) for v in span.split("-", 1))
            counts = tuple(range(low, high + 1, int(step) if step else 10))
        else:
            counts = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a server count list: {text!r}") from exc
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"need positive server counts, got {text!r}")
    return counts


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from exc
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``simulate`` sub-command (and its options) to the ``schedule`` parser."""
    commands = parser.add_subparsers(
        dest="schedule_command", metavar="COMMAND", required=True, help="scheduler command"
    )
    simulate = commands.add_parser(
        "simulate",
        help="run paper 003's layer-placement simulation (Fig. 4a/4b) and write CSV + PNG",
        description=(
            "Place CNN tasks' lower layers on edge servers with the paper's offline and online "
            "schedulers, our schedulers and the baselines; write fig4a_servers.csv/.png "
            "(deployed tasks vs number of servers) and fig4b_online.csv/.png (deployed tasks "
            "over an arrival sequence)."
        ),
    )
    simulate.add_argument(
        "--servers",
        type=_server_counts,
        default=_DEFAULTS.server_counts,
        metavar="COUNTS",
        help="server counts for Fig. 4a: comma list '20,50,90' or range '20-90:10' "
        "(default: 20-90:10)",
    )
    simulate.add_argument(
        "--online-servers",
        type=_positive_int,
        default=_DEFAULTS.online_server_count,
        metavar="N",
        help=f"servers for the online experiment, Fig. 4b (default: "
        f"{_DEFAULTS.online_server_count})",
    )
    simulate.add_argument(
        "--tasks",
        type=_positive_int,
        default=_DEFAULTS.task_count,
        metavar="N",
        help=f"deep-learning tasks to place (default: {_DEFAULTS.task_count})",
    )
    simulate.add_argument(
        "--seed",
        type=int,
        default=_DEFAULTS.seed,
        help=f"seed for servers, tasks and arrival order (default: {_DEFAULTS.seed})",
    )
    simulate.add_argument(
        "--output-dir",
        type=Path,
        default=Path("schedule-simulation"),
        metavar="DIR",
        help="directory for the CSV and PNG files; created if missing "
        "(default: ./schedule-simulation)",
    )
    simulate.add_argument(
        "--frame-rate",
        type=float,
        nargs=2,
        default=_DEFAULTS.frame_rate_range,
        metavar=("MIN", "MAX"),
        help="per-task camera frame rate range in frames/s; sets the input rate d_ij together "
        "with the 100 kB-1 MB frame size (default: 15 30)",
    )
    simulate.add_argument(
        "--latency-bound",
        type=float,
        default=_DEFAULTS.latency_bound,
        metavar="SECONDS",
        help=f"latency bound Q for every task (default: {_DEFAULTS.latency_bound})",
    )
    simulate.add_argument(
        "--no-lp",
        action="store_true",
        help="skip the LP-guided scheduler and the LP-bound line (faster, no HiGHS LP)",
    )
    simulate.add_argument("--no-plots", action="store_true", help="write the CSV files only")


def main(args: argparse.Namespace) -> int:
    """Run the chosen ``schedule`` command; returns the process exit code."""
    if args.schedule_command != "simulate":  # pragma: no cover - argparse enforces the choice
        print(f"unknown schedule command {args.schedule_command!r}", file=sys.stderr)
        return 2
    try:
        settings = SimulationSettings(
            task_count=args.tasks,
            server_counts=tuple(args.servers),
            online_server_count=args.online_servers,
            frame_rate_range=(float(args.frame_rate[0]), float(args.frame_rate[1])),
            latency_bound=args.latency_bound,
            seed=args.seed,
        )
        report = run_simulation(
            settings, args.output_dir, include_lp=not args.no_lp, plots=not args.no_plots
        )
    except SchedulingError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    largest = max(settings.server_counts)
    print(f"Fig. 4a - deployed tasks of {settings.task_count} on {largest} servers:")
    for row in report.sweep:
        if row.servers == largest:
            print(f"  {row.algorithm:<24} {row.deployed:>5}   {row.seconds:7.3f} s")
    print(f"Fig. 4b - deployed after all arrivals on {settings.online_server_count} servers:")
    for name, result in report.sequence.items():
        print(f"  {name:<24} {int(result.deployed_after_arrival[-1]):>5}")
    for path in report.files:
        print(f"wrote {path}")
    return 0
