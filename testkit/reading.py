"""Reading a topic back as the tests do: a fresh consumer group from the earliest offset,
through chute's Kafka seam (`chute.kafka`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence

from chute import kafka
from chute.kafka import KafkaSecurity, Record, TopicPartition


class StartAtCommit:
    """A rebalance listener that keeps the seam's defaults (the earliest offset here)."""

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return {}

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        pass

    def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        pass


def read_topic(bootstrap: str, topic: str, count: int, timeout: float = 30, *,
               client: str | None = None, security: KafkaSecurity | None = None
               ) -> list[Record]:
    """The topic's records, in a new group, until `count` arrived or `timeout` passed."""
    consumer = kafka.consumer(
        bootstrap, kafka.ConsumerOptions(group_id=f"read-{topic}-{uuid.uuid4().hex[:6]}"),
        client=client, security=security)
    got: list[Record] = []
    try:
        consumer.subscribe([topic], StartAtCommit())
        deadline = time.monotonic() + timeout
        while len(got) < count and time.monotonic() < deadline:
            for batch in consumer.poll(0.2).values():
                got.extend(batch)
    finally:
        consumer.close()
    return got
