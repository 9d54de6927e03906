"""``edgelearn cloud`` (serve), ``edgelearn model`` (registry) and ``edgelearn train``.

``edgelearn cloud`` is the cloud role in one process: it trains a first model set when the
registry lacks one (with a progress bar), pushes the newest signed deployment of every edge
mode to the retained model topics, and runs consumers that answer features, score them and
store them for training, and the continuous trainer that learns from them (``--no-learn``:
off). Its settings are one :class:`cloud.config.CloudConfig`, from a ``--config`` TOML file,
the environment and its flags. ``edgelearn model list|show|push`` reads the registry and
publishes deployments; ``edgelearn train --from-features`` trains a cloud half from stored features
(and ``--raw`` the cloud-only baseline from stored frames) and reports time, bytes and
accuracy side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from cloud.bootstrap import BUDGETS
from cloud.config import CloudConfig
from cloud.service import CloudSettings
from cloud.trainer import TrainerSettings
from edgelearn import config as config_module
from edgelearn import signing, wire
from edgelearn.config import BrokerConfig
from edgelearn.secrets import Secrets, default_secrets_dir, default_state_dir, registry_dir


def _registry_path(args: argparse.Namespace) -> Path:
    return registry_dir(getattr(args, "registry", None))


def _broker_options(parser: argparse.ArgumentParser, *, defaults: bool = True) -> None:
    """The broker, site and registry options; without ``defaults`` an option not given is
    None, so ``edgelearn cloud``'s config file and environment show through."""
    parser.add_argument(
        "--broker",
        default=CloudConfig.broker if defaults else None,
        metavar="HOST:PORT",
        help=f"the cloud's broker (the cloud broker when bridged; default {CloudConfig.broker})",
    )
    parser.add_argument(
        "--site",
        default=CloudConfig.site if defaults else None,
        help=f"topic namespace (default {CloudConfig.site})",
    )
    parser.add_argument(
        "--tls", action="store_true", default=False if defaults else None, help="connect over TLS"
    )
    parser.add_argument("--secrets", type=Path, default=None, help="secrets directory")
    parser.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="model registry directory (default: $EDGELEARN_REGISTRY or "
        f"{default_state_dir() / 'registry'})",
    )


def _broker(args: argparse.Namespace, user: str = "cloud") -> BrokerConfig:
    host, port = config_module.parse_address(args.broker)
    return BrokerConfig.for_user(user, host=host, port=port, secrets_dir=args.secrets, tls=args.tls)


def _progress_bar(step: str, number: int, total: int) -> None:
    """A training's progress on stderr: a bar redrawn in place on a terminal, one line a
    step anywhere else (a log file, ``edgelearn up``'s console, which shows these lines)."""
    if not sys.stderr.isatty():
        print(f"edgelearn cloud: [{number}/{total}] {step}", file=sys.stderr, flush=True)
        return
    width = 24
    filled = width * number // max(total, 1)
    print(
        f"\r[{'#' * filled}{'.' * (width - filled)}] {number}/{total} {step:<70}",
        end="\n" if number == total else "",
        file=sys.stderr,
        flush=True,
    )


# --- edgelearn cloud ----------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    # Every option defaults to None: given, it overrides the config file (see settings()).
    _broker_options(parser, defaults=False)
    defaults = CloudConfig()
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        help="TOML file with these settings ([cloud] table, [cloud.plan] and [cloud.learn])",
    )
    parser.add_argument(
        "--consumers",
        type=int,
        default=None,
        help="consumers in this process's shared-subscription group "
        f"(default {defaults.consumers})",
    )
    parser.add_argument(
        "--group", default=None, help=f"shared-subscription group (default {defaults.group})"
    )
    parser.add_argument(
        "--push-site",
        dest="push_sites",
        action="append",
        default=None,
        metavar="SITE",
        help="a site whose gateways get the models (repeatable; default: --site; needed "
        "when --site is + and the cloud serves every site)",
    )
    parser.add_argument(
        "--id",
        dest="cloud_id",
        default=None,
        help="this process's name in its group; its MQTT client ids derive from it, so a "
        "restarted process resumes its sessions (two processes of one group: two ids; "
        f"default {defaults.cloud_id})",
    )
    parser.add_argument(
        "--budget",
        choices=BUDGETS,
        default=None,
        help="the model generations to train (cloud.bootstrap.TrainingPlan): default, a "
        "first generation in seconds and four bigger ones in the background; quick: two small "
        "ones, for tests and quick benchmarks; smoke: two tiny ones, to check an install",
    )
    parser.add_argument(
        "--split-ks",
        default=None,
        help="split points to train and push (comma-separated; default "
        f"{','.join(map(str, defaults.split_ks))})",
    )
    parser.add_argument(
        "--no-train",
        dest="train",
        action="store_false",
        default=None,
        help="never train; serve what the registry has",
    )
    parser.add_argument(
        "--no-grow",
        dest="grow",
        action="store_false",
        default=None,
        help="train the first generation only (if the registry lacks one), not the later ones "
        "in the background",
    )
    parser.add_argument(
        "--no-push",
        dest="push",
        action="store_false",
        default=None,
        help="do not publish deployments to the gateways",
    )
    parser.add_argument(
        "--no-teacher",
        dest="teacher",
        action="store_false",
        default=None,
        help="do not push a teacher to the gateways (cameras without labels then get "
        "'unknown' answers)",
    )
    parser.add_argument(
        "--no-events",
        dest="events",
        action="store_false",
        default=None,
        help="do not publish JSON object events on edgelearn/v1/<site>/events (run them in "
        "one cloud process per site)",
    )
    parser.add_argument(
        "--teacher-model",
        default=None,
        metavar="FILE",
        help="the gateways' teacher: your own detector instead of the packaged person "
        "detector, a .tflite with the outputs of LiteRT's detection postprocess (boxes, "
        "classes, scores, count) or a TF Object Detection API SSD graph (.pb)",
    )
    parser.add_argument(
        "--teacher-labels",
        default=None,
        metavar="FILE",
        help="its class names by class id: one a line, or 'N name' lines (labelmap.txt)",
    )
    parser.add_argument(
        "--teacher-classes",
        default=None,
        metavar="A,B",
        help="the classes it labels, comma-separated (default: every named class); what "
        "else moves is 'other moving object'",
    )
    parser.add_argument(
        "--store",
        "--feature-store",
        dest="feature_store",
        default=None,
        metavar="URL|DIR|none",
        help="where what arrived is recorded: the de-duplication ledger and the labeled "
        "features to train on (default: STATE/features, SQLite; 'none': keep no features, "
        "the ledger stays in STATE/features). A postgresql://USER:PASSWORD@HOST:PORT/DB URL "
        "shares them between cloud processes on several machines; their trainers then take "
        "turns by a lease in that database",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="/metrics port of this process (its consumers, trainers and planner); 0 = free port",
    )
    parser.add_argument(
        "--plan",
        action="store_true",
        default=None,
        help="plan every gateway's mode from its status (cloud.planner): the split that fits "
        "its measured capacity and its configured uplink, per paper 003's offline rule",
    )
    parser.add_argument(
        "--plan-hold",
        type=float,
        default=None,
        help="least seconds between two plan changes of one gateway "
        f"(default {defaults.plan.hold:g})",
    )
    parser.add_argument(
        "--plan-latency-bound",
        type=float,
        default=None,
        help="the planner's latency bound Q in seconds "
        f"(default {defaults.plan.latency_bound:g}, paper 003's)",
    )
    parser.add_argument(
        "--dataset",
        default=None,
        help="what the first model set learns: fashion-mnist (default) or folder:PATH (one "
        "sub-folder of images per class; a fifth of it is held out, never trained on)",
    )
    parser.add_argument(
        "--no-learn",
        dest="learn",
        action="store_false",
        default=None,
        help="no continuous trainer: the cloud halves stay as trained",
    )
    parser.add_argument(
        "--learn-every",
        type=int,
        default=None,
        help="labeled objects of a mode that start a continuous-training run (default "
        f"{TrainerSettings.every}; {TrainerSettings.quick().every} with --budget quick)",
    )
    parser.add_argument("--duration", type=float, default=None, help="stop after seconds")


# The flags of the cloud's parts, by the names of their settings (cloud.config).
_PART_FLAGS = {
    "plan": "plan.enabled",
    "plan_hold": "plan.hold",
    "plan_latency_bound": "plan.latency_bound",
    "learn": "learn.enabled",
    "learn_every": "learn.every",
}


def settings(args: argparse.Namespace) -> CloudConfig:
    """The cloud's settings: defaults < the ``[cloud]`` table of ``--config`` (and its
    ``[cloud.plan]``, ``[cloud.learn]``) < ``EDGELEARN_*`` < flags; unknown keys are
    refused with their names."""
    overrides = config_module.flag_overrides(CloudConfig, vars(args), _PART_FLAGS)
    return config_module.load(CloudConfig, path=args.config, section="cloud", overrides=overrides)


async def _serve(settings: CloudSettings, duration: float | None) -> int:
    from cloud.service import CloudService

    async with CloudService(
        settings, progress=_progress_bar, announce=lambda line: print(line, flush=True)
    ) as service:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), duration)
        await service.drain(5.0)
    return 0


def main(args: argparse.Namespace) -> int:
    from cloud.models.errors import ExportError
    from edgelearn.datasets import DatasetError
    from edgelearn.mqtt import BrokerUnavailable

    config = settings(args)  # a setting that cannot be: ConfigError, before anything starts
    try:
        return asyncio.run(_serve(config.service_settings(), config.duration))
    except (BrokerUnavailable, DatasetError, ExportError) as exc:
        print(f"edgelearn cloud: {exc}", file=sys.stderr)
        return 2


# --- edgelearn model ----------------------------------------------------------------------


def configure_model(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="model_command", required=True, metavar="COMMAND")
    listing = commands.add_parser("list", help="every model version in the registry")
    listing.add_argument("--registry", type=Path, default=None, help="registry directory")
    show = commands.add_parser("show", help="one model's metadata")
    show.add_argument("--registry", type=Path, default=None, help="registry directory")
    show.add_argument("name", help="model name (see `model list`)")
    show.add_argument("version", nargs="?", default=None, help="version (default newest)")
    push = commands.add_parser("push", help="publish a signed deployment (retained)")
    _broker_options(push)
    push.add_argument("name", help="model name")
    push.add_argument("version", nargs="?", default=None, help="version (default newest)")
    push.add_argument("--gateway", default="all", help="one gateway id, or all (default)")
    teacher = commands.add_parser(
        "push-teacher",
        help="make the packaged person detector (or --model, your own) the gateways' teacher: "
        "convert it, sign it and publish it (retained)",
    )
    _broker_options(teacher)
    teacher.add_argument(
        "--model",
        "--graph",
        dest="model",
        type=Path,
        default=None,
        help="a .tflite with the outputs of LiteRT's detection postprocess, or a TF Object "
        "Detection API SSD graph (.pb)",
    )
    teacher.add_argument("--labels", type=Path, default=None, help="its class names (a file)")
    teacher.add_argument(
        "--classes", default="", help="the classes it labels, comma-separated (default: all)"
    )
    teacher.add_argument("--gateway", default="all", help="one gateway id, or all (default)")
    export = commands.add_parser("export", help="write a signed deployment file")
    export.add_argument("--registry", type=Path, default=None, help="registry directory")
    export.add_argument("--secrets", type=Path, default=None, help="secrets directory")
    export.add_argument("name", help="model name")
    export.add_argument("version", nargs="?", default=None, help="version (default newest)")
    export.add_argument("--output", type=Path, required=True, help="file to write")


def main_model(args: argparse.Namespace) -> int:
    from cloud.models.errors import RegistryError
    from cloud.registry import Registry

    registry = Registry(_registry_path(args))
    try:
        if args.model_command == "list":
            print(f"{'name':<14}{'version':<9}{'kind':<18}{'k':>3}  {'accuracy':>8}  created")
            for entry in registry.list():
                accuracy = "-" if entry.accuracy is None else f"{entry.accuracy:.3f}"
                print(
                    f"{entry.name:<14}{entry.version:<9}{entry.kind:<18}{entry.split_k:>3}  "
                    f"{accuracy:>8}  {entry.created[:19]}"
                )
            return 0
        if args.model_command == "show":
            print(json.dumps(registry.get(args.name, args.version).metadata, indent=2))
            return 0
        secrets = Secrets(args.secrets or default_secrets_dir())
        key = signing.load_private_key(secrets.signing_key)
        if args.model_command == "push-teacher":
            return _push_teacher(args, key)
        model = registry.deployment(args.name, args.version, key)
        if args.model_command == "export":
            args.output.write_bytes(wire.encode(model))
            print(f"wrote {args.output} ({model.kind} {model.version})")
            return 0
        from cloud.service import push_deployments

        asyncio.run(
            push_deployments(_broker(args), args.site, [model], args.gateway, "model-push-cli")
        )
        print(f"pushed {model.name} {model.version} to {args.gateway}")
        return 0
    except RegistryError as exc:
        print(f"edgelearn model: {exc}", file=sys.stderr)
        return 2


@contextlib.contextmanager
def _quiet_native_stderr() -> Iterator[None]:
    """TensorFlow 2.21 writes its C++ start-up lines (absl's, oneDNN's) to file descriptor 2
    whatever ``TF_CPP_MIN_LOG_LEVEL`` says: kept out of the command's one-line answer."""
    sys.stderr.flush()
    saved, quiet = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)
        os.close(quiet)


def _push_teacher(args: argparse.Namespace, key: Any) -> int:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow's start-up chatter
    from cloud.models.errors import ExportError
    from cloud.models.teacher import TeacherSpec, convert_teacher
    from cloud.service import push_deployments
    from edgelearn.teacher import sign_teacher

    try:
        classes = tuple(name.strip() for name in args.classes.split(",") if name.strip())
        spec = TeacherSpec(args.model, args.labels, classes)
        with _quiet_native_stderr():
            artifact = convert_teacher(spec)
        model = sign_teacher(artifact, key, name=spec.name)
    except (ExportError, ValueError) as exc:
        print(f"edgelearn model: {exc}", file=sys.stderr)
        return 2
    asyncio.run(push_deployments(_broker(args), args.site, [model], args.gateway, "model-push-cli"))
    size = len(model.artifact)
    print(
        f"pushed teacher {model.name} {model.version} to {args.gateway} ({size} bytes), "
        f"labeling {', '.join(artifact.classes)}"
    )
    return 0


# --- edgelearn train ----------------------------------------------------------------------


def configure_train(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--registry", type=Path, default=None, help="registry directory")
    parser.add_argument(
        "--feature-store", type=Path, default=None, help="stored features (default: STATE/features)"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--from-features",
        metavar="MODE",
        help="train the cloud half of MODE (pca, autoencoder, split:K) on its stored features",
    )
    source.add_argument(
        "--raw",
        action="store_true",
        help="train the cloud-only CNN on stored raw frames (the baseline)",
    )
    parser.add_argument(
        "--version", default=None, help="model version whose features to use (default: the newest)"
    )
    parser.add_argument("--epochs", type=int, default=10, help="training epochs")
    parser.add_argument(
        "--held-out", type=int, default=1000, help="rendered held-out items to score on"
    )
    parser.add_argument(
        "--save", action="store_true", help="store the trained cloud half as a new registry version"
    )


def main_train(args: argparse.Namespace) -> int:
    from cloud.training_jobs import train_from_store

    store = args.feature_store or default_state_dir() / "features"
    started = time.perf_counter()
    try:
        report = train_from_store(
            registry_root=_registry_path(args),
            store_root=store,
            mode="raw" if args.raw else args.from_features,
            version=args.version,
            epochs=args.epochs,
            n_held_out=args.held_out,
            save=args.save,
        )
    except (FileNotFoundError, ValueError) as exc:
        print(f"edgelearn train: {exc}", file=sys.stderr)
        return 2
    report["command_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    return 0
