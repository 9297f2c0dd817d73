"""Pure policies of the sync: when to flush, how to back off, when to stop. No I/O, the
clock is passed in, so tests need no sleeping."""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class BatchLimits:
    max_rows: int
    max_bytes: int
    max_wait: float  # seconds since the oldest buffered record arrived


class FlushReason:
    ROWS = "rows"
    BYTES = "bytes"
    WAIT = "wait"
    SHUTDOWN = "shutdown"
    REBALANCE = "rebalance"
    RETRY = "retry"
    MODEL_CHANGE = "model change"


def flush_reason(limits: BatchLimits, rows: int, size: int, oldest: float | None,
                 now: float) -> str | None:
    """Why a buffer must be flushed now, or None to keep filling it."""
    if rows >= limits.max_rows:
        return FlushReason.ROWS
    if size >= limits.max_bytes:
        return FlushReason.BYTES
    if oldest is not None and now - oldest >= limits.max_wait:
        return FlushReason.WAIT
    return None


def time_until_due(limits: BatchLimits, oldest: float | None, now: float) -> float | None:
    if oldest is None:
        return None
    return max(0.0, oldest + limits.max_wait - now)


@dataclass
class Backoff:
    """Capped exponential backoff with full jitter on the upper half."""

    initial: float
    maximum: float
    attempt: int = 0

    def next_delay(self, rng: random.Random | None = None) -> float:
        r = rng or random
        ceiling: float = min(self.maximum, self.initial * (2.0**self.attempt))
        self.attempt += 1
        return ceiling / 2 + r.uniform(0, ceiling / 2)

    def reset(self) -> None:
        self.attempt = 0


class DeadLetterGuard:
    """Trips when the share of dead-lettered records among about the last `window` is too
    high. Counts in ten buckets, so recording a whole poll of good records is O(1)."""

    BUCKETS = 10

    def __init__(self, limit: float, window: int, min_records: int) -> None:
        self.limit = limit
        self.window = window
        self.min_records = min_records
        self.bucket_size = max(1, window // self.BUCKETS)
        self._done: deque[tuple[int, int]] = deque(maxlen=self.BUCKETS - 1)
        self._total = 0
        self._dead = 0

    def record(self, dead: bool, count: int = 1) -> None:
        self._total += count
        if dead:
            self._dead += count
        if self._total >= self.bucket_size:
            self._done.append((self._total, self._dead))
            self._total = self._dead = 0

    def _sums(self) -> tuple[int, int]:
        total = self._total + sum(t for t, _ in self._done)
        dead = self._dead + sum(d for _, d in self._done)
        return total, dead

    @property
    def ratio(self) -> float:
        total, dead = self._sums()
        return dead / total if total else 0.0

    @property
    def tripped(self) -> bool:
        total, dead = self._sums()
        return total >= self.min_records and dead / total > self.limit
