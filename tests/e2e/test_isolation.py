"""Two pipelines in one worker: one stuck on a missing column, the other keeps flowing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from chute.fingerprint import FINGERPRINT_HEADER
from chute.kafka import producer
from chute.registry import load_definitions
from control_plane.status import StatusSettings, StatusSource, render

from tests.e2e.stack import EVENT_SCHEMA, Stack, event
from tests.faults.accounting import committed_offsets
from tests.support import CH_HOST, CH_PORT, KAFKA, wait_for

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]
FAST = {"max_batch_wait": 0.3, "partitions": 2}


def test_a_pipeline_stuck_on_a_missing_column_does_not_stall_the_other(
        make_stack: MakeStack) -> None:
    flowing = make_stack(FAST)
    stuck = make_stack(FAST)
    # The model gains a field, but `chute apply` has not run yet: its table lacks the column.
    (stuck.schema_dir / "pipeline.py").write_text(EVENT_SCHEMA.format(
        name=stuck.name, stream=stuck.stream, extra_fields="    note: str = 'n'"))
    worker = flowing.start_worker(
        CHUTE_SCHEMAS=f"{flowing.schema_dir},{stuck.schema_dir}",
        CHUTE_SYNC_HEALTH_PAUSED_SECONDS="2", CHUTE_SYNC_RETRY_MAX_SECONDS="2")
    p = producer(KAFKA)

    def send(stack: Stack, first: int, count: int) -> None:
        for i in range(first, first + count):
            p.send(stack.name, orjson.dumps(event(i)), key=f"k{i}".encode())
        p.flush(timeout=10)

    def visible_after(first: int) -> float:
        """Seconds from sending 50 records of the flowing pipeline until all are rows."""
        started = time.monotonic()
        send(flowing, first, 50)
        flowing.wait_count(first + 50, timeout=5)
        return time.monotonic() - started

    send(stuck, 0, 50)
    before = visible_after(0)
    url = f"http://127.0.0.1:{worker.port}/health"

    def unhealthy() -> dict[str, Any] | None:
        answer = httpx.get(url, timeout=5)
        return answer.json() if answer.status_code == 503 else None

    report = wait_for(unhealthy, 20, f"/health to name {stuck.name}")
    assert report["pipelines"][stuck.name]["state"] == "paused"
    assert "No such column" in report["pipelines"][stuck.name]["reason"]
    assert report["pipelines"][flowing.name]["state"] == "flowing"
    assert any(p.startswith(f"{stuck.name}: paused") for p in report["problems"])
    # `chute status` names the stuck pipeline and its error, from the worker's own report.
    status = StatusSource(StatusSettings(kafka_bootstrap=KAFKA, clickhouse_host=CH_HOST,
                                         clickhouse_port=CH_PORT, sync_group=flowing.group),
                          load_definitions(f"{flowing.schema_dir},{stuck.schema_dir}"))
    try:
        def reported() -> dict[str, Any] | None:
            snap = status.snapshot()
            states = {r.pipeline: r for r in snap.reports}
            return states if stuck.name in states and states[stuck.name].state == "paused" \
                else None

        states = wait_for(reported, 20, f"chute status to name {stuck.name}")
        snapshot = status.snapshot()
    finally:
        status.close()
    assert "No such column" in states[stuck.name].reason
    assert states[flowing.name].state == "flowing"
    screen = render(snapshot)
    assert f"! w1: pipeline {stuck.name} paused for " in screen and "No such column" in screen
    # The other pipeline keeps its rows arriving within seconds, batch after batch, while
    # the stuck one is retried beside it.
    during = [visible_after(round_ * 50) for round_ in range(1, 4)]
    print(f"\n{flowing.name}: 50 records visible after {before:.2f} s in the first round, "
          f"{', '.join(f'{t:.2f}' for t in during)} s while {stuck.name} was reported stuck "
          f"(max_batch_wait {FAST['max_batch_wait']} s)")
    assert stuck.count() == 0
    # `chute apply` adds the column: the stuck pipeline resumes by itself.
    stuck.apply()
    stuck.wait_count(50, timeout=30)
    wait_for(lambda: httpx.get(url, timeout=5).status_code == 200, 10, "/health back to 200")
    send(stuck, 50, 50)
    stuck.wait_count(100, timeout=10)
    assert stuck.count() == 100 and flowing.count() == 200
    p.close(timeout=10)


def test_records_of_another_model_pause_only_their_pipeline(make_stack: MakeStack) -> None:
    other = make_stack(FAST)
    newer = make_stack({"max_batch_wait": 0.3, "partitions": 1})
    worker = other.start_worker(CHUTE_SCHEMAS=f"{other.schema_dir},{newer.schema_dir}",
                                CHUTE_SYNC_HEALTH_PAUSED_SECONDS="1")
    p = producer(KAFKA)
    for i in range(20):  # validated by this worker's model: no header, or its own
        p.send(newer.name, orjson.dumps(event(i)))
    # Records an ingest API with a newer model definition validated: they carry a field this
    # worker's model lacks, which it must neither drop nor insert without.
    for i in range(20, 30):
        p.send(newer.name, orjson.dumps(event(i, duration_ms=7)),
               headers=((FINGERPRINT_HEADER, b"0123456789abcdef"),))
    for i in range(30):
        p.send(other.name, orjson.dumps(event(i)))
    p.close(timeout=10)
    newer.wait_count(20)
    other.wait_count(30)
    url = f"http://127.0.0.1:{worker.port}/health"

    def unhealthy() -> dict[str, Any] | None:
        answer = httpx.get(url, timeout=5)
        return answer.json() if answer.status_code == 503 else None

    report = wait_for(unhealthy, 20, f"/health to name {newer.name}")
    assert "reload the worker" in report["pipelines"][newer.name]["reason"]
    assert report["pipelines"][other.name]["state"] == "flowing"
    assert newer.count() == 20  # nothing of the other model inserted
    assert committed_offsets(other.group, newer.name)[0] == 20  # nor committed past
