"""Offsets as the tests and the bench read them: the end of each partition of a topic, and
what a consumer group committed. Both go through chute's Kafka seam (`chute.kafka`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from chute import kafka
from chute.kafka import Admin, TopicPartition


@contextmanager
def _admin(bootstrap: str) -> Iterator[Admin]:
    admin = kafka.admin(bootstrap)
    try:
        yield admin
    finally:
        admin.close()


def _partitions(admin: Admin, topic: str) -> list[TopicPartition]:
    count = admin.topic_partitions().get(topic, 0)
    return [TopicPartition(topic, p) for p in range(count)]


def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """{partition: offset of the next record} of every partition of `topic`."""
    with _admin(bootstrap) as admin:
        ends = admin.end_offsets(_partitions(admin, topic))
        return {tp.partition: int(offset) for tp, offset in sorted(ends.items())}


def committed_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    """{partition: committed offset} of `group` on `topic`, -1 where it committed nothing."""
    with _admin(bootstrap) as admin:
        found = admin.group_offsets(group, _partitions(admin, topic))
        return {tp.partition: -1 if off is None else int(off) for tp, off in sorted(found.items())}
