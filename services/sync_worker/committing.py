"""The commit step: offsets go to Kafka only after ClickHouse acknowledged the rows below
them (the insert step submits them once it has)."""

from __future__ import annotations

import structlog
from chute import kafka, metrics
from chute.kafka import CommitRebalanced, TopicPartition

from sync_worker.retry import Retrier

log = structlog.get_logger()


class CommitStep:
    """Kafka unreachable: the commit is retried with backoff like an insert (the rows are in;
    giving up would only re-deliver them). Partitions moved to another worker: logged,
    nothing to retry (the new owner re-reads from the last commit). `committed` is the
    assignment manager's record of what is committed, updated here."""

    def __init__(self, consumer: kafka.Consumer, retrier: Retrier,
                 committed: dict[TopicPartition, int]) -> None:
        self.consumer = consumer
        self.retrier = retrier
        self.committed = committed

    def submit(self, offsets: dict[TopicPartition, int]) -> None:
        if not offsets:
            return
        rebalanced: list[CommitRebalanced] = []

        def commit() -> None:
            try:
                self.consumer.commit(offsets)
            except CommitRebalanced as exc:
                rebalanced.append(exc)

        self.retrier.run(commit, ",".join(sorted({tp.topic for tp in offsets})),
                         "offset commit")
        if rebalanced:
            log.warning("commit failed after rebalance; rows may be delivered again",
                        error=str(rebalanced[0]))
            return
        self.committed.update(offsets)
        for tp in offsets:
            metrics.SYNC_COMMITS.labels(tp.topic).inc()

    def poll(self, now: float) -> None:
        """Commits are made as they are submitted: nothing comes due later."""

    def join(self, reason: str) -> dict[TopicPartition, int]:
        return {}

    def close(self) -> None:
        """Nothing is held here."""
