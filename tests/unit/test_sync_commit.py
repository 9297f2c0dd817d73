"""The worker's commit step, with a fake consumer: Kafka unreachable is retried with backoff
(the rows are already in ClickHouse), a rebalance is logged and not retried."""

from __future__ import annotations

from chute.kafka import CommitRebalanced, KafkaClientError, TopicPartition
from sync_worker.settings import SyncSettings
from sync_worker.worker import SyncWorker


class FakeConsumer:
    def __init__(self, failures: list[Exception]) -> None:
        self.failures = failures
        self.commits: list[dict[TopicPartition, int]] = []

    def commit(self, offsets: dict[TopicPartition, int]) -> None:
        if self.failures:
            raise self.failures.pop(0)
        self.commits.append(offsets)

    def assignment(self) -> set[TopicPartition]:
        return set()  # the lag report during the backoff finds nothing to measure


class FakeWriter:
    resets = 0

    def reset(self) -> None:
        self.resets += 1


def _worker(consumer: FakeConsumer, writer: FakeWriter) -> tuple[SyncWorker, list[float]]:
    now = [0.0]
    slept: list[float] = []

    def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    worker = SyncWorker(SyncSettings(sync_retry_initial_seconds=0.5),
                        consumer, producer=None, writer=writer,  # type: ignore[arg-type]
                        routes={}, clock=lambda: now[0], sleep=sleep)
    return worker, slept


def test_commit_is_retried_while_kafka_is_unreachable() -> None:
    consumer = FakeConsumer([KafkaClientError("111 ECONNREFUSED", code="_TRANSPORT")] * 3)
    writer = FakeWriter()
    worker, slept = _worker(consumer, writer)
    tp = TopicPartition("events", 0)
    worker._commit({tp: 42})
    assert len(consumer.commits) == 1
    assert consumer.commits[0][tp] == 42
    assert worker.committed[tp] == 42
    assert sum(slept) > 0.5  # backed off between attempts
    assert writer.resets == 0  # a Kafka error does not drop the ClickHouse connection
    assert worker.paused is False  # resumed after the successful attempt


def test_commit_after_rebalance_is_not_retried() -> None:
    consumer = FakeConsumer([CommitRebalanced("group rebalanced")])
    worker, slept = _worker(consumer, FakeWriter())
    tp = TopicPartition("events", 1)
    worker._commit({tp: 7})
    assert consumer.commits == [] and slept == []
    assert tp not in worker.committed
