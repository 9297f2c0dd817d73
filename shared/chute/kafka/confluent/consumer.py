"""The confluent-kafka group consumer: librdkafka calls the rebalance callbacks inside
`consume()`, on the polling thread; consumed messages become the seam's RecordBatches."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaException, Message
from confluent_kafka import TopicPartition as CTopicPartition

from chute.kafka.client_config import backend_config, consumer_settings
from chute.kafka.confluent.common import (
    BACKEND,
    LOG,
    client_error,
    from_exception,
    to_client,
    to_seam,
)
from chute.kafka.seam import (
    ConsumerOptions,
    Headers,
    KafkaTimeout,
    RebalanceListener,
    RecordBatch,
    TopicPartition,
)
from chute.kafka.security import PLAINTEXT, KafkaSecurity

_SECOND = itemgetter(1)  # Message.timestamp() is (type, milliseconds)
FETCH_QUEUE_BACKOFF_MS = 10  # librdkafka's fetch.queue.backoff.ms (see below)


class ConfluentConsumer:
    def __init__(self, bootstrap: str, options: ConsumerOptions,
                 extra: Mapping[str, Any] | None = None,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        config = backend_config(BACKEND, consumer_settings(bootstrap, options), security)
        config.update({
            "enable.auto.offset.store": False,
            # Incremental rebalances: a joining or leaving member moves only the partitions
            # that change owner; the others keep flowing.
            "partition.assignment.strategy": "cooperative-sticky",
            # Prefetched, not yet consumed data (KiB, one queue for all partitions): bounds the
            # client's own memory while leaving a full batch ready to consume.
            "queued.max.messages.kbytes": max(1024, options.fetch_max_bytes // 1024),
            # Once that queue is full (or holds queued.min.messages of a partition, 100,000 by
            # default, which one fetch of small records passes), librdkafka waits this long
            # before fetching that partition again: its default, 1 s, starved the worker
            # (137,360 against 253,959 rows/s with a 16 MiB prefetch, scripts/bench --only
            # sync --no-engine). Memory stays bounded by the queue and the fetch sizes.
            "fetch.queue.backoff.ms": FETCH_QUEUE_BACKOFF_MS,
            "enable.partition.eof": False,
            "logger": LOG,
        })
        config.update(extra or {})
        self._consumer = confluent_kafka.Consumer(config)
        self._max_records = options.max_poll_records
        self._listener: RebalanceListener | None = None
        self._closing = False
        self._error: BaseException | None = None

    @property
    def cooperative(self) -> bool:
        return True

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self._listener = listener
        self._consumer.subscribe(list(topics), on_assign=self._on_assign,
                                 on_revoke=self._on_revoke, on_lost=self._on_lost)

    # librdkafka calls these inside consume(), on the polling thread. An exception raised in
    # a callback is kept and re-raised by poll() (the C layer would only print it).

    def _on_assign(self, consumer: Any, partitions: list[CTopicPartition]) -> None:
        try:
            starts: Mapping[TopicPartition, int] = {}
            if self._listener is not None and not self._closing and partitions:
                starts = self._listener.on_assigned([to_seam(p) for p in partitions])
            assign = []
            for p in partitions:
                offset = starts.get(to_seam(p))
                assign.append(to_client(to_seam(p), offset))
            consumer.incremental_assign(assign)
        except BaseException as exc:
            self._error = exc
            consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[CTopicPartition]) -> None:
        try:
            if self._listener is not None and not self._closing and partitions:
                self._listener.on_revoked([to_seam(p) for p in partitions])
        except BaseException as exc:
            self._error = exc
        finally:
            consumer.incremental_unassign(partitions)

    def _on_lost(self, consumer: Any, partitions: list[CTopicPartition]) -> None:
        try:
            if self._listener is not None and not self._closing and partitions:
                self._listener.on_lost([to_seam(p) for p in partitions])
        except BaseException as exc:
            self._error = exc
        finally:
            consumer.incremental_unassign(partitions)

    def poll(self, timeout: float, max_records: int | None = None
             ) -> dict[TopicPartition, RecordBatch]:
        # Returns as soon as a record is there, as kafka-python's poll does: librdkafka's
        # consume() waits for max_records or the whole timeout, so a batch started by a
        # record that waited there would be stamped late (at 10,000 records/s, half a
        # second: scripts/bench --only latency, p99 1.61 s).
        limit = max_records or self._max_records
        messages: list[Message] = self._consumer.consume(limit, 0)
        if not messages and timeout > 0 and self._error is None:
            messages = self._consumer.consume(1, timeout)
            if messages and limit > 1:
                messages += self._consumer.consume(limit - 1, 0)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if any(map(Message.error, messages)):
            messages = _without_events(messages)
        return _batches(messages) if messages else {}

    def assignment(self) -> set[TopicPartition]:
        return {to_seam(p) for p in self._consumer.assignment()}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(to_client(partition, offset))
        except KafkaException as exc:
            raise from_exception(exc, f"seek {partition.topic}:{partition.partition}") from None

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        tps = [to_client(tp) for tp in partitions]
        if tps:
            self._consumer.pause(tps)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        tps = [to_client(tp) for tp in partitions]
        if tps:
            self._consumer.resume(tps)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            results = self._consumer.commit(
                offsets=[to_client(tp, o) for tp, o in offsets.items()], asynchronous=False)
        except KafkaException as exc:
            raise from_exception(exc, "commit") from None
        for p in results or ():
            if p.error is not None:
                raise client_error(p.error, f"commit {p.topic}:{p.partition}")

    def committed(self, partitions: Iterable[TopicPartition], timeout: float = 10.0
                  ) -> dict[TopicPartition, int | None]:
        tps = [to_client(tp) for tp in partitions]
        if not tps:
            return {}
        try:
            found = self._consumer.committed(tps, timeout=timeout)
        except KafkaException as exc:
            raise from_exception(exc, "committed offsets") from None
        result: dict[TopicPartition, int | None] = {}
        for p in found:
            if p.error is not None:
                raise client_error(p.error, f"committed offset {p.topic}:{p.partition}")
            result[to_seam(p)] = p.offset if p.offset >= 0 else None
        return result

    def end_offsets(self, partitions: Iterable[TopicPartition], timeout: float = 10.0
                    ) -> dict[TopicPartition, int]:
        result = {}
        for tp in partitions:
            try:
                marks = self._consumer.get_watermark_offsets(to_client(tp), timeout=timeout)
            except KafkaException as exc:
                raise from_exception(exc, "end offsets") from None
            if marks is None:
                raise KafkaTimeout(f"end offset of {tp.topic}:{tp.partition}: timed out")
            result[tp] = int(marks[1])
        return result

    def highwater(self, partition: TopicPartition) -> int | None:
        try:
            marks = self._consumer.get_watermark_offsets(to_client(partition), cached=True)
        except KafkaException:
            return None
        if marks is None or marks[1] < 0:
            return None
        return int(marks[1])

    def close(self) -> None:
        self._closing = True
        self._consumer.close()


def _without_events(messages: list[Message]) -> list[Message]:
    """The records among what consume() returned: a fatal error raises; informational ones
    (broker down, ...) are dropped, librdkafka retries by itself."""
    records = []
    for m in messages:
        err = m.error()
        if err is None:
            records.append(m)
        elif err.fatal():
            raise client_error(err, "consume")
    return records


def _batches(messages: list[Message]) -> dict[TopicPartition, RecordBatch]:
    """Group records by partition into parallel lists. Each field is read for all records
    with map() over the C getters: no Python frame and no object per record."""
    # Any: the typed getters are optional; a fetched record has them all.
    topics: list[Any] = list(map(Message.topic, messages))
    partitions: list[Any] = list(map(Message.partition, messages))
    offsets: list[Any] = list(map(Message.offset, messages))
    timestamps: list[Any] = list(map(_SECOND, map(Message.timestamp, messages)))
    keys: list[Any] = list(map(Message.key, messages))
    values: list[Any] = list(map(Message.value, messages))
    raw_headers: list[Any] = list(map(Message.headers, messages))
    headers: list[Headers] = ([tuple(h) if h else () for h in raw_headers]
                              if any(raw_headers) else [()] * len(messages))
    n = len(messages)
    if topics.count(topics[0]) == n and partitions.count(partitions[0]) == n:
        return {TopicPartition(topics[0], partitions[0]): RecordBatch(
            topics[0], partitions[0], offsets, timestamps, keys, values, headers)}
    # Several partitions: consecutive runs of one partition, in offset order per partition.
    result: dict[TopicPartition, RecordBatch] = {}
    start = 0
    for i in range(1, n + 1):
        if i < n and partitions[i] == partitions[start] and topics[i] == topics[start]:
            continue
        tp = TopicPartition(topics[start], partitions[start])
        run = RecordBatch(tp.topic, tp.partition, offsets[start:i], timestamps[start:i],
                          keys[start:i], values[start:i], headers[start:i])
        found = result.get(tp)
        if found is None:
            result[tp] = run
        else:
            found.extend(run)
        start = i
    return result
