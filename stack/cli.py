"""The ``edgelearn`` command: one entry point for every role, benchmark and tool.

Each role's command lives beside its code (``cameras/cli.py``, ...) and exposes
``configure(parser)`` and ``main(args) -> int``; this module only assembles them, with the
broker commands and ``bench``. Role modules must not import TensorFlow at import time, so
``edgelearn --help`` stays fast.

Every install has this command, whichever extras it has (``pip install edgelearn[gateway]``
on an edge box). A command whose extra is missing stays listed and says which extra to
install, rather than failing with an import error (:data:`COMMANDS`). Errors a user can act
on (:data:`USER_ERRORS`) are printed as one line, exit status 2.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgelearn.config import ConfigError, parse_address
from edgelearn.datasets import DatasetError
from edgelearn.metrics import machine_info
from edgelearn.secrets import ROLES, Secrets, SecretsError, default_secrets_dir
from stack import broker

USER_ERRORS: tuple[type[Exception], ...] = (
    broker.BrokerError,
    DatasetError,
    ConfigError,
    SecretsError,
    FileNotFoundError,
    PermissionError,
)

Main = Callable[[argparse.Namespace], int]


@dataclass(frozen=True)
class Command:
    """A subcommand: ``module.configure(parser)`` adds its options, ``module.main(args)``
    runs it. ``needs`` are the modules it imports when it runs; ``extra`` is the install
    extra that brings them."""

    module: str
    help: str
    extra: str = ""
    needs: tuple[str, ...] = ()
    configure: str = "configure"
    main: str = "main"


_CLOUD_NEEDS = ("tensorflow", "sklearn", "ai_edge_litert")
COMMANDS: dict[str, Command] = {
    "broker": Command(
        "stack.cli",
        "broker secrets and mosquitto",
        configure="configure_broker",
        main="main_broker",
    ),
    "camera": Command(
        "cameras.cli", "run simulated 720p cameras publishing frames", "cameras", ("aiocoap",)
    ),
    "gateway": Command(
        "gateway.cli",
        "run gateway workers: keyframes, features, forwarding",
        "gateway",
        ("aiocoap", "ai_edge_litert"),
    ),
    "cloud": Command(
        "cloud.cli",
        "run cloud consumers; train and push a first model set if needed",
        "cloud",
        _CLOUD_NEEDS,
    ),
    "model": Command(
        "cloud.cli",
        "model registry: list, show, export, push signed deployments",
        "cloud",
        _CLOUD_NEEDS,
        configure="configure_model",
        main="main_model",
    ),
    "train": Command(
        "cloud.cli",
        "train the cloud half from stored edge features (or raw frames)",
        "cloud",
        _CLOUD_NEEDS,
        configure="configure_train",
        main="main_train",
    ),
    "schedule": Command(
        "cloud.scheduling.cli",
        "layer-placement scheduler: simulate paper 003",
        "cloud",
        ("scipy", "matplotlib"),
    ),
    "up": Command(
        "stack.up",
        "run the whole local stack with a live summary",
        "all",
        ("aiocoap", "ai_edge_litert", *_CLOUD_NEEDS),
    ),
    "report": Command(
        "stack.report",
        "PNG charts of a run from Prometheus or a benchmark's JSON",
        "cloud",
        ("matplotlib",),
    ),
    "bench": Command(
        "stack.cli",
        "run a benchmark, write JSON",
        "all",
        ("aiocoap", "ai_edge_litert", "scipy", "matplotlib", *_CLOUD_NEEDS),
        configure="configure_bench",
        main="main_bench",
    ),
}


# ``edgelearn bench <part>``: the module whose ``run(quick: bool) -> dict`` measures it.
BENCHMARKS: dict[str, str] = {
    "pipeline": "bench.pipeline",
    "gateway": "bench.gateway",
    "cloud": "bench.cloud",
    "papers": "bench.papers",
    "cameras": "bench.cameras",
    "schedule": "bench.schedule",
    "faults": "bench.faults",
    "objects": "bench.objects",
    "drift": "bench.drift",
}


def missing_modules(command: Command) -> list[str]:
    return [name for name in command.needs if importlib.util.find_spec(name) is None]


def _needs_extra(name: str, command: Command, missing: list[str]) -> Main:
    def refuse(args: argparse.Namespace) -> int:
        print(
            f"edgelearn {name}: this install lacks {', '.join(missing)}; "
            f"install the {command.extra} extra: pip install 'edgelearn[{command.extra}]'",
            file=sys.stderr,
        )
        return 2

    return refuse


# --- broker -----------------------------------------------------------------------------


def _add_secrets_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--secrets",
        type=Path,
        default=None,
        help=f"secrets directory (default: $EDGELEARN_SECRETS or {default_secrets_dir()})",
    )


def configure_broker(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="broker_command", required=True, metavar="COMMAND")

    init = commands.add_parser(
        "init", help="create passwords, ACL, TLS certificates and the model signing key"
    )
    _add_secrets_option(init)
    init.add_argument("--cameras", type=int, default=16, help="camera users cam-1..cam-N")
    init.add_argument("--gateways", type=int, default=4, help="gateway users gw-1..gw-N")
    init.add_argument(
        "--user",
        action="append",
        default=[],
        metavar="NAME:ROLE",
        help=f"an extra user (repeatable); roles: {', '.join(ROLES)}",
    )
    init.add_argument(
        "--hostname",
        action="append",
        default=[],
        help="extra name or IP the TLS certificate is valid for (repeatable)",
    )
    init.add_argument("--force", action="store_true", help="replace existing secrets")
    init.add_argument(
        "--if-missing", action="store_true", help="do nothing if secrets already exist"
    )

    add = commands.add_parser("add-user", help="add a user to existing secrets")
    _add_secrets_option(add)
    add.add_argument("name", help="user name (also the camera or gateway id)")
    add.add_argument("--role", required=True, choices=ROLES, help="what the user may do")

    credentials = commands.add_parser(
        "credentials", help="print '-u USER -P PASSWORD' for mosquitto_pub/sub"
    )
    _add_secrets_option(credentials)
    credentials.add_argument("name", help="user name")

    start = commands.add_parser("start", help="run mosquitto with the project's config")
    _add_secrets_option(start)
    start.add_argument(
        "--role",
        choices=("edge", "cloud"),
        default="edge",
        help="edge-site broker (cameras, gateways) or cloud broker (default: edge)",
    )
    start.add_argument("--port", type=int, default=1883, help="MQTT port; 0 picks a free one")
    start.add_argument("--tls-port", type=int, default=8883, help="MQTT over TLS port; 0: free")
    start.add_argument(
        "--bind", default="127.0.0.1", help="address to listen on (0.0.0.0 for a network)"
    )
    start.add_argument(
        "--run-dir",
        type=Path,
        default=None,
        help="where config, log and persistence go (default: ./run/broker-ROLE)",
    )
    start.add_argument(
        "--bridge-to",
        metavar="HOST:PORT",
        default=None,
        help="edge only: bridge features/status up and models/plans/results down",
    )
    start.add_argument("--bridge-tls", action="store_true", help="bridge over TLS")
    start.add_argument(
        "--background",
        action="store_true",
        help="detach and return once it accepts connections (stop with `broker stop`)",
    )

    stop = commands.add_parser("stop", help="stop a broker started with --background")
    stop.add_argument("--role", choices=("edge", "cloud"), default="edge", help="which one")
    stop.add_argument("--run-dir", type=Path, default=None, help="its run directory")


def main_broker(args: argparse.Namespace) -> int:
    secrets_dir = getattr(args, "secrets", None) or default_secrets_dir()
    if args.broker_command == "init":
        if args.if_missing and Secrets(secrets_dir).exists():
            print(f"secrets already in {secrets_dir}; keeping them")
            return 0
        extra = []
        for item in args.user:
            name, sep, role = item.partition(":")
            if not sep:
                raise ConfigError(f"--user {item!r}: expected NAME:ROLE")
            extra.append((name, role))
        secrets = broker.init_secrets(
            secrets_dir,
            cameras=args.cameras,
            gateways=args.gateways,
            extra_users=extra,
            hostnames=args.hostname,
            force=args.force,
        )
        users = secrets.users()
        print(f"secrets written to {secrets.directory}")
        for role in ROLES:
            names = [user.name for user in users if user.role == role]
            if names:
                print(f"  {role:8} {', '.join(names)}")
        print("next: edgelearn broker start")
        return 0
    if args.broker_command == "add-user":
        user = broker.add_user(secrets_dir, args.name, args.role)
        print(f"added {user.name} ({user.role}); a running broker picks it up on SIGHUP")
        return 0
    if args.broker_command == "credentials":
        print(f"-u {args.name} -P {Secrets(secrets_dir).password(args.name)}")
        return 0
    if args.broker_command == "stop":
        run_dir = args.run_dir or Path.cwd() / "run" / f"broker-{args.role}"
        if broker.stop_detached(run_dir):
            print(f"stopped the broker of {run_dir}")
            return 0
        print(f"no running broker recorded in {run_dir}", file=sys.stderr)
        return 1
    return _broker_start(args, Secrets(secrets_dir))


def _broker_start(args: argparse.Namespace, secrets: Secrets) -> int:
    bridge = None
    if args.bridge_to:
        host, port = parse_address(args.bridge_to)
        bridge = broker.Bridge(remote_host=host, remote_port=port, tls=args.bridge_tls)
    settings = broker.BrokerSettings(
        role=args.role,
        port=args.port,
        tls_port=args.tls_port,
        bind=args.bind,
        run_dir=args.run_dir,
        bridge=bridge,
    )
    running = broker.start_broker(secrets, settings, detach=args.background)
    print(
        f"mosquitto ({args.role}) listening on {running.host}:{running.port} "
        f"(TLS {running.tls_port}), log {running.log_file}"
    )
    print(
        f"try: mosquitto_sub -V 5 -p {running.port} $(edgelearn broker credentials observer) "
        "-t 'edgelearn/#' -v"
    )
    if args.background:
        print(f"pid {running.process.pid}; stop with: edgelearn broker stop --role {args.role}")
        return 0
    print("Ctrl-C stops it.")
    try:
        # As Ctrl-C: the handler must not wait on the process the main thread waits on.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        return running.process.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        running.stop()


# --- bench ------------------------------------------------------------------------------


def configure_bench(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("part", choices=sorted(BENCHMARKS), help="what to measure")
    parser.add_argument(
        "--quick", action="store_true", help="a short run (a minute or a few) for CI"
    )
    parser.add_argument("--output", type=Path, default=None, help="write the results as JSON")
    parser.add_argument(
        "--soak-minutes",
        type=float,
        default=0.0,
        help="faults only: repeat the faults this long and report the RSS growth",
    )
    parser.add_argument(
        "--clouds",
        type=int,
        default=None,
        help="faults only: cloud processes on one PostgreSQL (default 1, SQLite); with 2 or "
        "more the faults add one cloud machine killed and the database restarted",
    )
    parser.add_argument(
        "--faults",
        metavar="NAME,...",
        default=None,
        help="faults only: inject only these faults, in their usual order (names as in the "
        "report, e.g. bridge_cut,cloud_paused); default every one",
    )
    parser.add_argument(
        "--drift",
        metavar="SPEC",
        default=None,
        help="drift only: what changes, changes joined by + (backgrounds, light=F, noise=F, "
        "size=LO-HI, classes=I,J,..., new-camera) or none; default "
        "backgrounds+size=0.16-0.26+classes=0,2,4,6,5,7,9+new-camera",
    )
    parser.add_argument(
        "--mode",
        default=None,
        help="drift only: the gateway's mode, split:K or full (default split:2)",
    )


def main_bench(args: argparse.Namespace) -> int:
    if args.soak_minutes and args.part != "faults":
        raise ConfigError("--soak-minutes is for `bench faults` only")
    module = importlib.import_module(BENCHMARKS[args.part])
    started = time.perf_counter()
    extra: dict[str, Any] = {"soak_minutes": args.soak_minutes} if args.soak_minutes else {}
    if args.clouds is not None:
        if args.part != "faults":
            raise ConfigError("--clouds is for `bench faults` only")
        extra["clouds"] = args.clouds
    if args.faults is not None:
        if args.part != "faults":
            raise ConfigError("--faults is for `bench faults` only")
        extra["only"] = tuple(name.strip() for name in args.faults.split(",") if name.strip())
    for option in ("drift", "mode"):
        if getattr(args, option) is not None:
            if args.part != "drift":
                raise ConfigError(f"--{option} is for `bench drift` only")
            extra[option] = getattr(args, option)  # checked by bench.drift.run, first thing
    results: dict[str, Any] = module.run(quick=args.quick, **extra)
    results.setdefault("elapsed_seconds", round(time.perf_counter() - started, 2))
    results.setdefault("machine", machine_info())
    text = json.dumps(results, indent=2, sort_keys=True, default=str)
    if args.output:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        args.output.write_text(text + "\n")
        print(f"wrote {args.output}")
    else:
        print(text)
    return 0


# --- assembly ---------------------------------------------------------------------------


def build_parser(command_name: str | None = None) -> argparse.ArgumentParser:
    """Every command listed; only ``command_name``'s module imported for its options (all of
    them when None). A camera process need not import the cloud's scheduler, matplotlib and
    LiteRT to parse its own arguments: measured 3.8 s to print ``camera --help`` with every
    module imported, on a loaded 2-core host, and ``up`` starts a dozen processes."""
    parser = argparse.ArgumentParser(
        prog="edgelearn",
        description="Edge-learning pipeline for camera networks.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    handlers: dict[str, Main] = {}
    for name, command in COMMANDS.items():
        sub = commands.add_parser(name, help=command.help, description=command.help)
        if command_name is not None and name != command_name:
            continue  # parsing another command's arguments: its options are not needed
        missing = missing_modules(command)
        if missing:  # keep it listed; running it says which extra brings what it needs
            sub.add_argument("rest", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
            handlers[name] = _needs_extra(name, command, missing)
            continue
        module = importlib.import_module(command.module)
        getattr(module, command.configure)(sub)
        handlers[name] = getattr(module, command.main)
    parser.set_defaults(_handlers=handlers)
    return parser


def _command_in(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names: its first word that is not an option (the only global
    option, ``-v``, takes no value)."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command_in(argv))
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        handler: Callable[[argparse.Namespace], int] = args._handlers[args.command]
        return handler(args)
    except USER_ERRORS as exc:
        print(f"edgelearn {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
