"""The worker's pipeline-state reports (pure part) and the status table's DDL."""

from __future__ import annotations

from chute.sync_status import render_create_status_table
from sync_worker.pipeline_state import PipelineState
from sync_worker.policy import Backoff
from sync_worker.status_report import reports


def test_one_report_per_pipeline_with_state_and_reason() -> None:
    flowing = PipelineState(Backoff(0.5, 10.0), unknown_budget=2)
    stuck = PipelineState(Backoff(0.5, 10.0), unknown_budget=2)
    stuck.failed_attempt("schema", "No such column note", now=100.0)
    found = reports("w1", {"b": stuck, "a": flowing}, now=142.0)
    assert [(r.worker, r.pipeline, r.state) for r in found] == [
        ("w1", "a", "flowing"), ("w1", "b", "paused")]
    assert found[1].reason == "schema error: No such column note"
    assert found[1].stopped_seconds == 42.0 and found[0].stopped_seconds == 0.0
    assert found[0].reported_at.tzinfo is not None


def test_the_status_table_keeps_the_latest_row_per_worker_and_pipeline() -> None:
    ddl = render_create_status_table("db")
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS `db`.`_chute_sync_status`")
    assert "ReplacingMergeTree(reported_at) ORDER BY (worker, pipeline)" in ddl


def test_on_a_cluster_the_status_table_is_replicated_on_every_replica() -> None:
    ddl = render_create_status_table("db", cluster="c1")
    assert ddl.startswith("CREATE TABLE IF NOT EXISTS `db`.`_chute_sync_status` ON CLUSTER `c1`")
    assert ("ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/_chute_sync_status', "
            "'{replica}', reported_at) ORDER BY (worker, pipeline)") in ddl
