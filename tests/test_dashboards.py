"""The dashboards and Prometheus rules, checked without any server.

Every panel has the provisioned data source, a unit and a query; every ``$variable`` is
defined; every metric name an expression mentions is one some role really exports (built from
each role's ``metrics.py`` on a fresh registry) and every recorded name (``level:metric:op``)
is defined in the recording rules. ``tests/test_observability.py`` runs the same expressions
against a real Prometheus scraping a real pipeline; the helpers it shares live here.
"""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, ProcessCollector

from cameras.metrics import CameraMetrics
from cloud.metrics import CloudMetrics
from edgelearn.metrics import register_build_info
from gateway.metrics import GatewayMetrics

DASHBOARDS = Path(__file__).resolve().parent.parent / "dashboards"
GRAFANA_DASHBOARDS = DASHBOARDS / "grafana" / "dashboards"
PROMETHEUS = DASHBOARDS / "prometheus"
RULE_FILES = (PROMETHEUS / "rules" / "recording.yml", PROMETHEUS / "rules" / "alerts.yml")
DATASOURCE = {"type": "prometheus", "uid": "edgelearn-prometheus"}

# Variables Grafana defines itself.
GRAFANA_BUILTINS = frozenset(
    {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s", "__all"}
)
# Series Prometheus writes itself, not any process.
PROMETHEUS_SERIES = frozenset(
    {
        "up",
        "scrape_duration_seconds",
        "scrape_samples_scraped",
        "scrape_samples_post_metric_relabeling",
        "scrape_series_added",
        "ALERTS",
        "ALERTS_FOR_STATE",
    }
)
# Names the dashboards use that no role exports yet: the report proposes adding
# ``ProcessCollector(registry=registry)`` to ``edgelearn.metrics.register_build_info``
# (prometheus_client exports process_* only on its default registry, which the roles avoid).
# The names are taken from prometheus_client itself, so a typo still fails.
PENDING_ROLE_CHANGES = "process_"


# --- reading dashboards and rules -----------------------------------------------------------


def load_dashboards() -> dict[str, dict[str, Any]]:
    return {
        path.name: json.loads(path.read_text(encoding="utf-8"))
        for path in sorted(GRAFANA_DASHBOARDS.glob("*.json"))
    }


def panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    """Every panel, including those nested in collapsed rows."""
    found: list[dict[str, Any]] = []
    for panel in dashboard.get("panels", []):
        found.append(panel)
        found.extend(panel.get("panels", []))
    return [panel for panel in found if panel.get("type") != "row"]


def panel_queries() -> list[tuple[str, str]]:
    """``(where, expr)`` for every target of every panel of every dashboard."""
    return [
        (f"{name}: {panel['title']} [{target['refId']}]", target["expr"])
        for name, dashboard in load_dashboards().items()
        for panel in panels(dashboard)
        for target in panel.get("targets", [])
    ]


def variable_queries() -> list[tuple[str, str]]:
    """``(where, label_values query)`` of every query variable."""
    found = []
    for name, dashboard in load_dashboards().items():
        for variable in dashboard["templating"]["list"]:
            if variable["type"] == "query":
                query = variable["query"]
                text = query["query"] if isinstance(query, dict) else query
                found.append((f"{name}: ${variable['name']}", text))
    return found


@dataclass(frozen=True)
class Rule:
    kind: str  # record | alert
    name: str
    expr: str
    file: str


_RULE_START = re.compile(r"^\s*-\s+(record|alert):\s*(\S+)\s*$")
_EXPR = re.compile(r"^(\s*)expr:\s*(.*?)\s*$")


def read_rules(path: Path) -> list[Rule]:
    """The rules of one file, for the layout the rule files promise in their header (one
    ``- record:``/``- alert:`` item per rule, ``expr:`` inline or a ``|`` block). The venv
    has no YAML library; test_observability checks this reader against what Prometheus
    itself loaded."""
    lines = path.read_text(encoding="utf-8").splitlines()
    rules: list[Rule] = []
    pending: tuple[str, str] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        index += 1
        start = _RULE_START.match(line)
        if start:
            assert pending is None, f"{path.name}: rule before {line!r} has no expr"
            pending = (start[1], start[2])
            continue
        found = _EXPR.match(line)
        if not found:
            continue
        assert pending is not None, f"{path.name}: expr outside a rule: {line!r}"
        indent, value = len(found[1]), found[2]
        if value in ("|", "|-", ">", ">-"):
            block = []
            while index < len(lines) and (
                not lines[index].strip() or len(lines[index]) - len(lines[index].lstrip()) > indent
            ):
                block.append(lines[index].strip())
                index += 1
            value = " ".join(part for part in block if part)
        elif value[:1] in ("'", '"'):
            raise AssertionError(f"{path.name}: quote-free exprs only, got {value!r}")
        rules.append(Rule(pending[0], pending[1], value, path.name))
        pending = None
    assert pending is None, f"{path.name}: last rule has no expr"
    return rules


def all_rules() -> list[Rule]:
    return [rule for path in RULE_FILES for rule in read_rules(path)]


# --- PromQL helpers (shared with test_observability) -----------------------------------------

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_MATCHERS = re.compile(r"\{[^{}]*\}")
_RANGE = re.compile(r"\[[^\[\]]*\]")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^()]*\)")
_OFFSET = re.compile(r"\boffset\s+-?\w+")
_NUMBER = re.compile(r"(?<![\w:])\d+(?:\.\d+)?(?:[eE][+-]?\d+)?")
_IDENT = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")
_KEYWORDS = frozenset({"bool", "and", "or", "unless", "atan2", "inf", "nan", "Inf", "NaN"})
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def metric_names(expr: str) -> set[str]:
    """Metric (and recorded) names an expression selects; function names, label names,
    strings, durations and numbers are left out."""
    text = _STRING.sub('""', expr)
    text = _MATCHERS.sub(" ", text)
    text = _RANGE.sub(" ", text)
    text = _GROUPING.sub(" ", text)
    text = _OFFSET.sub(" ", text)
    text = _NUMBER.sub(" ", text)
    names = set()
    for match in _IDENT.finditer(text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match[0] in _KEYWORDS:
            continue  # a function or aggregation, or an operator keyword
        names.add(match[0])
    return names


def variables_used(text: str) -> set[str]:
    return {next(group for group in m.groups() if group) for m in _VARIABLE.finditer(text)}


def substitute_variables(expr: str) -> str:
    """What Grafana would send with every camera and gateway selected, over a short range
    (the test's Prometheus scrapes every second)."""
    return (
        expr.replace("$__rate_interval", "1m")
        .replace("$__range", "5m")
        .replace("$__interval", "5s")
        .replace("$gateway", ".*")
        .replace("$camera", ".*")
    )


def strip_condition(expr: str) -> str:
    """The left side of the top-level comparison of an alert condition (``up == 0`` ->
    ``up``), or ``expr`` when it has none (a set operation like ``unless`` filters instead)."""
    depth, quote, index = 0, "", 0
    while index < len(expr):
        char = expr[index]
        if quote:
            if char == "\\":
                index += 1
            elif char == quote:
                quote = ""
        elif char in "\"'`":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif depth == 0:
            pair = expr[index : index + 2]
            if pair in ("==", "!=", ">=", "<=") or char in "<>":
                return expr[:index].strip()
        index += 1
    return expr.strip()


def label_values_selector(query: str) -> tuple[str, str]:
    """``label_values(selector, label)`` -> ``(selector, label)``."""
    found = re.fullmatch(r"\s*label_values\((.+),\s*(\w+)\s*\)\s*", query)
    assert found, f"not a label_values(selector, label) query: {query!r}"
    return found[1].strip(), found[2]


# --- what the roles export -----------------------------------------------------------------

_SAMPLE_SUFFIXES = {
    "counter": ("_total", "_created"),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "gauge": ("",),
    "unknown": ("",),
}


def _sample_names(registry: CollectorRegistry) -> set[str]:
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SAMPLE_SUFFIXES[family.type])
        names.update(sample.name for sample in family.samples)
    return names


@cache
def role_metric_names() -> dict[str, frozenset[str]]:
    """Sample names each role's process exports, from the roles' own metric classes."""
    exported = {}
    for role, build in (("camera", CameraMetrics), ("gateway", GatewayMetrics)):
        registry = CollectorRegistry()
        register_build_info(registry, role)
        metrics = build(registry)
        if isinstance(metrics, GatewayMetrics):
            metrics.watch_queues(dict)  # the service registers its queue-depth collector
            metrics.watch_outbox(lambda: None)  # and its outbox gauges
        exported[role] = frozenset(_sample_names(registry))
    registry = CollectorRegistry()
    register_build_info(registry, "cloud")
    CloudMetrics(registry)
    exported["cloud"] = frozenset(_sample_names(registry))
    return exported


@cache
def pending_metric_names() -> frozenset[str]:
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    return frozenset(_sample_names(registry))


def recorded_names() -> set[str]:
    return {rule.name for rule in all_rules() if rule.kind == "record"}


def known_names() -> set[str]:
    known = set(PROMETHEUS_SERIES) | recorded_names()
    for names in role_metric_names().values():
        known |= names
    return known | {name for name in pending_metric_names() if name in _pending_allowed()}


def _pending_allowed() -> set[str]:
    return {name for name in pending_metric_names() if name.startswith(PENDING_ROLE_CHANGES)}


def every_expression() -> list[tuple[str, str]]:
    rules = [(f"{rule.file}: {rule.name}", rule.expr) for rule in all_rules()]
    variables = [(where, label_values_selector(q)[0]) for where, q in variable_queries()]
    return panel_queries() + rules + variables


# --- tests ---------------------------------------------------------------------------------


def test_dashboards_are_what_the_generator_writes() -> None:
    spec = importlib.util.spec_from_file_location("dashboards_generate", DASHBOARDS / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while defining
    try:
        spec.loader.exec_module(module)
    finally:
        del sys.modules[spec.name]
    expected = module.render()
    on_disk = {
        path.name: path.read_text(encoding="utf-8") for path in GRAFANA_DASHBOARDS.glob("*.json")
    }
    assert on_disk.keys() == expected.keys()
    for name, text in expected.items():
        assert on_disk[name] == text, f"{name} is stale: run python dashboards/generate.py"


def test_three_dashboards_with_fixed_uids() -> None:
    dashboards = load_dashboards()
    assert set(dashboards) == {"pipeline-overview.json", "gateway-detail.json", "cloud-detail.json"}
    uids = [dashboard["uid"] for dashboard in dashboards.values()]
    assert len(set(uids)) == 3
    for dashboard in dashboards.values():
        assert 36 <= dashboard["schemaVersion"] <= 41
        assert "edgelearn" in dashboard["tags"]


@pytest.mark.parametrize("name", sorted(load_dashboards()))
def test_every_panel_has_datasource_unit_and_query(name: str) -> None:
    dashboard = load_dashboards()[name]
    found = panels(dashboard)
    assert len(found) >= 8
    ids = [panel["id"] for panel in found]
    assert len(set(ids)) == len(ids), "panel ids must be unique"
    for panel in found:
        title = panel["title"]
        assert panel["datasource"] == DATASOURCE, title
        unit = panel["fieldConfig"]["defaults"].get("unit")
        assert isinstance(unit, str) and unit, f"{title}: no unit"
        assert panel.get("description"), f"{title}: no description"
        targets = panel["targets"]
        assert targets, f"{title}: no query"
        for target in targets:
            assert target["datasource"] == DATASOURCE, title
            assert target["expr"].strip(), f"{title}: empty expr"
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, f"{title}: wider than the dashboard"


@pytest.mark.parametrize("name", sorted(load_dashboards()))
def test_variables_are_defined_and_come_from_label_values(name: str) -> None:
    dashboard = load_dashboards()[name]
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert {"camera", "gateway"} <= variables.keys()
    for variable in variables.values():
        assert variable["datasource"] == DATASOURCE
        selector, label = label_values_selector(variable["query"]["query"])
        assert label == variable["name"]
        assert metric_names(selector)
    defined = variables.keys() | GRAFANA_BUILTINS
    used: set[str] = set()
    for panel in panels(dashboard):
        for target in panel["targets"]:
            used |= variables_used(target["expr"])
    for variable in variables.values():
        used |= variables_used(variable["query"]["query"])
    assert used, "the dashboards should filter by their variables"
    assert used <= defined, f"undefined variables: {sorted(used - defined)}"


def test_every_metric_name_exists_in_some_role() -> None:
    known = known_names()
    recorded = recorded_names()
    problems = []
    for where, expr in every_expression():
        names = metric_names(expr)
        if not names:
            problems.append(f"{where}: no metric in {expr!r}")
        for name in names:
            if ":" in name and name not in recorded:
                problems.append(f"{where}: {name} is not a recording rule")
            elif name not in known:
                problems.append(f"{where}: no role exports {name}")
    assert not problems, "\n".join(problems)


PROCESS_METRICS_ON_DASHBOARDS = {"process_cpu_seconds_total", "process_resident_memory_bytes"}


def test_every_role_metric_family_appears_somewhere() -> None:
    """Not every sample name must be on a dashboard, but every family the roles define
    should be, or an operator never sees it."""
    used = set()
    for _, expr in every_expression():
        used |= metric_names(expr)
    families = {
        re.sub(r"_(total|bucket|sum|count|created|info)$", "", name)
        for names in role_metric_names().values()
        for name in names
        # prometheus_client's standard process collector: CPU and memory are on the
        # dashboards; file descriptors and start time are there for ad-hoc queries.
        if not name.startswith("process_") or name in PROCESS_METRICS_ON_DASHBOARDS
    }
    used_families = {re.sub(r"_(total|bucket|sum|count|info)$", "", name) for name in used}
    unused = families - used_families
    assert not unused, f"metric families on no dashboard or rule: {sorted(unused)}"


def test_rules_are_read_completely() -> None:
    for path in RULE_FILES:
        text = path.read_text(encoding="utf-8")
        rules = read_rules(path)
        declared = len(re.findall(r"^\s*-\s+(?:record|alert):", text, re.MULTILINE))
        assert len(rules) == declared
        assert len({rule.name for rule in rules}) == len(rules), f"{path.name}: duplicate names"
        assert all(rule.expr for rule in rules)
    kinds = {rule.kind for rule in all_rules()}
    assert kinds == {"record", "alert"}
    for name in (
        "edgelearn:uplink_reduction:ratio",
        "edgelearn:keyframe:ratio",
        "edgelearn:accuracy:ratio_by_mode",
        "edgelearn:end_to_end_latency_seconds:p99",
    ):
        assert name in recorded_names()


def test_alerts_cover_what_an_operator_needs() -> None:
    alerts = {rule.name: rule.expr for rule in all_rules() if rule.kind == "alert"}
    assert 'up{job="gateway"} == 0' in alerts["EdgelearnGatewayDown"]
    assert "split" in alerts["EdgelearnLatencyOverObjective"]
    assert "0.05" in alerts["EdgelearnLatencyOverObjective"]
    assert "edgelearn:accuracy:ratio_by_mode" in alerts["EdgelearnAccuracyFalling"]
    assert any("drop" in expr for expr in alerts.values())


def test_provisioning_points_at_the_dashboards_and_the_fixed_uid() -> None:
    provisioning = DASHBOARDS / "grafana" / "provisioning"
    datasource = (provisioning / "datasources" / "prometheus.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s+uid: edgelearn-prometheus$", datasource, re.MULTILINE)
    assert re.search(r"^\s+type: prometheus$", datasource, re.MULTILINE)
    provider = (provisioning / "dashboards" / "edgelearn.yml").read_text(encoding="utf-8")
    assert re.search(r"^\s+type: file$", provider, re.MULTILINE)
    assert re.search(r"^\s+path: \S+$", provider, re.MULTILINE)
    config = (PROMETHEUS / "prometheus.yml").read_text(encoding="utf-8")
    assert "targets/*.json" in config
    for path in RULE_FILES:
        assert f"rules/{path.name}" in config


# --- the helpers themselves ----------------------------------------------------------------


def test_metric_names_leaves_out_functions_labels_and_durations() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (mode, le) (rate(edgelearn_x_seconds_bucket{mode=~"a|b"}'
        "[$__rate_interval]))) / on (mode) group_left (gateway) sum without (camera) "
        "(edgelearn:y:ratio offset 5m) > bool 1e3 and up"
    )
    assert metric_names(expr) == {"edgelearn_x_seconds_bucket", "edgelearn:y:ratio", "up"}


def test_strip_condition_takes_the_left_side_of_a_top_level_comparison() -> None:
    assert strip_condition('up{job="gateway"} == 0') == 'up{job="gateway"}'
    assert strip_condition("a:b < avg_over_time(a:b[1h]) - 0.1") == "a:b"
    assert strip_condition('x{a!="b", c=~"d"} > 0.05') == 'x{a!="b", c=~"d"}'
    assert strip_condition("a unless label_replace(a, 'm', '$1', 'e', '(.+)')").startswith(
        "a unless"
    )


def test_variables_used_finds_every_syntax() -> None:
    assert variables_used('x{a=~"$camera", b="${gateway}", c="[[site]]"}[$__range]') == {
        "camera",
        "gateway",
        "site",
        "__range",
    }


def test_unknown_metric_names_would_be_caught() -> None:
    assert "edgelearn_gateway_frames_recieved_total" not in known_names()
    assert "edgelearn_gateway_frames_received_total" in known_names()
    assert "edgelearn_gateway_stage_seconds_bucket" in known_names()
    assert "edgelearn_build_info" in known_names()
