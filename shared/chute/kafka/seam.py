"""The Kafka seam: the values and interfaces chute's services use, whatever the client library.

Two backends implement it (`chute.kafka.confluent` on librdkafka, `chute.kafka.kafkapython`
in pure Python); `tests/integration/test_kafka_seam.py` holds both to the same contract on a
real broker. Nothing outside `chute.kafka` imports a client library.

Contract points the services rely on:
- Rebalance callbacks (`RebalanceListener`) run inside `Consumer.poll()`, on the thread that
  called it, never on a client's network thread; while a callback runs the consumer still owns
  the revoked partitions (commits are accepted) and keeps its group membership.
- `Consumer.commit` is synchronous; a commit refused because the group moved on raises
  `CommitRebalanced` (nothing to retry: the new owner re-reads from the last commit).
- `Producer.send` waits at most the producer's `max_block_ms` (metadata, buffer space) and
  reports each record's outcome once, through `on_delivery`, on some other thread. A producer
  that takes whole batches (`send_batch`, on librdkafka) reports a batch once instead:
  `BatchOutcome` is that report made from per-record ones.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol, overload

Headers = tuple[tuple[str, bytes], ...]


class TopicPartition(NamedTuple):
    topic: str
    partition: int


class Record(NamedTuple):
    """One consumed record, as plain values."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: Headers


class RecordBatch(Sequence[Record]):
    """Consecutive records of one partition, as parallel lists (one entry per record).

    What `Consumer.poll` returns per partition: the sync worker reads the lists (no object per
    record on its hot path); indexing or iterating yields `Record`s. `headers[i]` is empty
    when record i has none."""

    __slots__ = ("headers", "keys", "offsets", "partition", "timestamps", "topic", "values")

    def __init__(self, topic: str, partition: int, offsets: list[int], timestamps: list[int],
                 keys: list[bytes | None], values: list[bytes], headers: list[Headers]
                 ) -> None:
        self.topic = topic
        self.partition = partition
        self.offsets = offsets
        self.timestamps = timestamps  # ms
        self.keys = keys
        self.values = values
        self.headers = headers

    @classmethod
    def of(cls, records: Iterable[Record]) -> RecordBatch:
        """A batch of Records, which all belong to one partition."""
        items = list(records)
        first = items[0] if items else Record("", 0, 0, 0, None, b"", ())
        return cls(first.topic, first.partition, [r.offset for r in items],
                   [r.timestamp_ms for r in items], [r.key for r in items],
                   [r.value for r in items], [r.headers for r in items])

    def extend(self, later: RecordBatch) -> None:
        """Append the next records of the same partition."""
        self.offsets += later.offsets
        self.timestamps += later.timestamps
        self.keys += later.keys
        self.values += later.values
        self.headers += later.headers

    def __len__(self) -> int:
        return len(self.offsets)

    @overload
    def __getitem__(self, index: int) -> Record: ...

    @overload
    def __getitem__(self, index: slice) -> RecordBatch: ...

    def __getitem__(self, index: int | slice) -> Record | RecordBatch:
        if isinstance(index, slice):
            return RecordBatch(self.topic, self.partition, self.offsets[index],
                               self.timestamps[index], self.keys[index], self.values[index],
                               self.headers[index])
        return Record(self.topic, self.partition, self.offsets[index], self.timestamps[index],
                      self.keys[index], self.values[index], self.headers[index])

    def __iter__(self) -> Iterator[Record]:
        topic, partition = self.topic, self.partition
        for offset, timestamp, key, value, headers in zip(
                self.offsets, self.timestamps, self.keys, self.values, self.headers,
                strict=True):
            yield Record(topic, partition, offset, timestamp, key, value, headers)

    def __repr__(self) -> str:
        span = f"{self.offsets[0]}-{self.offsets[-1]}" if self.offsets else "empty"
        return f"RecordBatch({self.topic}:{self.partition} {span})"


class KafkaClientError(Exception):
    """Any failure reported by the Kafka client. `retriable`: the client says a retry may
    succeed (broker unreachable, leader moving, timeout)."""

    def __init__(self, message: str, *, retriable: bool = True, code: str = "") -> None:
        super().__init__(message)
        self.retriable = retriable
        self.code = code


class KafkaTimeout(KafkaClientError):
    """The client did not get an answer within the time it was given."""


class CommitRebalanced(KafkaClientError):
    """The group rebalanced: this member may no longer commit these partitions."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message, retriable=False, code=code)


# The topic config that bounds a record batch, and Kafka's default for it (4.x brokers).
MAX_MESSAGE_BYTES = "max.message.bytes"
DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


class RecordTooLarge(KafkaClientError):
    """The broker or the client refuses a record (or batch) over its size limit."""

    def __init__(self, message: str, code: str = "") -> None:
        super().__init__(message, retriable=False, code=code)


class TopicExists(KafkaClientError):
    def __init__(self, message: str) -> None:
        super().__init__(message, retriable=False, code="TOPIC_ALREADY_EXISTS")


DeliveryCallback = Callable[[KafkaClientError | None], None]


class BatchOutcome:
    """One report for a batch of `count` records from their per-record reports: `on_done(None)`
    once all are acknowledged, or `on_done(error)` at the first failure; never twice.
    Per-record reports may come from any thread."""

    def __init__(self, count: int, on_done: DeliveryCallback) -> None:
        self._lock = threading.Lock()
        self._left = count
        self._reported = False
        self._on_done = on_done
        if count == 0:
            self._reported = True
            on_done(None)

    def __call__(self, error: KafkaClientError | None) -> None:
        with self._lock:
            if self._reported:
                return
            self._left -= 1
            if error is None and self._left > 0:
                return
            self._reported = True
        self._on_done(error)


@dataclass(frozen=True)
class ProducerOptions:
    """What chute tunes on a producer; every producer waits for acks from all in-sync
    replicas (acks=all)."""

    client_id: str = "chute"
    linger_ms: int = 5
    request_timeout_ms: int = 10_000
    # A record not acknowledged within this time is failed by the client (its callback
    # reports the error), so nothing lingers in the producer's buffer indefinitely.
    delivery_timeout_ms: int = 30_000
    # send() blocks at most this long for metadata or buffer space.
    max_block_ms: int = 5_000
    max_request_bytes: int = 16 * 1024 * 1024
    # How long the constructor waits for a broker to answer before it raises
    # KafkaClientError; 0: do not wait (librdkafka only; kafka-python always checks).
    bootstrap_timeout_ms: int = 10_000


@dataclass(frozen=True)
class ConsumerOptions:
    group_id: str
    client_id: str = "chute-sync"
    # A killed worker's partitions move after this (the broker's minimum is 6 s).
    session_timeout_ms: int = 6_000
    heartbeat_interval_ms: int = 1_500
    # Longest time between two polls (a revocation callback counts as inside poll) before
    # the member is removed; also the rebalance timeout the other members wait at most.
    max_poll_interval_ms: int = 300_000
    fetch_max_wait_ms: int = 100  # a fetch waiting for data must not delay a due flush
    # Fetched-but-unpolled data is held by the client too: keep it to a few batches.
    fetch_max_bytes: int = 32 * 1024 * 1024
    max_partition_fetch_bytes: int = 8 * 1024 * 1024
    max_poll_records: int = 20_000


class RebalanceListener(Protocol):
    """Group changes, called inside `Consumer.poll()` on the polling thread."""

    def on_assigned(self, partitions: Sequence[TopicPartition]
                    ) -> Mapping[TopicPartition, int]:
        """Newly assigned partitions; returns start offsets for those that should not start
        at their committed offset (partitions without a commit start at the earliest)."""
        ...

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions about to move to another member; still ours (commits work)."""
        ...

    def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        """Partitions this member lost without a revocation (evicted from the group): they
        may already belong to another member; committing them fails."""
        ...


class Consumer(Protocol):
    """A group consumer with manual commits, positioned by the listener."""

    @property
    def cooperative(self) -> bool:
        """True when rebalances are incremental (only moved partitions are revoked)."""
        ...

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None: ...

    def poll(self, timeout: float, max_records: int | None = None
             ) -> dict[TopicPartition, RecordBatch]:
        """Fetched records, per partition in offset order, at most `max_records`; returns as
        soon as there is any, else after `timeout` s. Rebalance callbacks run in here."""
        ...

    def assignment(self) -> set[TopicPartition]: ...

    def seek(self, partition: TopicPartition, offset: int) -> None:
        """Next record fetched from this assigned partition is at `offset`."""
        ...

    def pause(self, partitions: Iterable[TopicPartition]) -> None: ...

    def resume(self, partitions: Iterable[TopicPartition]) -> None: ...

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        """Commit synchronously: each offset is the next record to read."""
        ...

    def committed(self, partitions: Iterable[TopicPartition], timeout: float = 10.0
                  ) -> dict[TopicPartition, int | None]: ...

    def end_offsets(self, partitions: Iterable[TopicPartition], timeout: float = 10.0
                    ) -> dict[TopicPartition, int]: ...

    def highwater(self, partition: TopicPartition) -> int | None:
        """End offset seen in the last fetch response (no request); None if unknown."""
        ...

    def close(self) -> None:
        """Leave the group without committing and without calling the listener."""
        ...


class Producer(Protocol):
    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             partition: int | None = None, headers: Headers = (),
             on_delivery: DeliveryCallback | None = None) -> None: ...

    def deliver(self, topic: str, values: Sequence[bytes], timeout: float) -> None:
        """Send every value and wait until all are acknowledged; raises the first failure,
        or KafkaTimeout after `timeout` seconds. (The backends' producers subclass Producer
        and inherit this.)"""
        waiter = Waiter(len(values))
        for value in values:
            self.send(topic, value, on_delivery=waiter)
        waiter.wait(timeout)

    def partitions_for(self, topic: str) -> list[int]:
        """The topic's partitions (waits up to max_block_ms for metadata); LookupError if the
        topic does not exist."""
        ...

    def flush(self, timeout: float) -> None: ...

    def close(self, timeout: float) -> None: ...


@dataclass(frozen=True)
class TopicConfig:
    name: str
    partitions: int
    configs: Mapping[str, str]
    replication_factor: int = -1  # -1: the broker's default.replication.factor


@dataclass(frozen=True)
class GroupMember:
    """One member of a consumer group as the group coordinator describes it."""

    member_id: str
    client_id: str
    host: str  # the address the member connected from, without the broker's leading "/"
    partitions: tuple[TopicPartition, ...]


class Admin(Protocol):
    def topic_partitions(self) -> dict[str, int]:
        """{topic: partition count} for every topic except Kafka's internal ones."""
        ...

    def create_topic(self, topic: TopicConfig) -> bool:
        """Create the topic (with its replication factor, or the broker's default); False when
        it already existed."""
        ...

    def broker_count(self) -> int:
        """Brokers the cluster's metadata lists (the live ones)."""
        ...

    def under_replicated(self) -> dict[str, list[int]]:
        """{topic: partitions whose in-sync replicas are fewer than their replicas}, for the
        topics that have any (Kafka's internal topics left out)."""
        ...

    def add_partitions(self, topic: str, total: int) -> None: ...

    def delete_topic(self, topic: str) -> None: ...

    def group_offsets(self, group: str, partitions: Sequence[TopicPartition]
                      ) -> dict[TopicPartition, int | None]:
        """The group's committed offset per partition; None where it never committed."""
        ...

    def start_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        ...

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        ...

    def group_members(self, group: str) -> list[str]:
        """Client ids of the group's current members."""
        ...

    def describe_group(self, group: str) -> list[GroupMember]:
        """The group's current members with their hosts and assigned partitions (empty when
        the group has no member or does not exist), sorted by client id."""
        ...

    def topic_ids(self, topics: Sequence[str]) -> dict[str, str]:
        """Kafka's id of each topic (KIP-516: a new one each time a topic of that name is
        created), as a canonical UUID string; topics that do not exist are left out."""
        ...

    def max_message_bytes(self, topic: str) -> int | None:
        """The largest record batch the topic takes (its max.message.bytes, or the broker's
        default); None when the topic does not exist."""
        ...

    def close(self) -> None: ...


class Waiter:
    """Counts delivery outcomes for `Producer.deliver` (callbacks from any thread)."""

    def __init__(self, expected: int) -> None:
        self._lock = threading.Lock()
        self._left = expected
        self.error: KafkaClientError | None = None
        self.done = threading.Event()
        if expected == 0:
            self.done.set()

    def __call__(self, error: KafkaClientError | None) -> None:
        with self._lock:
            if error is not None and self.error is None:
                self.error = error
                self.done.set()
            self._left -= 1
            if self._left == 0:
                self.done.set()

    def wait(self, timeout: float) -> None:
        if not self.done.wait(timeout):
            raise KafkaTimeout(f"not acknowledged within {timeout:g} s")
        if self.error is not None:
            raise self.error
