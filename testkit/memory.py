"""The sync worker's servers in memory, for its unit tests: a consumer fed by the test, a
table store that can fail or lose an insert's answer, a dead-letter producer, a manual clock.
They implement what the worker calls, not the whole seam. No sleeping anywhere."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson
from chute.kafka import Record, RecordBatch, TopicPartition


class ManualClock:
    """Time moves only when a test (or the worker's injected sleep) moves it."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        assert seconds >= 0, f"asked to sleep {seconds}"
        self.slept.append(seconds)
        self.now += seconds


class MemoryConsumer:
    """A log per partition, fed by the test, and a fetch position per partition: poll returns
    what lies at or after the position (not from paused partitions) and moves it past;
    `seek` moves it back, as a real consumer does. `commits` holds the group's committed
    offsets; `commit_calls` each commit as it was made; `commit_failures` are raised by the
    next commits, in order."""

    def __init__(self, partitions: Iterable[TopicPartition] = (),
                 committed: Mapping[TopicPartition, int] | None = None) -> None:
        self.partitions = set(partitions)
        self.paused: set[TopicPartition] = set()
        self.log: dict[TopicPartition, list[Record]] = {}
        self.position: dict[TopicPartition, int] = {}
        self.commits: dict[TopicPartition, int] = dict(committed or {})
        self.commit_calls: list[dict[TopicPartition, int]] = []
        self.commit_failures: list[Exception] = []
        self.seeks: list[tuple[TopicPartition, int]] = []
        self.ends: dict[TopicPartition, int] = {}
        self.listener: Any = None
        self.closed = False

    def subscribe(self, topics: list[str], listener: Any) -> None:
        """The partitions of those topics are assigned on the next poll, through the
        listener, as the seam does it (inside poll)."""
        self.partitions = {tp for tp in self.partitions if tp.topic in topics}
        self.listener = listener

    def close(self) -> None:
        self.closed = True

    def feed(self, tp: TopicPartition, records: list[Record]) -> None:
        self.log.setdefault(tp, []).extend(records)

    @property
    def pending(self) -> dict[TopicPartition, list[Record]]:
        """What the next poll would return per partition, paused or not."""
        return {tp: [r for r in records if r.offset >= self.position.get(tp, 0)]
                for tp, records in self.log.items()}

    def poll(self, timeout: float, max_records: int | None = None
             ) -> dict[TopicPartition, RecordBatch]:
        if self.listener is not None:
            listener, self.listener = self.listener, None
            for tp, offset in listener.on_assigned(sorted(self.partitions)).items():
                self.seek(tp, offset)
        out = {tp: RecordBatch.of(records) for tp, records in self.pending.items()
               if records and tp not in self.paused}
        for tp, batch in out.items():
            self.position[tp] = batch.offsets[-1] + 1
        return out

    def assignment(self) -> set[TopicPartition]:
        return set(self.partitions)

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        self.paused.update(partitions)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        self.paused.difference_update(partitions)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if self.commit_failures:
            raise self.commit_failures.pop(0)
        self.commit_calls.append(dict(offsets))
        self.commits.update(offsets)

    def committed(self, partitions: Iterable[TopicPartition], timeout: float = 10.0
                  ) -> dict[TopicPartition, int | None]:
        return {tp: self.commits.get(tp) for tp in partitions}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        self.seeks.append((partition, offset))
        self.position[partition] = offset

    def highwater(self, tp: TopicPartition) -> int:
        return self.ends.get(tp, 0)

    def end_offsets(self, partitions: Iterable[TopicPartition], timeout: float = 10.0
                    ) -> dict[TopicPartition, int]:
        return {tp: self.ends.get(tp, 0) for tp in partitions}


class MemoryWriter:
    """Tables as lists of row dicts. `failures[table]` are raised by the next inserts into
    that table, in order; with the table in `apply_then_fail` the insert is applied first (its
    answer is lost). `still_running`: how many more checks report the lost insert as still
    executing on the server."""

    database = "default"

    def __init__(self) -> None:
        self.tables: dict[str, list[dict[str, Any]]] = {}
        self.failures: dict[str, list[BaseException]] = {}
        self.apply_then_fail: set[str] = set()
        self.attempts: dict[str, int] = {}
        self.log: list[str] = []
        self.still_running = 0
        self.last_query_id = ""
        self.resets = 0

    def insert(self, table: str, names: list[str], columns: list[list[Any]],
               query_id: str) -> None:
        self.attempts[table] = self.attempts.get(table, 0) + 1
        self.last_query_id = query_id
        failures = self.failures.get(table)
        if failures and table not in self.apply_then_fail:
            raise failures.pop(0)
        rows = [dict(zip(names, values, strict=True)) for values in zip(*columns, strict=True)]
        self.tables.setdefault(table, []).extend(rows)
        self.log.append(f"insert {table} {len(rows)}")
        if failures:
            raise failures.pop(0)

    def read_watermarks(self, table: str, topic_id: str) -> dict[int, int]:
        marks: dict[int, int] = {}
        for row in self.tables.get(table, []):
            if row.get("_chute_topic_id", "") != topic_id:
                continue
            p, o = row["_chute_partition"], row["_chute_offset"]
            marks[p] = max(marks.get(p, -1), o)
        return marks

    def insert_running(self, query_id: str) -> bool:
        assert query_id == self.last_query_id  # asks about the insert that was in doubt
        if self.still_running:
            self.still_running -= 1
            return True
        return False

    def reset(self) -> None:
        self.resets += 1


class MemoryProducer:
    """Dead letters, decoded, in the order delivered; each also noted in `log` (the
    writer's, to see what went first). `failures` are raised by the next deliveries, in
    order, before anything of them is delivered."""

    def __init__(self, log: list[str]) -> None:
        self.sent: list[tuple[str, dict[str, Any]]] = []
        self.log = log
        self.failures: list[Exception] = []
        self.flushes = 0

    def deliver(self, topic: str, values: Sequence[bytes], timeout: float) -> None:
        if self.failures:
            raise self.failures.pop(0)
        for value in values:
            self.sent.append((topic, orjson.loads(value)))
            self.log.append(f"dead letter {topic}")

    def flush(self, timeout: float) -> int:
        self.flushes += 1
        return 0
