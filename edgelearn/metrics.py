"""Metric helpers shared by every process: build info and the ``/metrics`` HTTP endpoint.

Naming follows ``edgelearn_<role>_<name>_<unit>``; each role defines its own metrics in its
``metrics.py`` against a registry passed in (never the global default registry, which
makes tests collide). Several worker processes on one host each serve on their own port;
port 0 asks the OS for a free one and :func:`serve_metrics` returns the port it got.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Info, ProcessCollector, start_http_server


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
