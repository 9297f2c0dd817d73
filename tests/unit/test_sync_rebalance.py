"""The worker's rebalance callbacks with an in-memory consumer and writer (no servers): where
new partitions start, what a revocation flushes or drops, and that lost partitions are never
inserted."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import orjson
from chute import IngestPipeline
from chute.kafka import Record, RecordBatch, TopicPartition
from chute.registry import Definitions
from chute.server import ServerProfile
from clickhouse_driver import errors as ch_errors
from sync_worker.settings import SyncSettings
from sync_worker.worker import SyncWorker, build_routes

from schemas.events import Event

TOPIC = "rebalanced"
P0, P1 = TopicPartition(TOPIC, 0), TopicPartition(TOPIC, 1)


class MemoryConsumer:
    """Commits and positions kept in dicts; the worker calls nothing else here."""

    def __init__(self, committed: dict[TopicPartition, int]) -> None:
        self.committed_offsets = dict(committed)
        self.commits: list[dict[TopicPartition, int]] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.paused: set[TopicPartition] = set()

    def committed(self, partitions: Iterable[TopicPartition], timeout: float = 10.0
                  ) -> dict[TopicPartition, int | None]:
        return {tp: self.committed_offsets.get(tp) for tp in partitions}

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        self.commits.append(dict(offsets))
        self.committed_offsets.update(offsets)

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))

    def end_offsets(self, partitions: Iterable[TopicPartition], timeout: float = 10.0
                    ) -> dict[TopicPartition, int]:
        return {tp: 0 for tp in partitions}

    def highwater(self, partition: TopicPartition) -> int | None:
        return None

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self.paused = set(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self.paused = set()


class MemoryWriter:
    """Inserts into a list; `failing` makes every insert fail with a transient error."""

    database = "default"

    def __init__(self, failing: bool = False) -> None:
        self.failing = failing
        self.rows: list[tuple[Any, ...]] = []
        self.resets = 0

    def insert(self, table: str, names: list[str], columns: list[list[Any]],
               query_id: str = "") -> None:
        if self.failing:
            raise ch_errors.NetworkError("connection refused")
        self.rows.extend(zip(*columns, strict=True))

    def reset(self) -> None:
        self.resets += 1


def make_worker(consumer: MemoryConsumer, writer: MemoryWriter,
                **settings: Any) -> tuple[SyncWorker, list[float]]:
    defs = Definitions.from_resources([IngestPipeline[Event](TOPIC, {"dead_letter_queue": False})])
    routes = build_routes(defs, ServerProfile((18, 16, 1)), SyncSettings(**settings))
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    worker = SyncWorker(SyncSettings(**settings), consumer, producer=None,  # type: ignore[arg-type]
                        writer=writer, routes=routes,  # type: ignore[arg-type]
                        clock=lambda: now[0], sleep=sleep)
    return worker, slept


def records(tp: TopicPartition, start: int, count: int) -> RecordBatch:
    return RecordBatch.of([Record(tp.topic, tp.partition, o, 1_700_000_000_000, None, orjson.dumps({
        "id": f"{tp.partition}-{o}", "user_id": "u", "timestamp": "2024-05-01T12:00:00Z",
        "event_type": "click"}), ()) for o in range(start, start + count)])


def test_new_partitions_start_at_their_commit_or_the_earliest() -> None:
    consumer = MemoryConsumer({P0: 40})
    worker, _ = make_worker(consumer, MemoryWriter())
    assert worker.on_assigned([P0, P1]) == {P0: 40}  # P1 has no commit: the earliest
    assert worker.assigned == {P0, P1}
    assert consumer.commits == []


def test_revocation_inserts_and_commits_the_buffered_rows() -> None:
    consumer = MemoryConsumer({P0: 0, P1: 0})
    writer = MemoryWriter()
    worker, _ = make_worker(consumer, writer)
    worker.on_assigned([P0, P1])
    route = worker.routes[TOPIC]
    worker.accept(route, P0, records(P0, 0, 5))
    worker.accept(route, P1, records(P1, 0, 3))
    worker.flush_for_revocation([P1])
    assert len(writer.rows) == 8
    assert consumer.committed_offsets == {P0: 5, P1: 3}
    assert worker.assigned == {P0}


def test_revocation_that_cannot_insert_in_time_drops_and_rewinds() -> None:
    """ClickHouse down during a revocation: retries stop at the budget, nothing is committed,
    the buffer is emptied and the partition kept is rewound to its commit."""
    consumer = MemoryConsumer({P0: 10, P1: 20})
    writer = MemoryWriter(failing=True)
    worker, slept = make_worker(consumer, writer, sync_rebalance_flush_seconds=3.0,
                                sync_retry_initial_seconds=0.5, sync_retry_max_seconds=1.0)
    worker.on_assigned([P0, P1])
    route = worker.routes[TOPIC]
    worker.accept(route, P0, records(P0, 10, 5))
    worker.accept(route, P1, records(P1, 20, 5))
    worker.flush_for_revocation([P1])
    assert writer.rows == [] and consumer.commits == []
    assert sum(slept) <= 3.0  # the budget, not the shutdown's 20 s
    assert route.buffer.count == 0 and not route.buffer.pending
    assert consumer.seeks == [(P0, 10)]  # P0's five rows are read again
    assert worker.assigned == {P0}
    assert worker.stop_deadline is None  # later flushes retry without a deadline again


def test_lost_partitions_are_never_inserted() -> None:
    consumer = MemoryConsumer({P0: 0, P1: 7})
    writer = MemoryWriter()
    worker, _ = make_worker(consumer, writer)
    worker.on_assigned([P0, P1])
    route = worker.routes[TOPIC]
    worker.accept(route, P0, records(P0, 0, 5))
    worker.accept(route, P1, records(P1, 7, 5))
    worker.on_lost([P0])
    assert route.buffer.count == 0 and not route.buffer.pending
    assert consumer.seeks == [(P1, 7)]  # the partition still owned is read again
    worker.flush_all("rows")
    assert writer.rows == [] and consumer.commits == []
    assert worker.assigned == {P1}
