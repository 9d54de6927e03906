"""Writes the edgelearn Grafana dashboards (``grafana/dashboards/*.json``) from one place.

Run ``python dashboards/generate.py`` after changing a panel here; ``tests/test_dashboards.py``
fails when the JSON files and this script disagree. Generating rather than hand-editing keeps
every panel on the same data source, with a unit, a description and a consistent layout.

The dashboards read the metrics each role defines in its ``metrics.py`` and the recording
rules in ``prometheus/rules/recording.yml``. The gateway id is the ``gateway`` target label
(the stack writes it into ``prometheus/targets/*.json``), so ``$gateway`` filters gateway
metrics only; cloud metrics have no gateway.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
OUTPUT = HERE / "grafana" / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "edgelearn-prometheus"}
SCHEMA_VERSION = 39

# Units (Grafana unit ids; "suffix:" is Grafana's custom-unit syntax).
FPS = "suffix: fps"
BYTES_PER_SECOND = "Bps"
BYTES = "bytes"
SECONDS = "s"
RATIO = "percentunit"
PER_SECOND = "cps"
COUNT = "short"
NONE = "none"

GW = 'gateway=~"$gateway"'
CAM = 'camera=~"$camera"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str = ""
    table: bool = False  # an instant query shown as a table row per series


@dataclass
class Panel:
    title: str
    unit: str
    queries: list[Query]
    description: str
    kind: str = "timeseries"  # timeseries | stat | table | heatmap
    width: int = 12
    height: int = 8
    min: float | None = None
    max: float | None = None
    objective: float | None = None  # drawn as a red threshold line
    stacked: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def _target(query: Query, ref: str, kind: str) -> dict[str, Any]:
    target: dict[str, Any] = {
        "refId": ref,
        "datasource": DATASOURCE,
        "editorMode": "code",
        "expr": query.expr,
        "legendFormat": query.legend or "__auto",
        "range": not query.table,
        "instant": query.table,
    }
    if query.table:
        target["format"] = "table"
    elif kind == "heatmap":
        target["format"] = "heatmap"
    return target


def _thresholds(objective: float | None) -> dict[str, Any]:
    steps: list[dict[str, Any]] = [{"color": "green", "value": None}]
    if objective is not None:
        steps.append({"color": "red", "value": objective})
    return {"mode": "absolute", "steps": steps}


def _panel_json(panel: Panel, panel_id: int, x: int, y: int) -> dict[str, Any]:
    defaults: dict[str, Any] = {"unit": panel.unit, "thresholds": _thresholds(panel.objective)}
    if panel.min is not None:
        defaults["min"] = panel.min
    if panel.max is not None:
        defaults["max"] = panel.max
    options: dict[str, Any]
    if panel.kind == "timeseries":
        defaults["color"] = {"mode": "palette-classic"}
        defaults["custom"] = {
            "drawStyle": "line",
            "lineWidth": 1,
            "fillOpacity": 20 if panel.stacked else 8,
            "showPoints": "never",
            "spanNulls": False,
            "stacking": {"mode": "normal" if panel.stacked else "none", "group": "A"},
            "thresholdsStyle": {"mode": "line" if panel.objective is not None else "off"},
        }
        options = {
            "legend": {
                "displayMode": "table",
                "placement": "bottom",
                "showLegend": True,
                "calcs": ["lastNotNull", "max"],
            },
            "tooltip": {"mode": "multi", "sort": "desc"},
        }
    elif panel.kind == "stat":
        defaults["color"] = {"mode": "thresholds"}
        options = {
            "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
            "colorMode": "value",
            "graphMode": "area",
            "textMode": "auto",
            "justifyMode": "auto",
            "orientation": "auto",
        }
    elif panel.kind == "table":
        defaults["custom"] = {"align": "auto", "cellOptions": {"type": "auto"}}
        options = {"showHeader": True, "cellHeight": "sm", "footer": {"show": False}}
    elif panel.kind == "heatmap":
        options = {
            "calculate": False,
            "yAxis": {"unit": panel.unit, "axisPlacement": "left"},
            "cellGap": 1,
            "color": {"mode": "scheme", "scheme": "Oranges", "steps": 64},
            "rowsFrame": {"layout": "auto"},
            "tooltip": {"show": True, "yHistogram": True},
        }
    else:
        raise ValueError(f"panel kind {panel.kind!r}")
    body: dict[str, Any] = {
        "id": panel_id,
        "type": panel.kind,
        "title": panel.title,
        "description": panel.description,
        "datasource": DATASOURCE,
        "gridPos": {"x": x, "y": y, "w": panel.width, "h": panel.height},
        "fieldConfig": {"defaults": defaults, "overrides": []},
        "options": options,
        "targets": [
            _target(query, chr(ord("A") + index), panel.kind)
            for index, query in enumerate(panel.queries)
        ],
    }
    if panel.kind == "table":
        # One row per series: drop the instant query's timestamp column.
        body["transformations"] = [
            {"id": "merge", "options": {}},
            {"id": "organize", "options": {"excludeByName": {"Time": True}}},
        ]
    body.update(panel.extra)
    return body


def _variable(name: str, label: str, query: str) -> dict[str, Any]:
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"qryType": 1, "query": query, "refId": "PrometheusVariableQueryEditor"},
        "refresh": 2,  # on time range change: new cameras appear without a reload
        "includeAll": True,
        "multi": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
        "regex": "",
        "hide": 0,
        "options": [],
    }


VARIABLES = [
    _variable("gateway", "Gateway", "label_values(edgelearn_gateway_mode_info, gateway)"),
    _variable(
        "camera",
        "Camera",
        "label_values(edgelearn_gateway_frames_received_total{" + GW + "}, camera)",
    ),
]


def dashboard(uid: str, title: str, description: str, panels: list[Panel]) -> dict[str, Any]:
    """Lay ``panels`` out left to right in rows 24 units wide."""
    laid_out: list[dict[str, Any]] = []
    x = y = row_height = 0
    for panel_id, panel in enumerate(panels, start=1):
        if x + panel.width > 24:
            x, y, row_height = 0, y + row_height, 0
        laid_out.append(_panel_json(panel, panel_id, x, y))
        x += panel.width
        row_height = max(row_height, panel.height)
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["edgelearn"],
        "timezone": "browser",
        "editable": True,
        "graphTooltip": 1,  # shared crosshair: stages line up across panels
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "refresh": "10s",
        "time": {"from": "now-15m", "to": "now"},
        "timepicker": {},
        "fiscalYearStartMonth": 0,
        "liveNow": False,
        "weekStart": "",
        "annotations": {"list": []},
        "links": [
            {
                "title": "edgelearn",
                "type": "dashboards",
                "tags": ["edgelearn"],
                "asDropdown": False,
                "includeVars": True,
                "keepTime": True,
            }
        ],
        "templating": {"list": VARIABLES},
        "panels": laid_out,
    }


def _quantiles(metric: str, by: str, selector: str = "") -> list[Query]:
    bucket = f"{metric}_bucket{{{selector}}}" if selector else f"{metric}_bucket"
    return [
        Query(
            f"histogram_quantile({q}, sum by ({by}, le) (rate({bucket}[{RATE}])))",
            f"p{round(q * 100)} {{{{{by.split(',')[0].strip()}}}}}",
        )
        for q in (0.5, 0.99)
    ]


def _mode_table() -> Panel:
    return Panel(
        "Plan per gateway (mode planned / running)",
        NONE,
        [
            Query(
                f"max by (gateway, mode, effective) (edgelearn_gateway_mode_info{{{GW}}})",
                table=True,
            )
        ],
        "The scheduler's plan each gateway applies: `mode` is what the plan asked for, "
        "`effective` what runs. They differ while the model a mode needs has not arrived "
        "(the gateway runs raw meanwhile).",
        kind="table",
    )


def pipeline_overview() -> dict[str, Any]:
    panels = [
        Panel(
            "Uplink reduction",
            RATIO,
            [
                Query(
                    f"1 - sum(edgelearn:uplink_bytes:rate1m{{{GW}}})"
                    f" / sum(edgelearn:raw_equivalent_bytes:rate1m{{{GW}}})",
                    "reduction",
                )
            ],
            "1 - bytes sent upstream / bytes cloud-only would have sent for the same frames, "
            "over the selected gateways (last minute).",
            kind="stat",
            width=6,
            height=5,
            min=0,
            max=1,
        ),
        Panel(
            "Uplink sent",
            BYTES_PER_SECOND,
            [Query(f"sum(edgelearn:uplink_bytes:rate1m{{{GW}}})", "sent")],
            "Envelope bytes per second the selected gateways send upstream (last minute).",
            kind="stat",
            width=6,
            height=5,
        ),
        Panel(
            "End-to-end latency p99",
            SECONDS,
            [Query("edgelearn:end_to_end_latency_seconds:p99", "{{mode}}")],
            "Capture at the camera to result at the cloud, 99th percentile per mode. "
            "Objective for split modes: 50 ms.",
            kind="stat",
            width=6,
            height=5,
            objective=0.05,
        ),
        Panel(
            "Accuracy",
            RATIO,
            [Query("edgelearn:accuracy:ratio_by_mode", "{{mode}}")],
            "Share of camera frames (held-back frames included) classified correctly, "
            "per mode, last 5 minutes.",
            kind="stat",
            width=6,
            height=5,
            min=0,
            max=1,
        ),
        Panel(
            "Frames per second per camera",
            FPS,
            [
                Query(
                    "sum by (camera) "
                    f"(rate(edgelearn_camera_frames_published_total{{{CAM}}}[{RATE}]))",
                    "{{camera}} published",
                ),
                Query(
                    "sum by (camera) (rate(edgelearn_gateway_frames_received_total"
                    f"{{{GW}, {CAM}}}[{RATE}]))",
                    "{{camera}} received by gateways",
                ),
            ],
            "Frames each camera published, and frames the gateways received from it. A gap "
            "between the two is frames lost between camera and gateway.",
        ),
        Panel(
            "Objects in view per camera",
            COUNT,
            [
                Query(
                    "sum by (camera) (rate(edgelearn_gateway_objects_seen_total"
                    f"{{{GW}, {CAM}}}[{RATE}])) / sum by (camera) "
                    f"(rate(edgelearn_gateway_frames_looked_at_total{{{GW}, {CAM}}}[{RATE}]))",
                    "{{camera}}",
                ),
            ],
            "Objects the gateway's background model finds in a camera's view, on average over "
            "its frames: people in a video, items in a labeled scene. Zero for an empty scene, "
            "whatever the light does.",
            min=0,
        ),
        Panel(
            "Objects entering per minute",
            COUNT,
            [
                Query(
                    "60 * sum by (camera) (rate(edgelearn_gateway_objects_entered_total"
                    f"{{{GW}, {CAM}}}[{RATE}]))",
                    "{{camera}}",
                ),
            ],
            "New objects (new tracks) per minute in each camera's view.",
            min=0,
        ),
        Panel(
            "Keyframe ratio",
            RATIO,
            [Query(f"edgelearn:keyframe:ratio{{{GW}, {CAM}}}", "{{gateway}} {{camera}}")],
            "Share of processed frames that were keyframes (forwarded); the rest were held "
            "back as too similar to the previous keyframe.",
            min=0,
            max=1,
        ),
        Panel(
            "Uplink: cloud-only vs sent",
            BYTES_PER_SECOND,
            [
                Query(
                    "sum by (gateway) (rate(edgelearn_gateway_raw_equivalent_bytes_total"
                    f"{{{GW}, {CAM}}}[{RATE}]))",
                    "{{gateway}} cloud-only (raw JPEG)",
                ),
                Query(
                    "sum by (gateway, mode) (rate(edgelearn_gateway_uplink_bytes_total"
                    f"{{{GW}, {CAM}}}[{RATE}]))",
                    "{{gateway}} sent ({{mode}})",
                ),
            ],
            "What cloud-only would send (the JPEG of every processed frame, "
            "edgelearn_gateway_raw_equivalent_bytes_total) against the envelope bytes "
            "actually sent upstream (edgelearn_gateway_uplink_bytes_total).",
        ),
        Panel(
            "Uplink reduction ratio",
            RATIO,
            [
                Query(f"edgelearn:uplink_reduction:ratio{{{GW}}}", "{{gateway}} (gateway)"),
                Query("edgelearn:uplink_reduction:ratio_by_mode", "{{mode}} (cloud view)"),
            ],
            "1 - sent / cloud-only: per gateway from the gateways' counters, and per mode "
            "from what the cloud received (held-back frames estimated at their keyframe's "
            "size).",
            max=1,
        ),
        Panel(
            "End-to-end latency p50 / p99",
            SECONDS,
            [
                Query("edgelearn:end_to_end_latency_seconds:p50", "p50 {{mode}}"),
                Query("edgelearn:end_to_end_latency_seconds:p99", "p99 {{mode}}"),
            ],
            "From frame capture at the camera to its result at the cloud, per mode. The red "
            "line is the 50 ms objective of split modes.",
            objective=0.05,
            min=0,
        ),
        Panel(
            "Where the time goes: p99 per hop",
            SECONDS,
            [
                Query(
                    "histogram_quantile(0.99, sum by (hop, le) (rate("
                    f"edgelearn_gateway_hop_seconds_bucket{{{GW}}}[{RATE}])))",
                    "gateway {{hop}}",
                ),
                Query(
                    "histogram_quantile(0.99, sum by (hop, le) (rate("
                    f"edgelearn_cloud_hop_seconds_bucket[{RATE}])))",
                    "cloud {{hop}}",
                ),
                Query(
                    "histogram_quantile(0.99, sum by (le) (rate("
                    f"edgelearn_gateway_processed_age_seconds_bucket{{{GW}}}[{RATE}])))",
                    "age when the gateway is done",
                ),
                Query(
                    "histogram_quantile(0.99, sum by (le) (rate("
                    f"edgelearn_cloud_arrival_age_seconds_bucket[{RATE}])))",
                    "age on arrival at the cloud",
                ),
            ],
            "Each forwarded frame's own time in each hop, at the gateway (camera -> worker, "
            "its queue, the pipeline, the outbox, the publish to the edge broker) and at the "
            "cloud (its queue, decoding, inference, the publish of the result). The two ages "
            "(since capture) bracket the uplink: their difference is the outbox and the "
            "bridge.",
            min=0,
        ),
        Panel(
            "Drops by reason",
            PER_SECOND,
            [
                Query(
                    "sum by (gateway, reason) (rate(edgelearn_gateway_frames_dropped_total"
                    f"{{{GW}, {CAM}}}[{RATE}]))",
                    "gateway {{gateway}}: {{reason}}",
                ),
                Query(
                    f"sum by (reason) (rate(edgelearn_cloud_features_dropped_total[{RATE}]))",
                    "cloud: {{reason}}",
                ),
                Query(
                    "sum by (reason) (rate(edgelearn_camera_frames_skipped_total"
                    f"{{{CAM}}}[{RATE}]))",
                    "cameras: {{reason}}",
                ),
            ],
            "Frames dropped by gateways, features dropped by the cloud, and frames cameras "
            "skipped, per second and reason. Every drop in the pipeline is counted here.",
            stacked=True,
            min=0,
        ),
        Panel(
            "Accuracy per mode",
            RATIO,
            [
                Query("edgelearn:accuracy:ratio_by_mode", "{{mode}} (5m)"),
                Query(
                    f"avg by (mode) (edgelearn_cloud_accuracy_ratio{{{CAM}}})",
                    "{{mode}} (rolling, mean over cameras)",
                ),
            ],
            "Per-frame accuracy against the labels the cameras sent: over the last 5 "
            "minutes, and the consumers' rolling accuracy averaged over cameras.",
            min=0,
            max=1,
        ),
        Panel(
            "Frames scored per mode",
            PER_SECOND,
            [
                Query(
                    f"sum by (mode, outcome) (rate(edgelearn_cloud_frames_scored_total[{RATE}]))",
                    "{{mode}} {{outcome}}",
                ),
                Query(
                    f"sum by (mode) (rate(edgelearn_cloud_objects_classified_total[{RATE}]))",
                    "{{mode}} objects classified",
                ),
                Query(
                    f"sum by (mode) (rate(edgelearn_cloud_frames_without_objects_total[{RATE}]))",
                    "{{mode}} frames with nothing in view",
                ),
            ],
            "Frames, or objects, scored against ground truth per second, correct or wrong "
            "(with objects each is scored on its own; a whole-frame feature's held-back "
            "frames count with their keyframe's answer), and the objects classified.",
            min=0,
        ),
        Panel(
            "Model version per gateway",
            NONE,
            [
                Query(
                    f"max by (gateway, slot, version) (edgelearn_gateway_model_info{{{GW}}})",
                    table=True,
                )
            ],
            "The signed model each gateway has loaded, per slot (pca, autoencoder, split-k, full).",
            kind="table",
        ),
        _mode_table(),
        Panel(
            "Processes",
            NONE,
            [Query("max by (job, instance, gateway, version) (edgelearn_build_info)", table=True)],
            "Every scraped process: role, address, gateway id and edgelearn version. A "
            "missing row is a process Prometheus cannot reach (see the up series).",
            kind="table",
            width=12,
        ),
        Panel(
            "Targets up",
            NONE,
            [
                Query("sum by (job) (up)", "{{job}} up"),
                Query("count by (job) (up)", "{{job}} listed"),
            ],
            "Scrape targets answering, per role, against the number listed in the targets file.",
            min=0,
        ),
        Panel(
            "Camera publish latency p99",
            SECONDS,
            [
                Query(
                    "histogram_quantile(0.99, sum by (camera, le) "
                    f"(rate(edgelearn_camera_publish_latency_seconds_bucket{{{CAM}}}[{RATE}])))",
                    "{{camera}}",
                )
            ],
            "From a camera handing a frame to its transport until the transport took it "
            "(QoS 0: written; QoS 1: acknowledged; CoAP: answered).",
            width=8,
            min=0,
        ),
        Panel(
            "Camera bytes published",
            BYTES_PER_SECOND,
            [
                Query(
                    "sum by (camera) "
                    f"(rate(edgelearn_camera_published_bytes_total{{{CAM}}}[{RATE}]))",
                    "{{camera}}",
                )
            ],
            "Frame envelope bytes each camera publishes towards its gateways (stays on site).",
            width=8,
            min=0,
        ),
        Panel(
            "Camera achieved fps",
            FPS,
            [Query(f"edgelearn_camera_achieved_fps{{{CAM}}}", "{{camera}}")],
            "Published frames per second over each camera's last few frames, as the camera "
            "measures it.",
            width=8,
            min=0,
        ),
        Panel(
            "Camera JPEG quality",
            NONE,
            [Query(f"edgelearn_camera_jpeg_quality{{{CAM}}}", "{{camera}}")],
            "JPEG quality of each camera's latest frame (the bitrate controller moves it).",
            min=0,
            max=100,
        ),
        Panel(
            "Camera reconnects",
            COUNT,
            [
                Query(
                    "sum by (camera) "
                    f"(increase(edgelearn_camera_reconnects_total{{{CAM}}}[$__range]))",
                    "{{camera}}",
                )
            ],
            "Times each camera's link came back after losing its connection, over the "
            "dashboard's time range.",
            kind="stat",
        ),
        Panel(
            "Camera stream reconnects",
            COUNT,
            [
                Query(
                    "sum by (camera) "
                    f"(increase(edgelearn_camera_source_reconnects_total{{{CAM}}}[$__range]))",
                    "{{camera}}",
                )
            ],
            "Times a real camera's live stream (rtsp://, http://) came back after it broke, "
            "over the dashboard's time range; meanwhile its frames count as skipped "
            "source_down.",
            kind="stat",
        ),
    ]
    return dashboard(
        "edgelearn-overview",
        "edgelearn / Pipeline overview",
        "Cameras -> gateways -> cloud: frames, uplink against cloud-only, latency, drops, "
        "accuracy and the models in use.",
        panels,
    )


def gateway_detail() -> dict[str, Any]:
    panels = [
        Panel(
            "Frames received by transport",
            FPS,
            [
                Query(
                    "sum by (gateway, transport) (rate(edgelearn_gateway_frames_received_total"
                    f"{{{GW}, {CAM}}}[{RATE}]))",
                    "{{gateway}} {{transport}}",
                )
            ],
            "Frames arriving at the gateways, over MQTT (shared subscription) or CoAP.",
            min=0,
        ),
        Panel(
            "Frames processed by outcome",
            FPS,
            [
                Query(
                    "sum by (gateway, outcome) (rate(edgelearn_gateway_frames_processed_total"
                    f"{{{GW}, {CAM}}}[{RATE}]))",
                    "{{gateway}} {{outcome}}",
                )
            ],
            "Keyframes forwarded upstream and frames held back by the keyframe filter.",
            stacked=True,
            min=0,
        ),
        Panel(
            "Time per stage p99",
            SECONDS,
            [Query(f"edgelearn:gateway_stage_seconds:p99{{{GW}}}", "{{gateway}} {{stage}}")],
            "99th percentile of each pipeline stage: keyframe score, decode, extract, encode, "
            "publish (until the broker acknowledged).",
            min=0,
        ),
        Panel(
            "Time per stage, mean",
            SECONDS,
            [
                Query(
                    f"sum by (stage) (rate(edgelearn_gateway_stage_seconds_sum{{{GW}}}[{RATE}]))"
                    " / sum by (stage) "
                    f"(rate(edgelearn_gateway_stage_seconds_count{{{GW}}}[{RATE}]))",
                    "{{stage}}",
                )
            ],
            "Mean seconds per frame spent in each stage.",
            min=0,
        ),
        Panel(
            "Busy share per stage",
            RATIO,
            [
                Query(
                    "sum by (gateway, stage) (rate(edgelearn_gateway_stage_seconds_sum"
                    f"{{{GW}}}[{RATE}]))",
                    "{{gateway}} {{stage}}",
                )
            ],
            "Seconds spent per second in each stage (1 = one worker thread always busy); "
            "publish overlaps with the others.",
            stacked=True,
            min=0,
        ),
        Panel(
            "Queue depth per camera",
            COUNT,
            [
                Query(
                    f"sum by (gateway, camera) (edgelearn_gateway_queue_depth{{{GW}, {CAM}}})",
                    "{{gateway}} {{camera}}",
                )
            ],
            "Frames waiting per camera (read at scrape time). Queues are bounded and the "
            "newest frame wins: a full queue shows as queue_full drops.",
            min=0,
        ),
        Panel(
            "Capacity against load",
            FPS,
            [
                Query(
                    "max by (gateway, mode) "
                    f"(edgelearn_gateway_capacity_frames_per_second{{{GW}}})",
                    "{{gateway}} capacity ({{mode}})",
                ),
                Query(
                    "sum by (gateway) (rate(edgelearn_gateway_frames_processed_total"
                    f'{{{GW}, outcome="forwarded"}}[{RATE}]))',
                    "{{gateway}} keyframes extracted",
                ),
            ],
            "Keyframes per second a worker can extract in its mode (measured when the model "
            "loads; the scheduler plans with it) against keyframes it extracts now. Raw mode "
            "extracts nothing and reports no capacity.",
            min=0,
        ),
        Panel(
            "CPU",
            RATIO,
            [
                Query(
                    "sum by (gateway, worker) (rate(process_cpu_seconds_total"
                    f'{{job="gateway", {GW}}}[{RATE}]))',
                    "{{gateway}} worker {{worker}}",
                )
            ],
            "CPU seconds per second of each gateway worker process (100% = one core).",
            min=0,
        ),
        Panel(
            "Teacher: looks, labels and CPU",
            PER_SECOND,
            [
                Query(
                    "sum by (camera) "
                    f"(rate(edgelearn_gateway_teacher_looks_total{{{GW}}}[{RATE}]))",
                    "{{camera}} looks",
                ),
                Query(
                    "sum by (camera, label) "
                    f"(rate(edgelearn_gateway_teacher_labels_total{{{GW}}}[{RATE}]))",
                    "{{camera}} labeled {{label}}",
                ),
                Query(
                    f"sum by (camera) (rate(edgelearn_gateway_teacher_busy_total{{{GW}}}[{RATE}]))",
                    "{{camera}} offers dropped (busy)",
                ),
                Query(
                    "sum by (camera) "
                    f"(rate(edgelearn_gateway_teacher_labels_sent_total{{{GW}}}[{RATE}]))",
                    "{{camera}} labeled objects sent up",
                ),
                Query(
                    f"sum(rate(edgelearn_gateway_teacher_cpu_seconds_total{{{GW}}}[{RATE}]))",
                    "teacher CPU (cores)",
                ),
            ],
            "The teacher stage (once the cloud pushed a teacher): frames it looked at, tracks "
            "it labeled (several views agreed), objects it had no time for, objects sent up "
            "with its label, and the cores its threads used (each worker's stays under its "
            "teacher_budget).",
            min=0,
        ),
        Panel(
            "Teacher: the cloud's agreement and the sample rate",
            RATIO,
            [
                Query(
                    f"max by (camera) (edgelearn_gateway_teacher_agreement{{{GW}}})",
                    "{{camera}} agreement",
                ),
                Query(
                    f"max by (camera) (edgelearn_gateway_teacher_rate{{{GW}}})",
                    "{{camera}} share of new tracks looked at",
                ),
            ],
            "Per camera the teacher labels: how many of its latest labeled tracks the cloud's "
            "answer agreed with, and the share of new tracks the teacher looks at (100% while "
            "the student learns, the watch rate once it agrees; back to 100% when agreement "
            "falls).",
            min=0,
            max=1,
        ),
        Panel(
            "Resident memory",
            BYTES,
            [
                Query(
                    "sum by (gateway, worker) "
                    f'(process_resident_memory_bytes{{job="gateway", {GW}}})',
                    "{{gateway}} worker {{worker}}",
                )
            ],
            "Resident memory of each gateway worker: flat when the bounded queues do their job.",
            min=0,
        ),
        Panel(
            "Drops by camera and reason",
            PER_SECOND,
            [
                Query(
                    "sum by (gateway, camera, reason) (rate(edgelearn_gateway_frames_dropped_total"
                    f"{{{GW}, {CAM}}}[{RATE}]))",
                    "{{gateway}} {{camera}} {{reason}}",
                ),
                Query(
                    "sum by (gateway, camera) (rate(edgelearn_gateway_frames_out_of_order_total"
                    f"{{{GW}, {CAM}}}[{RATE}]))",
                    "{{gateway}} {{camera}} out of order",
                ),
            ],
            "Exact reasons: the envelope's (bad_magic, truncated, unknown_version, "
            "too_long...), oversize, camera_mismatch, unauthenticated, undecodable, queue_full "
            "(newest frame won), stale, worker_busy, no_worker, extract_failed, shutdown. "
            "Out of order (not a drop): frames older than one the worker already had from that "
            "camera; a pool keeps each camera on one worker, so this stays at zero.",
            stacked=True,
            min=0,
        ),
        Panel(
            "Uplink per camera",
            BYTES_PER_SECOND,
            [
                Query(
                    "sum by (camera, mode) (rate(edgelearn_gateway_uplink_bytes_total"
                    f"{{{GW}, {CAM}}}[{RATE}]))",
                    "{{camera}} sent ({{mode}})",
                ),
                Query(
                    "sum by (camera) (rate(edgelearn_gateway_input_bytes_total"
                    f"{{{GW}, {CAM}}}[{RATE}]))",
                    "{{camera}} JPEG in",
                ),
            ],
            "Camera JPEG bytes arriving against envelope bytes sent upstream, per camera.",
            min=0,
        ),
        Panel(
            "Unacknowledged features",
            COUNT,
            [
                Query(
                    f"sum by (gateway, worker) (edgelearn_gateway_outbox_items{{{GW}}})",
                    "{{gateway}} worker {{worker}}",
                )
            ],
            "Features in each worker's outbox: sent, not yet acknowledged by the cloud. Near "
            "zero while the cloud keeps up; it grows during an outage and drains after it.",
            min=0,
        ),
        Panel(
            "Outbox size",
            BYTES,
            [
                Query(
                    f"sum by (gateway, worker) (edgelearn_gateway_outbox_bytes{{{GW}}})",
                    "{{gateway}} worker {{worker}}",
                )
            ],
            "Envelope bytes waiting in each worker's outbox, against its bound "
            "(outbox_max_mb, 512 MiB by default); past it the policy drops features.",
            min=0,
        ),
        Panel(
            "Delivery to the cloud",
            PER_SECOND,
            [
                Query(
                    f"sum by (gateway) (rate(edgelearn_gateway_features_acked_total{{{GW}}}"
                    f"[{RATE}]))",
                    "{{gateway}} acknowledged",
                ),
                Query(
                    f"sum by (gateway) (rate(edgelearn_gateway_features_resent_total{{{GW}}}"
                    f"[{RATE}]))",
                    "{{gateway}} sent again",
                ),
                Query(
                    "sum by (gateway, reason) (rate(edgelearn_gateway_features_dropped_total"
                    f"{{{GW}}}[{RATE}]))",
                    "{{gateway}} given up ({{reason}})",
                ),
                Query(
                    f"sum by (gateway) (rate(edgelearn_gateway_outbox_failures_total{{{GW}}}"
                    f"[{RATE}]))",
                    "{{gateway}} outbox write failed",
                ),
            ],
            "Features the cloud acknowledged, features sent again because no ack came in "
            "time (the cloud counts each once), features given up: outbox_full (the outbox "
            "policy) or outbox_failed (the disk refused it), and outbox writes the disk "
            "refused (the feature went once, unprotected).",
            min=0,
        ),
        Panel(
            "Link to the cloud",
            "none",
            [
                Query(f"min by (gateway) (edgelearn_gateway_link_up{{{GW}}})", "{{gateway}}"),
            ],
            "1 while the edge broker's bridge to the cloud is up, 0 while it says it is down "
            "(mosquitto's bridge notification). While it is down nothing is sent again: what "
            "was sent waits in the bridge's queue. After it, a copy goes again only once the "
            "cloud has acknowledged something sent after it.",
            min=0,
            max=1,
        ),
        Panel(
            "Model swaps and refusals",
            COUNT,
            [
                Query(
                    "sum by (gateway, slot) "
                    f"(increase(edgelearn_gateway_model_swaps_total{{{GW}}}[$__range]))",
                    "{{gateway}} swapped {{slot}}",
                ),
                Query(
                    "sum by (gateway, reason) "
                    f"(increase(edgelearn_gateway_models_rejected_total{{{GW}}}[$__range]))",
                    "{{gateway}} refused: {{reason}}",
                ),
            ],
            "Models swapped in and deployments refused (bad signature, unknown key, bad "
            "digest, bad plan) over the dashboard's time range.",
            kind="stat",
            width=12,
        ),
        Panel(
            "Upstream publish retries",
            PER_SECOND,
            [
                Query(
                    "sum by (gateway) "
                    f"(rate(edgelearn_gateway_forward_retries_total{{{GW}}}[{RATE}]))",
                    "{{gateway}}",
                )
            ],
            "QoS 1 publishes retried after the uplink connection dropped.",
            min=0,
        ),
        Panel(
            "Model version per gateway",
            NONE,
            [
                Query(
                    f"max by (gateway, slot, version) (edgelearn_gateway_model_info{{{GW}}})",
                    table=True,
                )
            ],
            "Loaded model per slot.",
            kind="table",
        ),
        _mode_table(),
    ]
    return dashboard(
        "edgelearn-gateway",
        "edgelearn / Gateway detail",
        "Gateway workers: stages, queues, capacity, CPU, drops and models.",
        panels,
    )


def cloud_detail() -> dict[str, Any]:
    panels = [
        Panel(
            "Features received per mode",
            PER_SECOND,
            [
                Query(
                    f"sum by (mode) (rate(edgelearn_cloud_features_received_total[{RATE}]))",
                    "{{mode}}",
                )
            ],
            "Feature (or result) envelopes arriving from the gateways.",
            stacked=True,
            min=0,
        ),
        Panel(
            "Uplink received per mode",
            BYTES_PER_SECOND,
            [
                Query(
                    f"sum by (mode) (rate(edgelearn_cloud_received_bytes_total[{RATE}]))",
                    "{{mode}} received",
                ),
                Query(
                    f"sum by (mode) (rate(edgelearn_cloud_raw_equivalent_bytes_total[{RATE}]))",
                    "{{mode}} cloud-only equivalent",
                ),
            ],
            "Envelope bytes the cloud receives against the camera JPEG bytes they stand for.",
            min=0,
        ),
        Panel(
            "Bytes per message per mode",
            BYTES,
            [
                Query(
                    f"sum by (mode) (rate(edgelearn_cloud_received_bytes_total[{RATE}]))"
                    f" / sum by (mode) (rate(edgelearn_cloud_features_received_total[{RATE}]))",
                    "{{mode}}",
                )
            ],
            "Mean envelope size per mode: a raw JPEG against a compressed feature vector.",
            min=0,
        ),
        Panel(
            "Inference time per batch",
            SECONDS,
            _quantiles("edgelearn_cloud_inference_seconds", "mode"),
            "Upper-layer inference per batch, p50 and p99 per mode.",
            min=0,
        ),
        Panel(
            "Batch size",
            COUNT,
            [
                *[
                    Query(
                        f"histogram_quantile({q}, sum by (le) "
                        f"(rate(edgelearn_cloud_batch_size_bucket[{RATE}])))",
                        f"p{round(q * 100)}",
                    )
                    for q in (0.5, 0.99)
                ],
                Query(
                    f"sum(rate(edgelearn_cloud_batch_size_sum[{RATE}]))"
                    f" / sum(rate(edgelearn_cloud_batch_size_count[{RATE}]))",
                    "mean",
                ),
            ],
            "Features per inference batch: consumers batch whatever is queued (up to "
            "batch_max), so batches grow with load.",
            min=0,
        ),
        Panel(
            "Results per mode",
            PER_SECOND,
            [
                Query(
                    f"sum by (mode, computed_at) (rate(edgelearn_cloud_results_total[{RATE}]))",
                    "{{mode}} computed at {{computed_at}}",
                )
            ],
            "Results published: computed at the cloud (upper layers) or at the edge (full).",
            stacked=True,
            min=0,
        ),
        Panel(
            "End-to-end latency distribution",
            SECONDS,
            [
                Query(
                    "sum by (le) "
                    f"(increase(edgelearn_cloud_end_to_end_latency_seconds_bucket[{RATE}]))",
                    "{{le}}",
                )
            ],
            "Results per latency bucket over time, all modes (capture to result).",
            kind="heatmap",
        ),
        Panel(
            "Accuracy per camera",
            RATIO,
            [
                Query(
                    f"edgelearn_cloud_accuracy_ratio{{{CAM}}}",
                    "{{camera}} {{mode}}",
                )
            ],
            "Rolling per-frame accuracy of each camera and mode.",
            min=0,
            max=1,
        ),
        Panel(
            "Acknowledgements and duplicates",
            PER_SECOND,
            [
                Query(f"sum(rate(edgelearn_cloud_acked_total[{RATE}]))", "acknowledged"),
                Query(
                    f"sum by (mode) (rate(edgelearn_cloud_duplicates_total[{RATE}]))",
                    "duplicates ({{mode}})",
                ),
                Query(
                    f"sum(rate(edgelearn_cloud_ack_failures_total[{RATE}]))", "acks not published"
                ),
                Query(
                    f"sum(rate(edgelearn_cloud_results_republished_total[{RATE}]))",
                    "answers published again",
                ),
            ],
            "Captures acknowledged to the gateways (each leaves its outbox, once its answer "
            "is at the broker), retries that had arrived before (acknowledged again, never "
            "answered or counted twice; their stored answer is published again), and acks "
            "that could not be published (the gateway sends again).",
            min=0,
        ),
        Panel(
            "Drops by reason",
            PER_SECOND,
            [Query("edgelearn:cloud_drops:rate1m", "{{reason}}")],
            "Features the cloud dropped, by exact reason: the envelope's (bad_magic, "
            "truncated...), gateway_mismatch, no_model, undecodable, queue_full, "
            "inference_failed, result_not_published, store_unavailable.",
            stacked=True,
            min=0,
        ),
        Panel(
            "Object events (JSON)",
            PER_SECOND,
            [
                Query(f"sum by (type) (rate(edgelearn_cloud_events_total[{RATE}]))", "{{type}}"),
                Query(
                    f"sum(rate(edgelearn_cloud_events_dropped_total[{RATE}]))",
                    "results without events",
                ),
            ],
            "The JSON object events on events/ (README: Object events): new, update and end "
            "per second, and results that made none (undecodable, or a failure, logged).",
            min=0,
        ),
        Panel(
            "Shared store",
            COUNT,
            [
                Query("sum(edgelearn_cloud_trainer_lease)", "processes holding the trainer lease"),
                Query(
                    "sum(increase(edgelearn_cloud_store_retries_total[$__range]))",
                    "store operations retried",
                ),
            ],
            "With a store the cloud processes share (PostgreSQL): how many hold the trainer "
            "lease (one; with a store of its own each process counts itself), and operations "
            "run again while the database was away.",
            min=0,
        ),
        Panel(
            "Objects in view (events)",
            COUNT,
            [Query("sum(edgelearn_cloud_events_open)", "open")],
            "Objects announced by a new event and not yet ended.",
            min=0,
        ),
        Panel(
            "Training runs",
            COUNT,
            [
                Query(
                    "sum by (kind) (increase(edgelearn_cloud_training_runs_total[$__range]))",
                    "{{kind}}",
                )
            ],
            "Training runs finished in the dashboard's time range, per kind (bootstrap: the "
            "first model set; a mode: a continuous-training run of it).",
            kind="stat",
            width=6,
        ),
        Panel(
            "Training time, mean",
            SECONDS,
            [
                Query(
                    "sum by (kind) (increase(edgelearn_cloud_training_seconds_sum[$__range]))"
                    " / sum by (kind) "
                    "(increase(edgelearn_cloud_training_seconds_count[$__range]))",
                    "{{kind}}",
                )
            ],
            "Mean wall time of a training run per kind, over the dashboard's time range.",
            kind="stat",
            width=6,
        ),
        Panel(
            "Models: generation serving",
            COUNT,
            [Query("max by (family) (edgelearn_cloud_model_generation)", "{{family}}")],
            "The generation of the models serving each family (cnn: raw, split and full; pca; "
            "autoencoder). The first is trained in seconds when the registry is empty; the "
            "grower trains the next ones in the background, each on more distinct items, "
            "and a family moves on only when the judge finds the new one significantly "
            "better on the same held-out items.",
            kind="stat",
            width=6,
        ),
        Panel(
            "Models: generation in training",
            COUNT,
            [Query("max(edgelearn_cloud_generation_training)", "generation")],
            "The generation the grower is training in the background now (0: none; the plan "
            "is done, or the cloud grows nothing).",
            kind="stat",
            width=6,
        ),
        Panel(
            "Models: held-out accuracy of what serves",
            RATIO,
            [Query("max by (mode) (edgelearn_cloud_model_heldout_accuracy_ratio)", "{{mode}}")],
            "Accuracy of the model serving each mode on the held-out items (never trained "
            "on; edgelearn_cloud_model_heldout_items says how many), on the path that serves: "
            "the int8 edge half, then the cloud half. It climbs as generations are promoted.",
            min=0,
            max=1,
        ),
        Panel(
            "Models: held-out items behind the accuracy",
            COUNT,
            [Query("min(edgelearn_cloud_model_heldout_items)", "items")],
            "The distinct held-out items the serving models' accuracies rest on (the fewest "
            "of any mode): 500 give an interval of about +-3 points at 85%.",
            kind="stat",
            width=6,
        ),
        Panel(
            "Models: generations promoted and kept",
            COUNT,
            [
                Query(
                    "sum by (family, outcome) "
                    "(increase(edgelearn_cloud_generations_total[$__range]))",
                    "{{family}} {{outcome}}",
                )
            ],
            "Background generations over the dashboard's time range, per family: promoted "
            "(the judge found it significantly better, or nothing of the family served), "
            "kept (no significant gain: the serving one stays).",
            kind="stat",
            width=6,
        ),
        Panel(
            "Continuous trainer: candidate vs serving",
            RATIO,
            [
                Query(
                    "max by (mode, model) (edgelearn_cloud_trainer_heldout_accuracy_ratio)",
                    "{{mode}} {{model}}",
                )
            ],
            "Accuracy of the last run's candidate and of the serving model on the same "
            "held-out arrivals (each camera's newest labeled objects, never trained on). A "
            "candidate is promoted only when it is better overall by the margin and worse on "
            "no camera beyond the bound.",
            min=0,
            max=1,
        ),
        Panel(
            "Continuous trainer: runs, promotions, rejections, rollbacks",
            COUNT,
            [
                Query(
                    "sum by (mode, trigger) "
                    "(increase(edgelearn_cloud_trainer_triggers_total[$__range]))",
                    "runs {{mode}} ({{trigger}})",
                ),
                Query(
                    "sum by (mode) (increase(edgelearn_cloud_trainer_promotions_total[$__range]))",
                    "promoted {{mode}}",
                ),
                Query(
                    "sum by (mode, reason) "
                    "(increase(edgelearn_cloud_trainer_rejections_total[$__range]))",
                    "kept {{mode}} ({{reason}})",
                ),
                Query(
                    "sum by (mode) (increase(edgelearn_cloud_trainer_rollbacks_total[$__range]))",
                    "rolled back {{mode}}",
                ),
            ],
            "Over the dashboard's time range: runs by what started them (new_objects, "
            "accuracy_drop), candidates promoted, candidates not promoted "
            "(not_better, camera_worse, too_few) and promotions undone because live accuracy "
            "fell below the replaced model's.",
            kind="stat",
            width=6,
        ),
        Panel(
            "Cameras the teacher names: agreement with it",
            RATIO,
            [
                Query(
                    "max by (camera) (edgelearn_cloud_teacher_agreement_ratio)",
                    "{{camera}}",
                )
            ],
            "Per camera without labels (a video, a real camera): the share of its latest "
            "teacher-labeled tracks the cloud's answer agreed with (the student's, or "
            "'unknown' before there is one). Each track counts once.",
            min=0,
            max=1,
        ),
        Panel(
            "Cameras the teacher names: answers",
            PER_SECOND,
            [
                Query(
                    "sum by (camera, class_name) "
                    f"(rate(edgelearn_cloud_teacher_task_answers_total[{RATE}]))",
                    "{{camera}} {{class_name}}",
                ),
                Query(
                    "sum by (outcome) (increase(edgelearn_cloud_student_runs_total[$__range]))",
                    "student runs: {{outcome}}",
                ),
            ],
            "Objects of those cameras answered per second, by answer: person, other moving "
            "object, or unknown (no student yet, or it was unsure); and the student trainer's "
            "runs over the time range, by outcome.",
            stacked=False,
            min=0,
        ),
        Panel(
            "Predictions by class",
            PER_SECOND,
            [
                Query(
                    f"sum by (task, class_name) (rate(edgelearn_cloud_predictions_total[{RATE}]))",
                    "{{task}}: {{class_name}}",
                )
            ],
            "Objects classified per second by the class the model named, per task: the data "
            "set's own class names (a user's folder: its sub-folder names), or the teacher's "
            "for cameras without labels.",
            stacked=True,
            min=0,
        ),
        Panel(
            "Model bytes pushed to gateways",
            BYTES,
            [
                Query(
                    "sum by (mode) (increase(edgelearn_cloud_model_pushed_bytes_total[$__range]))",
                    "{{mode}}",
                )
            ],
            "Signed model envelopes the cloud published to the gateways' retained model "
            "topics, over the dashboard's time range (a promoted cloud half pushes nothing: "
            "the gateways' part is unchanged).",
            kind="stat",
            width=6,
        ),
        Panel(
            "Cameras with a cloud half of their own",
            COUNT,
            [
                Query(
                    "max by (mode) (edgelearn_cloud_trainer_specialised_cameras)",
                    "{{mode}}",
                )
            ],
            "Cameras whose held-out arrivals chose a cloud half tuned on their own data over "
            "the global one (the trainer's log line and its report name them).",
            kind="stat",
            width=6,
        ),
        Panel(
            "Live accuracy of a promotion on watch",
            RATIO,
            [
                Query(
                    "max by (mode, model) (edgelearn_cloud_trainer_live_accuracy_ratio)",
                    "{{mode}} {{model}}",
                )
            ],
            "After a promotion the replaced model answers the same objects in shadow: the "
            "accuracy of both on them. Once enough distinct items are in, the trainer rolls "
            "back if the replaced one is significantly better (paired, per item).",
            min=0,
            max=1,
        ),
        Panel(
            "Objects answered in shadow",
            PER_SECOND,
            [
                Query(
                    f"sum by (mode) (rate(edgelearn_cloud_shadow_objects_total[{RATE}]))",
                    "{{mode}}",
                )
            ],
            "Objects a replaced model answered beside the promoted one (after the results "
            "went out): the evidence a watch settles on.",
        ),
        Panel(
            "Class mix each camera shows",
            RATIO,
            [
                Query(
                    f"max by (mode, camera, class) (edgelearn_cloud_class_prior_ratio{{{CAM}}})",
                    "{{camera}} {{mode}} class {{class}}",
                )
            ],
            "Each camera's class prior, estimated every few seconds from its recent answers "
            "(no labels, no training); the consumers re-weight answers to it.",
            min=0,
            max=1,
        ),
        Panel(
            "Model serving each mode",
            NONE,
            [Query("max by (mode, version) (edgelearn_cloud_model_info)", table=True)],
            "The cloud-half version the consumers answer each mode with (a promotion or a "
            "rollback changes it without the gateways changing theirs).",
            kind="table",
        ),
        _mode_table(),
        Panel(
            "Scheduler inputs: capacity per gateway",
            FPS,
            [
                Query(
                    "max by (gateway, mode) "
                    f"(edgelearn_gateway_capacity_frames_per_second{{{GW}}})",
                    "{{gateway}} {{mode}}",
                )
            ],
            "Measured keyframes per second each gateway can extract per mode: what the "
            "scheduler places split layers with, next to the uplink each gateway uses.",
            min=0,
        ),
        Panel(
            "Scheduler inputs: uplink per gateway",
            BYTES_PER_SECOND,
            [Query(f"edgelearn:uplink_bytes:rate1m{{{GW}}}", "{{gateway}} {{mode}}")],
            "Bytes per second each gateway sends upstream in its current mode.",
            min=0,
        ),
    ]
    return dashboard(
        "edgelearn-cloud",
        "edgelearn / Cloud detail",
        "Cloud consumers and trainer: inference, batches, latency, accuracy, training and "
        "the scheduler's plan per gateway.",
        panels,
    )


DASHBOARDS = {
    "pipeline-overview.json": pipeline_overview,
    "gateway-detail.json": gateway_detail,
    "cloud-detail.json": cloud_detail,
}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {
        name: json.dumps(build(), indent=2, ensure_ascii=False) + "\n"
        for name, build in DASHBOARDS.items()
    }


def main() -> int:
    OUTPUT.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUTPUT / name).write_text(text, encoding="utf-8")
        print(OUTPUT / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
