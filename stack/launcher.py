"""The one launcher of the whole local stack, used by ``edgelearn up`` and the benchmarks.

What :func:`launch` starts, in order, each but the brokers as a child process that ends with
this one::

    cloud broker  <--bridge--  edge broker            (mosquitto; raw frames stay on the edge)
    edgelearn cloud     on the cloud broker            (trains a first model set if the
                                                        registry is empty, pushes it, serves,
                                                        plans the gateways' modes)
    edgelearn gateway   on the edge broker             (a pool of workers; the mode is the
                                                        planner's unless one is pinned)
    edgelearn camera    on the edge broker             (labeled-scene cameras, and one camera
                                                        replaying a real video file)
    Prometheus                                         (when installed; scrapes everything)

Each step waits until the one before is ready: a broker until it accepts connections, the
gateway until the cloud printed ``pushed`` (its models are retained on the broker), the
cameras until every gateway worker printed its ``metrics`` line. A child's output goes to
``<run_dir>/<name>.log``, and to the console when ``echo`` is set. Children and brokers get
SIGTERM when this process dies for any reason (Linux ``PR_SET_PDEATHSIG``), so nothing
outlives it.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import os
import secrets as random_source
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cameras.config import CameraConfig
from cameras.sources import STREAM_SCHEMES
from cloud.config import CloudConfig, LearnConfig, PlanConfig
from cloud.models.teacher import TeacherSpec
from edgelearn import config as config_module
from edgelearn import wire
from edgelearn.config import BrokerConfig
from edgelearn.datasets import parse_dataset
from edgelearn.metrics import fetch
from edgelearn.modes import Mode
from edgelearn.ports import free_port, port_in_use
from edgelearn.secrets import Secrets, default_secrets_dir
from gateway.config import GatewayConfig
from stack import broker
from stack.postgres import RunningPostgres, start_postgres

SAMPLE_VIDEO = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")
PROMETHEUS_CONFIG = Path(__file__).resolve().parent.parent / "dashboards" / "prometheus"
AUTO_MODE = "auto"
GATEWAY_ID = "gw-1"
KEPT_LINES = 200  # of each child's output, for error messages and waits
SEED_LIMIT = 2**31  # cameras' seeds: camera i of a run uses seed + i


class StackError(RuntimeError):
    """Something the user can fix: a port in use, a missing program or file, a child that
    exited while it was awaited."""


VIDEO_SUFFIXES = (".avi", ".mp4", ".mkv", ".mov", ".webm", ".mpg", ".mpeg", ".m4v")


def video_sources(videos: Sequence[str]) -> list[str]:
    """One camera source per video: a file (``video:PATH``), every video file of a folder
    (sorted, by suffix: :data:`VIDEO_SUFFIXES`), or a live stream's URL as it is. Raises
    :class:`StackError` for a missing file or a folder with no video in it."""
    sources = []
    for video in videos:
        if video.startswith(STREAM_SCHEMES):
            sources.append(video)
            continue
        path = Path(video).expanduser()
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.suffix.lower() in VIDEO_SUFFIXES)
            if not files:
                raise StackError(f"no video in {path} (looked for {', '.join(VIDEO_SUFFIXES)})")
            sources += [f"video:{file}" for file in files]
        elif path.is_file():
            sources.append(f"video:{path}")
        elif path == SAMPLE_VIDEO:
            raise StackError(
                f"sample video {path} is missing: install Debian's opencv-doc package, or "
                "pass --video PATH or --video none"
            )
        else:
            raise StackError(f"video {path} is missing")
    return sources


@dataclass
class Child:
    """One child process of the stack; :meth:`restart` starts it again with the same command
    (same ports, same files), so its metrics URLs stay valid."""

    name: str
    command: list[str]
    env: dict[str, str]
    owner: ChildProcesses
    process: subprocess.Popen[str] = field(init=False)
    lines: collections.deque[str] = field(
        default_factory=lambda: collections.deque(maxlen=KEPT_LINES)
    )
    line_count: int = 0  # every line it printed; ``lines`` keeps the last ``KEPT_LINES``
    metrics_urls: list[str] = field(default_factory=list)
    site: str | None = None

    def exit_code(self) -> int | None:
        return self.process.poll()

    def restart(self) -> None:
        self.owner.run(self, append=True)

    def responsive(self) -> bool:
        return all(fetch(url) is not None for url in self.metrics_urls)


def notable(line: str) -> bool:
    """Whether a child's output line belongs on the console: warnings, errors, tracebacks
    and our own one-line errors; not routine start-up lines, Prometheus's info lines or
    TensorFlow's retracing warnings (the child's log file has everything)."""
    if line.startswith(("WARNING:tensorflow", "I0000", "W0000", "WARNING: All log")):
        return False
    if " WARNING tensorflow:" in line:  # retracing and other training chatter
        return False
    if "level=" in line:  # Prometheus's logfmt
        return "level=error" in line.lower() or "level=warn" in line.lower()
    return any(
        f" {level} " in line for level in ("WARNING", "ERROR", "CRITICAL")
    ) or line.startswith(("Traceback", "edgelearn ", "ERROR", "CRITICAL"))


class ChildProcesses:
    """Children started with :meth:`start`, each one's output kept and logged to
    ``<log_dir>/<name>.log``; with ``echo``, the :func:`notable` lines also go to the
    console."""

    def __init__(self, log_dir: Path, echo: bool) -> None:
        self.children: list[Child] = []
        self.log_dir = log_dir
        self.echo = echo
        self._printed = threading.Condition()

    def start(self, name: str, command: list[str], env: dict[str, str]) -> Child:
        child = Child(name, command, env, self)
        self.run(child, append=False)
        self.children.append(child)
        return child

    def run(self, child: Child, *, append: bool) -> None:
        child.process = subprocess.Popen(
            child.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            env=child.env,
            # A session of its own: a terminal's Ctrl-C goes to its whole foreground group,
            # which would stop every child and broker at once (brokers before their
            # clients); here only ``up`` hears it, and stops them in order (:meth:`stop`).
            start_new_session=True,
            preexec_fn=broker.die_with_parent,
        )
        threading.Thread(
            target=self._pump,
            args=(child, child.process, "a" if append else "w"),
            name=f"pump-{child.name}",
            daemon=True,
        ).start()

    def _pump(self, child: Child, process: subprocess.Popen[str], mode: str) -> None:
        assert process.stdout is not None
        with (self.log_dir / f"{child.name}.log").open(mode) as log:
            for line in process.stdout:
                log.write(line)
                log.flush()
                with self._printed:
                    child.lines.append(line.rstrip("\n"))
                    child.line_count += 1
                    self._printed.notify_all()
                if self.echo and notable(line):
                    print(f"  {child.name:>8} | {line.rstrip()}", flush=True)
        process.wait()
        with self._printed:  # its output ended: wake the waiters, who then see the exit
            self._printed.notify_all()

    def wait_for_line(self, child: Child, text: str, timeout: float, after: int = 0) -> int:
        """Wait until ``child`` prints a line holding ``text``, its ``after``-th line or a
        later one; returns that line's number + 1 (pass it as ``after`` to wait for the next
        one). Raises :class:`StackError` if the child exits or ``timeout`` passes first."""
        deadline = time.monotonic() + timeout
        with self._printed:
            while True:
                first_kept = child.line_count - len(child.lines)
                for number in range(max(after, first_kept), child.line_count):
                    if text in child.lines[number - first_kept]:
                        return number + 1
                after = max(after, child.line_count)
                if child.process.poll() is not None:
                    tail = "\n".join(list(child.lines)[-15:])
                    raise StackError(
                        f"{child.name} exited with {child.process.returncode}:\n{tail}"
                    )
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise StackError(f"{child.name} did not print {text!r} within {timeout:.0f} s")
                self._printed.wait(remaining)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop the children newest first, each gone before the next is told: cameras,
        then gateways (their last features out), then the cloud (its last answers out),
        while the brokers still run. SIGTERM, and SIGKILL for one still running
        ``timeout`` seconds after its own SIGTERM."""
        for child in reversed(self.children):
            if child.process.poll() is not None:
                continue
            child.process.send_signal(signal.SIGTERM)
            try:
                child.process.wait(timeout)
            except subprocess.TimeoutExpired:
                print(f"edgelearn up: {child.name} still running {timeout:.0f} s after "
                      "SIGTERM: killed", file=sys.stderr, flush=True)  # fmt: skip
                child.process.kill()
                child.process.wait()


@dataclass
class StackSettings:
    run_dir: Path = field(default_factory=lambda: Path.cwd() / "run" / "stack")
    secrets: Path | None = None
    registry: Path | None = None
    site: str = wire.DEFAULT_SITE
    edge_port: int = 1883  # 0: a free port
    cloud_port: int = 1884
    prometheus_port: int = 9090
    prometheus: bool = True  # when installed
    mode: str = AUTO_MODE  # auto: the cloud's planner picks each gateway's mode
    split_ks: tuple[int, ...] = (2, 4, 6, 8)
    budget: str = "default"  # training budget of a first model set
    dataset: str = "fashion-mnist"  # what it learns and the labeled cameras show (folder:PATH)
    learn: bool = True  # the cloud's continuous trainer
    grow: bool = True  # the cloud's later model generations, in the background
    learn_every: int | None = None  # its trigger in labeled objects; None: the cloud's default
    # the gateways' teacher (cloud.models.teacher.TeacherSpec): None, the packaged one
    teacher: TeacherSpec = field(default_factory=TeacherSpec)
    feature_store: Path | None = None  # default: <run_dir>/features
    workers: int = 1
    # The gateways' own settings beyond what the stack decides (their id, site, broker,
    # mode, uplink, ports, outbox folder): GatewayConfig's fields by name, for example
    # {"queue_depth": 8, "learning_sample": 5}; each gateway gets them in its config file.
    gateway: Mapping[str, Any] = field(default_factory=dict)
    uplink_kbps: float = 0.0  # the gateway's uplink as the planner sees it; 0: not configured
    labeled_cameras: int = 4
    # The labeled cameras' scenes (which items, where, in what light); None: a fresh one
    # each run, so two runs are two independent samples of items.
    seed: int | None = None
    # One camera each: video files, folders of them, or live streams (rtsp://...).
    videos: tuple[str, ...] = (str(SAMPLE_VIDEO),)
    fps: float = 15.0
    camera_users: int = 0  # camera users to ensure beyond the stack's own cameras
    sites: int = 1  # edge sites, each with its broker, gateway pool and cameras
    consumers: int = 2  # cloud consumers in one shared-subscription group
    # Cloud processes, as on as many machines: with more than one, they share a PostgreSQL
    # the stack starts (their ledger, training store and trainer lease) and the registry
    # folder (their models), and their consumers form one shared-subscription group.
    clouds: int = 1
    # Where the edge brokers' bridges reach the cloud broker, when not directly (a WAN link,
    # a relay: ``bench faults`` cuts the bridge there). None: the cloud broker itself.
    bridge_address: tuple[str, int] | None = None
    echo: bool = True

    def __post_init__(self) -> None:
        if not self.plans:
            Mode.parse(self.mode)  # ModeError (a ValueError) with a clear message
        if self.sites < 1 or self.consumers < 1 or self.workers < 1 or self.clouds < 1:
            raise ValueError("sites, consumers, clouds and workers must be at least 1")
        unknown = sorted(set(self.gateway) - {f.name for f in dataclasses.fields(GatewayConfig)})
        if unknown:
            raise ValueError(f"gateway settings {unknown}: GatewayConfig has no such fields")
        if self.seed is not None and not 0 <= self.seed < SEED_LIMIT:
            raise ValueError(f"the cameras' seed must be in 0..{SEED_LIMIT - 1}")

    def site_names(self) -> list[str]:
        """One site keeps ``site``; several are ``<site>-1``, ``<site>-2``..."""
        if self.sites == 1:
            return [self.site]
        return [f"{self.site}-{number}" for number in range(1, self.sites + 1)]

    @property
    def cameras_per_site(self) -> int:
        return self.labeled_cameras + len(video_sources(self.videos))

    @property
    def plans(self) -> bool:
        return self.mode == AUTO_MODE

    def initial_mode(self) -> str:
        """The mode the gateway starts in: the pinned one, or until its first plan the
        deepest split served."""
        if not self.plans:
            return self.mode
        return str(Mode.split(max(self.split_ks))) if self.split_ks else "raw"


class BrokerPart:
    """A mosquitto of the stack, restartable on the same port and persistence directory."""

    def __init__(self, name: str, secrets: Secrets, settings: broker.BrokerSettings) -> None:
        self.name = name
        self.secrets = secrets
        self.running = broker.start_broker(secrets, settings)
        # A restart takes the same ports (the bridge and the clients know them).
        self.settings = dataclasses.replace(
            settings, port=self.running.port, tls_port=self.running.tls_port
        )

    @property
    def port(self) -> int:
        return self.running.port

    def exit_code(self) -> int | None:
        return self.running.process.poll()

    def restart(self) -> None:
        self.running = broker.start_broker(self.secrets, self.settings)

    def responsive(self) -> bool:
        try:
            with socket.create_connection((self.running.host, self.running.port), timeout=2.0):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        self.running.stop()


@dataclass
class Site:
    """One edge site: its broker, bridged into the cloud broker, its gateway and cameras."""

    name: str
    gateway_id: str
    broker: BrokerPart
    gateway: Child | None = None
    cameras: list[Child] = field(default_factory=list)


@dataclass
class RunningStack:
    children: ChildProcesses
    secrets: Secrets
    cloud_broker_part: BrokerPart
    sites: list[Site]
    cloud: Child  # the first cloud process (it publishes the object events)
    prometheus: str | None
    seed: int  # the labeled cameras' (camera n of the stack: seed + n - 1)
    clouds: list[Child] = field(default_factory=list)  # every cloud process, ``cloud`` first
    postgres: RunningPostgres | None = None  # the clouds' shared store, when several

    @property
    def edge_broker(self) -> broker.RunningBroker:
        return self.sites[0].broker.running

    @property
    def cloud_broker(self) -> broker.RunningBroker:
        return self.cloud_broker_part.running

    @property
    def gateway(self) -> Child:
        assert self.sites[0].gateway is not None
        return self.sites[0].gateway

    @property
    def cameras(self) -> list[Child]:
        return [camera for site in self.sites for camera in site.cameras]

    @property
    def parts(self) -> list[BrokerPart | Child]:
        """Everything a supervisor watches: brokers first, then the children."""
        brokers: list[BrokerPart | Child] = [self.cloud_broker_part]
        brokers += [site.broker for site in self.sites]
        return brokers + list(self.children.children)

    @property
    def metrics_urls(self) -> list[str]:
        return [url for child in self.children.children for url in child.metrics_urls]

    def observer_config(self) -> BrokerConfig:
        """How an observer of the whole stack (dashboards, summaries) reaches the cloud
        broker, where every site's features and results arrive."""
        return BrokerConfig.for_user(
            "observer", port=self.cloud_broker.port, secrets_dir=self.secrets.directory
        )

    def info(self) -> dict[str, str]:
        found = {"cloud_broker": f"127.0.0.1:{self.cloud_broker.port}"}
        for site in self.sites:
            key = "edge_broker" if len(self.sites) == 1 else f"edge_broker {site.name}"
            found[key] = f"127.0.0.1:{site.broker.port}"
        if self.postgres is not None:
            found["postgresql"] = f"127.0.0.1:{self.postgres.port} ({len(self.clouds)} clouds)"
        if self.prometheus:
            found["prometheus"] = self.prometheus
        found["seed"] = f"{self.seed} (the cameras' items; --seed {self.seed} shows them again)"
        return found


def child_env(secrets: Path, registry: Path | None = None) -> dict[str, str]:
    """The environment of the stack's child processes: where the secrets (and models) are,
    unbuffered output, and TensorFlow's start-up chatter turned down."""
    env = {
        **os.environ,
        "EDGELEARN_SECRETS": str(secrets),
        "PYTHONUNBUFFERED": "1",
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    if registry is not None:
        env["EDGELEARN_REGISTRY"] = str(registry)
    return env


def edgelearn_command(*arguments: str) -> list[str]:
    """The ``edgelearn`` command as a child process runs it (this interpreter, this code)."""
    return [sys.executable, "-m", "stack", *arguments]


def _port(port: int, what: str, flag: str) -> int:
    if port == 0:
        return free_port()
    if port_in_use("127.0.0.1", port):
        raise StackError(
            f"port {port} ({what}) is in use: stop what runs there or pass "
            f"{flag} with another port (0 picks a free one)"
        )
    return port


def _secrets(settings: StackSettings, cameras: int, gateways: int) -> Secrets:
    """The stack's secrets, made on first use, with a user for every camera and gateway it
    runs."""
    directory = settings.secrets or default_secrets_dir()
    secrets = Secrets(directory)
    if not secrets.exists():
        broker.init_secrets(directory, cameras=max(16, cameras), gateways=max(4, gateways))
    known = {user.name for user in secrets.users()}
    wanted = [(f"cam-{n}", "camera") for n in range(1, cameras + 1)]
    wanted += [(f"gw-{n}", "gateway") for n in range(1, gateways + 1)]
    for name, role in wanted:
        if name not in known:
            broker.add_user(directory, name, role)
    return secrets


@contextlib.contextmanager
def launch(settings: StackSettings) -> Iterator[RunningStack]:
    """Start everything ``settings`` asks for; yields the running stack and stops all of
    it on exit, whatever happened."""
    broker.mosquitto_binary()  # a clear error before anything starts
    video_sources(settings.videos)  # a clear error before anything starts
    run_dir = settings.run_dir
    run_dir.mkdir(parents=True, exist_ok=True)
    seed = random_source.randbelow(SEED_LIMIT - 1000) if settings.seed is None else settings.seed
    own_cameras = settings.cameras_per_site * settings.sites
    secrets = _secrets(settings, max(own_cameras, settings.camera_users), settings.sites)
    cloud_port = _port(settings.cloud_port, "cloud broker", "--cloud-port")
    edge_ports = [_port(settings.edge_port, "edge broker", "--edge-port")]
    edge_ports += [free_port() for _ in range(settings.sites - 1)]
    prometheus_binary = shutil.which("prometheus") if settings.prometheus else None
    if prometheus_binary and not PROMETHEUS_CONFIG.is_dir():
        print(f"no Prometheus config in {PROMETHEUS_CONFIG}: not starting Prometheus")
        prometheus_binary = None
    prometheus_port = (
        _port(settings.prometheus_port, "Prometheus", "--prometheus-port")
        if prometheus_binary
        else 0
    )
    env = child_env(secrets.directory, settings.registry)
    children = ChildProcesses(run_dir, settings.echo)
    brokers: list[BrokerPart] = []
    postgres: RunningPostgres | None = None
    stopping: list[Callable[[], None]] = []  # after the children and brokers
    try:
        cloud_broker = BrokerPart(
            "broker-cloud",
            secrets,
            broker.BrokerSettings(
                role="cloud", port=cloud_port, tls_port=0, run_dir=run_dir / "broker-cloud"
            ),
        )
        brokers.append(cloud_broker)
        sites = []
        for number, (name, port) in enumerate(
            zip(settings.site_names(), edge_ports, strict=True), 1
        ):
            part_name = "broker-edge" if settings.sites == 1 else f"broker-{name}"
            edge = BrokerPart(
                part_name,
                secrets,
                broker.BrokerSettings(
                    role="edge",
                    port=port,
                    tls_port=0,
                    run_dir=run_dir / part_name,
                    bridge=broker.Bridge(
                        *(settings.bridge_address or ("127.0.0.1", cloud_broker.port)),
                        name=f"{name}-to-cloud",
                        site=name,
                    ),
                ),
            )
            brokers.append(edge)
            sites.append(Site(name, f"gw-{number}", edge))
        if settings.clouds > 1:
            postgres = start_postgres(postgres_dir(run_dir))
            stopping.append(postgres.stop)
        clouds = [_start_cloud(children, settings, cloud_broker.port, env, postgres)]
        # the others once the first has trained what the registry lacked and pushed it
        clouds += [
            _start_cloud(children, settings, cloud_broker.port, env, postgres, number)
            for number in range(2, settings.clouds + 1)
        ]
        for number, site in enumerate(sites):
            site.gateway = start_gateway(
                children,
                settings,
                site.broker.port,
                env,
                site=site.name,
                gateway_id=site.gateway_id,
            )
            first_camera = 1 + number * settings.cameras_per_site
            site.cameras = _start_cameras(children, settings, site, first_camera, seed, env)
        prometheus = None
        if prometheus_binary:
            prometheus = _start_prometheus(
                children, prometheus_binary, run_dir, prometheus_port, sites, env
            )
        yield RunningStack(
            children, secrets, cloud_broker, sites, clouds[0], prometheus, seed, clouds, postgres
        )
    finally:
        children.stop()
        for part in reversed(brokers):
            part.stop()
        for stop in stopping:
            stop()


def _metrics_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/metrics"


def postgres_dir(run_dir: Path) -> Path:
    """Where the stack's PostgreSQL keeps its cluster: in the run folder, unless the server's
    user (``postgres``, when we are root) could not enter it (a home of mode 0700): then a
    folder of its own in the system's temporary folder, named after the run folder."""
    if os.geteuid() != 0 or all(
        folder.stat().st_mode & 0o001 for folder in [run_dir.resolve(), *run_dir.resolve().parents]
    ):
        return run_dir / "postgres"
    digest = hashlib.sha256(str(run_dir.resolve()).encode()).hexdigest()[:10]
    folder = Path(tempfile.gettempdir()) / f"edgelearn-postgres-{digest}"
    folder.mkdir(mode=0o755, exist_ok=True)
    folder.chmod(0o755)
    return folder / "run"


def _start_cloud(
    children: ChildProcesses,
    settings: StackSettings,
    broker_port: int,
    env: dict[str, str],
    postgres: RunningPostgres | None = None,
    number: int = 1,
) -> Child:
    """Cloud process ``number`` (1: ``cloud``, which also publishes the object events; then
    ``cloud-2``...); with ``postgres``, its store is that server. Returns once it pushed
    its models (it trained a first set if the registry had none)."""
    metrics_port = free_port()  # one for the process, whatever its consumers
    name = "cloud" if number == 1 else f"cloud-{number}"
    store: Path | str = settings.feature_store or settings.run_dir / "features"
    if postgres is not None:
        store = postgres.url
    config = CloudConfig(
        cloud_id=name,
        events=number == 1,
        broker=f"127.0.0.1:{broker_port}",
        site=settings.site if settings.sites == 1 else wire.ANY_SITE,
        registry=settings.registry,  # None: the environment's (child_env), or the state's
        consumers=settings.consumers,
        push_sites=tuple(settings.site_names()),
        budget=settings.budget,
        split_ks=settings.split_ks,
        metrics_port=metrics_port,
        feature_store=str(store),
        dataset=settings.dataset,
        grow=settings.grow,
        teacher_model=str(settings.teacher.model or ""),
        teacher_labels=str(settings.teacher.labels or ""),
        teacher_classes=settings.teacher.classes,
        plan=PlanConfig(enabled=settings.plans),
        learn=LearnConfig(enabled=settings.learn, every=settings.learn_every),
    )
    config_file = settings.run_dir / f"{name}.toml"  # its settings, as it reads them
    config_file.write_text(config_module.dump(config, "cloud"))
    command = edgelearn_command("cloud", "--config", str(config_file))
    cloud = children.start(name, command, env)
    cloud.metrics_urls.append(_metrics_url(metrics_port))
    # A first generation takes tens of seconds: the cloud says "serving" as soon as one of
    # its models answers (the gateway runs raw until the model of its mode arrives).
    children.wait_for_line(cloud, "serving", timeout=3600)
    if settings.clouds > 1:  # the next one finds the models in the registry, not training
        children.wait_for_line(cloud, "pushed", timeout=3600)
    return cloud


def start_gateway(
    children: ChildProcesses,
    settings: StackSettings,
    broker_port: int,
    env: dict[str, str],
    *,
    site: str | None = None,
    gateway_id: str = GATEWAY_ID,
) -> Child:
    """``edgelearn gateway`` with ``settings.workers`` workers on the broker at
    ``broker_port`` for ``site`` (default ``settings.site``); returns once every worker is
    connected (it printed its metrics URL)."""
    site = site or settings.site
    metrics_port = free_port(count=settings.workers)
    config = GatewayConfig(
        **{
            **settings.gateway,
            "gateway_id": gateway_id,
            "site": site,
            "broker_port": broker_port,
            "mode": settings.initial_mode(),
            "uplink_kbps": settings.uplink_kbps,
            "metrics_port": metrics_port,
            "outbox": str(settings.run_dir / "outbox"),
        }
    )
    name = "gateway" if settings.sites == 1 else f"gateway-{site}"
    config_file = settings.run_dir / f"{name}.toml"  # its settings, as it reads them
    config_file.write_text(config_module.dump(config, "gateway"))
    command = edgelearn_command(
        "gateway", "--config", str(config_file), "--workers", str(settings.workers)
    )
    gateway = children.start(name, command, env)
    gateway.site = site
    gateway.metrics_urls += [
        _metrics_url(metrics_port + index) for index in range(settings.workers)
    ]
    seen = 0
    for _ in range(settings.workers):
        seen = children.wait_for_line(gateway, "metrics", timeout=120, after=seen)
    return gateway


def _start_cameras(
    children: ChildProcesses,
    settings: StackSettings,
    site: Site,
    first_camera: int,
    seed: int,
    env: dict[str, str],
) -> list[Child]:
    """The site's cameras; numbered on from ``first_camera`` so every camera of the stack
    has its own id (and credential) and its own scene (camera n: ``seed + n - 1``)."""
    suffix = "" if settings.sites == 1 else f"-{site.name}"
    fleets: list[tuple[str, str, int, int]] = []  # name, source, cameras, first camera
    if settings.labeled_cameras:
        # the items the cloud's first training held out
        source = parse_dataset(settings.dataset).camera_source
        fleets.append(("cameras", source, settings.labeled_cameras, first_camera))
    for index, source in enumerate(video_sources(settings.videos)):
        name = "video" if index == 0 else f"video-{index + 1}"
        fleets.append((name, source, 1, first_camera + settings.labeled_cameras + index))
    started = []
    for name, source, count, first in fleets:
        metrics_port = free_port()
        config = CameraConfig(
            source=source,
            cameras=count,
            first_camera=first,
            seed=seed + first - 1,
            fps=settings.fps,
            broker=f"127.0.0.1:{site.broker.port}",
            site=site.name,
            metrics_port=metrics_port,
        )
        config_file = settings.run_dir / f"{name}{suffix}.toml"  # its settings, as it reads them
        config_file.write_text(config_module.dump(config, "camera"))
        command = edgelearn_command("camera", "--config", str(config_file))
        child = children.start(name + suffix, command, env)
        child.site = site.name
        child.metrics_urls.append(_metrics_url(metrics_port))
        started.append(child)
    return started


def _start_prometheus(
    children: ChildProcesses,
    binary: str,
    run_dir: Path,
    port: int,
    sites: list[Site],
    env: dict[str, str],
) -> str:
    config_dir = run_dir / "prometheus"
    if config_dir.exists():
        shutil.rmtree(config_dir)
    shutil.copytree(PROMETHEUS_CONFIG, config_dir)
    (config_dir / "targets").mkdir(exist_ok=True)
    targets = []
    gateways = {site.gateway.name: site for site in sites if site.gateway is not None}
    for child in children.children:
        job = (
            "cloud" if child.name == "cloud" else "gateway" if child.name in gateways else "camera"
        )
        for index, url in enumerate(child.metrics_urls):
            labels = {"job": job}
            if child.site is not None:
                labels["site"] = child.site
            if job == "gateway":
                labels |= {"gateway": gateways[child.name].gateway_id, "worker": str(index)}
            address = url.removeprefix("http://").removesuffix("/metrics")
            targets.append({"targets": [address], "labels": labels})
    (config_dir / "targets" / "stack.json").write_text(json.dumps(targets, indent=1))
    children.start(
        "prometheus",
        [
            binary,
            f"--config.file={config_dir / 'prometheus.yml'}",
            f"--storage.tsdb.path={run_dir / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        env,
    )
    return f"http://127.0.0.1:{port}"
