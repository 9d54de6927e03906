"""``edgelearn report``: PNG charts of a run, side by side per mode.

Two sources, one set of charts (uplink bytes per mode, reduction ratio, latency, accuracy,
keyframe ratio):

* ``--from-json F.json``: a benchmark's results, a top-level ``modes`` object of per-mode
  figures (``uplink_bytes_per_frame``, ``reduction``, ``accuracy``, ``latency_p50_seconds``,
  ``latency_p99_seconds``, ``keyframe_ratio``, optionally ``training_seconds``). Missing
  figures are skipped and said so; :func:`render_from_json` is the same thing for callers
  (the pipeline benchmark, tests).
* ``--from-json drift.json`` of ``edgelearn bench drift``: accuracy over time, static model
  against the continuous trainer, overall (``drift.png``, with the drift and every
  promotion and rollback marked) and per camera (``drift_per_camera.png``).
* ``--prometheus http://host:port --since 15m``: the Prometheus that scraped the run, through
  its HTTP API (``query`` and ``query_range``, urllib only). It reads the roles' metrics
  directly, so it works without the recording rules of ``dashboards/prometheus``.

Charts are drawn with matplotlib's Agg canvas (no display, no global pyplot state) and
written to ``--output-dir``; the command prints each file it wrote and what it left out.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from edgelearn.modes import KINDS, Mode, ModeError

LATENCY_OBJECTIVE_SECONDS: Final = 0.05  # split modes; the alert rules use the same figure
DEFAULT_OUTPUT: Final = Path("report")
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)")
_UNIT_SECONDS: Final = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


class ReportError(Exception):
    """A report that cannot be made: unreadable input or a Prometheus that says no."""


@dataclass
class Rendered:
    """What a render wrote and what it could not draw, in words for the user."""

    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# --- small helpers -------------------------------------------------------------------------


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``1h30m``, ``2d`` -> seconds (Prometheus' duration syntax)."""
    text = text.strip()
    parts = list(_DURATION.finditer(text))
    if not parts or "".join(part[0] for part in parts) != text:
        raise ValueError(f"not a duration: {text!r} (e.g. 90s, 15m, 1h30m)")
    seconds = sum(float(part[1]) * _UNIT_SECONDS[part[2]] for part in parts)
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return seconds


def _promql_duration(seconds: float) -> str:
    return f"{max(1, round(seconds))}s"


def _mode_key(name: str) -> tuple[tuple[int, int], str]:
    """Modes in the order a reader expects (:attr:`Mode.order`: the cloud-only baseline
    first, then by edge work); a name that starts with no mode goes last."""
    try:
        return Mode.parse(name.split(maxsplit=1)[0]).order, name
    except (ModeError, IndexError):
        return (len(KINDS), 0), name


def _number(value: Any) -> float | None:
    """A finite float, or None for missing, non-numeric, NaN or infinite values."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) else None


def _human_bytes(value: float) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if abs(value) < 1000 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    raise AssertionError("unreachable")


# --- drawing -------------------------------------------------------------------------------


def _save(figure: Figure, path: Path) -> Path:
    FigureCanvasAgg(figure)  # attach the Agg canvas: no GUI backend is ever involved
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    return path


def _bars(
    path: Path,
    title: str,
    ylabel: str,
    groups: Mapping[str, Mapping[str, float]],
    *,
    label: Callable[[float], str],
    percent: bool = False,
    scale: float = 1.0,
    log: bool = False,
    objective: tuple[float, str] | None = None,
) -> Path:
    """Bars per mode; ``groups`` maps a series name (e.g. ``p99``) to ``{mode: value}``.
    Values are drawn times ``scale`` (100 with ``percent``); ``label`` gets them unscaled."""
    scale = 100.0 if percent else scale
    # A log axis cannot show zero: fall back to linear rather than drop a bar.
    log = log and all(v > 0 for values in groups.values() for v in values.values())
    modes = sorted({mode for values in groups.values() for mode in values}, key=_mode_key)
    figure = Figure(figsize=(max(7.0, 0.75 * len(modes) * max(1, len(groups)) + 2), 4.2))
    axes = figure.add_subplot()
    width = 0.8 / max(1, len(groups))
    for index, (series, values) in enumerate(groups.items()):
        xs = [position + (index - (len(groups) - 1) / 2) * width for position in range(len(modes))]
        heights = [values.get(mode, math.nan) for mode in modes]
        shown = [h * scale for h in heights]
        bars = axes.bar(xs, shown, width * 0.95, label=series if len(groups) > 1 else None)
        for bar, value in zip(bars, heights, strict=True):
            if not math.isnan(value):
                axes.annotate(
                    label(value),
                    (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                    ha="center",
                    va="bottom",
                    fontsize=8,
                    xytext=(0, 2),
                    textcoords="offset points",
                )
    if objective is not None:
        value, text = objective
        axes.axhline(value * scale, color="red", linestyle="--", lw=1)
        axes.annotate(text, (0, value * scale), xycoords=("axes fraction", "data"), color="red",
                      fontsize=8, xytext=(4, 3), textcoords="offset points")  # fmt: skip
    axes.set_xticks(range(len(modes)), modes)
    axes.set_title(title, wrap=True)
    axes.set_ylabel(f"{ylabel} (log scale)" if log else ylabel)
    if log:
        axes.set_yscale("log")
    elif percent:
        shown_values = [v * scale for values in groups.values() for v in values.values()]
        axes.set_ylim(min(0.0, *shown_values), max(100.0, *shown_values) * 1.12)
    else:
        axes.set_ylim(0, None)
        axes.margins(y=0.15)
    if len(groups) > 1:
        axes.legend(fontsize=8)
    axes.grid(axis="y", alpha=0.3)
    return _save(figure, path)


Series = dict[str, tuple[list[float], list[float]]]


def _lines(
    path: Path,
    title: str,
    ylabel: str,
    series: Series,
    *,
    percent: bool = False,
    objective: tuple[float, str] | None = None,
) -> Path:
    """Time series; x values are seconds, drawn from the first sample of any series."""
    origin = _origin(series)
    span = max((xs[-1] - origin for xs, _ in series.values() if xs), default=0.0)
    scale, unit = (60.0, "min") if span > 600 else (1.0, "s")
    figure = Figure(figsize=(8.0, 4.2))
    axes = figure.add_subplot()
    for name in sorted(series, key=_mode_key):
        xs, ys = series[name]
        axes.plot(
            [(x - origin) / scale for x in xs],
            [y * 100 if percent else y for y in ys],
            label=name,
            lw=1.4,
            marker="." if len(xs) < 30 else None,
        )
    if objective is not None:
        value, text = objective
        axes.axhline(value * 100 if percent else value, color="red", linestyle="--", lw=1,
                     label=text)  # fmt: skip
    axes.set_title(title)
    axes.set_xlabel(f"time since the first sample ({unit})")
    axes.set_ylabel(ylabel)
    if percent:
        axes.set_ylim(None, 105)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    return _save(figure, path)


def _distribution(
    path: Path,
    title: str,
    buckets: Mapping[str, list[tuple[float, float]]],
    quantiles: Series,
) -> Path:
    """Left: results per latency bucket and mode; right: p50/p99 over time."""
    figure = Figure(figsize=(12.0, 4.4))
    left, right = figure.subplots(1, 2)
    bounds = sorted({upper for counts in buckets.values() for upper, _ in counts})
    width = 0.8 / max(1, len(buckets))
    for index, mode in enumerate(sorted(buckets, key=_mode_key)):
        per_bound = dict(buckets[mode])
        total = sum(per_bound.values()) or 1.0
        xs = [b + (index - (len(buckets) - 1) / 2) * width for b in range(len(bounds))]
        left.bar(xs, [100 * per_bound.get(b, 0.0) / total for b in bounds], width * 0.95,
                 label=mode)  # fmt: skip
    labels = [("≤ " + _seconds_label(b)) if math.isfinite(b) else "more" for b in bounds]
    left.set_xticks(range(len(bounds)), labels, rotation=45, ha="right", fontsize=8)
    left.set_ylabel("share of results (%)")
    left.set_title("Latency distribution (capture to result)")
    left.legend(fontsize=8)
    left.grid(axis="y", alpha=0.3)
    origin = _origin(quantiles)
    for name in sorted(quantiles, key=_mode_key):
        xs, ys = quantiles[name]
        right.plot([x - origin for x in xs], [y * 1000 for y in ys], label=name, lw=1.4,
                   marker="." if len(xs) < 30 else None)  # fmt: skip
    right.axhline(LATENCY_OBJECTIVE_SECONDS * 1000, color="red", linestyle="--", lw=1,
                  label="objective (split modes)")  # fmt: skip
    right.set_xlabel("time since the first sample (s)")
    right.set_ylabel("latency (ms)")
    right.set_title("End-to-end latency p50 / p99")
    right.grid(alpha=0.3)
    right.legend(fontsize=8)
    figure.suptitle(title)
    return _save(figure, path)


def _origin(series: Series) -> float:
    """The first x of any series: a run shorter than the window starts at 0, not midway."""
    return min((xs[0] for xs, _ in series.values() if xs), default=0.0)


def _seconds_label(seconds: float) -> str:
    return f"{seconds * 1000:g} ms" if seconds < 1 else f"{seconds:g} s"


def _percent(value: float) -> str:
    return f"{value * 100:.1f}%"


def _milliseconds(value: float) -> str:
    return f"{value * 1000:.1f} ms"


# --- from a benchmark's JSON ---------------------------------------------------------------


def _modes_of(data: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    modes = data.get("modes")
    if isinstance(modes, list):  # [{"mode": "pca", ...}, ...] is accepted too
        modes = {str(item.get("mode")): item for item in modes if isinstance(item, Mapping)}
    if not isinstance(modes, Mapping) or not modes:
        raise ReportError("the JSON has no 'modes' object of per-mode figures")
    return {str(mode): figures for mode, figures in modes.items() if isinstance(figures, Mapping)}


def _figure_per_mode(
    modes: Mapping[str, Mapping[str, Any]], key: str, notes: list[str]
) -> dict[str, float]:
    values = {mode: _number(figures.get(key)) for mode, figures in modes.items()}
    found = {mode: value for mode, value in values.items() if value is not None}
    missing = sorted((mode for mode, value in values.items() if value is None), key=_mode_key)
    if found and missing:
        notes.append(f"{key}: no value for {', '.join(missing)}")
    return found


KEYFRAMES_SUFFIX: Final = " keyframes"
EVERY_FRAME: Final = "every frame"
KEYFRAMES_ON: Final = "keyframes on"


def _by_keyframes(values: Mapping[str, float]) -> dict[str, dict[str, float]]:
    """``{"pca": a, "pca keyframes": b}`` as bar groups ``{"every frame": {"pca": a},
    "keyframes on": {"pca": b}}``: one slot per mode, keyframes off and on side by side.
    Names without the suffix stay as they are; an empty group is left out."""
    every = {m: v for m, v in values.items() if not m.endswith(KEYFRAMES_SUFFIX)}
    keyed = {
        m.removesuffix(KEYFRAMES_SUFFIX): v
        for m, v in values.items()
        if m.endswith(KEYFRAMES_SUFFIX)
    }
    groups = {EVERY_FRAME: every, KEYFRAMES_ON: keyed}
    return {name: group for name, group in groups.items() if group} or {"value": dict(values)}


def _trade_off(
    path: Path, title: str, uplink: Mapping[str, float], accuracy: Mapping[str, float]
) -> Path:
    """Accuracy against uplink bytes per frame (log scale), one point per mode: colour for
    the mode, a circle with every frame sent and a triangle with keyframes on; cloud-only
    (``raw``, every frame) ringed, with its accuracy as a dashed reference line. Legends,
    not labels, name the points, so nothing collides."""
    from matplotlib.lines import Line2D

    figure = Figure(figsize=(9.5, 5.2))
    axes = figure.add_subplot()
    names = sorted(set(uplink) & set(accuracy), key=_mode_key)
    palette = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2"]
    colours: dict[str, str] = {}
    for name in names:
        base = name.removesuffix(KEYFRAMES_SUFFIX)
        colour = colours.setdefault(base, palette[len(colours) % len(palette)])
        axes.scatter(
            [uplink[name]], [100 * accuracy[name]], s=80, color=colour, zorder=3,
            marker="^" if name.endswith(KEYFRAMES_SUFFIX) else "o",
            edgecolors="black" if name == "raw" else "none", linewidths=1.5,
        )  # fmt: skip
    if "raw" in names:
        level = 100 * accuracy["raw"]
        axes.axhline(level, color="grey", linestyle="--", lw=1)
        axes.annotate(
            "cloud-only accuracy", (0, level), xycoords=("axes fraction", "data"),
            fontsize=8, color="grey", xytext=(4, 4), textcoords="offset points",
        )  # fmt: skip
    modes = [
        Line2D([], [], marker="s", linestyle="", color=colour, markersize=9, label=base)
        for base, colour in colours.items()
    ]
    markers = [
        Line2D([], [], marker="o", linestyle="", color="black", label=EVERY_FRAME),
        Line2D([], [], marker="^", linestyle="", color="black", label=KEYFRAMES_ON),
    ]
    first = axes.legend(handles=modes, title="mode", fontsize=8, loc="upper left",
                        bbox_to_anchor=(1.01, 1.0))  # fmt: skip
    axes.add_artist(first)
    axes.legend(handles=markers, fontsize=8, loc="lower left", bbox_to_anchor=(1.01, 0.0))
    axes.set_xscale("log")
    axes.set_xlabel("uplink bytes per camera frame (log scale)")
    axes.set_ylabel("accuracy (%)")
    axes.set_title(title, wrap=True)
    axes.grid(alpha=0.3, which="both")
    return _save(figure, path)


def _drift_series(
    data: Mapping[str, Any], arm: str, camera: str | None
) -> tuple[list[float], list[float]]:
    xs: list[float] = []
    ys: list[float] = []
    for row in data.get("series") or []:
        figures = row.get(arm) or {}
        value = (
            figures.get("overall") if camera is None else (figures.get("cameras") or {}).get(camera)
        )
        if value is not None:
            xs.append(float(row["t"]))
            ys.append(float(value) * 100)
    return xs, ys


def _render_drift(data: Mapping[str, Any], out_dir: Path) -> Rendered:
    """``bench drift``: accuracy over time of the static model and the continuous trainer."""
    done = Rendered()
    drift_at = float((data.get("drift") or {}).get("at_seconds") or 0.0)
    window = data.get("window_seconds")
    figure = Figure(figsize=(8.0, 4.2))
    axes = figure.add_subplot()
    for arm, style in (("learning", "-"), ("static", "--")):
        xs, ys = _drift_series(data, arm, None)
        axes.plot(xs, ys, style, lw=1.6, label=f"{arm} ({data.get('mode', '')})")
    axes.axvline(drift_at, color="red", lw=1, label="the world changes")
    previous = {"promotions": 0.0, "rollbacks": 0.0}
    for row in data.get("series") or []:
        for key, colour in (("promotions", "green"), ("rollbacks", "orange")):
            if float(row.get(key) or 0) > previous[key]:
                axes.axvline(float(row["t"]), color=colour, lw=0.8, linestyle=":")
            previous[key] = float(row.get(key) or 0)
    axes.plot([], [], color="green", lw=0.8, linestyle=":", label="promotion")
    axes.plot([], [], color="orange", lw=0.8, linestyle=":", label="rollback")
    axes.set_title(f"Accuracy over time ({window:.0f} s windows): static vs continuous trainer")
    axes.set_xlabel("seconds since the cameras started")
    axes.set_ylabel("accuracy (%)")
    axes.set_ylim(0, 100)
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    done.files.append(_save(figure, out_dir / "drift.png"))
    cameras = sorted(
        {c for row in data.get("series") or [] for c in ((row.get("learning") or {}).get(
            "cameras") or {})},
        key=lambda c: (len(c), c),
    )  # fmt: skip
    if cameras:
        figure = Figure(figsize=(8.0, 2.2 * math.ceil(len(cameras) / 2) + 0.6))
        for index, camera in enumerate(cameras):
            axes = figure.add_subplot(math.ceil(len(cameras) / 2), 2, index + 1)
            for arm, style in (("learning", "-"), ("static", "--")):
                xs, ys = _drift_series(data, arm, camera)
                axes.plot(xs, ys, style, lw=1.2, label=arm)
            axes.axvline(drift_at, color="red", lw=1)
            axes.set_title(camera, fontsize=9)
            axes.set_ylim(0, 100)
            axes.grid(alpha=0.3)
            if index == 0:
                axes.legend(fontsize=7)
        figure.suptitle("Accuracy per camera (%), seconds since the start", fontsize=10)
        done.files.append(_save(figure, out_dir / "drift_per_camera.png"))
    done.notes.append(f"drew accuracy over time for {len(cameras)} cameras")
    return done


def _render_json(data: Mapping[str, Any], out_dir: Path) -> Rendered:
    if data.get("benchmark") == "drift":
        return _render_drift(data, out_dir)
    modes = _modes_of(data)
    done = Rendered()
    title = str(data.get("title") or data.get("name") or "benchmark")

    def chart(key: str, what: str, draw: Callable[[dict[str, float]], Path]) -> None:
        values = _figure_per_mode(modes, key, done.notes)
        if not values:
            done.notes.append(f"skipped {what}: no mode has {key}")
            return
        done.files.append(draw(values))
        done.notes.append(f"drew {what} for {', '.join(sorted(values, key=_mode_key))}")

    chart(
        "uplink_bytes_per_frame",
        "uplink bytes per frame",
        lambda values: _bars(
            out_dir / "uplink_bytes_per_mode.png",
            f"Uplink bytes per camera frame ({title})",
            "bytes per frame",
            _by_keyframes(values),
            label=_human_bytes,
            log=max(values.values()) > 20 * max(min(values.values()), 1e-9),
        ),
    )
    chart(
        "reduction",
        "uplink reduction",
        lambda values: _bars(
            out_dir / "reduction_ratio.png",
            f"Uplink reduction against cloud-only ({title})",
            "reduction (%)",
            _by_keyframes(values),
            label=_percent,
            percent=True,
        ),
    )
    p50 = _figure_per_mode(modes, "latency_p50_seconds", done.notes)
    p99 = _figure_per_mode(modes, "latency_p99_seconds", done.notes)
    if p50 or p99:
        latency = {
            f"{name} {group}": values
            for name, quantile in (("p50", p50), ("p99", p99))
            if quantile
            for group, values in _by_keyframes(quantile).items()
        }
        done.files.append(
            _bars(
                out_dir / "latency.png",
                f"End-to-end latency, capture to result ({title})",
                "latency (ms)",
                latency,
                label=_milliseconds,
                scale=1000.0,
                objective=(LATENCY_OBJECTIVE_SECONDS, "50 ms objective (split modes)"),
            )
        )
        done.notes.append(f"drew latency {' and '.join(latency)}")
    else:
        done.notes.append("skipped latency: no mode has latency_p50_seconds or _p99_seconds")
    chart(
        "accuracy",
        "accuracy",
        lambda values: _bars(
            out_dir / "accuracy.png",
            f"Per-frame accuracy ({title})",
            "accuracy (%)",
            _by_keyframes(values),
            label=_percent,
            percent=True,
        ),
    )
    uplink = _figure_per_mode(modes, "uplink_bytes_per_frame", [])
    accuracy = _figure_per_mode(modes, "accuracy", [])
    if len(set(uplink) & set(accuracy)) >= 2 and all(v > 0 for v in uplink.values()):
        done.files.append(
            _trade_off(
                out_dir / "accuracy_vs_uplink.png",
                f"Accuracy against uplink per frame ({title})",
                uplink,
                accuracy,
            )
        )
        done.notes.append("drew accuracy against uplink bytes per frame")
    else:
        done.notes.append("skipped accuracy against uplink: fewer than two modes have both")
    chart(
        "keyframe_ratio",
        "keyframe ratio",
        lambda values: _bars(
            out_dir / "keyframe_ratio.png",
            f"Keyframe ratio, forwarded / processed ({title})",
            "keyframes (%)",
            _by_keyframes(values),
            label=_percent,
            percent=True,
        ),
    )
    if any("training_seconds" in figures for figures in modes.values()):
        chart(
            "training_seconds",
            "training time",
            lambda values: _bars(
                out_dir / "training_seconds.png",
                f"Training time ({title})",
                "seconds",
                _by_keyframes(values),
                label=lambda v: f"{v:.1f} s",
            ),
        )
    return done


def render_from_json(data: dict[str, Any], out_dir: Path) -> list[Path]:
    """Charts of a benchmark's per-mode figures (see the module docstring); returns the PNG
    files written. Raises :class:`ReportError` if ``data`` has no ``modes``."""
    return _render_json(data, out_dir).files


# --- from Prometheus -----------------------------------------------------------------------


class PrometheusApi:
    """The two read endpoints of Prometheus' HTTP API, over urllib."""

    def __init__(self, base_url: str, timeout: float = 15.0) -> None:
        parsed = urllib.parse.urlsplit(base_url)
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise ReportError(f"--prometheus wants http://host:port, got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def _get(self, endpoint: str, params: Mapping[str, str]) -> list[dict[str, Any]]:
        url = f"{self.base_url}/api/v1/{endpoint}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=self.timeout) as response:
                body = json.load(response)
        except urllib.error.HTTPError as exc:  # Prometheus explains a bad query in the body
            try:
                detail = json.load(exc).get("error", exc.reason)
            except (ValueError, AttributeError):
                detail = exc.reason
            raise ReportError(f"Prometheus refused {params.get('query')!r}: {detail}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise ReportError(f"cannot query Prometheus at {self.base_url}: {exc}") from exc
        if body.get("status") != "success":
            raise ReportError(f"Prometheus: {body.get('error', body)}")
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def query(self, expr: str, at: float) -> list[dict[str, Any]]:
        return self._get("query", {"query": expr, "time": f"{at:.3f}"})

    def query_range(self, expr: str, start: float, end: float, step: float) -> list[dict[str, Any]]:
        params = {"query": expr, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step:g}"}
        return self._get("query_range", params)


def _series(result: Sequence[Mapping[str, Any]], label: str, start: float) -> Series:
    out: Series = {}
    for item in result:
        name = str(item["metric"].get(label, "all"))
        xs, ys = [], []
        for stamp, value in item.get("values", []):
            number = _number(value)
            if number is not None:
                xs.append(float(stamp) - start)
                ys.append(number)
        if xs:
            out[name] = (xs, ys)
    return out


def _instant(result: Sequence[Mapping[str, Any]], label: str) -> dict[str, float]:
    values = {}
    for item in result:
        number = _number(item["value"][1])
        if number is not None:
            values[str(item["metric"].get(label, "all"))] = number
    return values


def render_from_prometheus(
    api: PrometheusApi,
    out_dir: Path,
    *,
    since: float,
    end: float | None = None,
    rate_window: float = 60.0,
) -> Rendered:
    """Charts of the last ``since`` seconds (up to ``end``) of a run Prometheus scraped."""
    end = time.time() if end is None else end
    start = end - since
    step = max(1.0, round(since / 240))
    window = _promql_duration(max(rate_window, 2 * step))
    whole = _promql_duration(since)
    done = Rendered()

    def over_time(expr: str, label: str) -> Series:
        return _series(api.query_range(expr, start, end, step), label, start)

    sent = _instant(
        api.query(f"sum by (mode) (increase(edgelearn_cloud_received_bytes_total[{whole}]))", end),
        "mode",
    )
    cloud_only = _instant(
        api.query(
            f"sum by (mode) (increase(edgelearn_cloud_raw_equivalent_bytes_total[{whole}]))", end
        ),
        "mode",
    )
    if sent:
        done.files.append(
            _bars(
                out_dir / "uplink_bytes_per_mode.png",
                f"Uplink bytes per mode, last {whole}",
                "bytes",
                {"sent": sent, "cloud-only equivalent": cloud_only},
                label=_human_bytes,
                log=True,
            )
        )
        done.notes.append(f"drew uplink bytes for {', '.join(sorted(sent, key=_mode_key))}")
    else:
        done.notes.append("skipped uplink bytes: no edgelearn_cloud_received_bytes_total")

    charts: list[tuple[str, str, str, str, str, bool]] = [
        (
            "reduction_ratio_over_time.png",
            "uplink reduction over time",
            "Uplink reduction against cloud-only, per mode",
            "reduction (%)",
            f"1 - sum by (mode) (rate(edgelearn_cloud_received_bytes_total[{window}]))"
            f" / sum by (mode) (rate(edgelearn_cloud_raw_equivalent_bytes_total[{window}]))",
            True,
        ),
        (
            "accuracy.png",
            "accuracy over time",
            "Per-frame accuracy per mode",
            "accuracy (%)",
            "sum by (mode) (rate(edgelearn_cloud_frames_scored_total"
            f'{{outcome="correct"}}[{window}])) / sum by (mode) '
            f"(rate(edgelearn_cloud_frames_scored_total[{window}]))",
            True,
        ),
    ]
    for filename, what, title, ylabel, expr, percent in charts:
        series = over_time(expr, "mode")
        if series:
            done.files.append(_lines(out_dir / filename, title, ylabel, series, percent=percent))
            done.notes.append(f"drew {what} for {', '.join(sorted(series, key=_mode_key))}")
        else:
            done.notes.append(f"skipped {what}: no data in the window")

    keyframes = over_time(
        "sum by (gateway) (rate(edgelearn_gateway_frames_processed_total"
        f'{{outcome="forwarded"}}[{window}])) / sum by (gateway) '
        f"(rate(edgelearn_gateway_frames_processed_total[{window}]))",
        "gateway",
    )
    if keyframes:
        done.files.append(
            _lines(
                out_dir / "keyframe_ratio.png",
                "Keyframe ratio per gateway: frames forwarded / frames processed",
                "keyframes (%)",
                keyframes,
                percent=True,
            )
        )
        done.notes.append(f"drew keyframe ratio for {', '.join(sorted(keyframes))}")
    else:
        done.notes.append("skipped keyframe ratio: no gateway processed frames in the window")

    buckets: dict[str, list[tuple[float, float]]] = {}
    cumulative: dict[str, list[tuple[float, float]]] = {}
    for item in api.query(
        f"sum by (mode, le) (increase(edgelearn_cloud_end_to_end_latency_seconds_bucket[{whole}]))",
        end,
    ):
        count = _number(item["value"][1])
        bound = float(item["metric"]["le"])  # "+Inf" parses
        if count is not None:
            cumulative.setdefault(item["metric"].get("mode", "all"), []).append((bound, count))
    for mode, points in cumulative.items():
        points.sort()
        previous = 0.0
        for bound, count in points:  # cumulative buckets -> results per bucket
            buckets.setdefault(mode, []).append((bound, max(0.0, count - previous)))
            previous = count
    quantiles: Series = {}
    for q in (0.5, 0.99):
        found = over_time(
            f"histogram_quantile({q}, sum by (mode, le) "
            f"(rate(edgelearn_cloud_end_to_end_latency_seconds_bucket[{window}])))",
            "mode",
        )
        quantiles.update({f"p{round(q * 100)} {mode}": points for mode, points in found.items()})
    if buckets and any(count for points in buckets.values() for _, count in points):
        done.files.append(
            _distribution(
                out_dir / "latency_distribution.png",
                f"End-to-end latency, last {whole}",
                buckets,
                quantiles,
            )
        )
        done.notes.append(f"drew latency for {', '.join(sorted(buckets, key=_mode_key))}")
    else:
        done.notes.append("skipped latency: no results in the window")
    return done


# --- command -------------------------------------------------------------------------------


def configure(parser: argparse.ArgumentParser) -> None:
    parser.description = "Draw PNG charts of a run: uplink, reduction, latency, accuracy."
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--prometheus", metavar="URL", help="the Prometheus that scraped the run, http://host:port"
    )
    source.add_argument(
        "--from-json", type=Path, metavar="FILE", help="a benchmark's JSON with a 'modes' object"
    )
    parser.add_argument(
        "--since", default="15m", help="with --prometheus: how far back (default 15m)"
    )
    parser.add_argument(
        "--rate-window",
        default="1m",
        help="with --prometheus: window of rate() (default 1m, at least 4 scrapes)",
    )
    parser.add_argument(
        "--output-dir",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"where to write the PNG files (default {DEFAULT_OUTPUT})",
    )


def main(args: argparse.Namespace) -> int:
    """Entry point of ``edgelearn report``: 0 when charts were written, 1 when there was
    nothing to draw, 2 on bad input."""
    out_dir: Path = args.output_dir
    try:
        if args.from_json is not None:
            try:
                data = json.loads(Path(args.from_json).read_text(encoding="utf-8"))
            except (OSError, ValueError) as exc:
                raise ReportError(f"cannot read {args.from_json}: {exc}") from exc
            if not isinstance(data, dict):
                raise ReportError(f"{args.from_json}: expected a JSON object")
            rendered = _render_json(data, out_dir)
        else:
            try:
                since = parse_duration(args.since)
                rate_window = parse_duration(args.rate_window)
            except ValueError as exc:
                raise ReportError(str(exc)) from exc
            rendered = render_from_prometheus(
                PrometheusApi(args.prometheus), out_dir, since=since, rate_window=rate_window
            )
    except ReportError as exc:
        print(f"edgelearn report: {exc}", file=sys.stderr)
        return 2
    for note in rendered.notes:
        print(note, file=sys.stderr)
    for path in rendered.files:
        print(path)
    if not rendered.files:
        print("edgelearn report: nothing to draw", file=sys.stderr)
        return 1
    return 0


def cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edgelearn report")
    configure(parser)
    return main(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(cli())
