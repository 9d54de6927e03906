"""Benchmarks: ``edgelearn bench <part> [--quick] [--output F.json]``, one module a part.

Each part's module has ``run(quick: bool) -> dict``, a JSON-able report that measures the
edge modes side by side with the cloud-only one in the same run; what several parts
share has a module of its own: :mod:`bench.registry` (the cached bench model registry),
:mod:`bench.workload` (many cameras' frames, paced), :mod:`bench.clients` (MQTT clients) and
:mod:`bench.runs` (waiting, work directories, percentiles); camera frames come from
:mod:`cameras.replay`. The pipeline benchmark starts the stack through
:mod:`stack.launcher`, as ``edgelearn up`` does. Benchmarks sit at the top of the house,
beside :mod:`stack`: they may import every role, and only the ``edgelearn bench`` command
(:data:`stack.cli.BENCHMARKS`) loads them, by name.
"""
