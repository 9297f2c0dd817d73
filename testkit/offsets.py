"""Offsets as the tests and the bench read them: the end of each partition of a topic, and
what a consumer group committed. Both go through chute's Kafka adapter (`chute.kafka`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from chute import kafka
from kafka import TopicPartition

# A consumer that never subscribes joins no group; the id only scopes `committed`.
_READER_GROUP = "chute-offset-reader"


@contextmanager
def _reader(bootstrap: str, group: str) -> Iterator[Any]:
    consumer = kafka.consumer(bootstrap, group, client_id="chute-offset-reader")
    try:
        yield consumer
    finally:
        consumer.close(autocommit=False)


def _partitions(consumer: Any, topic: str) -> list[TopicPartition]:
    return [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or ())]


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """{partition: offset of the next record} of every partition of `topic`."""
    with _reader(bootstrap, _READER_GROUP) as consumer:
        ends = consumer.end_offsets(_partitions(consumer, topic))
        return {tp.partition: int(offset) for tp, offset in ends.items()}


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """{partition: committed offset} of `group` on `topic`, -1 where it committed nothing."""
    with _reader(bootstrap, group) as consumer:
        result = {}
        for tp in _partitions(consumer, topic):
            offset = consumer.committed(tp)
            result[tp.partition] = int(offset) if offset is not None else -1
        return result
