"""`chute status` lists the sync workers of the group from the real broker, and says so when
none runs (a stopped worker, or one never started)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import pytest
from chute.kafka import TopicPartition
from chute.registry import load_definitions
from control_plane.status import StatusSettings, StatusSource

from tests.e2e.stack import Stack
from tests.support import CH_HOST, CH_PORT, KAFKA, PYTHON, ROOT, free_port, wait_for

pytestmark = pytest.mark.e2e

PARTITIONS = 2


def test_status_lists_the_workers_and_says_when_none_runs(
        make_stack: Callable[..., Stack]) -> None:
    stack = make_stack({"partitions": PARTITIONS, "max_batch_wait": 0.3})
    settings = StatusSettings(kafka_bootstrap=KAFKA, clickhouse_host=CH_HOST,
                              clickhouse_port=CH_PORT, sync_group=stack.group)
    source = StatusSource(settings, load_definitions(str(stack.schema_dir)))
    try:
        assert source.snapshot().workers == ()
        worker = stack.start_worker()

        def assigned() -> Any:
            workers = source.snapshot().workers
            return workers if workers and workers[0].partitions else None

        [member] = wait_for(assigned, 30, "the worker in chute status")
        assert member.client_id == "w1" and member.host == "127.0.0.1"
        dlq = f"{stack.name}_dlq"  # the dead-letter stream syncs into its table too
        assert set(member.partitions) == {TopicPartition(dlq, 0), *(
            TopicPartition(stack.name, p) for p in range(PARTITIONS))}
        shown = subprocess.run([PYTHON, "-m", "control_plane", "status"], cwd=ROOT,
                               env=stack.env(), capture_output=True, text=True, timeout=60)
        assert shown.returncode == 0, shown.stderr
        [row] = [line.split("  ") for line in shown.stdout.splitlines()
                 if line.startswith("w1 ")]
        cells = [c.strip() for c in row if c.strip()]
        assert cells[1] == "127.0.0.1" and cells[-1] == f"{stack.name}:0,1 {dlq}:0", cells
        assert cells[2] in ("2 flowing", "(no report yet)"), cells
        worker.terminate()
        wait_for(lambda: source.snapshot().workers == (), 30, "the worker to leave the group")
    finally:
        source.close()
    shown = subprocess.run([PYTHON, "-m", "control_plane", "status"], cwd=ROOT,
                           env=stack.env(), capture_output=True, text=True, timeout=60)
    assert f"! no sync worker runs in group {stack.group}" in shown.stdout, shown.stdout


def test_status_says_when_clickhouse_cannot_be_reached(
        make_stack: Callable[..., Stack]) -> None:
    """ClickHouse down (a closed port): `chute status` still shows Kafka's side, names
    ClickHouse's address and the error, and exits non-zero."""
    stack = make_stack({"partitions": PARTITIONS})
    port = free_port()  # nothing listens there
    shown = subprocess.run([PYTHON, "-m", "control_plane", "status"], cwd=ROOT,
                           env=stack.env(CHUTE_CLICKHOUSE_PORT=str(port)),
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode != 0
    assert f"! ClickHouse {CH_HOST}:{port}: " in shown.stdout, shown.stdout
    assert "Connection refused" in shown.stdout, shown.stdout
    assert any(line.startswith(stack.name) for line in shown.stdout.splitlines())
