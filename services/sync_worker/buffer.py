"""Per-table buffer of decoded rows waiting for one batch insert. Pure data, no I/O.

Kept as parallel lists (rows, values, partitions, offsets, timestamps) rather than one object
per record: the sync handles hundreds of thousands of records a second. `values` holds each
row's original Kafka bytes, so a row ClickHouse rejects is dead-lettered exactly as sent."""

from __future__ import annotations

from dataclasses import dataclass, field

from kafka import TopicPartition
from pydantic import BaseModel

from sync_worker.policy import BatchLimits, flush_reason, time_until_due
from sync_worker.rows import Position


@dataclass
class TableBuffer:
    table: str
    topic: str
    limits: BatchLimits
    rows: list[BaseModel] = field(default_factory=list)
    values: list[bytes] = field(default_factory=list)  # the Kafka record values, as received
    partitions: list[int] = field(default_factory=list)
    offsets: list[int] = field(default_factory=list)
    timestamps: list[int] = field(default_factory=list)  # Kafka record timestamps, ms
    size: int = 0
    oldest: float | None = None  # monotonic time the oldest buffered record arrived
    # Highest offset seen per partition, including records dead-lettered or skipped: what
    # the next commit covers once the rows are inserted.
    last_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    dead_letters: list[bytes] = field(default_factory=list)  # envelopes not yet produced

    def add(self, row: BaseModel, value: bytes, partition: int, offset: int, timestamp: int,
            now: float) -> None:
        self.rows.append(row)
        self.values.append(value)
        self.partitions.append(partition)
        self.offsets.append(offset)
        self.timestamps.append(timestamp)
        self.size += len(value)
        if self.oldest is None:
            self.oldest = now

    def note_offset(self, tp: TopicPartition, offset: int, now: float) -> None:
        if offset > self.last_offsets.get(tp, -1):
            self.last_offsets[tp] = offset
        if self.oldest is None:
            self.oldest = now

    def add_dead_letter(self, envelope: bytes, tp: TopicPartition, offset: int,
                        now: float) -> None:
        self.dead_letters.append(envelope)
        self.note_offset(tp, offset, now)

    def position(self, index: int) -> Position:
        return Position(self.topic, self.partitions[index], self.offsets[index],
                        self.timestamps[index])

    def remove(self, indexes: set[int]) -> None:
        keep = [i for i in range(len(self.rows)) if i not in indexes]
        self.rows = [self.rows[i] for i in keep]
        self.values = [self.values[i] for i in keep]
        self.partitions = [self.partitions[i] for i in keep]
        self.offsets = [self.offsets[i] for i in keep]
        self.timestamps = [self.timestamps[i] for i in keep]

    @property
    def pending(self) -> bool:
        return bool(self.last_offsets)

    @property
    def full(self) -> bool:
        return len(self.rows) >= self.limits.max_rows or self.size >= self.limits.max_bytes

    def due(self, now: float) -> str | None:
        if not self.pending:
            return None
        return flush_reason(self.limits, len(self.rows), self.size, self.oldest, now)

    def seconds_until_due(self, now: float) -> float | None:
        return time_until_due(self.limits, self.oldest, now) if self.pending else None

    def detach(self) -> TableBuffer:
        """Hand the buffered batch over (to be inserted while this buffer fills again)."""
        batch = TableBuffer(self.table, self.topic, self.limits, self.rows, self.values,
                            self.partitions, self.offsets, self.timestamps, self.size,
                            self.oldest, self.last_offsets, self.dead_letters)
        self.clear()
        return batch

    def clear(self) -> None:
        self.rows = []
        self.values = []
        self.partitions = []
        self.offsets = []
        self.timestamps = []
        self.size = 0
        self.oldest = None
        self.last_offsets = {}
        self.dead_letters = []

    def describe_offsets(self) -> str:
        """'0:100-199,3:5-42' for the log line of an insert. Offsets of a partition arrive in
        order, so its first and last row are its range."""
        ranges: dict[int, list[int]] = {}
        for partition, offset in zip(self.partitions, self.offsets, strict=True):
            r = ranges.get(partition)
            if r is None:
                ranges[partition] = [offset, offset]
            else:
                r[1] = offset
        return ",".join(f"{k}:{lo}-{hi}" for k, (lo, hi) in sorted(ranges.items()))
