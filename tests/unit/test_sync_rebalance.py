"""The worker's rebalance callbacks with an in-memory consumer and writer (no servers): where
new partitions start, what a revocation flushes or drops, and that lost partitions are never
inserted."""

from __future__ import annotations

from typing import Any

import orjson
from chute import IngestPipeline
from chute.kafka import Record, RecordBatch, TopicPartition
from chute.registry import Definitions
from chute.server import ServerProfile
from clickhouse_driver import errors as ch_errors
from sync_worker.routes import build_routes
from sync_worker.settings import SyncSettings
from sync_worker.worker import SyncWorker

from schemas.events import Event
from testkit.memory import ManualClock, MemoryConsumer, MemoryProducer, MemoryWriter

TOPIC = "rebalanced"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


def make_worker(consumer: MemoryConsumer, writer: MemoryWriter,
                **settings: Any) -> tuple[SyncWorker, list[float]]:
    defs = Definitions.from_resources([IngestPipeline[Event](TOPIC, {"dead_letter_queue": False})])
    routes = build_routes(defs, ServerProfile((18, 16, 1)), SyncSettings(**settings))
    clock = ManualClock()
    worker = SyncWorker(SyncSettings(**settings), consumer,  # type: ignore[arg-type]
                        MemoryProducer(writer.log), writer, routes,  # type: ignore[arg-type]
                        clock=clock, sleep=clock.sleep)
    return worker, clock.slept


def failing_writer() -> MemoryWriter:
    """Every insert into the topic's table fails with a transient error."""
    writer = MemoryWriter()
    writer.failures[TOPIC] = [ch_errors.NetworkError("connection refused") for _ in range(100)]
    return writer


def accept(worker: SyncWorker, batch: RecordBatch) -> None:
    tp = TopicPartition(TOPIC, batch.partition)
    worker.decode.submit((tp, batch))


def records(tp: TopicPartition, start: int, count: int) -> RecordBatch:
    return RecordBatch.of([Record(tp.topic, tp.partition, o, 1_700_000_000_000, None, orjson.dumps({
        "id": f"{tp.partition}-{o}", "user_id": "u", "timestamp": "2024-05-01T12:00:00Z",
        "event_type": "click"}), ()) for o in range(start, start + count)])


def test_new_partitions_start_at_their_commit_or_the_earliest() -> None:
    consumer = MemoryConsumer(committed={P0: 40})
    worker, _ = make_worker(consumer, MemoryWriter())
    assert worker.on_assigned([P0, P1]) == {P0: 40}  # P1 has no commit: the earliest
    assert worker.assigned == {P0, P1}
    assert consumer.commit_calls == []


def test_revocation_inserts_and_commits_the_buffered_rows() -> None:
    consumer = MemoryConsumer(committed={P0: 0, P1: 0})
    writer = MemoryWriter()
    worker, _ = make_worker(consumer, writer)
    worker.on_assigned([P0, P1])
    accept(worker, records(P0, 0, 5))
    accept(worker, records(P1, 0, 3))
    worker.flush_for_revocation([P1])
    assert len(writer.tables[TOPIC]) == 8
    assert consumer.commits == {P0: 5, P1: 3}
    assert worker.assigned == {P0}
    assert worker.stop_deadline is None  # the revocation budget ended with the revocation


def test_revocation_that_cannot_insert_in_time_drops_and_rewinds() -> None:
    """ClickHouse down during a revocation: retries stop at the budget, nothing is committed,
    the buffer is emptied and the partition kept is rewound to its commit."""
    consumer = MemoryConsumer(committed={P0: 10, P1: 20})
    writer = failing_writer()
    worker, slept = make_worker(consumer, writer, sync_rebalance_flush_seconds=3.0,
                                sync_retry_initial_seconds=0.5, sync_retry_max_seconds=1.0)
    worker.on_assigned([P0, P1])
    route = worker.routes[TOPIC]
    accept(worker, records(P0, 10, 5))
    accept(worker, records(P1, 20, 5))
    worker.flush_for_revocation([P1])
    assert TOPIC not in writer.tables and consumer.commit_calls == []
    assert sum(slept) <= 3.0  # the budget, not the shutdown's 20 s
    assert route.buffer.count == 0 and not route.buffer.pending
    assert consumer.seeks == [(P0, 10)]  # P0's five rows are read again
    assert worker.assigned == {P0}
    assert worker.stop_deadline is None  # later flushes retry without a deadline again


def test_lost_partitions_are_never_inserted() -> None:
    consumer = MemoryConsumer(committed={P0: 0, P1: 7})
    writer = MemoryWriter()
    worker, _ = make_worker(consumer, writer)
    worker.on_assigned([P0, P1])
    route = worker.routes[TOPIC]
    accept(worker, records(P0, 0, 5))
    accept(worker, records(P1, 7, 5))
    worker.on_lost([P0])
    assert route.buffer.count == 0 and not route.buffer.pending
    assert consumer.seeks == [(P1, 7)]  # the partition still owned is read again
    worker.decode.join("rows")
    assert TOPIC not in writer.tables and consumer.commit_calls == []
    assert worker.assigned == {P1}


def test_rows_dropped_for_a_partition_with_no_commit_are_read_again() -> None:
    """P1 never committed (a new partition during an outage): after P0 is lost, the rows
    buffered for P1 are dropped and P1 is read again from its first fetched offset, so none
    of them is skipped."""
    consumer = MemoryConsumer([P0, P1], committed={P0: 0})
    writer = MemoryWriter()
    worker, _ = make_worker(consumer, writer)
    worker.subscribe()
    consumer.feed(P0, list(records(P0, 0, 5)))
    consumer.feed(P1, list(records(P1, 0, 5)))
    worker.poll_once()  # assigned and buffered, not yet due
    assert worker.routes[TOPIC].buffer.count == 10 and TOPIC not in writer.tables
    worker.on_lost([P0])
    consumer.feed(P1, list(records(P1, 5, 5)))
    worker.poll_once()
    worker.decode.join("shutdown")
    assert sorted(row["id"] for row in writer.tables[TOPIC]) == sorted(
        f"1-{o}" for o in range(10))
    assert consumer.commits.get(P1) == 10


def test_a_stop_asked_for_during_a_revocation_flush_keeps_its_deadline() -> None:
    """SIGTERM arrives while a revocation flush retries: once the revocation is over the
    worker still stops by the stop deadline, not without one."""
    consumer = MemoryConsumer(committed={P0: 0, P1: 0})
    writer = failing_writer()
    worker, _ = make_worker(consumer, writer, sync_rebalance_flush_seconds=3.0,
                            sync_retry_initial_seconds=0.5, sync_retry_max_seconds=1.0)
    worker.on_assigned([P0, P1])
    accept(worker, records(P1, 0, 5))
    stop = worker.retrier.sleep

    def sleep_then_stop(seconds: float) -> None:
        stop(seconds)
        worker.request_stop()

    worker.retrier.sleep = sleep_then_stop
    worker.flush_for_revocation([P1])
    assert worker.stopping and worker.stop_deadline is not None
    assert worker.stop_deadline == worker.stop_at
