"""``edgelearn schedule simulate`` through ``configure``/``main``, and the benchmark helpers."""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import pytest

from bench import schedule as bench
from cloud.scheduling import cli


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="edgelearn schedule")
    cli.configure(parser)
    return parser.parse_args(list(argv))


def test_simulate_writes_both_figures(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    args = parse(
        "simulate",
        "--tasks",
        "60",
        "--servers",
        "3,5",
        "--online-servers",
        "4",
        "--seed",
        "1",
        "--output-dir",
        str(out),
    )
    assert cli.main(args) == 0
    with (out / "fig4a_servers.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    algorithms = {row["algorithm"] for row in rows}
    assert {
        "lp_guided",
        "balanced_greedy",
        "paper_offline",
        "fixed_k1",
        "fixed_k5",
        "lp_bound",
    } <= algorithms
    assert {row["servers"] for row in rows} == {"3", "5"}
    for row in rows:
        assert 0 <= int(row["deployed_tasks"]) <= 60
    with (out / "fig4b_online.csv").open() as handle:
        sequence = list(csv.DictReader(handle))
    assert len(sequence) == 60 and set(sequence[0]) >= {"arrivals", "fifo", "lbf"}
    for name in ("fig4a_servers.png", "fig4b_online.png"):
        assert (out / name).read_bytes().startswith(b"\x89PNG")
    assert "wrote" in capsys.readouterr().out


def test_no_lp_and_no_plots(tmp_path: Path) -> None:
    args = parse(
        "simulate",
        "--tasks",
        "30",
        "--servers",
        "2-4:2",
        "--online-servers",
        "3",
        "--output-dir",
        str(tmp_path),
        "--no-lp",
        "--no-plots",
    )
    assert args.servers == (2, 4)
    assert cli.main(args) == 0
    assert not list(tmp_path.glob("*.png"))
    text = (tmp_path / "fig4a_servers.csv").read_text()
    assert "lp_guided" not in text and "lp_bound" not in text


@pytest.mark.parametrize("bad", ["", "0,3", "a,b", "20-x"])
def test_bad_server_lists_are_rejected(bad: str) -> None:
    with pytest.raises(SystemExit):
        parse("simulate", "--servers", bad)


def test_invalid_settings_exit_with_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    args = parse("simulate", "--frame-rate", "30", "10", "--output-dir", "unused")
    assert cli.main(args) == 2
    assert "frame_rate_range" in capsys.readouterr().err


def test_every_option_has_help() -> None:
    parser = argparse.ArgumentParser()
    cli.configure(parser)
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for action in subparsers.choices["simulate"]._actions:
        assert action.help, action.dest


def test_ahead_from_finds_the_last_overtake() -> None:
    assert bench._ahead_from(np.array([1, 2, 3]), np.array([0, 0, 0])) == 1
    assert bench._ahead_from(np.array([1, 2, 5, 6]), np.array([1, 3, 4, 4])) == 3
    assert bench._ahead_from(np.array([1, 2]), np.array([1, 2])) is None
