"""Per-table buffer of decoded rows waiting for one batch insert. Pure data, no I/O."""

from __future__ import annotations

from dataclasses import dataclass, field

from kafka import TopicPartition
from pydantic import BaseModel

from sync_worker.policy import BatchLimits, flush_reason, time_until_due
from sync_worker.rows import Position


@dataclass
class TableBuffer:
    table: str
    limits: BatchLimits
    rows: list[BaseModel] = field(default_factory=list)
    positions: list[Position] = field(default_factory=list)
    size: int = 0
    oldest: float | None = None  # monotonic time the oldest buffered record arrived
    # Highest offset seen per partition, including records dead-lettered or skipped: what
    # the next commit covers once the rows are inserted.
    last_offsets: dict[TopicPartition, int] = field(default_factory=dict)
    dead_letters: list[bytes] = field(default_factory=list)  # envelopes not yet produced

    def add(self, row: BaseModel, position: Position, size: int, now: float) -> None:
        self.rows.append(row)
        self.positions.append(position)
        self.size += size
        if self.oldest is None:
            self.oldest = now
        self.note_offset(position)

    def note_offset(self, position: Position) -> None:
        tp = TopicPartition(position.topic, position.partition)
        if position.offset > self.last_offsets.get(tp, -1):
            self.last_offsets[tp] = position.offset

    def add_dead_letter(self, envelope: bytes, position: Position, now: float) -> None:
        self.dead_letters.append(envelope)
        if self.oldest is None:
            self.oldest = now
        self.note_offset(position)

    @property
    def pending(self) -> bool:
        return bool(self.last_offsets)

    def due(self, now: float) -> str | None:
        if not self.pending:
            return None
        return flush_reason(self.limits, len(self.rows), self.size, self.oldest, now)

    def seconds_until_due(self, now: float) -> float | None:
        return time_until_due(self.limits, self.oldest, now) if self.pending else None

    def clear(self) -> None:
        self.rows = []
        self.positions = []
        self.size = 0
        self.oldest = None
        self.last_offsets = {}
        self.dead_letters = []

    def describe_offsets(self) -> str:
        """'0:100-199,3:5-42' for the log line of an insert."""
        ranges: dict[int, list[int]] = {}
        for p in self.positions:
            r = ranges.setdefault(p.partition, [p.offset, p.offset])
            r[0] = min(r[0], p.offset)
            r[1] = max(r[1], p.offset)
        return ",".join(f"{k}:{lo}-{hi}" for k, (lo, hi) in sorted(ranges.items()))
