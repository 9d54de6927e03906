"""``edgelearn up``: the whole local stack on defaults, with a live summary.

The stack is started by :func:`stack.launcher.launch` (brokers bridged, the cloud, a gateway
pool, labeled and video cameras, Prometheus). Then ``up`` scrapes every process's
``/metrics`` every few seconds and prints, per camera: fps, keyframe %, bytes raw (what
cloud-only would send) vs sent, accuracy, and, per mode, latency p50/p99 and the uplink
reduction. ``--duration`` stops it; Ctrl-C or SIGTERM stop it cleanly; the last summary is
written to ``<run-dir>/summary.json``.
"""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import functools
import json
import signal
import sys
import time
from pathlib import Path
from typing import Any

from cloud.bootstrap import BUDGETS
from cloud.models.errors import ExportError
from cloud.models.teacher import TeacherSpec
from cloud.registry import Registry
from edgelearn import wire
from edgelearn.config import ConfigError
from edgelearn.datasets import DatasetError, parse_dataset
from edgelearn.evidence import Evidence
from edgelearn.metrics import Samples, fetch, histogram_quantile
from edgelearn.modes import ModeError
from edgelearn.secrets import registry_dir
from stack import broker
from stack.launcher import SAMPLE_VIDEO, RunningStack, StackError, StackSettings, launch
from stack.observer import ResultsObserver
from stack.supervisor import CounterTotals, Progress, Supervisor


def _videos(given: list[str] | None) -> tuple[str, ...]:
    """``--video`` as given (repeated), the sample video if not given, none for 'none'."""
    if given is None:
        return (str(SAMPLE_VIDEO),)
    if "none" in given:
        if len(given) > 1:
            raise ConfigError("--video none means no video camera: give it alone")
        return ()
    return tuple(given)


def summarize(samples: Samples) -> dict[str, Any]:
    """Merge every process's metrics into the figures the summary prints."""
    published = samples.by_label("edgelearn_camera_frames_published_total", "camera")
    fps = samples.by_label("edgelearn_camera_achieved_fps", "camera")
    processed = "edgelearn_gateway_frames_processed_total"
    forwarded = samples.by_label(processed, "camera", outcome="forwarded")
    held = samples.by_label(processed, "camera", outcome="held_back")
    raw = samples.by_label("edgelearn_gateway_raw_equivalent_bytes_total", "camera")
    sent = samples.by_label("edgelearn_gateway_uplink_bytes_total", "camera")
    dropped = samples.by_label("edgelearn_gateway_frames_dropped_total", "reason")
    accuracy: dict[str, dict[str, float]] = {}
    for labels, value in samples.values("edgelearn_cloud_accuracy_ratio"):
        accuracy.setdefault(labels["camera"], {})[labels["mode"]] = value
    looked = samples.by_label("edgelearn_gateway_frames_looked_at_total", "camera")
    seen = samples.by_label("edgelearn_gateway_objects_seen_total", "camera")
    entered = samples.by_label("edgelearn_gateway_objects_entered_total", "camera")
    cameras = sorted(set(published) | set(forwarded), key=lambda c: (len(c), c))
    looks = samples.by_label("edgelearn_gateway_teacher_looks_total", "camera")
    labeled = samples.by_label("edgelearn_gateway_teacher_labels_total", "camera")
    labels_sent = samples.by_label("edgelearn_gateway_teacher_labels_sent_total", "camera")
    teacher_cpu = samples.by_label("edgelearn_gateway_teacher_cpu_seconds_total", "camera")
    rate = samples.by_label("edgelearn_gateway_teacher_rate", "camera")

    def teacher(camera: str) -> dict[str, Any] | None:
        """What the gateway's teacher did for the camera (None: it never looked)."""
        if not looks.get(camera):
            return None
        return {
            "looks": int(looks[camera]),
            "labeled": int(labeled.get(camera, 0)),  # tracks whose views agreed
            "labels_sent": int(labels_sent.get(camera, 0)),  # objects sent with a label
            "cpu_seconds": round(teacher_cpu.get(camera, 0.0), 2),
            "rate": rate.get(camera, 1.0),  # share of new tracks it looks at
        }

    def objects(camera: str) -> dict[str, Any]:
        """Objects in view (mean over the frames looked at) and coming into view."""
        frames = looked.get(camera, 0)
        minutes = frames / fps[camera] / 60 if frames and fps.get(camera) else None
        return {
            "in_view": round(seen.get(camera, 0) / frames, 2) if frames else None,
            "entered": int(entered.get(camera, 0)),
            "entered_per_minute": (round(entered.get(camera, 0) / minutes, 1) if minutes else None),
        }

    per_camera = {
        camera: {
            "frames": int(published.get(camera, 0)),
            "fps": round(fps.get(camera, 0.0), 1),
            "keyframe_ratio": (
                forwarded.get(camera, 0) / total
                if (total := forwarded.get(camera, 0) + held.get(camera, 0))
                else None
            ),
            "raw_bytes": int(raw.get(camera, 0)),
            "sent_bytes": int(sent.get(camera, 0)),
            "accuracy": accuracy.get(camera, {}),
            "objects": objects(camera),
            **({"teacher": taught} if (taught := teacher(camera)) else {}),
        }
        for camera in cameras
    }
    latency = "edgelearn_cloud_end_to_end_latency_seconds"
    modes: dict[str, dict[str, Any]] = {}
    for mode in sorted({labels["mode"] for labels, _ in samples.values(f"{latency}_bucket")}):
        buckets = samples.buckets(latency, mode=mode)
        modes[mode] = {
            "latency_p50_seconds": histogram_quantile(buckets, 0.5),
            "latency_p99_seconds": histogram_quantile(buckets, 0.99),
        }
    scored = "edgelearn_cloud_frames_scored_total"
    correct = samples.by_label(scored, "mode", outcome="correct")
    wrong = samples.by_label(scored, "mode", outcome="wrong")
    for mode in set(correct) | set(wrong):
        total_scored = correct.get(mode, 0) + wrong.get(mode, 0)
        modes.setdefault(mode, {})["accuracy"] = (
            correct.get(mode, 0) / total_scored if total_scored else None
        )
    total_raw, total_sent = sum(raw.values()), sum(sent.values())
    # by task: a teacher's "person" and a data set's "Dress" name different things
    predicted = samples.by_label(
        "edgelearn_cloud_predictions_total", "class_name", task=wire.TASK_DATASET
    )
    taught = samples.by_label(
        "edgelearn_cloud_predictions_total", "class_name", task=wire.TASK_TEACHER
    )
    # what each cloud process reports of the registry they share: the highest, not a sum
    training = max(
        (value for _, value in samples.values("edgelearn_cloud_generation_training")), default=0
    )
    return {
        "models": {
            "generation": {
                family: int(value)
                for family, value in samples.highest_by_label(
                    "edgelearn_cloud_model_generation", "family"
                ).items()
            },
            "held_out_accuracy": samples.highest_by_label(
                "edgelearn_cloud_model_heldout_accuracy_ratio", "mode"
            ),
            "held_out_items": {
                mode: int(value)
                for mode, value in samples.highest_by_label(
                    "edgelearn_cloud_model_heldout_items", "mode"
                ).items()
            },
            "training_generation": int(training) or None,
        },
        # by the model's class names: a user's data set shows theirs
        "predicted": dict(sorted(predicted.items(), key=lambda item: -item[1])),
        "predicted_teacher": dict(sorted(taught.items(), key=lambda item: -item[1])),
        "trainer": {
            "runs": int(samples.total("edgelearn_cloud_trainer_triggers_total")),
            "promotions": int(samples.total("edgelearn_cloud_trainer_promotions_total")),
            "rejections": int(samples.total("edgelearn_cloud_trainer_rejections_total")),
            "rollbacks": int(samples.total("edgelearn_cloud_trainer_rollbacks_total")),
        },
        "cameras": per_camera,
        "modes": modes,
        "results": int(samples.total("edgelearn_cloud_results_total")),
        "dropped": {reason: int(value) for reason, value in dropped.items() if value},
        "delivery": {
            "features_sent": int(samples.total(processed, outcome="forwarded")),
            "acknowledged": int(samples.total("edgelearn_gateway_features_acked_total")),
            "waiting": int(samples.total("edgelearn_gateway_outbox_items")),
            "resent": int(samples.total("edgelearn_gateway_features_resent_total")),
            "duplicates_at_cloud": int(samples.total("edgelearn_cloud_duplicates_total")),
            "given_up": {
                reason: int(value)
                for reason, value in samples.by_label(
                    "edgelearn_gateway_features_dropped_total", "reason"
                ).items()
                if value
            },
        },
        "raw_bytes": int(total_raw),
        "sent_bytes": int(total_sent),
        "uplink_reduction": (1 - total_sent / total_raw) if total_raw else None,
    }


def with_teacher_report(summary: dict[str, Any], report: dict[str, Any]) -> None:
    """The observer's view of the cameras the teacher names (answers by class, agreement by
    track) joined to each camera's ``teacher`` figures."""
    for camera, seen in report.items():
        row = summary["cameras"].get(camera)
        if row is None:
            continue
        row.setdefault("teacher", {}).update(seen)


def _teacher_text(taught: dict[str, Any]) -> str:
    """``teacher: answered objects agree 100.0% (12 objects), 113 of 125 first seen before a
    student, unknown 3%, CPU 12.3 s, rate 10%``: the first answer to each labeled object
    (a looped video's twin tracks are one), those a student gave apart from those answered
    ``unknown`` before there was one; the share of every answer that was ``unknown``."""
    parts = []
    if "agreement_answered" in taught:
        answered = _evidence(taught["agreement_answered"]).replace(" items", " objects")
        parts.append(f"answered objects agree {answered}")
        if first_unknown := taught.get("first_unknown"):
            parts.append(
                f"{first_unknown} of {taught['labeled_objects']} first seen before a student"
            )
    elif "agreement" in taught:
        parts.append(f"agrees {_evidence(taught['agreement']).replace(' items', ' objects')}")
    answers = taught.get("answers") or {}
    if total := sum(answers.values()):
        parts.append(f"unknown {answers.get('unknown', 0) / total:.0%}")
        if wrong := answers.get("labeled-set class", 0):
            parts.append(f"{wrong} labeled-set classes")
    if "cpu_seconds" in taught:
        parts.append(f"CPU {taught['cpu_seconds']:.1f} s, rate {taught['rate']:.0%}")
    return "teacher: " + ", ".join(parts)


def _fmt_bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _fmt(value: float | None, scale: float = 100, suffix: str = "%") -> str:
    return "-" if value is None else f"{value * scale:.1f}{suffix}"


def _evidence(figure: dict[str, Any], interval: bool = False) -> str:
    return Evidence.from_dict(figure).text(interval)


def render_summary(summary: dict[str, Any], elapsed: float, health: str = "") -> str:
    first = summary.get("first_result_seconds")
    lines = [
        f"edgelearn stack, {elapsed:.0f} s: {summary['results']} results"
        + (f" (the first {first:.0f} s after the command started)" if first else "")
        + (f"; {health}" if health else ""),
        f"{'camera':<10}{'fps':>6}{'frames':>8}{'keyframes':>11}{'raw':>11}{'sent':>11}"
        f"{'objects':>9}{'in/min':>8}  accuracy per object (run, items)",
    ]
    observed = summary.get("accuracy") or {}
    for camera, row in summary["cameras"].items():
        accuracy = ", ".join(
            f"{mode} {_evidence(of_mode['run']['cameras'][camera])}"
            for mode, of_mode in observed.items()
            if camera in of_mode["run"]["cameras"]
        )
        seen = row.get("objects") or {}
        in_view = "-" if seen.get("in_view") is None else f"{seen['in_view']:.1f}"
        per_minute = (
            "-" if seen.get("entered_per_minute") is None else f"{seen['entered_per_minute']:.0f}"
        )
        lines.append(
            f"{camera:<10}{row['fps']:>6}{row['frames']:>8}"
            f"{_fmt(row['keyframe_ratio']):>11}{_fmt_bytes(row['raw_bytes']):>11}"
            f"{_fmt_bytes(row['sent_bytes']):>11}{in_view:>9}{per_minute:>8}  "
            + (accuracy or (_teacher_text(row["teacher"]) if row.get("teacher") else "-"))
        )
    for mode, row in sorted(summary["modes"].items()):
        lines.append(
            f"mode {mode:<12} latency p50 {_fmt(row.get('latency_p50_seconds'), 1000, ' ms')}"
            f"  p99 {_fmt(row.get('latency_p99_seconds'), 1000, ' ms')}"
        )
        if mode in observed:
            recent = next(key for key in observed[mode] if key.startswith("last_"))
            lines.append(
                f"  accuracy per object: run {_evidence(observed[mode]['run'], True)}; "
                f"last {int(recent[5:-1]) // 60} min {_evidence(observed[mode][recent], True)}"
            )
    lines.append(
        f"uplink: {_fmt_bytes(summary['sent_bytes'])} sent for "
        f"{_fmt_bytes(summary['raw_bytes'])} of camera JPEGs: "
        f"reduction {_fmt(summary['uplink_reduction'])}"
    )
    delivery = summary["delivery"]
    lines.append(
        f"delivery: {delivery['features_sent']} features sent, {delivery['acknowledged']} "
        f"acknowledged, {delivery['waiting']} waiting, {delivery['resent']} re-sent, "
        f"{delivery['duplicates_at_cloud']} duplicates ignored by the cloud"
        + "".join(f", {n} given up ({reason})" for reason, n in delivery["given_up"].items())
    )
    if summary.get("predicted"):
        top = list(summary["predicted"].items())[:8]
        lines.append(
            "classes predicted: "
            + ", ".join(f"{name} {int(n)}" for name, n in top)
            + (", ..." if len(summary["predicted"]) > len(top) else "")
        )
    if summary.get("predicted_teacher"):
        lines.append(
            "classes predicted, cameras without labels: "
            + ", ".join(f"{name} {int(n)}" for name, n in summary["predicted_teacher"].items())
        )
    models = summary.get("models") or {}
    if models.get("generation"):
        held_out = ", ".join(
            f"{mode} {value:.1%}" for mode, value in sorted(models["held_out_accuracy"].items())
        )
        items = max(models["held_out_items"].values(), default=0)
        lines.append(
            "models: generation "
            + ", ".join(f"{family} {n}" for family, n in models["generation"].items() if n)
            + (f"; held-out {held_out} ({items} items)" if held_out else "")
            + (
                f"; training generation {models['training_generation']} in the background"
                if models.get("training_generation")
                else ""
            )
        )
    trainer = summary.get("trainer") or {}
    if trainer.get("runs"):
        lines.append(
            f"continuous trainer: {trainer['runs']} runs, {trainer['promotions']} promoted, "
            f"{trainer['rejections']} kept the serving model, {trainer['rollbacks']} rolled back"
        )
    if summary["dropped"]:
        lines.append(
            "gateway drops: " + ", ".join(f"{k} {v}" for k, v in summary["dropped"].items())
        )
    return "\n".join(lines)


DEFAULT_INTERVAL = 5.0  # seconds between two summaries


def _split_ks(text: str) -> tuple[int, ...]:
    try:
        ks = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError as exc:
        raise ConfigError(f"--split-ks {text!r}: comma-separated integers") from exc
    if min(ks, default=0) < 1:
        raise ConfigError(f"--split-ks {text!r}: integers >= 1")
    return ks


def configure(parser: argparse.ArgumentParser) -> None:
    defaults = StackSettings()
    parser.add_argument(
        "--duration",
        type=float,
        default=None,
        help="stop after this many seconds of camera traffic (default: Ctrl-C)",
    )
    parser.add_argument(
        "--mode",
        default=defaults.mode,
        help="gateway mode: raw, pca, autoencoder, split:K, full, or auto (default): the "
        "cloud's planner picks it from the gateway's status (it starts in the deepest split)",
    )
    split_ks = ",".join(str(k) for k in defaults.split_ks)
    parser.add_argument(
        "--split-ks",
        default=split_ks,
        help=f"split points the cloud trains and pushes (default {split_ks})",
    )
    parser.add_argument(
        "--budget",
        choices=BUDGETS,
        default=defaults.budget,
        help="the model generations the cloud trains: default, a first one in seconds, then "
        "bigger ones in the background for some minutes; quick: two small ones (tests, "
        "quick benchmarks); smoke: two tiny ones, to check an install",
    )
    parser.add_argument(
        "--dataset",
        default=defaults.dataset,
        help="what the cloud learns and the labeled cameras show: fashion-mnist (default) or "
        "folder:PATH (one sub-folder of images per class; the cameras show the fifth the "
        "cloud holds out)",
    )
    parser.add_argument(
        "--no-learn",
        dest="learn",
        action="store_false",
        help="no continuous trainer: the cloud does not tune its models on what arrives",
    )
    parser.add_argument(
        "--no-grow",
        dest="grow",
        action="store_false",
        help="train the first model generation only, not the bigger ones in the background",
    )
    parser.add_argument(
        "--teacher-model",
        type=Path,
        default=None,
        metavar="FILE",
        help="the gateways' teacher for cameras without labels: your own detector instead of "
        "the packaged person detector (a .tflite with the outputs of LiteRT's detection "
        "postprocess, or a TF Object Detection API SSD graph, .pb)",
    )
    parser.add_argument(
        "--teacher-labels",
        type=Path,
        default=None,
        metavar="FILE",
        help="its class names by class id: one a line, or 'N name' lines (labelmap.txt)",
    )
    parser.add_argument(
        "--teacher-classes",
        default="",
        metavar="A,B",
        help="the classes it labels (default: every named class); what else moves is "
        "'other moving object'",
    )
    parser.add_argument(
        "--uplink-kbps",
        type=float,
        default=defaults.uplink_kbps,
        help="the gateway's uplink in kb/s as reported to the planner (try 128: the planner "
        "moves the gateway to full, results only); default 0: not configured, a fast link",
    )
    parser.add_argument(
        "--workers", type=int, default=defaults.workers, help="gateway worker processes per site"
    )
    parser.add_argument(
        "--sites",
        type=int,
        default=defaults.sites,
        help="edge sites, each with its broker, gateway and cameras, bridged into one cloud "
        "broker (default 1)",
    )
    parser.add_argument(
        "--clouds",
        type=int,
        default=defaults.clouds,
        help="cloud processes, as on that many machines: with more than one they share a "
        "PostgreSQL the stack starts (ledger, training store, trainer lease) and the model "
        f"registry (default {defaults.clouds})",
    )
    parser.add_argument(
        "--consumers",
        type=int,
        default=defaults.consumers,
        help=f"cloud consumers in one shared-subscription group (default {defaults.consumers})",
    )
    parser.add_argument(
        "--cameras",
        type=int,
        default=defaults.labeled_cameras,
        help="labeled-scene cameras (of --dataset)",
    )
    parser.add_argument(
        "--video",
        action="append",
        default=None,
        help="one more camera per video: a file, a folder of them, or a live stream "
        "(rtsp://...); repeat it for several; 'none' for no video camera "
        f"(default {SAMPLE_VIDEO})",
    )
    parser.add_argument("--fps", type=float, default=defaults.fps, help="camera frame rate")
    parser.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the labeled cameras' scenes: which items they show, where and in what light "
        "(default: a fresh one each run, printed and in summary.json; the same seed shows "
        "the same items again)",
    )
    parser.add_argument("--site", default=defaults.site, help="topic namespace")
    parser.add_argument(
        "--edge-port", type=int, default=defaults.edge_port, help="edge broker port (0: free)"
    )
    parser.add_argument(
        "--cloud-port", type=int, default=defaults.cloud_port, help="cloud broker port (0: free)"
    )
    parser.add_argument(
        "--prometheus-port",
        type=int,
        default=defaults.prometheus_port,
        help="Prometheus port (0: free)",
    )
    parser.add_argument(
        "--no-prometheus",
        dest="prometheus",
        action="store_false",
        help="do not start Prometheus even when installed",
    )
    parser.add_argument(
        "--run-dir",
        type=Path,
        default=defaults.run_dir,
        help="logs, broker data, Prometheus data, the summary JSON",
    )
    parser.add_argument("--secrets", type=Path, default=None, help="secrets directory")
    parser.add_argument("--registry", type=Path, default=None, help="model registry")
    parser.add_argument(
        "--interval", type=float, default=DEFAULT_INTERVAL, help="seconds between summary updates"
    )
    parser.add_argument(
        "--quiet",
        action="store_true",
        help="do not echo children's warnings and errors (their logs are in the run folder)",
    )


SUPERVISE_PERIOD = 1.0  # seconds between two checks of every part


def _watch_progress(
    stack: RunningStack, supervisor: Supervisor, latest: dict[str, Samples]
) -> None:
    """Hung means: it stands still while what feeds it moves (see stack.supervisor)."""

    def total(urls: list[str], name: str, **match: str) -> float | None:
        if not all(url in latest for url in urls):
            return None
        return sum(latest[url].total(name, **match) for url in urls)

    gateways = [site.gateway for site in stack.sites if site.gateway is not None]
    for site in stack.sites:
        if site.gateway is None:
            continue
        cameras = [url for camera in site.cameras for url in camera.metrics_urls]
        supervisor.watch_progress(
            site.gateway.name,
            Progress(
                own=functools.partial(
                    total, site.gateway.metrics_urls, "edgelearn_gateway_frames_received_total"
                ),
                upstream=functools.partial(
                    total, cameras, "edgelearn_camera_frames_published_total"
                ),
            ),
        )
    supervisor.watch_progress(
        stack.cloud.name,
        Progress(
            own=functools.partial(
                total, stack.cloud.metrics_urls, "edgelearn_cloud_features_received_total"
            ),
            upstream=functools.partial(
                total,
                [url for gateway in gateways for url in gateway.metrics_urls],
                "edgelearn_gateway_uplink_bytes_total",
            ),
        ),
    )


def _settings(args: argparse.Namespace) -> StackSettings:
    try:
        dataset = parse_dataset(args.dataset)
    except ValueError as exc:
        raise ConfigError(f"--dataset: {exc}") from exc
    if dataset.path is not None:
        dataset.load()  # an unusable folder fails now, in one line, before anything starts
    try:
        classes = tuple(name.strip() for name in args.teacher_classes.split(",") if name.strip())
        teacher = TeacherSpec(args.teacher_model, args.teacher_labels, classes)
        teacher.task()  # unreadable labels, or a class they do not name: fails now
    except (ValueError, ExportError) as exc:
        raise ConfigError(f"teacher: {exc}") from exc
    try:
        return StackSettings(
            run_dir=args.run_dir,
            secrets=args.secrets,
            registry=args.registry,
            site=wire.Topics(args.site).site,
            edge_port=args.edge_port,
            cloud_port=args.cloud_port,
            prometheus_port=args.prometheus_port,
            prometheus=args.prometheus,
            mode=args.mode,
            split_ks=_split_ks(args.split_ks),
            budget=args.budget,
            dataset=str(dataset),
            learn=args.learn,
            grow=args.grow,
            teacher=teacher,
            workers=args.workers,
            sites=args.sites,
            consumers=args.consumers,
            clouds=args.clouds,
            uplink_kbps=args.uplink_kbps,
            labeled_cameras=args.cameras,
            seed=args.seed,
            videos=_videos(args.video),
            fps=args.fps,
            echo=not args.quiet,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc


def _run(args: argparse.Namespace, stop: _StopRequest, summary: dict[str, Any]) -> int:
    """Start the stack, supervise it and keep ``summary`` current until the end; returns
    the exit status (1: a part failed for good)."""
    began = time.monotonic()  # the command's start: how long the first result took
    settings = _settings(args)
    registry = Registry(registry_dir(settings.registry))
    task = parse_dataset(settings.dataset).task
    observer_config = functools.partial(ResultsObserver, teacher_classes=settings.teacher.task())
    with launch(settings) as stack, observer_config(stack.observer_config()) as observer:
        print("\nedgelearn stack is up:", flush=True)
        for key, value in stack.info().items():
            print(f"  {key:<13} {value}")
        urls = stack.metrics_urls
        for url in urls:
            print(f"  metrics       {url}")
        totals = CounterTotals(fetch)
        latest: dict[str, Samples] = {}

        def restarted(part: object) -> None:
            for url in getattr(part, "metrics_urls", []):
                totals.restarted(url)

        supervisor = Supervisor(stack.parts, on_restart=restarted)
        _watch_progress(stack, supervisor, latest)
        started = time.monotonic()
        next_summary = started + args.interval
        while True:
            for event in supervisor.check():
                print(f"edgelearn up: {event}", file=sys.stderr, flush=True)
            now = time.monotonic()
            elapsed = now - started
            finished = stop.requested or (args.duration is not None and elapsed >= args.duration)
            if now >= next_summary or finished:
                next_summary = now + args.interval
                per_url, merged = totals.read(urls)
                latest.update(per_url)
                summary.clear()
                summary.update(summarize(merged))
                summary["seed"] = stack.seed
                # What a subscriber of the results saw, on items no serving model trained on
                summary["accuracy"] = observer.report(registry.trained_items(task))
                with_teacher_report(summary, observer.teacher_report())
                if observer.first_at is not None:
                    summary["first_result_seconds"] = round(observer.first_at - began, 1)
                summary["health"] = supervisor.report()
                summary["elapsed_seconds"] = round(elapsed, 1)
                print("\n" + render_summary(summary, elapsed, supervisor.line()), flush=True)
            if finished:
                break
            time.sleep(SUPERVISE_PERIOD)  # the supervisor's period; a stop waits at most this
        for part in stack.parts:
            supervisor.stopped(part.name)
        if failed := supervisor.failed():
            print(f"edgelearn up: failed for good: {', '.join(failed)}", file=sys.stderr)
            return 1
    return 0


class _StopRequest:
    """Set by SIGINT or SIGTERM. The handler only assigns a flag: a handler that takes a
    lock (``threading.Event.set``) deadlocks when the signal lands while the main thread
    holds that same lock, as it does inside ``Event.wait``."""

    requested = False

    def handler(self, *_: object) -> None:
        self.requested = True


def main(args: argparse.Namespace) -> int:
    stop = _StopRequest()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, stop.handler)
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1` prints every thread's stack
    summary: dict[str, Any] = {}
    status, error = 2, None
    try:
        status = _run(args, stop, summary)
    except (
        StackError,
        broker.BrokerError,
        ConfigError,
        DatasetError,
        ModeError,
        wire.WireError,
    ) as exc:
        error = str(exc)
        print(f"edgelearn up: {exc}", file=sys.stderr)
    except BaseException as exc:  # a bug: still say what happened in summary.json
        error = f"{type(exc).__name__}: {exc}"
        raise
    finally:
        path = args.run_dir / "summary.json"
        with contextlib.suppress(OSError):
            args.run_dir.mkdir(parents=True, exist_ok=True)
            path.write_text(
                json.dumps({**summary, "exit_status": status, "error": error}, indent=2)
            )
            print(f"summary written to {path}", flush=True)
    return status
