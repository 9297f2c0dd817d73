"""Node loss on the native cluster (three KRaft brokers, ZooKeeper, two ClickHouse 18.16
replicas), under ingest load: every acknowledged record ends up in the replicated table, on
both replicas; where the stream is exactly-once, each acknowledged record once (the producer is
idempotent, so a produce retried while leadership moves is stored once in Kafka);
ingest answers 503 only while Kafka has no in-sync quorum for a partition.

Exactly-once on a replicated table runs with CHUTE_CLICKHOUSE_INSERT_QUORUM=2: an insert is
acknowledged only when both replicas have it and watermarks are read with
select_sequential_consistency, so the worker's watermark read sees every acknowledged insert on
whichever replica it fails over to (the cluster mode sets it; the worker refuses exactly-once on
a replicated table without it). The at-least-once replica scenario turns the quorum off and
keeps inserting on the surviving replica."""

from __future__ import annotations

import random
import subprocess
import time
from collections.abc import Callable
from typing import Any

import dev_runner
import pytest
from chute import kafka
from confluent_kafka.admin import AdminClient, ConfigResource
from dev_runner import cluster
from loadgen import LoadGenerator

from testkit.seed import TEST_SEED
from tests.cluster.conftest import ClusterStack, cluster_settings
from tests.e2e.stack import end_offsets
from tests.faults.accounting import account
from tests.faults.test_faults import FAST
from tests.support import KAFKA, PYTHON, ROOT, wait_for

pytestmark = pytest.mark.faults

MakeStack = Callable[..., ClusterStack]
QUORUM = {"CHUTE_CLICKHOUSE_INSERT_QUORUM": "2"}  # what the cluster mode tells the services
NO_QUORUM = {"CHUTE_CLICKHOUSE_INSERT_QUORUM": "0"}  # at-least-once: keeps the survivor going


def _load(stack: ClusterStack, rate: float = 600, batch: int = 30,
          timeout: float = 30) -> LoadGenerator:
    return LoadGenerator(stack.url, rate=rate, batch=batch, concurrency=2,
                         prefix=stack.name, timeout=timeout).start()


def _count(client: Any, table: str) -> int:
    return int(client.execute(f"SELECT count() FROM `{table}`")[0][0])


def _distinct(client: Any, table: str) -> int:
    return int(client.execute(f"SELECT uniqExact(id) FROM `{table}`")[0][0])


def _ids_on(client: Any, table: str, acked: int, timeout: float = 120) -> None:
    wait_for(lambda: _distinct(client, table) >= acked, timeout,
             f"{acked} acknowledged ids in {table}", interval=0.5)


def _same_on_both(replicas: list[Any], table: str, timeout: float = 90) -> int:
    """Both replicas hold the same rows (SYSTEM SYNC REPLICA, then equal counts)."""
    for client in replicas:
        _wait_synced(client, table, timeout)
    counts = [_count(c, table) for c in replicas]
    assert counts[0] == counts[1], f"replicas differ: {counts}"
    return counts[0]


def _wait_synced(client: Any, table: str, timeout: float) -> None:
    wait_for(lambda: _synced(client, table), timeout, f"{table} synced", interval=1)


def _synced(client: Any, table: str) -> bool:
    try:
        client.execute(f"SYSTEM SYNC REPLICA `{table}`")
    except Exception:
        client.disconnect()
        return False
    return True


def _leader(topic: str, partition: int) -> int:
    metadata = AdminClient({"bootstrap.servers": KAFKA}).list_topics(topic, timeout=10)
    return int(metadata.topics[topic].partitions[partition].leader)


def _under_replicated(topic: str, client: str | None = None) -> list[int]:
    admin = kafka.admin(KAFKA, timeout=5.0, client=client)
    try:
        return admin.under_replicated().get(topic, [])
    finally:
        admin.close()


def _backends_agree(topic: str) -> list[int] | None:
    seen = _under_replicated(topic, "kafka-python")
    return seen if seen and seen == _under_replicated(topic, "confluent-kafka") else None


def _status_text(stack: ClusterStack) -> str:
    done = subprocess.run([PYTHON, "-m", "control_plane", "status"], cwd=ROOT,
                          env=stack.env(), capture_output=True, text=True, timeout=60)
    return done.stdout + done.stderr


def _probe(stack: ClusterStack, tag: str) -> int:
    record = {"id": f"{stack.name}-{tag}", "user_id": "u", "timestamp": "2024-01-01T00:00:00Z",
              "event_type": "probe"}
    return stack.post([record]).status_code


def test_topics_are_replicated_three_times_two_in_sync(make_cluster_stack: MakeStack) -> None:
    stack = make_cluster_stack({"partitions": 3})
    metadata = AdminClient({"bootstrap.servers": KAFKA}).list_topics(stack.name, timeout=10)
    partitions = metadata.topics[stack.name].partitions.values()
    assert [len(p.replicas) for p in partitions] == [3, 3, 3]
    resource = ConfigResource("topic", stack.name)
    admin = AdminClient({"bootstrap.servers": KAFKA})
    configs = admin.describe_configs([resource])
    entries = configs[resource].result(timeout=10)
    assert entries["min.insync.replicas"].value == "2"


def test_status_shows_workers_reporting_through_either_replica(
        make_cluster_stack: MakeStack, replicas: list[Any]) -> None:
    """Two workers, each writing through a different ClickHouse replica: `chute status`,
    reading through the first, shows the pipeline state each reported. The status table is
    replicated; a plain one per replica, as earlier versions made, is replaced."""
    from chute.sync_status import STATUS_TABLE, render_create_status_table

    for client in replicas:
        client.execute(f"DROP TABLE IF EXISTS `{STATUS_TABLE}`")
        client.execute(render_create_status_table("default"))
    s = cluster_settings()
    stack = make_cluster_stack({"partitions": 2}, CHUTE_SYNC_STATUS_INTERVAL_SECONDS="1")
    stack.start_worker()
    stack.start_worker(CHUTE_CLICKHOUSE_PORT=str(cluster.clickhouse_ports(s, 2)[0]))

    def both_reported() -> str | None:
        text = _status_text(stack)
        rows = [line.split() for line in text.splitlines()]
        # WORKER HOST PIPELINES... : "2 flowing" (the stream and its dead-letter pipeline)
        flowing = {row[0] for row in rows if len(row) > 3 and row[3] == "flowing"}
        return text if {"w1", "w2"} <= flowing else None

    wait_for(both_reported, 60, "both workers' reports in chute status", interval=1)


def test_kafka_partition_leader_sigkilled_under_load(make_cluster_stack: MakeStack) -> None:
    s = cluster_settings()
    stack = make_cluster_stack({**FAST, "partitions": 3, "delivery": "exactly_once"}, **QUORUM)
    stack.start_ingest()
    stack.start_worker()
    gen = _load(stack)
    wait_for(lambda: _count(stack.ch, stack.name) > 0, 30, "rows before the kill")
    leader = _leader(stack.name, 0)
    victim = f"kafka-{leader}"
    dev_runner.stop_service(victim, kill=True, settings=s)
    try:
        wait_for(lambda: _under_replicated(stack.name) or None, 60,
                 "the partitions the killed broker held to be under-replicated", interval=1)
        status = _status_text(stack)
        assert "under-replicated" in status, status
        # Both Kafka backends read the same in-sync replicas from the cluster's metadata
        # (polled: followers on the dead broker leave the ISR after replica.lag.time.max.ms).
        wait_for(lambda: _backends_agree(stack.name), 30, "both backends to agree")
        codes_while_down = dict(gen.stats.codes)
        wait_for(lambda: gen.stats.codes.get(200, 0) > codes_while_down.get(200, 0) + 20, 60,
                 "acknowledgements with one broker down")
    finally:
        dev_runner.start_service(victim, settings=s)
    wait_for(lambda: not _under_replicated(stack.name), 90, "every replica back in sync",
             interval=1)
    stats = gen.stop()
    _ids_on(stack.ch, stack.name, stats.acked)
    # The producer is idempotent: a produce retried while leadership moved is stored once in
    # Kafka. The sync inserts every Kafka record exactly once: the table's plain count() is
    # the topic's record count, and no acknowledged id is there twice.
    in_kafka = sum(end_offsets(stack.name).values())
    wait_for(lambda: _count(stack.ch, stack.name) >= in_kafka, 60, f"{in_kafka} rows")
    unavailable = stats.codes.get(503, 0)
    outcome = account(stack.ch, stack.name, stats.acked_ids,
                      f"C1. Kafka leader ({victim}) SIGKILLed (exactly_once)",
                      f"{unavailable} requests got 503 of {sum(stats.codes.values())}; "
                      f"{in_kafka - stats.acked} records in Kafka beyond those acknowledged")
    assert outcome.lost == 0
    assert outcome.duplicated == 0
    assert _count(stack.ch, stack.name) == in_kafka  # each Kafka record once, no FINAL
    assert _same_on_both([stack.ch, _other(stack)], stack.name) == in_kafka


def _other(stack: ClusterStack) -> Any:
    from clickhouse_driver import Client

    s = cluster_settings()
    return Client(host=s.host, port=cluster.clickhouse_ports(s, 2)[0])


def test_two_brokers_down_is_503_then_accepted_again(make_cluster_stack: MakeStack) -> None:
    """Without two in-sync replicas a write cannot be acknowledged: the ingest API says 503
    (with Retry-After) and accepts again once a second broker is back."""
    s = cluster_settings()
    stack = make_cluster_stack({**FAST, "partitions": 1})
    stack.start_ingest(CHUTE_INGEST_ACK_TIMEOUT_SECONDS="5")
    stack.start_worker()
    assert _probe(stack, "before") == 200
    leader = _leader(stack.name, 0)
    follower = next(i for i in range(1, 4) if i != leader)
    victims = [f"kafka-{follower}", f"kafka-{leader}"]
    for victim in victims:
        dev_runner.stop_service(victim, kill=True, settings=s)
    try:
        wait_for(lambda: _probe(stack, f"down-{time.monotonic()}") == 503 or None, 60,
                 "a 503 with one broker left")
        answer = stack.post([{"id": f"{stack.name}-refused", "user_id": "u",
                              "timestamp": "2024-01-01T00:00:00Z", "event_type": "probe"}])
        refused_code, retry_after = answer.status_code, answer.headers.get("retry-after")
    finally:
        for victim in victims:
            dev_runner.start_service(victim, settings=s)
    assert refused_code == 503 and retry_after, (refused_code, answer.text)
    wait_for(lambda: _probe(stack, f"after-{time.monotonic()}") == 200 or None, 90,
             "ingest to accept again")
    wait_for(lambda: _count(stack.ch, stack.name) >= 2, 60, "the accepted probes")
    ids = [str(i) for (i,) in stack.ch.execute(f"SELECT id FROM `{stack.name}`")]
    assert f"{stack.name}-before" in ids
    account(stack.ch, stack.name, [f"{stack.name}-before"],
            "C2. two of three brokers SIGKILLed", f"503 with Retry-After {retry_after} s")


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_clickhouse_replica_sigkilled_during_inserts(make_cluster_stack: MakeStack,
                                                     replicas: list[Any],
                                                     delivery: str) -> None:
    s = cluster_settings()
    env = QUORUM if delivery == "exactly_once" else NO_QUORUM
    stack = make_cluster_stack({**FAST, "partitions": 2, "delivery": delivery}, **env)
    stack.start_ingest()
    worker = stack.start_worker()
    gen = _load(stack)
    survivor = replicas[1]
    wait_for(lambda: _count(survivor, stack.name) > 0, 30, "rows before the kill")
    rng = random.Random(TEST_SEED)
    time.sleep(rng.uniform(0.2, 1.5))  # a seeded moment within the insert stream
    print(f"\nkill moment seeded with {TEST_SEED} (CHUTE_TEST_SEED)")
    dev_runner.stop_service("clickhouse-1", kill=True, settings=s)  # the worker's replica
    try:
        rows_at_kill = _count(survivor, stack.name)
        if delivery == "at_least_once":
            # The worker fails over to clickhouse-2 and keeps inserting there.
            wait_for(lambda: _count(survivor, stack.name) > rows_at_kill + 100, 60,
                     "inserts on the surviving replica")
        else:
            # With a quorum of two, nothing is acknowledged while one replica is down: the
            # worker retries (paused, committing nothing) instead of failing over.
            wait_for(lambda: '"retrying"' in worker.log_text() or None, 60,
                     "the worker to retry")
        rows_down = _count(survivor, stack.name)
    finally:
        dev_runner.start_service("clickhouse-1", settings=s)
    stats = gen.stop()
    restarted = replicas[0]
    restarted.disconnect()
    _ids_on(survivor, stack.name, stats.acked, timeout=180)
    if delivery == "exactly_once":
        wait_for(lambda: _count(survivor, stack.name) >= stats.acked, 60, "every row")
    rows = _same_on_both([restarted, survivor], stack.name, timeout=120)
    outcome = account(survivor, stack.name, stats.acked_ids,
                      f"C3. ClickHouse replica SIGKILLed + restarted ({delivery})",
                      f"restarted replica caught up: {rows} rows on both; "
                      f"{rows_down - rows_at_kill} rows reached the surviving replica while "
                      "it was down; "
                      f"{stats.codes.get(503, 0)} ingest 503s")
    assert outcome.lost == 0
    assert stats.codes.get(503, 0) == 0  # Kafka kept its quorum: ingest never refused
    if delivery == "exactly_once":
        assert outcome.duplicated == 0
        assert rows == stats.acked


def test_zookeeper_stopped_20s(make_cluster_stack: MakeStack, replicas: list[Any]) -> None:
    s = cluster_settings()
    stack = make_cluster_stack({**FAST, "partitions": 2, "delivery": "exactly_once"}, **QUORUM)
    stack.start_ingest()
    worker = stack.start_worker()
    gen = _load(stack)
    wait_for(lambda: _count(replicas[0], stack.name) > 0, 30, "rows before the outage")
    dev_runner.stop_service("zookeeper", settings=s)
    try:
        wait_for(lambda: '"retrying"' in worker.log_text() or None, 60, "the worker to retry")
        time.sleep(20)  # the outage itself: a fixed span is the scenario, not a wait
    finally:
        dev_runner.start_service("zookeeper", settings=s)
    stats = gen.stop()
    _ids_on(replicas[0], stack.name, stats.acked, timeout=180)
    wait_for(lambda: _count(replicas[0], stack.name) >= stats.acked, 60, "every row")
    rows = _same_on_both(replicas, stack.name)
    outcome = account(replicas[0], stack.name, stats.acked_ids,
                      "C4. ZooKeeper stopped 20 s (exactly_once)",
                      f"{rows} rows on both replicas; {stats.codes.get(503, 0)} ingest 503s")
    assert outcome.lost == 0
    assert outcome.duplicated == 0
    assert rows == stats.acked
    assert stats.codes.get(503, 0) == 0  # Kafka does not need ZooKeeper
