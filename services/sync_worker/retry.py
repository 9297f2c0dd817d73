"""Blocking retries for what every pipeline needs (offset commits, committed-offset,
watermark and topic-id reads on assignment) and waits that fetch nothing. The clock and the
sleep are injected, so tests run them without sleeping."""

from __future__ import annotations

from collections.abc import Callable

import structlog
from chute import metrics
from chute.kafka import KafkaClientError

from sync_worker.errors import DATA, UNKNOWN, classify
from sync_worker.policy import Backoff
from sync_worker.settings import SyncSettings
from sync_worker.steps import FlushAbandoned

log = structlog.get_logger()


class Retrier:
    """`deadline`: when set (stopping, or a revocation's flush budget), no wait goes past it:
    FlushAbandoned instead. `while_waiting(now)` is called between sleeps (the worker reports
    lag and that its loop is alive); `reset_clickhouse` drops the ClickHouse connection after
    a ClickHouse error, so the next attempt starts on a fresh one."""

    def __init__(self, settings: SyncSettings, clock: Callable[[], float],
                 sleep: Callable[[float], None], reset_clickhouse: Callable[[], None],
                 while_waiting: Callable[[float], None] = lambda now: None) -> None:
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.reset_clickhouse = reset_clickhouse
        self.while_waiting = while_waiting
        self.deadline: float | None = None

    def run(self, action: Callable[[], None], table: str, what: str) -> None:
        """Transient and schema errors are retried with backoff, unclassified ones
        `sync_retry_budget` times, data errors not at all; up to the deadline when set."""
        backoff = Backoff(self.settings.sync_retry_initial_seconds,
                          self.settings.sync_retry_max_seconds)
        unknown = 0
        while True:
            try:
                action()
                if backoff.attempt:
                    log.info("resumed", what=what, table=table, attempts=backoff.attempt)
                return
            except Exception as exc:
                kind = classify(exc)
                unknown += kind == UNKNOWN
                if kind == DATA or unknown > self.settings.sync_retry_budget:
                    raise
                if not isinstance(exc, KafkaClientError):
                    self.reset_clickhouse()
                metrics.SYNC_ERRORS.labels(table, kind).inc()
                delay = backoff.next_delay()
                if self.deadline is not None and self.clock() + delay > self.deadline:
                    raise FlushAbandoned(f"{what} into {table} failed: {exc}") from exc
                log.warning("retrying", what=what, table=table, attempt=backoff.attempt,
                            delay_s=round(delay, 2), error=f"{type(exc).__name__}: {exc}")
                self.wait_until(self.clock() + delay)

    def wait_until(self, end: float) -> None:
        """Wait without fetching until `end` on the injected clock: the consumer is not
        polled, so nothing new is buffered (the client keeps the membership). However long
        `while_waiting` takes, no sleep is ever asked for a negative time."""
        while True:
            now = self.clock()
            if now >= end:
                return
            self.while_waiting(now)
            self.sleep(max(0.0, min(0.2, end - self.clock())))
