"""The Grafana dashboards in deploy/grafana/dashboards: Grafana's structure, the provisioned
datasource, and only metric names that shared/chute/metrics.py defines.

Whether every panel's query returns data from a real Prometheus is tested end to end in
tests/e2e/test_observability.py.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import pytest
import yaml
from chute import metrics
from prometheus_client.metrics import MetricWrapperBase

REPO = Path(__file__).resolve().parents[2]
DASHBOARDS = sorted((REPO / "deploy" / "grafana" / "dashboards").glob("*.json"))
DATASOURCES = REPO / "deploy" / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"

GRID_COLUMNS = 24
PANEL_TYPES = {"stat", "timeseries", "gauge", "bargauge", "table", "text", "row", "heatmap"}
VARIABLE_TYPES = {"query", "custom", "constant", "interval", "textbox", "datasource"}
# Grafana's own variables, which it fills in itself.
BUILTIN_VARIABLES = {"__rate_interval", "__interval", "__interval_ms", "__range", "__range_s",
                     "__range_ms", "__from", "__to"}

# PromQL words that look like metric names but are not.
PROMQL_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset",
                   "bool", "and", "or", "unless", "atan2", "inf", "nan"}
_SUFFIXES = {"counter": ("_total", "_created"), "gauge": ("",),
             "histogram": ("_bucket", "_sum", "_count", "_created"),
             "summary": ("", "_sum", "_count", "_created"), "info": ("_info",)}


def exported_series() -> set[str]:
    """Every series name chute's metrics module exports, plus the standard ones it lists."""
    names: set[str] = set(metrics.STANDARD_SERIES)
    for value in vars(metrics).values():
        if not isinstance(value, MetricWrapperBase):
            continue
        for family in value.describe():
            base = family.name
            names.update(base + suffix for suffix in _SUFFIXES[family.type])
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\{[^}]*\}|\$\w+", "", text)  # template variables
    found = set()
    for match in re.finditer(r"(?<![\w.])([A-Za-z_:][A-Za-z0-9_:]*)\b(?!\s*\()", text):
        word = match.group(1)
        if word.lower() not in PROMQL_KEYWORDS:
            found.add(word)
    return found


def load(path: Path) -> dict[str, Any]:
    return cast(dict[str, Any], json.loads(path.read_text()))


def all_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return panels


def provisioned_uid() -> str:
    [source] = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    return str(source["uid"])


_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def variables_in(text: str) -> set[str]:
    """Names of the template variables used in text: $name, ${name}, ${name:format}, [[name]]."""
    return {a or b or c for a, b, c in _VARIABLE.findall(text)}


def test_there_are_an_overview_and_a_per_pipeline_dashboard() -> None:
    names = {p.stem for p in DASHBOARDS}
    assert {"overview", "pipeline"} <= names, names
    templated = [load(p) for p in DASHBOARDS if load(p)["templating"]["list"]]
    assert templated, "the per-pipeline view needs a template variable"


def test_the_metric_name_extractor() -> None:
    expr = ('histogram_quantile(0.99, sum by (le, table) (rate(chute_sync_insert_seconds_bucket'
            '{table="$pipeline", kind=~"a|b"}[$__rate_interval]))) / on (table) '
            'sum without (instance) (up{job="x"}) > bool 0 or vector(0)')
    assert metric_names(expr) == {"chute_sync_insert_seconds_bucket", "up"}
    assert "chute_sync_rows_inserted_total" in exported_series()
    assert "chute_sync_batch_rows_bucket" in exported_series()
    assert "chute_sync_consumer_lag" in exported_series()


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_dashboard_has_grafanas_structure(path: Path) -> None:
    dashboard = load(path)
    for key in ("uid", "title", "panels", "schemaVersion", "templating", "time"):
        assert key in dashboard, f"{path.name}: no {key}"
    assert re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"]), "uid: stable, at most 40"
    assert dashboard.get("id") is None, "provisioned dashboards carry no database id"
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 30
    panels = all_panels(dashboard)
    assert panels, path.name
    ids = [panel.get("id") for panel in panels]
    assert all(isinstance(i, int) for i in ids), f"{path.name}: every panel needs an id"
    assert len(ids) == len(set(ids)), f"{path.name}: duplicate panel ids {ids}"
    uid = provisioned_uid()
    occupied: set[tuple[int, int]] = set()
    for panel in panels:
        where = f"{path.name} panel {panel['id']} {panel.get('title')!r}"
        assert panel.get("type") in PANEL_TYPES, where
        assert panel.get("title"), where
        grid = panel["gridPos"]
        assert {"h", "w", "x", "y"} <= set(grid), where
        assert grid["w"] > 0 and grid["h"] > 0 and grid["x"] >= 0 and grid["y"] >= 0, where
        assert grid["x"] + grid["w"] <= GRID_COLUMNS, f"{where}: wider than the grid"
        cells = {(x, y) for x in range(grid["x"], grid["x"] + grid["w"])
                 for y in range(grid["y"], grid["y"] + grid["h"])}
        assert not cells & occupied, f"{where}: overlaps another panel"
        occupied |= cells
        if panel["type"] in ("row", "text"):
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, where
        targets = panel.get("targets")
        assert targets, f"{where}: no queries"
        refs = [t.get("refId") for t in targets]
        assert all(refs) and len(refs) == len(set(refs)), f"{where}: refIds {refs}"
        for target in targets:
            assert isinstance(target.get("expr"), str) and target["expr"].strip(), where
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], where
            assert target["expr"].count("(") == target["expr"].count(")"), where


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_templating_is_valid(path: Path) -> None:
    dashboard = load(path)
    variables = dashboard["templating"]["list"]
    names = [v.get("name") for v in variables]
    assert len(names) == len(set(names)), names
    uid = provisioned_uid()
    exported = exported_series()
    for variable in variables:
        assert re.fullmatch(r"[A-Za-z]\w*", variable["name"]), variable
        assert variable.get("type") in VARIABLE_TYPES, variable
        if variable["type"] != "query":
            continue
        assert variable["datasource"] == {"type": "prometheus", "uid": uid}, variable
        # The string form: every Grafana version parses it (the editor's object form also
        # needs its qryType, metric and label fields filled in to mean the same).
        text = variable["query"]
        assert isinstance(text, str), f"{variable['name']}: give the query as a string"
        match = re.fullmatch(r"label_values\((?:(.+),\s*)?(\w+)\)", text)
        assert match, f"{variable['name']}: expected label_values(<metric>, <label>): {text}"
        if match.group(1):
            assert metric_names(match.group(1)) <= exported, text
        if variable.get("regex"):
            pattern = re.compile(variable["regex"].strip("/"))  # JavaScript-compatible here
            if variable["name"] == "pipeline":
                assert pattern.search("events") and pattern.search("a_dlq_b"), "keeps pipelines"
                assert not pattern.search("events_dlq"), "drops the dead-letter tables"
        assert variable.get("refresh") in (1, 2), "refresh on load or on time range change"
    # Every variable a query uses is defined or one of Grafana's own.
    used: set[str] = set()
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            used |= variables_in(target["expr"])
            used |= variables_in(target.get("legendFormat", ""))
    assert used <= set(names) | BUILTIN_VARIABLES, used - set(names) - BUILTIN_VARIABLES


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.stem)
def test_every_metric_in_a_query_is_defined_in_the_metrics_module(path: Path) -> None:
    exported = exported_series()
    for panel in all_panels(load(path)):
        for target in panel.get("targets", []):
            names = metric_names(target["expr"])
            assert names, f"panel {panel['title']!r}: no metric in {target['expr']}"
            unknown = names - exported
            assert not unknown, (f"panel {panel['title']!r} uses {sorted(unknown)}, which "
                                 "shared/chute/metrics.py does not define")


def test_a_tables_and_a_pipelines_series_can_start_at_zero() -> None:
    """Series created at start make a pipeline's first batch visible to rate()."""
    from prometheus_client import REGISTRY

    metrics.init_sync_table("t_init_check")
    metrics.init_ingest_pipeline("p_init_check")
    sample = REGISTRY.get_sample_value
    assert sample("chute_sync_rows_inserted_total", {"table": "t_init_check"}) == 0
    assert sample("chute_sync_batch_rows_count", {"table": "t_init_check"}) == 0
    for kind in metrics.SYNC_ERROR_KINDS:
        assert sample("chute_sync_errors_total", {"table": "t_init_check", "kind": kind}) == 0
    for result in metrics.INGEST_RESULTS:
        assert sample("chute_ingest_records_total",
                      {"pipeline": "p_init_check", "result": result}) == 0
