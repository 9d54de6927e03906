"""The benchmarks' model registry: every mode trained once on the quick plan and cached
(speed and bytes depend on the architecture, not on how well a model was trained; where
accuracy matters a benchmark trains afresh or takes a registry of its own)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench.runs import work_dir
from cloud.registry import Registry

BENCH_SPLIT_KS = (2, 4, 6, 8)


def bench_registry_path() -> Path:
    explicit = os.environ.get("EDGELEARN_BENCH_REGISTRY")
    if explicit:
        return Path(explicit).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "edgelearn" / "bench-registry"


def bench_registry(split_ks: Sequence[int] = BENCH_SPLIT_KS) -> tuple[Registry, dict[str, Any]]:
    """A registry with every mode, trained once on the quick plan (every generation) and
    then reused from a cache directory (``$EDGELEARN_BENCH_REGISTRY``, else
    ``~/.cache/edgelearn/bench-registry``), and what it holds."""
    from cloud.bootstrap import TrainingPlan, train_plan, with_splits

    root = bench_registry_path()
    root.mkdir(parents=True, exist_ok=True)
    registry = Registry(root)
    started = time.perf_counter()
    outcomes = train_plan(registry, with_splits(TrainingPlan.quick(), split_ks))
    return registry, {
        "registry": str(root),
        "budget": "TrainingPlan.quick()",
        "split_ks": list(split_ks),
        "trained_now": bool(outcomes),
        "training_seconds": round(time.perf_counter() - started, 1) if outcomes else 0,
        "entries": {
            f"{entry.name}/{entry.version}": {
                "kind": entry.kind,
                "split_k": entry.split_k,
                "accuracy": entry.accuracy,
            }
            for entry in registry.list()
        },
    }


def registry_run(
    part: str, quick: bool, measure: Callable[[Registry, Path], dict[str, Any]]
) -> dict[str, Any]:
    """A benchmark part's report: ``measure(bench registry, work directory)`` and what it
    ran on, the models it used and how long it took."""
    from edgelearn.metrics import machine_info

    started = time.perf_counter()
    registry, models = bench_registry()
    with work_dir(part) as directory:
        report = measure(registry, directory)
    return {
        "benchmark": part,
        "quick": quick,
        "machine": machine_info(),
        "models": models,
        **report,
        "elapsed_seconds": round(time.perf_counter() - started, 1),
    }
