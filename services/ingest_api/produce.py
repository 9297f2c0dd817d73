"""Handing encoded records to the Kafka producer and waiting for every acknowledgement.

Partitions are chosen here, not by kafka-python's partitioner:
- keyed records go to `crc32(key) % partitions` (zlib's C implementation). kafka-python's
  default murmur2 is pure Python and costs ~5 us per record, a quarter of the per-record budget
  at 50,000 records/s; the mapping only has to be stable, which crc32 is. (It differs from the
  Java client's murmur2 mapping; no chute component relies on that.)
- records without a key are dealt round-robin over the partitions, continuing from request to
  request, so even single-record requests spread evenly.

A topic's partitions are looked up once and then again every PARTITIONS_REFRESH_SECONDS (a
metadata request to the broker takes milliseconds: asking on every request capped the API at a
few hundred requests per second); partitions added in between are used after the refresh.

A request holding a record larger than its topic takes (max.message.bytes, looked up with the
partitions) is refused before any of its records is sent (`ingest_api.record_limits`).

Every record carries the header `chute-model` (`chute.fingerprint`): the fingerprint of the
model that validated it, computed once per topic when the sink is made.

Acknowledgements are bridged to asyncio without a thread per request: a request's one report
(its last record acknowledged, or its first failure; counted by the batch producer, or here by
`BatchOutcome` from per-record reports) resolves an asyncio future through
`call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol, runtime_checkable

import structlog
from chute.fingerprint import FINGERPRINT_HEADER, model_fingerprint
from chute.kafka import (
    DEFAULT_MAX_MESSAGE_BYTES,
    BatchOutcome,
    DeliveryCallback,
    Headers,
    KafkaClientError,
)
from pydantic import BaseModel

from ingest_api.body import EncodedBatch
from ingest_api.record_limits import PRODUCER_BATCH_BYTES, check_sizes

log = structlog.get_logger()

PARTITIONS_REFRESH_SECONDS = 10.0


class Producer(Protocol):
    """The part of the Kafka seam's producer (chute.kafka.Producer) that the ingest API uses."""

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             partition: int | None = None, headers: Headers = (),
             on_delivery: DeliveryCallback | None = None) -> None: ...

    def partitions_for(self, topic: str) -> list[int]: ...


@runtime_checkable
class LoopReporting(Protocol):
    """A producer whose reports an event loop can hand on itself (chute.kafka's native one):
    no thread switch per request."""

    def report_on(self, loop: asyncio.AbstractEventLoop) -> Callable[[], None]: ...


@runtime_checkable
class BatchProducer(Producer, Protocol):
    """A producer that takes many records in one call and reports them once (chute.kafka's
    native and confluent-kafka ones), and can refuse at once instead of blocking when its
    queue is full."""

    def send_batch(self, topic: str, values: Sequence[bytes],
                   keys: Sequence[bytes | None], partitions: Sequence[int],
                   headers: Headers, on_done: DeliveryCallback,
                   block: bool = True) -> None: ...


def key_partitions(keys: Sequence[bytes], partitions: Sequence[int]) -> list[int]:
    """The partition of each key: stable for a key as long as the partition count is."""
    n = len(partitions)
    crc32 = zlib.crc32
    return [partitions[crc32(k) % n] for k in keys]


class RoundRobin:
    """Deals partitions in turn to records without a key, across requests (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._next: dict[str, int] = {}

    def take(self, topic: str, count: int, partitions: Sequence[int]) -> list[int]:
        n = len(partitions)
        with self._lock:
            start = self._next.get(topic, 0)
            self._next[topic] = (start + count) % n
        return [partitions[(start + i) % n] for i in range(count)]


class AckWaiter:
    """Resolves `future` with a request's one report: success, or its first failure.

    Created on the event loop; `on_done` may be called from any thread.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self.future: asyncio.Future[None] = loop.create_future()

    def on_done(self, error: KafkaClientError | None) -> None:
        """Every record acknowledged (None), or the first failure."""
        self._post(error)

    def _post(self, exc: BaseException | None) -> None:
        if threading.get_ident() == self._loop_thread:  # reports served by the loop itself
            self._resolve(exc)
            return
        with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
            self._loop.call_soon_threadsafe(self._resolve, exc)

    def _resolve(self, exc: BaseException | None) -> None:
        if self.future.done():  # cancelled (timed out) or already failed
            return
        if exc is None:
            self.future.set_result(None)
        else:
            self.future.set_exception(exc)


class KafkaSink:
    """Sends batches to topics; one per app, shared by all pipelines."""

    def __init__(self, producer: Producer, models: Mapping[str, type[BaseModel]],
                 clock: Callable[[], float] = time.monotonic,
                 limit_of: Callable[[str], int | None] | None = None) -> None:
        """`models`: the model of each topic's records, whose fingerprint goes on each one.
        `limit_of`: a topic's max.message.bytes (Admin.max_message_bytes), asked with its
        partitions; Kafka's default where it is not known."""
        self.producer = producer
        self._limit_of = limit_of
        self._limits: dict[str, int] = {}
        self._headers: dict[str, Headers] = {
            topic: ((FINGERPRINT_HEADER, model_fingerprint(model).encode()),)
            for topic, model in models.items()}
        self._round_robin = RoundRobin()
        self._batch = producer if isinstance(producer, BatchProducer) else None
        self._clock = clock
        # topic -> (its partitions, when they were looked up); replaced whole, never mutated
        self._partitions: dict[str, tuple[list[int], float]] = {}

    def knows(self, topic: str) -> bool:
        """True while the topic's partitions are fresh: send() will not ask the broker."""
        known = self._partitions.get(topic)
        return known is not None and self._clock() - known[1] < PARTITIONS_REFRESH_SECONDS

    def partitions(self, topic: str) -> list[int]:
        """Looks the topic's partitions up; blocks up to the producer's max_block_ms."""
        found = self.producer.partitions_for(topic)
        if not found:
            raise LookupError(f"no partitions known for topic {topic!r}")
        partitions = sorted(found)
        if self._limit_of is not None:
            try:
                limit = self._limit_of(topic) or DEFAULT_MAX_MESSAGE_BYTES
            except KafkaClientError as exc:  # the last one known (or the default) holds
                log.warning("cannot look up the topic's max.message.bytes", topic=topic,
                            error=str(exc))
            else:
                if limit < PRODUCER_BATCH_BYTES and self._limits.get(topic) != limit:
                    log.warning(
                        "the topic takes batches smaller than the producer makes: a batch "
                        "of records that each fit may be refused, with records of a request "
                        "stored under its 413; raise the topic's max.message.bytes to "
                        f"{DEFAULT_MAX_MESSAGE_BYTES} (Kafka's default)", topic=topic,
                        max_message_bytes=limit, producer_batch_bytes=PRODUCER_BATCH_BYTES)
                self._limits[topic] = limit
        self._partitions[topic] = (partitions, self._clock())
        return partitions

    def _known_partitions(self, topic: str) -> list[int]:
        known = self._partitions.get(topic)
        return known[0] if known is not None else self.partitions(topic)

    @property
    def sends_without_blocking(self) -> bool:
        """True when send(block=False) never blocks: it may run on the event loop."""
        return self._batch is not None

    def send(self, topic: str, batch: EncodedBatch, waiter: AckWaiter,
             block: bool = True) -> None:
        """Hand every record to the producer (no flush); waiter learns of each outcome.

        May block up to max_block_ms (metadata unknown, buffer full) and raise; records handed
        over before the exception may still reach Kafka (the client retries: at-least-once).
        `block` False (only where sends_without_blocking): a full buffer raises at once.
        A record larger than the topic takes raises RecordTooLargeForTopic before any record
        is handed over.
        """
        count = len(batch)
        if count == 0:
            waiter.on_done(None)
            return
        partitions = self._known_partitions(topic)
        headers = self._headers[topic]
        check_sizes(topic, batch.values, batch.keys, headers,
                    self._limits.get(topic, DEFAULT_MAX_MESSAGE_BYTES))
        if batch.keys is not None:
            chosen = key_partitions(batch.keys, partitions)
            keys: Sequence[bytes | None] = batch.keys
        else:
            chosen = self._round_robin.take(topic, count, partitions)
            keys = [None] * count
        if self._batch is not None:
            self._batch.send_batch(topic, batch.values, keys, chosen, headers,
                                   waiter.on_done, block)
            return
        send = self.producer.send
        on_delivery = BatchOutcome(count, waiter.on_done)
        for value, key, partition in zip(batch.values, keys, chosen, strict=True):
            send(topic, value, key=key, partition=partition, headers=headers,
                 on_delivery=on_delivery)
