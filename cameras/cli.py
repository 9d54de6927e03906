"""``edgelearn camera``: run N simulated 720p cameras publishing frames over MQTT or CoAP.

Examples::

    edgelearn camera --source fashion-mnist:test --cameras 4 --fps 15 --bitrate 3000
    edgelearn camera --source video:/usr/share/doc/opencv-doc/examples/data/vtest.avi \\
        --transport coap --coap-uri coap+tcp://gateway:5683/frames
    python -m cameras --source synthetic --fast --duration 10     # same, without the CLI

The command wires the parts together (source spec -> per-camera sources, transport ->
per-camera links, metrics server) and runs a :class:`~cameras.camera.CameraFleet` until
``--duration`` passes or SIGINT/SIGTERM. Anything a user can get wrong (missing video,
empty data set folder, unreachable broker, unknown camera user, a metrics port in use, an
option out of range) ends with one line on stderr and exit status 2. Those are the errors
in :data:`USER_ERRORS`, raised on purpose where the mistake is found; anything else is a
bug and ends with its traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry

from cameras.camera import CameraFleet, CameraReport, CameraSettings
from cameras.coap_link import CoapLink, check_uri
from cameras.config import CameraConfig
from cameras.errors import CameraError
from cameras.metrics import CameraMetrics
from cameras.mqtt_link import MqttLink
from cameras.scene import FrameSource
from cameras.sources import parse_source
from cameras.transport import FrameLink, LinkFactory
from edgelearn import config as config_module
from edgelearn.coap_security import camera_context
from edgelearn.config import ConfigError
from edgelearn.datasets import DatasetError
from edgelearn.metrics import MetricsServer, register_build_info, serve_metrics
from edgelearn.preprocess import sequential_opencv
from edgelearn.secrets import Secrets, SecretsError, default_secrets_dir, default_state_dir
from edgelearn.wire import DEFAULT_SITE, Topics, WireError

log = logging.getLogger(__name__)

# What a user can get wrong; each becomes one line on stderr and exit status 2. Nothing
# broader (a ValueError or OSError from our own code is a bug, and shows its traceback).
USER_ERRORS: tuple[type[Exception], ...] = (
    CameraError,
    ConfigError,
    DatasetError,
    SecretsError,
    WireError,
)


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text}")
    return value


def _quality(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100:
        raise argparse.ArgumentTypeError(f"JPEG quality is 1-100, got {text}")
    return value


def configure(parser: argparse.ArgumentParser) -> None:
    """Add the ``camera`` command's options to ``parser``. Each flag is a field of
    :class:`~cameras.config.CameraConfig` and overrides it only when given."""
    parser.add_argument(
        "--config",
        type=Path,
        default=None,
        metavar="FILE",
        help="TOML file whose [camera] table holds these settings (keys: the flags' names "
        "with underscores); flags given here override it",
    )
    what = parser.add_argument_group("what the cameras see")
    what.add_argument(
        "--source",
        default=None,
        help="video:PATH (any file OpenCV reads, looped, scaled to 720p), rtsp://... or "
        "http://... (a real camera's live stream, opened again with backoff when it breaks), "
        "fashion-mnist[:train|test] (labeled; default split train), folder:PATH "
        "(labeled: one sub-folder of images per class; folder-test:PATH: only the part "
        "a cloud trained on that folder held out) or synthetic (moving shapes; "
        "default)",
    )
    what.add_argument(
        "--cameras", type=int, default=None, help="number of cameras in this process (default 1)"
    )
    what.add_argument(
        "--camera-prefix",
        default=None,
        help="camera ids are PREFIX1..PREFIXN; each id is also its broker user (default cam-)",
    )
    what.add_argument(
        "--first-camera",
        type=int,
        default=None,
        help="number of the first camera, to split cameras over processes (default 1)",
    )
    what.add_argument(
        "--seed",
        type=int,
        default=None,
        help="seed of the scenes; camera i uses SEED+i (default 0)",
    )
    what.add_argument(
        "--dwell",
        type=int,
        default=None,
        help="labeled sources: frames each item stays in view (default 30)",
    )
    what.add_argument(
        "--scene",
        choices=("objects", "single"),
        default=None,
        help="labeled sources: 'objects' shows 0-3 items at once walking in and out, each "
        "scored on its own; 'single' one item at a time in the middle (default objects)",
    )
    what.add_argument(
        "--start",
        type=float,
        default=None,
        help="video source: start offset in seconds; cameras are also spread "
        "evenly over the file (default 0)",
    )

    timing = parser.add_argument_group("timing and encoding")
    timing.add_argument(
        "--fps",
        type=_positive_float,
        default=None,
        help="frames per second of each camera (default 15)",
    )
    timing.add_argument(
        "--speed",
        type=_positive_float,
        default=None,
        help="time multiplier: 2 sends at twice the fps (default 1)",
    )
    timing.add_argument(
        "--fast",
        action="store_true",
        default=None,
        help="as fast as possible: no pacing, wait for the transport instead of skipping frames",
    )
    timing.add_argument(
        "--duration",
        type=_positive_float,
        default=None,
        help="stop after this many seconds (default: until interrupted)",
    )
    timing.add_argument(
        "--frames", type=int, default=None, help="stop each camera after this many frames"
    )
    quality = timing.add_mutually_exclusive_group()
    quality.add_argument(
        "--quality", type=_quality, default=None, help="fixed JPEG quality 1-100 (default 80)"
    )
    quality.add_argument(
        "--bitrate",
        type=_positive_float,
        default=None,
        metavar="KBPS",
        help="target bitrate per camera in kb/s; JPEG quality adapts (paper 003: 3000)",
    )
    timing.add_argument(
        "--max-in-flight",
        type=int,
        default=None,
        help="frames per camera the transport may hold before new frames are "
        "skipped as transport_busy (default 2)",
    )

    network = parser.add_argument_group("where frames go")
    network.add_argument(
        "--transport",
        choices=("mqtt", "coap"),
        default=None,
        help="MQTT v5 to a broker, or CoAP POST to a gateway (default mqtt)",
    )
    network.add_argument(
        "--broker",
        default=None,
        metavar="HOST:PORT",
        help="MQTT broker (default 127.0.0.1:1883)",
    )
    network.add_argument(
        "--site",
        default=None,
        help=f"site name in the topics edgelearn/v1/SITE/frames/ID (default {DEFAULT_SITE})",
    )
    network.add_argument(
        "--qos",
        type=int,
        choices=(0, 1),
        default=None,
        help="MQTT QoS of frames (default 0: a late frame is worth little)",
    )
    network.add_argument(
        "--secrets",
        type=Path,
        default=None,
        help="secrets directory with the camera users' passwords "
        f"(default: $EDGELEARN_SECRETS or {default_secrets_dir()})",
    )
    network.add_argument(
        "--tls",
        action="store_true",
        default=None,
        help="connect to the broker's TLS listener (CA from the secrets directory)",
    )
    network.add_argument(
        "--coap-uri",
        default=None,
        help="CoAP endpoint: coap+tcp://HOST:PORT/frames (recommended for "
        "720p) or coap://HOST:PORT/frames (UDP block-wise; use --bitrate) "
        "(default coap+tcp://127.0.0.1:5683/frames)",
    )
    parser.add_argument(
        "--coap-insecure",
        action="store_true",
        default=None,
        help="INSECURE: post plain CoAP, without the camera's OSCORE credentials (only a "
        "gateway started with --coap-insecure accepts it)",
    )
    network.add_argument(
        "--metrics-port",
        type=int,
        default=None,
        help="serve Prometheus metrics on this port (0: any free port; default: none)",
    )


def settings(args: argparse.Namespace) -> CameraConfig:
    """The cameras' settings: defaults < the ``[camera]`` table of ``--config`` <
    ``EDGELEARN_*`` < flags; unknown keys are refused with their names."""
    overrides = config_module.flag_overrides(CameraConfig, vars(args))
    return config_module.load(CameraConfig, path=args.config, section="camera", overrides=overrides)


def _link_factory(config: CameraConfig) -> LinkFactory:
    if config.transport == "coap":
        try:
            uri = check_uri(config.coap_uri)
        except ValueError as exc:
            raise ConfigError(str(exc)) from exc

        secrets = Secrets(config.secrets or default_secrets_dir())
        state = (config.secrets.parent if config.secrets else default_state_dir()) / "oscore"
        if not config.coap_insecure:  # a missing user fails before any camera starts
            for camera_id in config.camera_ids:
                secrets.password(camera_id)

        def coap(camera_id: str) -> FrameLink:
            if config.coap_insecure:
                return CoapLink(camera_id, uri)
            security = camera_context(secrets, state / "camera", camera_id)
            return CoapLink(camera_id, uri, security=security)

        return coap
    topics = Topics(config.site)
    # Read every password up front: a missing user fails before any camera starts.
    brokers = {camera_id: config.broker_config(camera_id) for camera_id in config.camera_ids}

    def mqtt(camera_id: str) -> FrameLink:
        return MqttLink(camera_id, brokers[camera_id], topics.frame(camera_id), qos=config.qos)

    return mqtt


def _summary(report: CameraReport) -> str:
    skipped = {reason: count for reason, count in report.skipped.items() if count}
    return (
        f"{report.camera_id}: {report.published} frames, "
        f"{report.published_bytes / 1e6:.1f} MB, {report.achieved_fps:.1f} fps"
        + (f", skipped {skipped}" if skipped else "")
        + (f", stream reconnected {report.source_reconnects}x" if report.source_reconnects else "")
    )


async def run(config: CameraConfig, registry: CollectorRegistry) -> list[CameraReport]:
    """Run the fleet ``config`` describes until its duration ends or a signal stops it."""
    try:
        spec = parse_source(config.source)
        camera_settings = CameraSettings(
            fps=config.fps,
            speed=config.speed,
            fast=config.fast,
            quality=config.quality,
            bitrate_kbps=config.bitrate,
            max_in_flight=config.max_in_flight,
            duration=config.duration,
            max_frames=config.frames,
        )
    except ValueError as exc:  # the options themselves, checked before anything runs
        raise ConfigError(str(exc)) from exc
    spec.check()  # a missing or unreadable video fails before any connection is made
    data = spec.load_data()  # once for all cameras; DatasetError on an unusable folder
    ids = config.camera_ids

    def open_source(index: int) -> FrameSource:
        return spec.open(
            index,
            cameras=len(ids),
            seed=config.seed,
            dwell_frames=config.dwell,
            start_seconds=config.start,
            data=data,
            scene=config.scene,
        )

    links = _link_factory(config)
    fleet = CameraFleet(
        ids,
        sources=open_source,
        links=links,
        settings=camera_settings,
        metrics=CameraMetrics(registry),
    )
    async with fleet:
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, fleet.stop)
        try:
            log.info("%d cameras publishing %s over %s", len(ids), config.source, config.transport)
            return await fleet.wait()
        finally:
            for signum in (signal.SIGINT, signal.SIGTERM):
                loop.remove_signal_handler(signum)


def main(args: argparse.Namespace) -> int:
    """Entry point of ``edgelearn camera``; returns the exit status."""
    registry = CollectorRegistry()
    server = None
    sequential_opencv()
    try:
        config = settings(args)
        if config.metrics_port is not None:
            register_build_info(registry, "camera")
            server = _serve_metrics(registry, config.metrics_port)
            print(f"metrics on {server.url}", file=sys.stderr, flush=True)
        reports = asyncio.run(run(config, registry))
    except USER_ERRORS as exc:
        print(f"edgelearn camera: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    finally:
        if server is not None:
            server.close()
    for report in reports:
        print(_summary(report), flush=True)
    return 0


def _serve_metrics(registry: CollectorRegistry, port: int) -> MetricsServer:
    try:
        return serve_metrics(registry, port)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on port {port}: {exc.strerror or exc}") from exc


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m cameras",
        description="Run simulated 720p cameras publishing frames over MQTT or CoAP.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    configure(parser)
    return parser


def cli(argv: Sequence[str] | None = None) -> int:
    """``python -m cameras``: the same command without the ``edgelearn`` wrapper."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.WARNING - 10 * min(args.verbose, 2),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    return main(args)
