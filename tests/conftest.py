"""Shared fixtures: a real mosquitto with the project's config, per-test sites, MQTT probes.

The broker is started once per session on free ports from the same templates and the same
``broker init`` code a user runs, and stopped at the end. Each test gets its own ``site``
(a topic namespace), so tests never see each other's messages.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from stack import broker as broker_module
from stack.postgres import RunningPostgres, start_postgres
from tests.support.broker import BridgedSite, BrokerUnderTest
from tests.support.mqtt import MqttProbe, open_probe

TIERS = ("e2e", "training", "broker")  # heaviest first; a test with none of them is "unit"
# a real server of any kind: the broker tier
_BROKER_FIXTURES = {"broker", "bridged", "mqtt_probe", "postgres_server", "postgres_url"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test not marked with a tier gets one: ``training`` when it takes the trained
    registry, else ``broker`` when it takes a server (mosquitto, PostgreSQL), else
    ``unit``. (Marked by hand: whole stacks, ``e2e``, and tests that train models of their
    own, ``training``.)

    Then the order the two workers take modules in. ``--dist loadscope`` hands out whole
    modules, so a module's fixtures (a trained model, a benchmark's run) are made once; the
    modules with the heaviest tier go first, whole stacks before training before brokers,
    so the longest ones do not start last. (``xdist_group`` marks would be finer, but
    pytest-xdist 3.8 cannot apply them under pytest 9: its ``@group`` suffix no longer
    reaches the node id, and each module-scoped fixture was made on both workers.)"""
    for item in items:
        if any(item.get_closest_marker(tier) is not None for tier in TIERS):
            continue
        fixtures = set(getattr(item, "fixturenames", ()))
        if "trained_registry" in fixtures:
            item.add_marker("training")
        elif fixtures & _BROKER_FIXTURES:
            item.add_marker("broker")
        else:
            item.add_marker("unit")
    rank: dict[str, tuple[int, bool]] = {}
    for item in items:
        tier = next((n for n, t in enumerate(TIERS) if item.get_closest_marker(t)), len(TIERS))
        module = item.nodeid.split("::")[0]
        registry = "trained_registry" in getattr(item, "fixturenames", ())
        before = rank.get(module, (tier, registry))
        rank[module] = (min(before[0], tier), before[1] or registry)
    # Within a tier, modules that need no trained registry first: the first module to need
    # it trains it (over a minute) under a lock while the other worker has work of its own
    # (measured: 60 s idle otherwise).
    items.sort(key=lambda item: rank[item.nodeid.split("::")[0]])  # stable: in module order


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerUnderTest]:
    root = tmp_path_factory.mktemp("broker")
    secrets = broker_module.init_secrets(root / "secrets", cameras=16, gateways=4)
    running = broker_module.start_broker(
        secrets, broker_module.BrokerSettings(role="edge", run_dir=root / "run")
    )
    try:
        yield BrokerUnderTest(running)
    finally:
        running.stop()


@pytest.fixture
def bridged(broker: BrokerUnderTest, tmp_path: Path) -> Iterator[BridgedSite]:
    secrets = broker.secrets
    cloud = broker_module.start_broker(
        secrets, broker_module.BrokerSettings(role="cloud", run_dir=tmp_path / "cloud-broker")
    )
    try:
        edge = broker_module.start_broker(
            secrets,
            broker_module.BrokerSettings(
                role="edge",
                run_dir=tmp_path / "edge-broker",
                bridge=broker_module.Bridge(cloud.host, cloud.port),
            ),
        )
    except BaseException:
        cloud.stop()
        raise
    site = BridgedSite(tmp_path, BrokerUnderTest(cloud), BrokerUnderTest(edge))
    try:
        yield site
    finally:
        site.stop()


_site_counter = itertools.count()


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[RunningPostgres]:
    """A real PostgreSQL from ``initdb``/``pg_ctl``, as ``up --clouds`` starts one: on a
    free port, in a folder of its own under /tmp (as root it runs as ``postgres``, which
    cannot enter pytest's private temporary folders)."""
    root = Path(tempfile.mkdtemp(prefix="edgelearn-pg-"))
    root.chmod(0o755)  # the server's user enters it
    server = start_postgres(root / "run")
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def postgres_url(postgres_server: RunningPostgres) -> Iterator[str]:
    """A database of its own for one test, on the session's server."""
    import psycopg

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = postgres_server.url.rsplit("/", 1)[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f"CREATE DATABASE {name}")
    yield postgres_server.url.rsplit("/", 1)[0] + f"/{name}"
    if postgres_server.pid() is not None:
        with psycopg.connect(admin, autocommit=True) as connection:
            connection.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def site() -> str:
    return f"t{next(_site_counter)}-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def mqtt_probe(broker: BrokerUnderTest) -> Iterator[Callable[..., MqttProbe]]:
    """``mqtt_probe(user, tls=False, password=None)`` -> a connected :class:`MqttProbe`."""
    probes: list[MqttProbe] = []

    def connect(user: str | None, **options: Any) -> MqttProbe:
        probe = open_probe(broker, user, **options)
        probes.append(probe)
        return probe

    yield connect
    for probe in probes:
        probe.close()


@pytest.fixture(scope="session")
def trained_registry(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry with every mode trained on the quick plan, both its generations (about a
    minute on 2 cores): the CNN split at k=2, full, cloud-only, PCA and autoencoder. Shared
    by the end-to-end tests (a cloud on it has nothing left to grow); its accuracies are
    far below the default plan's (see the benchmarks). Read it; a test that writes to a
    registry (a promotion, a grown generation) copies it first.

    Trained once per run: with the suite spread over worker processes (pytest-xdist), the
    first worker to ask trains it under a file lock in the run's shared temporary folder
    and the others wait for it and take the same one."""
    from filelock import FileLock

    from cloud.bootstrap import TrainingPlan, train_plan
    from cloud.registry import Registry

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's folder, above each worker's own
    root = shared / "trained-registry"
    with FileLock(str(root) + ".lock"):
        done = root / ".trained"
        if not done.exists():
            root.mkdir(parents=True, exist_ok=True)
            train_plan(Registry(root), TrainingPlan.quick())
            done.touch()
    return root


@pytest.fixture
def registry_copy(trained_registry: Path, tmp_path: Path) -> Path:
    """The session's quick registry, copied: promotions write to it."""
    target = tmp_path / "registry"
    shutil.copytree(trained_registry, target)
    return target
