"""Per-table buffer of validated rows waiting for one batch insert. Pure data, no I/O.

Columnar, as the insert sends them: one list per table column holding the values already
converted for clickhouse-driver (no object per record), and compact arrays for the Kafka
positions. `values` holds each row's original Kafka bytes, so a row ClickHouse rejects is
dead-lettered exactly as sent."""

from __future__ import annotations

from array import array
from dataclasses import dataclass, field
from itertools import accumulate, islice
from typing import Any

from chute.kafka import TopicPartition

from sync_worker.policy import BatchLimits, flush_reason, time_until_due
from sync_worker.rows import Position


class ValueStore:
    """The Kafka values of the buffered rows, back to back in one bytearray (no bytes object
    of ~33 B overhead per record)."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.ends = array("q")  # ends[i]: where value i stops in data

    def extend(self, values: list[bytes]) -> None:
        self.ends.extend(islice(accumulate(map(len, values), initial=len(self.data)), 1, None))
        self.data += b"".join(values)

    def __getitem__(self, index: int) -> bytes:
        start = self.ends[index - 1] if index else 0
        return bytes(self.data[start:self.ends[index]])

    def __len__(self) -> int:
        return len(self.ends)

    @property
    def size(self) -> int:
        return len(self.data)


@dataclass
class TableBuffer:
    table: str
    topic: str
    limits: BatchLimits
    width: int = 0  # table columns per row
    columns: list[list[Any]] = field(default_factory=list)  # converted values, per column
    values: ValueStore = field(default_factory=ValueStore)  # Kafka record values, as received
    partitions: array[int] = field(default_factory=lambda: array("l"))
    offsets: array[int] = field(default_factory=lambda: array("q"))
    timestamps: array[int] = field(default_factory=lambda: array("q"))  # Kafka, ms
    oldest: float | None = None  # monotonic time the oldest buffered record arrived
    # Highest offset seen per partition, including records dead-lettered or skipped: what
    # the next commit covers once the rows are inserted.
    last_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    dead_letters: list[bytes] = field(default_factory=list)  # envelopes not yet produced

    def __post_init__(self) -> None:
        if not self.columns:
            self.columns = [[] for _ in range(self.width)]

    def extend(self, columns: list[list[Any]], values: list[bytes], partition: int,
               offsets: list[int], timestamps: list[int], now: float) -> None:
        """Append rows of one partition: `columns` as ColumnBuilder.columns returns them, the
        rest one entry per row."""
        for mine, more in zip(self.columns, columns, strict=True):
            mine += more
        self.values.extend(values)
        self.partitions.extend([partition] * len(offsets))
        self.offsets.extend(offsets)
        self.timestamps.extend(timestamps)
        if self.oldest is None and offsets:
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
        """Drop rows (ClickHouse rejected them; they are dead-lettered)."""
        keep = [i for i in range(self.count) if i not in indexes]
        self.columns = [[column[i] for i in keep] for column in self.columns]
        values = ValueStore()
        values.extend([self.values[i] for i in keep])
        self.values = values
        self.partitions = array("l", [self.partitions[i] for i in keep])
        self.offsets = array("q", [self.offsets[i] for i in keep])
        self.timestamps = array("q", [self.timestamps[i] for i in keep])

    @property
    def count(self) -> int:
        """Rows buffered."""
        return len(self.offsets)

    @property
    def size(self) -> int:
        """Bytes of the buffered rows' Kafka values."""
        return self.values.size

    @property
    def room(self) -> int:
        """Rows that still fit before the row limit."""
        return max(0, self.limits.max_rows - self.count)

    @property
    def pending(self) -> bool:
        return bool(self.last_offsets)

    @property
    def full(self) -> bool:
        return self.count >= self.limits.max_rows or self.size >= self.limits.max_bytes

    def due(self, now: float) -> str | None:
        if not self.pending:
            return None
        return flush_reason(self.limits, self.count, self.size, self.oldest, now)

    def seconds_until_due(self, now: float) -> float | None:
        return time_until_due(self.limits, self.oldest, now) if self.pending else None

    def detach(self) -> TableBuffer:
        """Hand the buffered batch over (to be inserted while this buffer fills again)."""
        batch = TableBuffer(self.table, self.topic, self.limits, self.width, self.columns,
                            self.values, self.partitions, self.offsets, self.timestamps,
                            self.oldest, self.last_offsets, self.dead_letters)
        self.clear()
        return batch

    def clear(self) -> None:
        self.columns = [[] for _ in range(self.width)]
        self.values = ValueStore()
        self.partitions = array("l")
        self.offsets = array("q")
        self.timestamps = array("q")
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
