"""Metrics, logs, dashboards and `chute status` on real processes: a real Prometheus (Debian's
/usr/bin/prometheus) scrapes a control plane, an ingest API and a sync worker started on free
ports, while traffic flows through Kafka into ClickHouse.

The ClickHouse outage test stops the ClickHouse of scripts/dev's runner (CHUTE_STATE) and starts
it again; point the CHUTE_* variables at private servers when others share yours.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, cast

import httpx
import pytest
from chute.kafka import producer
from chute.registry import load_definitions
from clickhouse_driver import Client
from control_plane.status import StatusSettings, StatusSource

from tests.e2e.stack import Stack, end_offsets, event
from tests.support import (
    CH_HOST,
    CH_PORT,
    KAFKA,
    PYTHON,
    ROOT,
    ServiceProcess,
    free_port,
    wait_for,
)

pytestmark = pytest.mark.e2e

DASHBOARDS = sorted((ROOT / "deploy" / "grafana" / "dashboards").glob("*.json"))
PROMETHEUS_TEMPLATE = ROOT / "deploy" / "prometheus" / "prometheus.native.yml.tmpl"
PARTITIONS = 2
WARM_UP = 10  # records sent before Prometheus's first scrape of the pipeline's series
RECORDS = WARM_UP + 3_000  # accepted by the ingest API before the outage
OUTAGE_RECORDS = 400  # accepted while ClickHouse is down
RETRY_INITIAL, RETRY_MAX = 0.2, 1.0  # the worker's backoff, small to keep the test short
# What the test puts in for Grafana's own variables: windows that cover the whole test.
GRAFANA_VARIABLES = {"__rate_interval": "5m", "__range": "5m", "__interval": "1s"}


# --- Prometheus ------------------------------------------------------------------------------


@dataclass
class Prometheus:
    """A real Prometheus server on a free port, scraping every second."""

    config: Path
    data: Path
    log_path: Path
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Prometheus:
        binary = shutil.which("prometheus") or "/usr/bin/prometheus"
        if not os.access(binary, os.X_OK):
            pytest.fail("Prometheus is not installed: run scripts/install-infra")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [binary, f"--config.file={self.config}", f"--storage.tsdb.path={self.data}",
                 f"--web.listen-address=127.0.0.1:{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_for(self.ready, 30, f"Prometheus ready on {self.port}", interval=0.1)
        return self

    def ready(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log_path.read_text()[-3000:]}")
        try:
            return httpx.get(f"{self.url}/-/ready", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        assert body["data"]["resultType"] == "vector", (expr, body["data"]["resultType"])
        return cast(list[dict[str, Any]], body["data"]["result"])

    def value(self, expr: str) -> float | None:
        """The single value of an expression, or None while it has none."""
        result = self.query(expr)
        assert len(result) <= 1, (expr, result)
        return float(result[0]["value"][1]) if result else None

    def wait_value(self, expr: str, expected: float, timeout: float = 15) -> None:
        wait_for(lambda: self.value(expr) == expected, timeout,
                 f"{expr} == {expected} (is {self.value(expr)})", interval=0.2)

    def label_values(self, label: str, match: str) -> list[str]:
        response = httpx.get(f"{self.url}/api/v1/label/{label}/values",
                             params={"match[]": match}, timeout=10)
        return cast(list[str], response.json()["data"])

    def targets(self) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.url}/api/v1/targets", timeout=10)
        return cast(list[dict[str, Any]], response.json()["data"]["activeTargets"])


# --- the stack ---------------------------------------------------------------------------------


@dataclass
class Observed:
    stack: Stack
    control: ServiceProcess
    prometheus: Prometheus
    baseline_batches: list[dict[str, Any]]  # "batch inserted" log entries of the first RECORDS
    baseline_ends: dict[int, int]  # end offsets of the topic after them

    @property
    def name(self) -> str:
        return self.stack.name

    @property
    def worker(self) -> ServiceProcess:
        return self.stack.workers[0]




def json_log(service: ServiceProcess) -> list[dict[str, Any]]:
    entries = []
    for line in service.log_text().splitlines():
        if line.startswith("{"):
            entries.append(cast(dict[str, Any], json.loads(line)))
    return entries


def batch_entries(stack: Stack) -> list[dict[str, Any]]:
    return stack.batch_logs()


def scraped(metrics_text: str, name: str, **labels: str) -> float | None:
    """A sample's value from a /metrics page."""
    for line in metrics_text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        sample, _, value = line.rpartition(" ")
        if all(f'{k}="{v}"' in sample for k, v in labels.items()):
            return float(value)
    return None


@pytest.fixture(scope="module")
def observed(servers: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    import dev_runner

    tmp = tmp_path_factory.mktemp("observability")
    (tmp / "schemas").mkdir()
    ch = Client(host=CH_HOST, port=CH_PORT)
    name = f"obs_{uuid.uuid4().hex[:10]}"
    stack = Stack(name, tmp / "schemas", tmp, ch,
                  {"partitions": PARTITIONS, "max_batch_wait": 0.5})
    stack.apply()
    control_port = free_port()
    control = ServiceProcess("control_plane", stack.env(CHUTE_CONTROL_PORT=str(control_port)),
                             control_port, tmp / "control.log", extra_args=["serve"])
    prometheus = Prometheus(tmp / "prometheus.yml", tmp / "tsdb", tmp / "prometheus.log")
    try:
        control.start()
        stack.start_ingest()
        stack.start_worker(CHUTE_SYNC_RETRY_INITIAL_SECONDS=str(RETRY_INITIAL),
                           CHUTE_SYNC_RETRY_MAX_SECONDS=str(RETRY_MAX))
        assert stack.ingest is not None
        prometheus.config.write_text(dev_runner.render_prometheus_config(
            PROMETHEUS_TEMPLATE.read_text(),
            control=[f"127.0.0.1:{control.port}"], ingest=[f"127.0.0.1:{stack.ingest.port}"],
            sync=[f"127.0.0.1:{w.port}" for w in stack.workers],
            prometheus=[f"127.0.0.1:{prometheus.port}"], scrape_interval="1s"))
        prometheus.start()
        wait_for(lambda: sum(t["health"] == "up" for t in prometheus.targets()) == 4,
                 20, "all 4 targets up", interval=0.2)

        # A few records first. The services create a pipeline's labelled series on first use,
        # already holding that use: rate() and histogram_quantile() see only later changes.
        assert stack.post([event(i) for i in range(WARM_UP)]).status_code == 200
        stack.wait_count(WARM_UP)
        for series in (f'chute_sync_end_to_end_seconds_count{{table="{name}"}}',
                       f'chute_ingest_request_seconds_count{{pipeline="{name}"}}'):
            wait_for(partial(prometheus.query, series), 10, f"a scrape of {series}")
        # Traffic: accepted records, a request the schema rejects, an unknown pipeline.
        for start in range(WARM_UP, RECORDS, 1_000):
            response = stack.post([event(i) for i in range(start, start + 1_000)])
            assert response.status_code == 200, response.text
        assert stack.post({"id": "bad"}).status_code == 422
        url = stack.url.rsplit("/", 1)[0] + "/no_such_pipeline"
        assert httpx.post(url, content=b"{}", timeout=10).status_code == 404
        stack.wait_count(RECORDS, timeout=30)
        wait_for(lambda: sum(e["rows"] for e in batch_entries(stack)) == RECORDS, 10,
                 "the batch log lines of every row")
        baseline_batches = batch_entries(stack)
        baseline_ends = end_offsets(name)
        # A record that is not JSON, straight into the topic: decoded by the worker, it goes
        # to the dead-letter queue and from there into <name>_dlq.
        kafka_producer = producer(KAFKA)
        try:
            kafka_producer.send(name, value=b"{not json", key=b"k").get(timeout=10)
        finally:
            kafka_producer.close()
        stack.wait_count(1, timeout=30, table=f"{name}_dlq")
        yield Observed(stack, control, prometheus, baseline_batches, baseline_ends)
    finally:
        prometheus.stop()
        stack.stop_all()
        control.kill()
        ch.disconnect()


# --- metrics -----------------------------------------------------------------------------------


def test_rows_inserted_counter_equals_the_table_and_lag_drains_to_zero(
        observed: Observed) -> None:
    obs, prom, name = observed, observed.prometheus, observed.name
    rows = obs.stack.count()
    assert rows == RECORDS
    # The worker's own page, then what Prometheus scraped from it.
    page = obs.worker.metrics()
    assert scraped(page, "chute_sync_rows_inserted_total", table=name) == rows
    assert scraped(page, "chute_sync_rows_inserted_total", table=f"{name}_dlq") == 1
    assert scraped(page, "chute_sync_dlq_records_total", table=name) == 1
    assert scraped(page, "chute_sync_errors_total", table=name, kind="decode") == 1
    prom.wait_value(f'sum(chute_sync_rows_inserted_total{{table="{name}"}})', rows)
    prom.wait_value(f'sum(chute_ingest_records_total{{pipeline="{name}",result="accepted"}})',
                    RECORDS)
    prom.wait_value(f'sum(chute_ingest_records_total{{pipeline="{name}",result="rejected"}})', 1)
    # Lag per partition: the worker reports every partition it owns, each drained to 0.
    prom.wait_value(f'count(chute_sync_consumer_lag{{topic="{name}"}})', PARTITIONS)
    prom.wait_value(f'max(chute_sync_consumer_lag{{topic="{name}"}})', 0)


def test_chute_status_reads_lag_rows_and_dead_letters_from_the_servers(
        observed: Observed) -> None:
    stack = observed.stack
    settings = StatusSettings(kafka_bootstrap=KAFKA, clickhouse_host=CH_HOST,
                              clickhouse_port=CH_PORT, sync_group=stack.group)
    source = StatusSource(settings, load_definitions(str(stack.schema_dir)))
    try:
        def drained() -> Any:
            snap = source.snapshot()
            [pipeline] = snap.pipelines
            return snap if pipeline.lag == 0 and pipeline.dead_letters == 1 else None

        snapshot = wait_for(drained, 15, "lag 0 and one dead letter in chute status")
    finally:
        source.close()
    assert not snapshot.problems, snapshot.problems
    [pipeline] = snapshot.pipelines  # the dead-letter stream is shown as a column, not a row
    assert pipeline.name == stack.name and pipeline.rows == RECORDS
    assert pipeline.partitions is not None and len(pipeline.partitions) == PARTITIONS
    assert sum(p.end for p in pipeline.partitions) == RECORDS + 1
    assert all(p.committed == p.end for p in pipeline.partitions)

    done = subprocess.run([PYTHON, "-m", "control_plane", "status", "--partitions"], cwd=ROOT,
                          env=stack.env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    [row] = [line.split() for line in done.stdout.splitlines()
             if line.startswith(stack.name + " ")]
    assert row == [stack.name, str(PARTITIONS), "0", "-", "-", f"{RECORDS:,}", "1"], done.stdout
    assert done.stdout.count("    partition ") == PARTITIONS


# --- logs --------------------------------------------------------------------------------------


def test_batch_insert_log_lines_name_table_rows_bytes_offsets_and_duration(
        observed: Observed) -> None:
    entries = observed.baseline_batches
    assert entries
    covered: dict[int, list[tuple[int, int]]] = {}
    for entry in entries:
        assert entry["level"] == "info" and entry["service"] == "sync-worker"
        assert entry["worker"] == "w1" and entry["table"] == observed.name
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", entry["timestamp"])
        assert isinstance(entry["rows"], int) and entry["rows"] > 0
        assert isinstance(entry["bytes"], int) and entry["bytes"] > 50 * entry["rows"]
        assert isinstance(entry["duration_ms"], int | float) and 0 <= entry["duration_ms"] < 30_000
        assert entry["reason"] in ("rows", "bytes", "wait"), entry
        assert entry["dead_letters"] == 0
        assert re.fullmatch(r"\d+:\d+-\d+(,\d+:\d+-\d+)*", entry["partitions"]), entry
        rows_in_ranges = 0
        for part in entry["partitions"].split(","):
            partition, _, span = part.partition(":")
            lo, hi = (int(x) for x in span.split("-"))
            covered.setdefault(int(partition), []).append((lo, hi))
            rows_in_ranges += hi - lo + 1
        assert rows_in_ranges == entry["rows"], entry  # no gaps: every offset was a row
    assert sum(e["rows"] for e in entries) == RECORDS
    # Together the ranges cover each partition from offset 0 to its end, once.
    assert set(covered) == set(observed.baseline_ends)
    for partition, spans in covered.items():
        position = 0
        for lo, hi in sorted(spans):
            assert lo == position, (partition, sorted(spans))
            position = hi + 1
        assert position == observed.baseline_ends[partition], (partition, sorted(spans))


def test_clickhouse_outage_grows_lag_logs_retries_and_recovers(observed: Observed) -> None:
    import dev_runner

    obs, prom, name, stack = observed, observed.prometheus, observed.name, observed.stack
    lag = f'sum(chute_sync_consumer_lag{{topic="{name}"}})'
    paused = 'max(chute_sync_paused{job="sync-worker"})'
    before = stack.count()
    prom.wait_value(lag, 0)
    log_lines_before = len(json_log(obs.worker))
    if not dev_runner.stop_service("clickhouse"):
        pytest.skip("ClickHouse is not run by scripts/dev's runner; cannot stop it")
    try:
        for start in range(0, OUTAGE_RECORDS, 100):
            records = [event(100_000 + i) for i in range(start, start + 100)]
            response = stack.post(records)
            assert response.status_code == 200, response.text
        prom.wait_value(paused, 1, timeout=15)
        # The worker keeps reporting lag while it retries: it grows to what was accepted.
        wait_for(lambda: (prom.value(lag) or 0) >= OUTAGE_RECORDS, 20,
                 f"lag to reach {OUTAGE_RECORDS} while ClickHouse is down "
                 f"(is {prom.value(lag)})", interval=0.2)
        def first_retries() -> list[dict[str, Any]] | None:
            entries = [e for e in json_log(obs.worker)[log_lines_before:]
                       if e.get("event") == "retrying"]
            return entries[:3] if len(entries) >= 3 else None

        retries = wait_for(first_retries, 20, "three retry log lines")
    finally:
        dev_runner.start_service("clickhouse")
    wait_for(lambda: dev_runner.is_healthy("clickhouse"), 60, "ClickHouse healthy again")

    for attempt, entry in enumerate(retries, start=1):
        assert entry["level"] == "warning" and entry["service"] == "sync-worker"
        assert entry["what"] == "insert" and entry["table"] == name
        assert entry["attempt"] == attempt, retries
        ceiling = min(RETRY_MAX, RETRY_INITIAL * 2 ** (attempt - 1))
        assert ceiling / 2 - 0.01 <= entry["delay_s"] <= ceiling + 0.01, entry
        assert entry["error"].split(":")[0] in ("NetworkError", "SocketTimeoutError",
                                                "ConnectionRefusedError", "EOFError"), entry

    # Recovery: every accepted row arrives, once; the lag drains; the counter still agrees.
    stack.wait_count(before + OUTAGE_RECORDS, timeout=30)
    prom.wait_value(paused, 0)
    prom.wait_value(lag, 0)
    prom.wait_value(f'sum(chute_sync_rows_inserted_total{{table="{name}"}})', stack.count())
    assert stack.count() == before + OUTAGE_RECORDS
    assert (prom.value(f'sum(chute_sync_errors_total{{table="{name}",kind="transient"}})')
            or 0) >= len(retries)
    assert any(e.get("event") == "resumed" for e in json_log(obs.worker)[log_lines_before:])


# --- the native runner's Prometheus --------------------------------------------------------------


def test_scripts_dev_runs_prometheus_scraping_the_services(
        observed: Observed, tmp_path: Path) -> None:
    import dev_runner

    stack = observed.stack
    assert stack.ingest is not None
    # A private state folder; the services' ports are those of this module's processes.
    env = {"CHUTE_STATE": str(tmp_path / "state"), "CHUTE_PROMETHEUS_PORT": str(free_port()),
           "CHUTE_PROMETHEUS_SCRAPE_INTERVAL": "1s",
           "CHUTE_CONTROL_PORT": str(observed.control.port),
           "CHUTE_INGEST_PORT": str(stack.ingest.port),
           "CHUTE_SYNC_PORT_BASE": str(observed.worker.port - 1)}
    settings = dev_runner.Settings.from_env(env)
    settings.run_dir.mkdir(parents=True)
    settings.workers_file.write_text("1\n")  # as `scripts/dev up --workers 1` records it
    dev_runner.start_service("prometheus", settings)
    try:
        assert "prometheus" in dev_runner.expected_services(settings)
        assert dev_runner.is_healthy("prometheus", settings)
        runner_prometheus = Prometheus(settings.prometheus_config, settings.prometheus_data,
                                       settings.log_dir / "prometheus.log",
                                       port=settings.prometheus_port)
        jobs = {"control-plane", "ingest-api", "sync-worker", "prometheus"}
        try:
            wait_for(lambda: {t["labels"]["job"] for t in runner_prometheus.targets()
                              if t["health"] == "up"} == jobs, 30, "every job scraped")
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{runner_prometheus.targets()}") from None
        assert (settings.prometheus_data / "wal").is_dir()
    finally:
        assert dev_runner.stop_service("prometheus", settings=settings)
    assert "prometheus" not in dev_runner.expected_services(settings)


# --- dashboards --------------------------------------------------------------------------------


def substitute(expr: str, variables: dict[str, str]) -> str:
    """Grafana's variable syntaxes: $name, ${name}, ${name:format}, [[name]]."""

    def value(match: re.Match[str]) -> str:
        key = match.group(1) or match.group(2) or match.group(3)
        assert key in variables, f"no value for ${key} in {expr}"
        return variables[key]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", value, expr)


def test_every_panel_of_every_dashboard_returns_data(observed: Observed) -> None:
    prom, name = observed.prometheus, observed.name
    assert DASHBOARDS
    checked = 0
    for path in DASHBOARDS:
        dashboard = json.loads(path.read_text())
        variables = dict(GRAFANA_VARIABLES)
        for variable in dashboard["templating"]["list"]:
            # A query variable offers the label values Prometheus has; ours must be one.
            query = variable["query"]
            text = query["query"] if isinstance(query, dict) else query
            match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", text)
            assert match, text
            offered = prom.label_values(match.group(2), match.group(1))
            if variable.get("regex"):
                offered = [v for v in offered if re.search(variable["regex"].strip("/"), v)]
            assert name in offered and f"{name}_dlq" not in offered, (variable["name"], offered)
            variables[variable["name"]] = name
        for panel in dashboard["panels"]:
            for target in panel.get("targets", []):
                expr = substitute(target["expr"], variables)
                result = prom.query(expr)
                where = f"{path.name}: panel {panel['title']!r} ({target['refId']}): {expr}"
                assert result, f"{where} returned nothing"
                values = [float(sample["value"][1]) for sample in result]
                assert any(math.isfinite(v) for v in values), f"{where} returned {values}"
                checked += 1
    assert checked >= 30, checked
