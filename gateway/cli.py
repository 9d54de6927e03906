"""``edgelearn gateway``: its flags, and its settings loaded from them (and a ``--config``
TOML file, and the environment) into one :class:`gateway.config.GatewayConfig`, validated
before any worker starts; the pool itself is :mod:`gateway.pool`.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from edgelearn import config as config_module
from edgelearn import signing, wire
from edgelearn.modes import ModeError
from gateway.config import GatewayConfig
from gateway.pool import run_worker, supervise, worker_config


def configure(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--id", dest="gateway_id", default=None, help="gateway id = its broker user (default gw-1)"
    )
    parser.add_argument(
        "--mode",
        default=None,
        help="raw | pca | autoencoder | split:K | full (default split:3); "
        "runs raw until the cloud has pushed the model the mode needs",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="worker processes in this pool (default 1)"
    )
    parser.add_argument("--site", default=None, help="topic namespace of the camera site")
    parser.add_argument(
        "--broker",
        default=None,
        metavar="HOST:PORT",
        help="edge-site broker (default 127.0.0.1:1883)",
    )
    parser.add_argument(
        "--tls",
        action="store_true",
        default=None,
        help="connect over TLS, verifying the broker against the site CA",
    )
    parser.add_argument(
        "--secrets", type=Path, default=None, help="secrets directory from `edgelearn broker init`"
    )
    parser.add_argument(
        "--group",
        default=None,
        help="shared-subscription group of the pool's ingest connection (several gateway pools "
        "in one group share the frames by message)",
    )
    parser.add_argument(
        "--no-keyframes",
        dest="keyframes",
        action="store_false",
        default=None,
        help="send every object in full view, every frame (without objects: every frame), "
        "instead of keyframes only",
    )
    parser.add_argument(
        "--no-objects",
        dest="objects",
        action="store_false",
        default=None,
        help="do not look for objects in view (no background model, no object metrics)",
    )
    parser.add_argument(
        "--keyframe-threshold",
        type=float,
        default=None,
        help="whole frames (no objects, or a model of whole frames): the fraction of pixels "
        "changed since the previous frame that counts as motion (default 0.02)",
    )
    parser.add_argument(
        "--keyframe-max-interval",
        type=int,
        default=None,
        help="an object (or the scene) that stays is sent again every N frames (default 45)",
    )
    parser.add_argument(
        "--keyframe-motion-interval",
        type=int,
        default=None,
        help="while an object (or the scene) moves, send it every N frames (default 5; "
        "smaller costs uplink, larger misses views)",
    )
    parser.add_argument(
        "--keyframe-settle-frames",
        type=int,
        default=None,
        help="frames without a move before a moving object has settled and is sent once "
        "more (default 3)",
    )
    parser.add_argument(
        "--keyframe-move-fraction",
        type=float,
        default=None,
        help="an object moved when its box shifted by this fraction of its size (default 0.1)",
    )
    parser.add_argument(
        "--learning-sample",
        type=int,
        default=None,
        help="full mode: every Nth keyframe with labeled objects also sends their crops, "
        "so the cloud keeps learning (default 10; 0: results only)",
    )
    parser.add_argument(
        "--teacher-budget",
        type=float,
        default=None,
        help="the share of one core the teacher may use, all workers together, once the "
        "cloud pushes one (default 0.2; 0: no teacher)",
    )
    parser.add_argument(
        "--teacher-hog",
        action="store_true",
        default=None,
        help="OpenCV's HOG people detector as a second opinion: a track is labeled person "
        "only if it finds a person in one of the views, other only if in none",
    )
    parser.add_argument(
        "--queue-depth",
        type=int,
        default=None,
        help="frames queued per camera; the newest wins (default 2)",
    )
    parser.add_argument(
        "--outbox",
        default=None,
        metavar="DIR|memory",
        help="where features wait until the cloud acknowledges them (default: outbox/ in "
        "the state directory; 'memory' loses them on a restart)",
    )
    parser.add_argument(
        "--outbox-max-mb",
        type=float,
        default=None,
        help="outbox size per worker before the policy drops features (default 512)",
    )
    parser.add_argument(
        "--outbox-policy",
        choices=("oldest", "newest"),
        default=None,
        help="what a full outbox drops: the oldest waiting feature (default) or the new one",
    )
    parser.add_argument(
        "--coap-port",
        type=int,
        default=None,
        help="serve CoAP POST /frames on this port (UDP and TCP); "
        "0 picks a free port, -1 (default) disables it",
    )
    parser.add_argument(
        "--coap-insecure",
        action="store_true",
        default=None,
        help="INSECURE: accept CoAP posts without the camera's OSCORE credentials; anyone "
        "who reaches the port can post frames as any camera",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="/metrics port of worker 0 (others: +1, +2...); 0 = free port",
    )
    parser.add_argument(
        "--uplink-kbps",
        type=float,
        default=None,
        help="this gateway's uplink capacity in kb/s, reported to the cloud's planner, which "
        "picks a mode whose traffic fits it (default 0: not configured, treated as fast)",
    )
    parser.add_argument(
        "--status-interval",
        type=float,
        default=None,
        help="seconds between two retained status messages (default 5)",
    )
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        default=[],
        help="a signed model deployment file to load at start (repeatable)",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="TOML file with these settings ([gateway] table)"
    )
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds (default: until Ctrl-C)",
    )


def _settings(args: argparse.Namespace) -> GatewayConfig:
    """The gateway's settings: defaults < the ``[gateway]`` table of ``--config`` <
    ``EDGELEARN_*`` < flags; unknown keys are refused with their names."""
    overrides: dict[str, Any] = {
        key: getattr(args, key)
        for key in (
            "gateway_id",
            "mode",
            "site",
            "tls",
            "secrets",
            "group",
            "keyframes",
            "objects",
            "keyframe_threshold",
            "keyframe_max_interval",
            "keyframe_motion_interval",
            "keyframe_settle_frames",
            "keyframe_move_fraction",
            "learning_sample",
            "teacher_budget",
            "teacher_hog",
            "queue_depth",
            "outbox",
            "outbox_max_mb",
            "outbox_policy",
            "coap_port",
            "coap_insecure",
            "uplink_kbps",
            "status_interval",
            "metrics_port",
        )
    }
    if args.broker:
        overrides["broker_host"], overrides["broker_port"] = config_module.parse_address(
            args.broker
        )
    try:
        return config_module.load(
            GatewayConfig, path=args.config, section="gateway", overrides=overrides
        )
    except ModeError as exc:
        raise config_module.ConfigError(str(exc)) from exc


def _read_models(paths: list[Path], secrets_dir: Path | None) -> list[wire.Model]:
    from edgelearn.secrets import Secrets, default_secrets_dir

    trusted = signing.load_public_key(
        Secrets(secrets_dir or default_secrets_dir()).signing_public_key
    )
    models = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"model file {path} does not exist")
        try:
            model = wire.decode_as(path.read_bytes(), wire.Model)
            signing.verify_model(model, trusted)
        except (wire.WireError, signing.ModelRejected) as exc:
            raise config_module.ConfigError(f"model file {path}: {exc}") from exc
        models.append(model)
    return models


def main(args: argparse.Namespace) -> int:
    if args.workers < 1:
        raise config_module.ConfigError("--workers must be at least 1")
    # Every worker's settings are validated before any process starts.
    settings = _settings(args)
    configs = [worker_config(settings, worker, args.workers) for worker in range(args.workers)]
    models = _read_models(args.model, configs[0].secrets)
    if args.workers > 1:
        return supervise(configs, models, args.duration)
    return run_worker(configs[0], models, args.duration)
