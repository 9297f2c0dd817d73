"""The worker's commit step, with a fake consumer: Kafka unreachable is retried with backoff
(the rows are already in ClickHouse), a rebalance is logged and not retried."""

from __future__ import annotations

from chute.kafka import CommitRebalanced, KafkaClientError, TopicPartition
from sync_worker.settings import SyncSettings
from sync_worker.worker import SyncWorker

from testkit.memory import ManualClock, MemoryConsumer, MemoryProducer, MemoryWriter


def _worker(consumer: MemoryConsumer, writer: MemoryWriter) -> tuple[SyncWorker, list[float]]:
    clock = ManualClock()
    worker = SyncWorker(SyncSettings(sync_retry_initial_seconds=0.5),
                        consumer, MemoryProducer(writer.log),  # type: ignore[arg-type]
                        writer, routes={}, clock=clock, sleep=clock.sleep)
    return worker, clock.slept


def test_commit_is_retried_while_kafka_is_unreachable() -> None:
    consumer = MemoryConsumer()
    consumer.commit_failures = [KafkaClientError("111 ECONNREFUSED", code="_TRANSPORT")] * 3
    writer = MemoryWriter()
    worker, slept = _worker(consumer, writer)
    tp = TopicPartition("events", 0)
    worker.commits.submit({tp: 42})
    assert len(consumer.commit_calls) == 1
    assert consumer.commit_calls[0][tp] == 42
    assert worker.committed[tp] == 42
    assert sum(slept) > 0.5  # backed off between attempts
    assert writer.resets == 0  # a Kafka error does not drop the ClickHouse connection


def test_commit_after_rebalance_is_not_retried() -> None:
    consumer = MemoryConsumer()
    consumer.commit_failures = [CommitRebalanced("group rebalanced")]
    worker, slept = _worker(consumer, MemoryWriter())
    tp = TopicPartition("events", 1)
    worker.commits.submit({tp: 7})
    assert consumer.commit_calls == [] and slept == []
    assert tp not in worker.committed
