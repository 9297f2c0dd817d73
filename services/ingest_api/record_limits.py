"""Records a topic cannot take, found before any record of a request is sent.

Kafka refuses a record batch larger than the topic's max.message.bytes. librdkafka sends such a
record in a batch of its own, which the broker refuses, while the request's other records are
stored: an answer of 413 would then not mean "nothing was written". So each request's records
are measured first, as the smallest batch that could carry them (Kafka's v2 format), and a
request holding one that is too large is refused whole.
"""

from __future__ import annotations

from collections.abc import Sequence

from chute.kafka import Headers, RecordTooLarge

# A batch of one record: the batch header (61 bytes), then the record's length, attributes,
# timestamp delta, offset delta, key length, value length and header count, each counted at
# its largest varint size.
BATCH_OVERHEAD_BYTES = 61 + 5 + 1 + 10 + 5 + 5 + 5 + 5
HEADER_OVERHEAD_BYTES = 10  # a header's key and value lengths
# librdkafka's batch.size (chute keeps its default): a batch of several records may be this
# large, so a topic that takes less can refuse a batch of records that each fit.
PRODUCER_BATCH_BYTES = 1_000_000


class RecordTooLargeForTopic(RecordTooLarge):
    """A record of the request is larger than its topic takes; nothing of it was sent."""

    def __init__(self, topic: str, index: int, size: int, limit: int) -> None:
        super().__init__(
            f"record {index} of the request needs {size} bytes in Kafka, more than the "
            f"{limit} that topic {topic} takes (its max.message.bytes); nothing of the "
            "request was stored", code="MSG_SIZE_TOO_LARGE")
        self.index = index
        self.size = size
        self.limit = limit


def check_sizes(topic: str, values: Sequence[bytes], keys: Sequence[bytes] | None,
                headers: Headers, limit: int) -> None:
    """Raises RecordTooLargeForTopic for the first record whose batch would exceed `limit`
    (`keys`: one per value, or None). A pass of C calls when every record fits together with
    the longest key (the usual case)."""
    if not values:
        return
    fixed = BATCH_OVERHEAD_BYTES + sum(len(k.encode()) + len(v) + HEADER_OVERHEAD_BYTES
                                       for k, v in headers)
    longest_key = max(map(len, keys)) if keys else 0
    if max(map(len, values)) + longest_key + fixed <= limit:
        return
    for index, value in enumerate(values):
        size = fixed + len(value) + (len(keys[index]) if keys else 0)
        if size > limit:
            raise RecordTooLargeForTopic(topic, index, size, limit)
