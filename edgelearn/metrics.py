"""Metric helpers shared by every process: build info, the ``/metrics`` HTTP endpoint, and
reading other processes' ``/metrics`` back, and the buckets shared by the histograms of a
frame's hops (:data:`HOP_BUCKETS`).

Naming follows ``edgelearn_<role>_<name>_<unit>``; each role defines its own metrics in its
``metrics.py`` against a registry passed in (never the global default registry, which
makes tests collide). Several worker processes on one host each serve on their own port;
port 0 asks the OS for a free one and :func:`serve_metrics` returns the port it got.
:func:`scrape` is the one reader of such endpoints (the ``up`` summary, the benchmarks).
"""

from __future__ import annotations

import http.client
import math
import os
import platform
import urllib.request
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import metadata
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Info, ProcessCollector, start_http_server
from prometheus_client.parser import text_string_to_metric_families

# A frame's hops, camera to result (``edgelearn_gateway_hop_seconds``,
# ``edgelearn_cloud_hop_seconds`` and the ages at the hand-over between them): fine where the
# latency targets are (p50 15 ms, p99 30-50 ms), up to the seconds of an overloaded run.
HOP_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15,
    0.25, 0.5, 1.0, 2.5, 5.0,
)  # fmt: skip


def package_version() -> str:
    try:
        return metadata.version("edgelearn")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def register_build_info(registry: CollectorRegistry, role: str) -> None:
    """``edgelearn_build_info{version, role, python}`` = 1, and the process's CPU and memory
    (``process_*``), which prometheus_client only exports on the default registry."""
    info = Info("edgelearn_build", "Build and role of this process", registry=registry)
    info.info({"version": package_version(), "role": role, "python": platform.python_version()})
    ProcessCollector(registry=registry)


def machine_info() -> dict[str, object]:
    """What a benchmark ran on: absolute figures mean nothing without it."""
    model = ""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            model = next(
                (
                    line.split(":", 1)[1].strip()
                    for line in cpuinfo
                    if line.startswith("model name")
                ),
                "",
            )
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model or platform.processor(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average": os.getloadavg(),
    }


class MetricsServer:
    """A running ``/metrics`` endpoint; ``close()`` stops it."""

    def __init__(self, server: WSGIServer, address: str) -> None:
        self._server = server
        self.address = address

    @property
    def port(self) -> int:
        return int(self._server.server_port)

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/metrics"

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def serve_metrics(
    registry: CollectorRegistry, port: int = 0, address: str = "127.0.0.1"
) -> MetricsServer:
    """Serve ``registry`` on ``http://address:port/metrics`` from a daemon thread."""
    server, _thread = start_http_server(port, addr=address, registry=registry)
    return MetricsServer(server, address)


Labels = dict[str, str]


@dataclass(frozen=True)
class Samples:
    """Samples read from one or more ``/metrics`` endpoints; counters of several processes
    add up. ``unreachable`` lists the endpoints that did not answer."""

    rows: tuple[tuple[str, Labels, float], ...] = ()
    unreachable: tuple[str, ...] = ()

    def values(self, name: str, **match: str) -> list[tuple[Labels, float]]:
        """``(labels, value)`` of every sample called ``name`` whose labels hold ``match``."""
        return [
            (labels, value)
            for sample, labels, value in self.rows
            if sample == name and all(labels.get(key) == wanted for key, wanted in match.items())
        ]

    def total(self, name: str, **match: str) -> float:
        return sum(value for _, value in self.values(name, **match))

    def buckets(self, name: str, **match: str) -> dict[float, float]:
        """A histogram's cumulative bucket counts by upper bound (``+Inf`` included), summed
        over every series of ``name`` (``..._bucket`` samples) whose labels hold ``match``:
        several processes', several label values'."""
        counts: dict[float, float] = {}
        for labels, value in self.values(f"{name}_bucket", **match):
            bound = float(labels["le"])
            counts[bound] = counts.get(bound, 0.0) + value
        return counts

    def by_label(self, name: str, label: str, **match: str) -> dict[str, float]:
        """Sums of ``name`` per value of ``label`` (samples without it are left out)."""
        sums: dict[str, float] = {}
        for labels, value in self.values(name, **match):
            if label in labels:
                sums[labels[label]] = sums.get(labels[label], 0.0) + value
        return sums

    def highest_by_label(self, name: str, label: str, **match: str) -> dict[str, float]:
        """The highest value of ``name`` per value of ``label``: a gauge that each of
        several processes reports about one shared thing (the registry's generations and
        held-out accuracies, seen by every cloud process), where a sum means nothing."""
        highest: dict[str, float] = {}
        for labels, value in self.values(name, **match):
            if label in labels:
                highest[labels[label]] = max(highest.get(labels[label], value), value)
        return highest


def histogram_quantile(buckets: dict[float, float], q: float) -> float | None:
    """The ``q`` quantile of cumulative bucket counts (:meth:`Samples.buckets`, or the
    difference of two of them), interpolated within its bucket as PromQL's
    ``histogram_quantile`` does; None without observations. A quantile in the ``+Inf``
    bucket is the largest finite bound (a floor)."""
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            width = count - lower_count
            return lower_bound + (bound - lower_bound) * (
                (rank - lower_count) / width if width else 1.0
            )
        lower_bound, lower_count = bound, count
    return None


def parse_samples(text: str) -> Samples:
    return Samples(
        tuple(
            (sample.name, dict(sample.labels), float(sample.value))
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        )
    )


def fetch(url: str, timeout: float = 2.0) -> str | None:
    """The text of one ``/metrics`` endpoint; None if it does not answer, or answers with
    something that is not HTTP. (Before a server listens on a local port, a connection to
    it can be the client's own socket, connected to itself: it reads back its request.)"""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return str(response.read().decode())
    except (OSError, http.client.HTTPException):
        return None


def scrape(urls: Iterable[str], timeout: float = 5.0) -> Samples:
    """Every sample of every endpoint in ``urls``, concatenated."""
    rows: list[tuple[str, Labels, float]] = []
    unreachable: list[str] = []
    for url in urls:
        text = fetch(url, timeout)
        if text is None:
            unreachable.append(url)
            continue
        rows += parse_samples(text).rows
    return Samples(tuple(rows), tuple(unreachable))
