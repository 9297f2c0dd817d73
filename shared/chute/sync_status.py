"""Where the sync workers report each pipeline's state, for `chute status` to read.

Each worker writes one row per pipeline into a small ClickHouse table every few seconds: its
id, the pipeline, the state (flowing / retrying / paused / failed) and the reason. `chute
status` reads the latest row per worker and pipeline, and shows only the workers that are
members of the sync group right now (Kafka's group coordinator says who is alive, so a
killed worker's last report is never shown as current).

Why a ClickHouse table: `chute status` reads ClickHouse already, the workers already write
to it, and the workers may run on hosts whose HTTP ports the status command cannot reach.
When ClickHouse itself is down no report is written, but then `chute status` cannot reach
ClickHouse either and says so, which is the reason every pipeline is stuck.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from chute.ddl import on_cluster, render_drop_table, replicated_engine_args
from chute.identifiers import quote_identifier, quote_string, validate_identifier

STATUS_TABLE = "_chute_sync_status"


@dataclass(frozen=True)
class PipelineReport:
    worker: str
    pipeline: str
    state: str  # flowing | retrying | paused | failed
    reason: str  # empty while flowing
    stopped_seconds: float  # how long it has not flowed
    reported_at: datetime  # UTC, whole seconds


def _table(database: str) -> str:
    validate_identifier(database, "database")
    return f"{quote_identifier(database)}.{quote_identifier(STATUS_TABLE)}"


def render_create_status_table(database: str, cluster: str | None = None) -> str:
    """One row per worker and pipeline once merged (ReplacingMergeTree keeps the latest);
    readers take argMax by report time, so unmerged rows never show an older state. On a
    cluster (CHUTE_CLICKHOUSE_CLUSTER) the table is created on every replica and replicated
    within each shard, so a report written through any replica can be read through any
    other (`read_reports` reads every shard)."""
    engine = "ReplacingMergeTree(reported_at)"
    if cluster:
        args = ", ".join([*replicated_engine_args(database, STATUS_TABLE), "reported_at"])
        engine = f"ReplicatedReplacingMergeTree({args})"
    return (f"CREATE TABLE IF NOT EXISTS {_table(database)}{on_cluster(cluster)} "
            "(worker String, pipeline String, state String, reason String, "
            f"stopped_seconds Float64, reported_at DateTime) ENGINE = {engine} "
            "ORDER BY (worker, pipeline)")


def ensure_status_table(client: Any, database: str, cluster: str | None = None) -> None:
    """Creates the table. On a cluster, where this replica has the replicated table already
    nothing is done (DDL ON CLUSTER waits for every replica, up to minutes while one is
    down); a plain one left by an earlier version (each replica then kept its own reports)
    is dropped first: it holds only the latest states, which the workers report again
    within seconds."""
    if cluster:
        found = client.execute(
            "SELECT engine FROM system.tables WHERE database = %(d)s AND name = %(t)s",
            {"d": database, "t": STATUS_TABLE})
        if found and str(found[0][0]).startswith("Replicated"):
            return
        if found:
            client.execute(render_drop_table(database, STATUS_TABLE, cluster))
    client.execute(render_create_status_table(database, cluster))


def write_reports(client: Any, database: str, reports: list[PipelineReport]) -> None:
    if not reports:
        return
    columns = ("worker", "pipeline", "state", "reason", "stopped_seconds", "reported_at")
    client.execute(
        f"INSERT INTO {_table(database)} ({', '.join(columns)}) VALUES",
        [(r.worker, r.pipeline, r.state, r.reason, r.stopped_seconds, r.reported_at)
         for r in reports])


def read_reports(client: Any, database: str, workers: list[str], cluster: str | None = None
                 ) -> list[PipelineReport]:
    """The latest report of each pipeline of these workers; [] when the table does not exist
    yet (no worker has reported). On a cluster, from one replica of every shard."""
    if not workers:
        return []
    exists = client.execute(
        "SELECT count() FROM system.tables WHERE database = %(d)s AND name = %(t)s",
        {"d": database, "t": STATUS_TABLE})
    if not exists or not exists[0][0]:
        return []
    rows = client.execute(
        "SELECT worker, pipeline, argMax(state, reported_at), argMax(reason, reported_at), "
        "argMax(stopped_seconds, reported_at), toUnixTimestamp(max(reported_at)) "
        f"FROM {_source(database, cluster)} WHERE worker IN %(workers)s "
        "GROUP BY worker, pipeline ORDER BY worker, pipeline", {"workers": tuple(workers)})
    return [PipelineReport(str(w), str(p), str(s), str(r), float(sec),
                           datetime.fromtimestamp(int(at), UTC))
            for w, p, s, r, sec, at in rows]


def _source(database: str, cluster: str | None) -> str:
    if not cluster:
        return _table(database)
    return (f"cluster({quote_string(cluster)}, {quote_identifier(database)}, "
            f"{quote_identifier(STATUS_TABLE)})")


def now_utc() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)
