"""Two shards of ClickHouse 18.16 (`scripts/dev up --clickhouse-shards 2 --clickhouse-replicas
1`): each table is `<name>_local` on both shards with a Distributed `<name>` in front, and the
sync worker inserts through it with insert_distributed_sync=1. Every acknowledged record is in
the Distributed table once, both shards hold rows, each on the shard its key hashes to, and
the local tables add up to the acknowledged count. A new field reaches both tables on both
shards; exactly-once is refused.

The two servers and their ZooKeeper run beside the replicated cluster of test_cluster_faults
(on its ports + 100, state in <state>/shards), sharing its three brokers."""

from __future__ import annotations

import dataclasses
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import dev_runner
import pytest
from clickhouse_driver import Client
from dev_runner import cluster

from tests.cluster.conftest import BROKERS, ClusterStack, cluster_settings, start_missing
from tests.e2e.stack import Stacks
from tests.faults.accounting import account
from tests.faults.test_faults import FAST
from tests.support import PYTHON, ROOT, wait_for

pytestmark = pytest.mark.faults

SHARDS = 2
PORT_SHIFT = 100


def shard_settings() -> dev_runner.Settings:
    base = cluster_settings()
    moved = dataclasses.replace(
        base, state=base.state / "shards",
        clickhouse_port=base.clickhouse_port + PORT_SHIFT,
        clickhouse_http_port=base.clickhouse_http_port + PORT_SHIFT,
        clickhouse_interserver_port=base.clickhouse_interserver_port + PORT_SHIFT,
        zookeeper_port=base.zookeeper_port + PORT_SHIFT)
    return cluster.write_layout(moved, BROKERS, 1, SHARDS)


@pytest.fixture(scope="module")
def shard_servers(servers: None) -> Iterator[dev_runner.Settings]:
    """ZooKeeper and one ClickHouse server per shard, started when not running (and stopped
    again); Kafka is the session's brokers."""
    s = shard_settings()
    started = start_missing(s, ["zookeeper"], ["clickhouse-1", "clickhouse-2"])
    yield s
    for name in reversed(started):
        dev_runner.stop_service(name, settings=s)


@pytest.fixture
def shards(shard_servers: dev_runner.Settings) -> Iterator[list[Client]]:
    """A client on each shard's server, shard 01 first."""
    clients = [Client(host=shard_servers.host, port=cluster.clickhouse_ports(shard_servers, i)[0])
               for i in range(1, SHARDS + 1)]
    assert clients[0].execute("SELECT uniqExact(shard_num) FROM system.clusters "
                              "WHERE cluster = %(c)s", {"c": cluster.CLUSTER_NAME}) == [(SHARDS,)]
    yield clients
    for client in clients:
        client.disconnect()


@pytest.fixture
def make_shard_stack(shard_servers: dev_runner.Settings, shards: list[Client], unique_name: str,
                     tmp_path: Path) -> Iterator[Callable[..., ClusterStack]]:
    stacks = Stacks(tmp_path, unique_name)
    env = dict(cluster.service_env(shard_servers))

    def make(stream: dict[str, Any], apply: bool = True) -> ClusterStack:
        name, schema_dir = stacks.next_place()
        return stacks.add(ClusterStack(name, schema_dir, tmp_path, shards[0], stream,
                                       cluster_env=env), apply=apply)

    yield make
    stacks.stop_all()


def _count(client: Client, table: str, where: str = "") -> int:
    return int(client.execute(f"SELECT count() FROM `{table}` {where}")[0][0])


def _records(stack: ClusterStack, start: int, n: int) -> list[dict[str, Any]]:
    return [{"id": f"{stack.name}-{i}", "user_id": f"u{i % 13}",
             "timestamp": "2024-01-01T00:00:00Z", "event_type": "click"}
            for i in range(start, start + n)]


def _send(stack: ClusterStack, requests: int, batch: int) -> list[str]:
    """Posts `requests` batches; returns the ids of the acknowledged ones."""
    acked = []
    for r in range(requests):
        records = _records(stack, r * batch, batch)
        if stack.post(records).status_code == 200:
            acked += [rec["id"] for rec in records]
    return acked


def test_every_acknowledged_record_is_in_the_distributed_table_once_across_two_shards(
        make_shard_stack: Callable[..., ClusterStack], shards: list[Client]) -> None:
    stack = make_shard_stack({**FAST, "partitions": 4})
    local = f"{stack.name}_local"
    for client in shards:
        tables = dict(client.execute("SELECT name, engine FROM system.tables WHERE "
                                     "database = currentDatabase() AND name IN %(n)s",
                                     {"n": (stack.name, local)}))
        assert tables == {stack.name: "Distributed", local: "ReplicatedMergeTree"}
    stack.start_ingest()
    stack.start_worker()
    acked = _send(stack, requests=30, batch=100)
    assert len(acked) == 3000
    # The worker logs a batch once ClickHouse acknowledged its insert. Through the Distributed
    # table with insert_distributed_sync=1 that is once every shard has its rows, so the local
    # tables hold them all the moment the last batch is logged (read without waiting further).
    wait_for(lambda: sum(int(e["rows"]) for e in stack.batch_logs()) >= len(acked), 60,
             f"the worker to log {len(acked)} rows inserted")
    per_shard = [_count(client, local) for client in shards]
    assert all(n > 0 for n in per_shard), per_shard
    assert sum(per_shard) == len(acked), per_shard
    outcome = account(shards[0], stack.name, acked, "C5. two shards, inserted through the "
                      "Distributed table (at_least_once, no fault)",
                      f"rows per shard {per_shard}")
    assert outcome.lost == 0 and outcome.duplicated == 0
    assert _count(shards[0], stack.name) == len(acked)
    assert _count(shards[1], stack.name) == len(acked)  # from either server
    # Each row sits on the shard sipHash64 of its key picks (equal weights: hash % 2).
    for index, client in enumerate(shards):
        assert _count(client, local, f"WHERE sipHash64(id) % {SHARDS} != {index}") == 0
    print(f"rows per shard: {per_shard}")


def test_a_new_field_reaches_both_tables_on_both_shards(
        make_shard_stack: Callable[..., ClusterStack], shards: list[Client]) -> None:
    stack = make_shard_stack({**FAST, "partitions": 2})
    stack.extra_fields = "    country: str = ''"
    stack.__post_init__()  # writes the schema again, with the field
    stack.apply()
    for client in shards:
        for table in (stack.name, f"{stack.name}_local"):
            columns = dict(client.execute(
                "SELECT name, type FROM system.columns WHERE database = currentDatabase() "
                "AND table = %(t)s", {"t": table}))
            assert columns.get("country") == "String", (table, columns)
    stack.start_ingest()
    stack.start_worker()
    records = [{**r, "country": "NZ"} for r in _records(stack, 0, 200)]
    assert stack.post(records).status_code == 200
    wait_for(lambda: _count(shards[0], stack.name, "WHERE country = 'NZ'") >= 200, 60,
             "200 rows with the new field")
    assert [_count(c, f"{stack.name}_local") > 0 for c in shards] == [True, True]


def test_exactly_once_on_two_shards_is_refused_by_plan_and_worker(
        make_shard_stack: Callable[..., ClusterStack]) -> None:
    stack = make_shard_stack({"delivery": "exactly_once"}, apply=False)
    plan = subprocess.run([PYTHON, "-m", "control_plane", "plan"], cwd=ROOT, env=stack.env(),
                          capture_output=True, text=True, timeout=120)
    assert "exactly-once stream, and cluster chute has several shards" in plan.stdout, (
        plan.stdout + plan.stderr)
    # With a quorum (past the replicated-table check): the shard check, once connected.
    worker = subprocess.run([PYTHON, "-m", "sync_worker"], cwd=ROOT,
                            env=stack.env(CHUTE_CLICKHOUSE_INSERT_QUORUM="2"),
                            capture_output=True, text=True, timeout=120)
    assert worker.returncode != 0
    lines = [line for line in worker.stderr.splitlines() if "refused" in line]
    assert lines and lines[-1].startswith(
        f"sync-worker: stream {stack.name}: delivery='exactly_once' on table {stack.name} is "
        "refused: cluster chute has 2 shards"), worker.stderr
