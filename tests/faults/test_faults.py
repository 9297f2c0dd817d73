"""Faults under load on the real servers: every acknowledged record must be in the table.

Each scenario drives the ingest API with the load generator, injects a fault, then counts
acknowledged / lost / duplicated with plain count() per id. The summary table is printed at
the end of the run (see conftest.py)."""

from __future__ import annotations

import random
import sys
import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest

from testkit.seed import TEST_SEED
from tests.e2e.stack import Stack, end_offsets
from tests.faults.accounting import RssSampler, account, committed_offsets
from tests.support import ROOT, wait_for

sys.path.insert(0, str(ROOT / "scripts"))
import dev_runner
from loadgen import LoadGenerator

pytestmark = pytest.mark.faults

MakeStack = Callable[..., Stack]
FAST = {"max_batch_wait": 0.3, "max_batch_rows": 5_000}


def _load(stack: Stack, rate: float = 1_500, batch: int = 50, **kw: Any) -> LoadGenerator:
    return LoadGenerator(stack.url, rate=rate, batch=batch, concurrency=2,
                         prefix=stack.name, **kw).start()


def _wait_all_committed(stack: Stack, timeout: float = 60) -> None:
    """Until the group has committed every message of the topic: nothing is left to be
    re-delivered, so the table is final."""
    from tests.e2e.stack import end_offsets

    ends = end_offsets(stack.name)
    wait_for(lambda: committed_offsets(stack.group, stack.name) == ends, timeout,
             f"the group to commit up to {ends}", interval=0.5)


def _drain(stack: Stack, acked: int, timeout: float = 90) -> None:
    def covered() -> bool:
        have = stack.ch.execute(f"SELECT uniqExact(id) FROM `{stack.name}`")[0][0]
        return bool(have >= acked)
    wait_for(covered, timeout, f"{acked} acknowledged ids in {stack.name}", interval=0.5)


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_sigkill_worker_five_times(make_stack: MakeStack, delivery: str) -> None:
    stack = make_stack({**FAST, "partitions": 4, "delivery": delivery})
    stack.start_ingest()
    worker = stack.start_worker()
    rng = random.Random(TEST_SEED)
    print(f"\nkill moments seeded with {TEST_SEED} (CHUTE_TEST_SEED)")
    gen = _load(stack, duration=60)
    kills = 0
    for _ in range(5):
        time.sleep(rng.uniform(0.5, 2.5))  # a random moment: mid-batch, mid-insert, idle
        worker.kill()
        kills += 1
        worker = stack.start_worker(wait=rng.random() < 0.5)
    gen.stop()
    stats = gen.stats
    assert stats.acked > 0
    _drain(stack, stats.acked)
    if delivery == "exactly_once":
        stack.wait_count(stats.acked, timeout=30)
    outcome = account(stack.ch, stack.name, stats.acked_ids,
                      f"1. SIGKILL worker x{kills} ({delivery})")
    assert outcome.lost == 0
    if delivery == "exactly_once":
        assert outcome.duplicated == 0
        assert stack.count() == stats.acked  # plain count(), no FINAL


def test_clickhouse_down_30s(make_stack: MakeStack) -> None:
    stack = make_stack({**FAST, "partitions": 2})
    stack.start_ingest()
    worker = stack.start_worker()
    gen = _load(stack, rate=1_000)
    wait_for(lambda: stack.count() > 0, 15, "rows before the outage")
    sampler = RssSampler(worker.proc.pid).start()  # type: ignore[union-attr]
    rows_before = stack.count()
    dev_runner.stop_service("clickhouse")
    try:
        # Let the worker notice and flush what it already committed.
        wait_for(lambda: '"retrying"' in worker.log_text(), 15, "the worker to retry")
        offsets_at_outage = committed_offsets(stack.group, stack.name)
        time.sleep(30)  # the outage itself: a fixed span is the scenario, not a wait
        offsets_after = committed_offsets(stack.group, stack.name)
        health = httpx.get(f"http://127.0.0.1:{worker.port}/health", timeout=5).json()
    finally:
        dev_runner.start_service("clickhouse")
    gen.stop()
    peak_mib = sampler.stop()
    assert offsets_after == offsets_at_outage, "offsets were committed during the outage"
    assert health["paused"] is True
    retries = [line for line in worker.log_text().splitlines() if '"retrying"' in line]
    assert len(retries) >= 3
    _drain(stack, gen.stats.acked)
    outcome = account(stack.ch, stack.name, gen.stats.acked_ids,
                      "2. ClickHouse stopped 30 s",
                      f"peak worker RSS {peak_mib:.0f} MiB, {len(retries)} retries")
    assert outcome.lost == 0
    assert stack.count() > rows_before
    assert peak_mib < 400, f"worker RSS grew to {peak_mib:.0f} MiB"


def test_kafka_down_20s(make_stack: MakeStack) -> None:
    stack = make_stack({**FAST, "partitions": 2})
    stack.start_worker()
    stack.start_ingest(CHUTE_INGEST_ACK_TIMEOUT_SECONDS="3")
    gen = _load(stack, rate=500, timeout=15)
    wait_for(lambda: stack.count() > 0, 15, "rows before the outage")
    dev_runner.stop_service("kafka")
    try:
        time.sleep(20)  # the outage
    finally:
        dev_runner.start_service("kafka")
    wait_for(lambda: stack.ingest is not None and stack.post(
        [{"id": f"{stack.name}-probe", "user_id": "u", "timestamp": "2024-01-01T00:00:00Z",
          "event_type": "probe"}]).status_code == 200, 60, "ingest to accept again")
    time.sleep(2)
    gen.stop()
    stats = gen.stats
    unavailable = stats.codes.get(503, 0)
    p99_503 = stats.percentile(503, 0.99)
    assert unavailable > 0, stats.summary()
    assert p99_503 is not None and p99_503 < 3 + 2, f"503 p99 {p99_503:.1f} s"
    _drain(stack, stats.acked, timeout=120)
    outcome = account(stack.ch, stack.name, stats.acked_ids, "3. Kafka stopped 20 s",
                      f"{unavailable} requests got 503, p99 {p99_503:.2f} s")
    assert outcome.lost == 0


def test_three_workers_one_killed_one_added(make_stack: MakeStack) -> None:
    stack = make_stack({**FAST, "partitions": 6})
    workers = [stack.start_worker() for _ in range(3)]
    stack.start_ingest()
    gen = _load(stack, rate=1_500)
    wait_for(lambda: stack.count() > 1_000, 20, "rows from three workers")
    workers[0].kill()
    time.sleep(2)
    stack.start_worker()
    mid = committed_offsets(stack.group, stack.name)
    time.sleep(10)
    gen.stop()
    _drain(stack, gen.stats.acked)
    end = committed_offsets(stack.group, stack.name)
    moved = {p: end[p] > mid[p] for p in end}
    assert all(moved.values()), f"partitions whose offsets stood still: {moved}"
    outcome = account(stack.ch, stack.name, gen.stats.acked_ids,
                      "4. 3 workers / 6 partitions, 1 killed, 1 added",
                      "every partition's committed offset moved")
    assert outcome.lost == 0


def test_sigterm_flushes_and_commits(make_stack: MakeStack) -> None:
    stack = make_stack({"max_batch_wait": 5.0, "partitions": 2})
    stack.start_ingest()
    worker = stack.start_worker()
    gen = _load(stack, rate=1_000, duration=4)
    gen.wait()
    assert worker.terminate() == 0
    flushed = stack.count()
    assert flushed > 0  # the 5 s batch was flushed on SIGTERM, not lost
    stack.start_worker()
    _wait_all_committed(stack)
    outcome = account(stack.ch, stack.name, gen.stats.acked_ids, "5. SIGTERM, then restart")
    assert outcome.lost == 0 and outcome.duplicated == 0


def test_dead_letter_ratio_guard_stops_the_pipeline_and_loses_nothing(
        make_stack: MakeStack) -> None:
    from chute.kafka import producer

    from tests.e2e.stack import event
    from tests.support import KAFKA

    stack = make_stack({"partitions": 1, "max_batch_wait": 0.3})
    p = producer(KAFKA)
    good, bad = 300, 1_000
    p.deliver(stack.name, [orjson.dumps(event(i)) for i in range(good)], 10)
    worker = stack.start_worker(CHUTE_SYNC_DLQ_RATIO_MIN_RECORDS="100")
    stack.wait_count(good)
    wait_for(lambda: committed_offsets(stack.group, stack.name)[0] == good, 20,
             "the good records to be committed")
    for i in range(bad):
        # Misconfiguration: a producer writing another schema into this topic.
        p.send(stack.name, b'{"order_id": %d, "amount": 3.5}' % i)
    p.close(timeout=10)
    url = f"http://127.0.0.1:{worker.port}/health"

    def unhealthy() -> dict[str, Any] | None:
        answer = httpx.get(url, timeout=5)
        return answer.json() if answer.status_code == 503 else None

    problems = wait_for(unhealthy, 30, "/health to report the failed pipeline")["problems"]
    assert any(f"{stack.name}: failed" in p and "dead-letter queue" in p for p in problems)
    assert "dead-letter ratio" in worker.log_text() or "dead-letter queue" in worker.log_text()
    assert worker.proc is not None and worker.proc.poll() is None  # the worker keeps running
    committed = committed_offsets(stack.group, stack.name)[0]
    assert committed < good + bad, "the topic was drained into the dead-letter queue"

    def dead_offsets() -> set[int]:
        rows = stack.ch.execute(f"SELECT DISTINCT offset FROM `{stack.name}_dlq`")
        return {int(r[0]) for r in rows}

    # Nothing committed that is not stored: every offset below the commit is a row of the
    # table or a dead letter; the record that tripped the guard is above it.
    wait_for(lambda: dead_offsets() >= set(range(good, committed)), 20,
             "the committed dead letters in the dead-letter table")
    assert stack.count() == good
    tripped_dead = len(dead_offsets())
    # Restarted with a looser limit, the records from the tripping one on come again.
    worker.kill()
    stack.start_worker(CHUTE_SYNC_DLQ_RATIO_LIMIT="1")
    wait_for(lambda: dead_offsets() == set(range(good, good + bad)), 60,
             "every bad record in the dead-letter table")
    assert stack.count() == good
    account(stack.ch, stack.name, [f"e{i}" for i in range(good)],
            "6. misconfigured topic trips the DLQ guard",
            f"pipeline failed, committed {committed}/{good + bad}, {tripped_dead} dead "
            f"letters, all {bad} after restart")


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_sigkill_between_insert_and_commit(make_stack: MakeStack, delivery: str) -> None:
    """The worst moment, hit on purpose: rows are in ClickHouse, offsets not committed."""
    stack = make_stack({"partitions": 3, "max_batch_wait": 0.5, "delivery": delivery})
    stack.start_ingest()
    gen = LoadGenerator(stack.url, rate=20_000, batch=500, prefix=stack.name,
                        total=6_000).start()
    stats = gen.wait()
    assert stats.acked == 6_000
    crashing = stack.start_worker(wait=False, CHUTE_SYNC_FAULT_KILL_AFTER_INSERTS="1")
    assert crashing.wait_exit(60) == -9  # killed itself after the first insert
    inserted_before_crash = stack.count()
    assert inserted_before_crash > 0
    stack.start_worker()
    _wait_all_committed(stack)
    outcome = account(stack.ch, stack.name, stats.acked_ids,
                      f"1b. SIGKILL after insert, before commit ({delivery})",
                      f"{inserted_before_crash} rows were in before the kill")
    assert outcome.lost == 0
    if delivery == "exactly_once":
        assert outcome.duplicated == 0 and stack.count() == 6_000
    else:
        # At-least-once re-delivers the uncommitted batch: the duplicates are expected, and
        # they show this test can tell the two modes apart.
        assert outcome.duplicated == inserted_before_crash


def test_ingest_overload_answers_503_with_retry_after(make_stack: MakeStack) -> None:
    stack = make_stack({"partitions": 2})
    stack.start_worker()
    ingest = stack.start_ingest(CHUTE_INGEST_MAX_IN_FLIGHT_REQUESTS="2")
    sampler = RssSampler(ingest.proc.pid).start()  # type: ignore[union-attr]
    gen = LoadGenerator(stack.url, rate=200_000, batch=1_000, concurrency=8,
                        prefix=stack.name, total=120_000).start()
    stats = gen.wait()
    peak_mib = sampler.stop()
    overloaded = stats.codes.get(503, 0) + stats.codes.get(429, 0)
    assert overloaded > 0, stats.summary()
    assert stats.missing_retry_after == 0
    assert set(stats.codes) <= {200, 429, 503}, stats.summary()
    _drain(stack, stats.acked)
    outcome = account(stack.ch, stack.name, stats.acked_ids,
                      "7. ingest overloaded (8 clients, 2 in flight)",
                      f"{overloaded} requests refused with Retry-After, "
                      f"peak ingest RSS {peak_mib:.0f} MiB")
    assert outcome.lost == 0
    assert peak_mib < 500


def test_rebalance_while_every_insert_takes_10s(make_stack: MakeStack) -> None:
    """A worker joins and another leaves while every ClickHouse answer is held back (a loopback
    proxy between the workers and ClickHouse: an insert takes ~10 s). Revocations flush inside
    poll() on the main thread while the client keeps heartbeating, so no member is evicted, and
    the exactly-once stream ends with every acknowledged record exactly once."""
    from chute import kafka

    from tests.faults.tcp_proxy import TcpProxy
    from tests.support import CH_PORT, KAFKA

    # Batches gather for 6 s, so a revocation often finds rows to flush (slowly) in poll().
    stack = make_stack({"max_batch_wait": 6.0, "max_batch_rows": 50_000, "partitions": 6,
                        "delivery": "exactly_once"})
    admin = kafka.admin(KAFKA)
    with TcpProxy(target_port=CH_PORT) as proxy:
        through_proxy = {"CHUTE_CLICKHOUSE_PORT": str(proxy.port)}
        stack.start_worker(True, **through_proxy)
        stack.start_worker(True, **through_proxy)
        stack.start_ingest()
        gen = _load(stack, rate=800, duration=75)
        wait_for(lambda: stack.count() > 500, 30, "rows from two workers")
        wait_for(lambda: admin.group_members(stack.group) == ["w1", "w2"], 30, "two members")
        # Three round trips per insert (ping, query, data), each answer 3.5 s late: ~10 s.
        proxy.delay_replies(3.5)
        samples: list[list[str]] = []

        def sample(seconds: float) -> None:
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                samples.append(admin.group_members(stack.group))
                time.sleep(0.5)

        joining = stack.start_worker(wait=False, **through_proxy)
        sample(25)
        # The new member is in, and the two busy ones never left.
        assert admin.group_members(stack.group) == ["w1", "w2", "w3"], samples[-3:]
        assert all({"w1", "w2"} <= set(members) for members in samples), samples
        leaving = stack.workers[1]
        assert leaving.proc is not None
        leaving.proc.terminate()  # SIGTERM: flush (slowly), commit, leave the group
        after = len(samples)
        sample(25)
        assert all({"w1", "w3"} <= set(members) for members in samples[after:]), samples[after:]
        # It ends within the stop grace (30 s after SIGTERM, when a supervisor sends SIGKILL):
        # an insert under way (~10 s), the shutdown flush, the commit, leaving the group.
        wait_for(lambda: leaving.proc is not None and leaving.proc.poll() is not None, 10,
                 "the leaving worker to end its shutdown within the stop grace")
        assert leaving.proc.poll() == 0, "the leaving worker did not finish its shutdown"
        assert joining.proc is not None and joining.proc.poll() is None
        proxy.pass_through()
        gen.stop()
        stats = gen.stats
        assert stats.acked > 0
        _drain(stack, stats.acked, timeout=120)  # the workers still reach ClickHouse here
        stack.wait_count(stats.acked, timeout=60)
    slow = [b for b in stack.batch_logs() if b["duration_ms"] >= 9_000]
    revoking = [b for b in slow if b["reason"] == "rebalance"]
    logs = "".join(w.log_text() for w in stack.workers)
    assert slow, "no insert was slowed down by the proxy"
    assert '"partitions lost"' not in logs, "a member was evicted"
    admin.close()
    outcome = account(stack.ch, stack.name, stats.acked_ids,
                      "8. rebalance (+1, -1 worker) while inserts take 10 s",
                      f"{len(slow)} slow inserts, {len(revoking)} on revocation")
    assert outcome.lost == 0 and outcome.duplicated == 0
    assert stack.count() == stats.acked  # plain count(), no FINAL


@pytest.mark.parametrize("delivery", ["at_least_once", "exactly_once"])
def test_insert_answers_lost_after_clickhouse_applied_them(make_stack: MakeStack,
                                                          delivery: str) -> None:
    """A proxy between the worker and ClickHouse forwards inserts, lets ClickHouse answer,
    then cuts the connection without passing the answer on: the outcome is ambiguous."""
    from tests.faults.tcp_proxy import TcpProxy
    from tests.support import CH_PORT

    stack = make_stack({**FAST, "partitions": 2, "delivery": delivery})
    stack.start_ingest()
    with TcpProxy(CH_PORT) as proxy:
        worker = stack.start_worker(CHUTE_CLICKHOUSE_PORT=str(proxy.port),
                                    CHUTE_SYNC_RETRY_INITIAL_SECONDS="0.2")
        gen = LoadGenerator(stack.url, rate=3_000, batch=100, prefix=stack.name,
                            total=30_000).start()
        wait_for(lambda: stack.count() > 0, 20, "rows before the first cut")
        cuts = 3
        proxy.cut_after_insert_reply(times=cuts)
        assert proxy.wait_for_cuts(cuts, timeout=60), f"only {proxy.cuts} cuts happened"
        stats = gen.wait()
        assert stats.acked == 30_000, stats.summary()
        _wait_all_committed(stack, timeout=90)
    outcome = account(stack.ch, stack.name, stats.acked_ids,
                      f"9. insert answer lost x{cuts} ({delivery})",
                      "proxy cut the link after ClickHouse answered")
    assert outcome.lost == 0
    log = worker.log_text()
    if delivery == "exactly_once":
        assert outcome.duplicated == 0
        assert stack.count() == stats.acked  # plain count(), no FINAL
        reconciled = [orjson.loads(line) for line in log.splitlines()
                      if '"insert outcome reconciled"' in line]
        assert len(reconciled) >= cuts
        assert sum(r["rows_already_in"] for r in reconciled) > 0  # the cuts hit applied inserts
    else:
        # At-least-once resends the cut inserts: duplicates show the cuts came after the
        # inserts were applied (so the exactly-once run above proves something).
        assert outcome.duplicated > 0


def test_exactly_once_survives_a_re_created_topic(make_stack: MakeStack, admin: Any) -> None:
    """The topic is deleted and created again under the same name, with more records than the
    old watermark: its offsets restart at 0 under a new topic id, so the rows of the old
    topic are no watermark for it. Every new record is inserted once, none is skipped."""
    from chute.kafka import producer

    from tests.e2e.stack import event
    from tests.support import KAFKA

    stack = make_stack({"partitions": 1, "max_batch_wait": 0.3, "delivery": "exactly_once"})
    old_id = admin.topic_ids([stack.name])[stack.name]
    p = producer(KAFKA)
    p.deliver(stack.name, [orjson.dumps(event(i)) for i in range(50)], 10)
    worker = stack.start_worker()
    stack.wait_count(50)
    worker.kill()
    admin.delete_topic(stack.name)

    def recreated() -> bool:
        try:
            stack.apply()
        except AssertionError:
            return False  # the deletion is still in progress
        return stack.name in admin.topic_partitions()
    wait_for(recreated, 60, f"topic {stack.name} to be created again")
    new_id = admin.topic_ids([stack.name])[stack.name]
    assert new_id != old_id
    p.deliver(stack.name, [orjson.dumps(event(i)) for i in range(1_000, 1_080)], 10)
    p.close(timeout=10)
    stack.start_worker()
    stack.wait_count(130)
    wait_for(lambda: committed_offsets(stack.group, stack.name)[0] == 80, 30,
             "the new topic's records to be committed")
    by_id = dict(stack.ch.execute(f"SELECT _chute_topic_id, count() FROM `{stack.name}` "
                                  "GROUP BY _chute_topic_id"))
    assert by_id == {old_id: 50, new_id: 80}
    account(stack.ch, stack.name, [f"e{i}" for i in [*range(50), *range(1_000, 1_080)]],
            "10. topic re-created (more records than the old watermark) under exactly-once",
            "the watermark belongs to the old topic id")


def test_a_table_switched_to_exactly_once_inserts_offset_0_of_every_partition(
        make_stack: MakeStack, admin: Any) -> None:
    """A table with rows becomes exactly-once: the added position columns read partition 0
    offset 0 in the old rows, and topic id ''. With no committed offset, the worker starts at
    the earliest offset of every partition and inserts offset 0 too."""
    from chute.kafka import producer

    from tests.e2e.stack import event
    from tests.support import KAFKA

    partitions = 3
    before = make_stack({"partitions": partitions, "max_batch_wait": 0.3})
    p = producer(KAFKA)
    # Every partition gets records (a producer's sticky partitioner could put them all on one).
    for i in range(30):
        p.send(before.name, orjson.dumps(event(i)), partition=i % partitions)
    p.flush(10)
    p.close(timeout=10)
    assert end_offsets(before.name) == {part: 10 for part in range(partitions)}
    worker = before.start_worker()
    before.wait_count(30)
    worker.terminate()
    after = make_stack({"partitions": partitions, "max_batch_wait": 0.3,
                        "delivery": "exactly_once"}, name=before.name)
    after.group = f"g2_{after.name}"  # a group that never committed
    topic_id = admin.topic_ids([after.name])[after.name]
    assert dict(after.ch.execute(
        f"SELECT _chute_topic_id, count() FROM `{after.name}` GROUP BY _chute_topic_id")) == {
        "": 30}
    after.start_worker()
    after.wait_count(60)
    per_partition = dict(after.ch.execute(
        f"SELECT _chute_partition, countIf(_chute_offset = 0) FROM `{after.name}` "
        "WHERE _chute_topic_id = %(id)s GROUP BY _chute_partition", {"id": topic_id}))
    assert per_partition == {part: 1 for part in range(partitions)}
    assert after.count(where=f"WHERE _chute_topic_id = '{topic_id}'") == 30

