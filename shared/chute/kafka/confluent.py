"""The seam on confluent-kafka (librdkafka).

librdkafka runs its network I/O and heartbeats on its own threads and calls rebalance and
delivery callbacks only from `poll()`/`consume()`: consumer callbacks therefore run on the
polling thread by construction; producer delivery reports are served by one daemon thread
per producer that polls it.
"""

from __future__ import annotations

import base64
import logging
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic, OffsetSpec

from chute.kafka.client_config import backend_config, consumer_settings, producer_settings
from chute.kafka.seam import (
    CommitRebalanced,
    ConsumerOptions,
    DeliveryCallback,
    GroupMember,
    Headers,
    KafkaClientError,
    KafkaTimeout,
    ProducerOptions,
    RebalanceListener,
    RecordBatch,
    RecordTooLarge,
    TopicConfig,
    TopicExists,
    TopicPartition,
    Waiter,
)
from chute.kafka.security import PLAINTEXT, Backend, KafkaSecurity

BACKEND: Backend = "confluent-kafka"

# librdkafka's own log lines (connection refused, ...) go to Python logging, not stderr.
_LOG = logging.getLogger("chute.kafka.librdkafka")

_REBALANCED = {
    KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID, KafkaError._ASSIGNMENT_LOST, KafkaError.FENCED_INSTANCE_ID,
}
_TIMEOUTS = {KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT, KafkaError.REQUEST_TIMED_OUT}
_SECOND = itemgetter(1)  # Message.timestamp() is (type, milliseconds)


def _error(err: KafkaError | None, context: str) -> KafkaClientError:
    if err is None:
        return KafkaClientError(f"{context}: unknown error")
    code = err.code()
    message = f"{context}: {err.str()}"
    name = err.name()
    if code in _REBALANCED:
        return CommitRebalanced(message, code=name)
    if code == KafkaError.MSG_SIZE_TOO_LARGE:
        return RecordTooLarge(message, code=name)
    if code == KafkaError.TOPIC_ALREADY_EXISTS:
        return TopicExists(message)
    if code in _TIMEOUTS:
        return KafkaTimeout(message, retriable=True, code=name)
    return KafkaClientError(message, retriable=bool(err.retriable()), code=name)


def _from_exception(exc: KafkaException, context: str) -> KafkaClientError:
    arg = exc.args[0] if exc.args else None
    return _error(arg if isinstance(arg, KafkaError) else None, f"{context}: {exc}"
                  if not isinstance(arg, KafkaError) else context)


def _ctp(tp: TopicPartition, offset: int | None = None) -> CTopicPartition:
    if offset is None:
        return CTopicPartition(tp.topic, tp.partition)
    return CTopicPartition(tp.topic, tp.partition, offset)


def _tp(ctp: CTopicPartition) -> TopicPartition:
    return TopicPartition(ctp.topic, ctp.partition)


def _uuid_text(value: confluent_kafka.Uuid) -> str:
    """librdkafka prints a Uuid as the unpadded base64 of its 16 bytes; the canonical form is what
    kafka-python reports too."""
    return str(uuid.UUID(bytes=base64.b64decode(str(value) + "==")))


# --- producer ----------------------------------------------------------------------------


class ConfluentProducer:
    def __init__(self, bootstrap: str, options: ProducerOptions,
                 extra: Mapping[str, Any] | None = None,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        config = backend_config(BACKEND, producer_settings(bootstrap, options), security)
        config.update({
            "message.timeout.ms": options.delivery_timeout_ms,
            "message.max.bytes": options.max_request_bytes,
            "compression.type": "none",
            # The broker drops what librdkafka's internal retries send twice (a leader lost
            # after it stored a batch but before it answered), so one send is one record in
            # the log; librdkafka recovers from expired batches by bumping its epoch.
            "enable.idempotence": True,
            # Internal retries never outlive message.timeout.ms.
            "socket.connection.setup.timeout.ms": max(1_000, options.request_timeout_ms),
            "logger": _LOG,
        })
        config.update(extra or {})
        self._max_block = options.max_block_ms / 1000
        self._producer = confluent_kafka.Producer(config)
        if options.bootstrap_timeout_ms > 0:
            # librdkafka connects lazily: ask for metadata so that a broker nobody can reach
            # is reported now, as kafka-python does.
            try:
                self._producer.list_topics(timeout=options.bootstrap_timeout_ms / 1000)
            except KafkaException as exc:
                raise _from_exception(exc, f"connect to {bootstrap}") from None
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._serve_callbacks,
                                        name="kafka-delivery", daemon=True)
        self._poller.start()

    def _serve_callbacks(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             partition: int | None = None, headers: Headers = (),
             on_delivery: DeliveryCallback | None = None) -> None:
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = list(headers)
        if on_delivery is not None:
            def report(err: KafkaError | None, _msg: Message,
                       callback: DeliveryCallback = on_delivery) -> None:
                callback(None if err is None else _error(err, f"produce to {topic}"))
            kwargs["on_delivery"] = report
        deadline: float | None = None
        while True:
            try:
                self._producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                # The local queue is full: wait for deliveries to free space, up to max_block.
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._max_block
                if now >= deadline:
                    raise KafkaTimeout(
                        f"producer buffer full for {self._max_block:g} s (topic {topic})"
                    ) from None
                time.sleep(0.005)
            except KafkaException as exc:
                raise _from_exception(exc, f"produce to {topic}") from None

    def send_batch(self, topic: str, values: Sequence[bytes],
                   keys: Sequence[bytes | None], partitions: Sequence[int],
                   headers: Headers, on_delivery: DeliveryCallback,
                   block: bool = True) -> None:
        """send() for many records with one delivery callback and one header list: no
        per-record closure or keyword dict (a third of the per-record cost of send()).

        `block` False: a full local queue raises KafkaTimeout at once instead of waiting up
        to max_block for space (for callers on an event loop). Records handed over before an
        exception may still be delivered (their reports still arrive).
        """
        header_list: list[tuple[str, str | bytes | None]] = list(headers)

        def report(err: KafkaError | None, _msg: Message) -> None:
            on_delivery(None if err is None else _error(err, f"produce to {topic}"))

        produce = self._producer.produce
        for value, key, partition in zip(values, keys, partitions, strict=True):
            try:
                produce(topic, value, key, partition, report, headers=header_list)
            except BufferError:
                if not block:
                    raise KafkaTimeout(f"producer buffer full (topic {topic})") from None
                self.send(topic, value, key=key, partition=partition, headers=headers,
                          on_delivery=on_delivery)  # waits for space up to max_block
            except KafkaException as exc:
                raise _from_exception(exc, f"produce to {topic}") from None

    def deliver(self, topic: str, values: Sequence[bytes], timeout: float) -> None:
        waiter = Waiter(len(values))
        for value in values:
            self.send(topic, value, on_delivery=waiter)
        waiter.wait(timeout)

    def partitions_for(self, topic: str) -> list[int]:
        try:
            metadata = self._producer.list_topics(topic, timeout=self._max_block)
        except KafkaException as exc:
            raise _from_exception(exc, f"metadata for {topic}") from None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise LookupError(f"no partitions known for topic {topic!r}")
        return sorted(found.partitions)

    def flush(self, timeout: float) -> None:
        self._producer.flush(timeout)

    def close(self, timeout: float) -> None:
        self._producer.flush(timeout)
        self._closed.set()
        self._poller.join(timeout=1)


# --- consumer ----------------------------------------------------------------------------


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
            "enable.partition.eof": False,
            "logger": _LOG,
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
                starts = self._listener.on_assigned([_tp(p) for p in partitions])
            assign = []
            for p in partitions:
                offset = starts.get(_tp(p))
                assign.append(_ctp(_tp(p), offset))
            consumer.incremental_assign(assign)
        except BaseException as exc:
            self._error = exc
            consumer.incremental_assign(partitions)

    def _on_revoke(self, consumer: Any, partitions: list[CTopicPartition]) -> None:
        try:
            if self._listener is not None and not self._closing and partitions:
                self._listener.on_revoked([_tp(p) for p in partitions])
        except BaseException as exc:
            self._error = exc
        finally:
            consumer.incremental_unassign(partitions)

    def _on_lost(self, consumer: Any, partitions: list[CTopicPartition]) -> None:
        try:
            if self._listener is not None and not self._closing and partitions:
                self._listener.on_lost([_tp(p) for p in partitions])
        except BaseException as exc:
            self._error = exc
        finally:
            consumer.incremental_unassign(partitions)

    def poll(self, timeout: float, max_records: int | None = None
             ) -> dict[TopicPartition, RecordBatch]:
        messages: list[Message] = self._consumer.consume(max_records or self._max_records,
                                                         timeout)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if not messages:
            return {}
        if any(map(Message.error, messages)):
            messages = _without_events(messages)
        return _batches(messages)

    def assignment(self) -> set[TopicPartition]:
        return {_tp(p) for p in self._consumer.assignment()}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(_ctp(partition, offset))
        except KafkaException as exc:
            raise _from_exception(exc, f"seek {partition.topic}:{partition.partition}") from None

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        tps = [_ctp(tp) for tp in partitions]
        if tps:
            self._consumer.pause(tps)

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        tps = [_ctp(tp) for tp in partitions]
        if tps:
            self._consumer.resume(tps)

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            results = self._consumer.commit(
                offsets=[_ctp(tp, o) for tp, o in offsets.items()], asynchronous=False)
        except KafkaException as exc:
            raise _from_exception(exc, "commit") from None
        for p in results or ():
            if p.error is not None:
                raise _error(p.error, f"commit {p.topic}:{p.partition}")

    def committed(self, partitions: Iterable[TopicPartition], timeout: float = 10.0
                  ) -> dict[TopicPartition, int | None]:
        tps = [_ctp(tp) for tp in partitions]
        if not tps:
            return {}
        try:
            found = self._consumer.committed(tps, timeout=timeout)
        except KafkaException as exc:
            raise _from_exception(exc, "committed offsets") from None
        result: dict[TopicPartition, int | None] = {}
        for p in found:
            if p.error is not None:
                raise _error(p.error, f"committed offset {p.topic}:{p.partition}")
            result[_tp(p)] = p.offset if p.offset >= 0 else None
        return result

    def end_offsets(self, partitions: Iterable[TopicPartition], timeout: float = 10.0
                    ) -> dict[TopicPartition, int]:
        result = {}
        for tp in partitions:
            try:
                marks = self._consumer.get_watermark_offsets(_ctp(tp), timeout=timeout)
            except KafkaException as exc:
                raise _from_exception(exc, "end offsets") from None
            if marks is None:
                raise KafkaTimeout(f"end offset of {tp.topic}:{tp.partition}: timed out")
            result[tp] = int(marks[1])
        return result

    def highwater(self, partition: TopicPartition) -> int | None:
        try:
            marks = self._consumer.get_watermark_offsets(_ctp(partition), cached=True)
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
            raise _error(err, "consume")
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


# --- admin -------------------------------------------------------------------------------


class ConfluentAdmin:
    def __init__(self, bootstrap: str, timeout: float = 10.0,
                 extra: Mapping[str, Any] | None = None,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        config = backend_config(BACKEND, {"bootstrap": bootstrap, "client_id": "chute-admin"},
                                security)
        config.update({"socket.connection.setup.timeout.ms": int(timeout * 1000),
                       "logger": _LOG})
        config.update(extra or {})
        self._admin = AdminClient(config)
        self._timeout = timeout

    def _result(self, future: Any, context: str) -> Any:
        try:
            return future.result(timeout=self._timeout)
        except KafkaException as exc:
            raise _from_exception(exc, context) from None
        except TimeoutError:
            raise KafkaTimeout(f"{context}: no answer within {self._timeout:g} s") from None

    def topic_partitions(self) -> dict[str, int]:
        try:
            metadata = self._admin.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            raise _from_exception(exc, "list topics") from None
        return {name: len(t.partitions) for name, t in metadata.topics.items()
                if not name.startswith("__") and t.error is None}

    def create_topic(self, topic: TopicConfig) -> bool:
        new = NewTopic(topic.name, num_partitions=topic.partitions,
                       replication_factor=topic.replication_factor, config=dict(topic.configs))
        futures = self._admin.create_topics([new], operation_timeout=self._timeout)
        try:
            self._result(futures[topic.name], f"create topic {topic.name}")
        except TopicExists:
            return False
        self._wait_for_metadata(topic.name, topic.partitions)
        return True

    def _metadata(self) -> Any:
        try:
            return self._admin.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            raise _from_exception(exc, "read cluster metadata") from None

    def broker_count(self) -> int:
        return len(self._metadata().brokers)

    def under_replicated(self) -> dict[str, list[int]]:
        result: dict[str, list[int]] = {}
        for name, t in self._metadata().topics.items():
            if name.startswith("__") or t.error is not None:
                continue
            short = sorted(p.id for p in t.partitions.values() if len(p.isrs) < len(p.replicas))
            if short:
                result[name] = short
        return result

    def _wait_for_metadata(self, topic: str, partitions: int) -> None:
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            found = self._admin.list_topics(topic, timeout=self._timeout).topics.get(topic)
            if found is not None and found.error is None and len(found.partitions) >= partitions:
                return
            time.sleep(0.05)

    def add_partitions(self, topic: str, total: int) -> None:
        futures = self._admin.create_partitions([NewPartitions(topic, total)],
                                                operation_timeout=self._timeout)
        self._result(futures[topic], f"add partitions to {topic}")
        self._wait_for_metadata(topic, total)

    def delete_topic(self, topic: str) -> None:
        futures = self._admin.delete_topics([topic], operation_timeout=self._timeout)
        self._result(futures[topic], f"delete topic {topic}")

    def group_offsets(self, group: str, partitions: Sequence[TopicPartition]
                      ) -> dict[TopicPartition, int | None]:
        from confluent_kafka import ConsumerGroupTopicPartitions

        request = ConsumerGroupTopicPartitions(group, [_ctp(tp) for tp in partitions])
        futures = self._admin.list_consumer_group_offsets([request],
                                                          request_timeout=self._timeout)
        answer = self._result(futures[group], f"offsets of group {group}")
        result: dict[TopicPartition, int | None] = {}
        for p in answer.topic_partitions:
            result[_tp(p)] = p.offset if p.error is None and p.offset >= 0 else None
        return result

    def _offsets(self, partitions: Sequence[TopicPartition], spec: Any
                 ) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        futures = self._admin.list_offsets({_ctp(tp): spec for tp in partitions},
                                           request_timeout=self._timeout)
        return {_tp(ctp): int(self._result(f, "list offsets").offset)
                for ctp, f in futures.items()}

    def start_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return self._offsets(partitions, OffsetSpec.earliest())  # type: ignore[no-untyped-call]

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return self._offsets(partitions, OffsetSpec.latest())  # type: ignore[no-untyped-call]

    def group_members(self, group: str) -> list[str]:
        futures = self._admin.describe_consumer_groups([group],
                                                       request_timeout=self._timeout)
        description = self._result(futures[group], f"describe group {group}")
        return sorted(m.client_id for m in description.members)

    def describe_group(self, group: str) -> list[GroupMember]:
        futures = self._admin.describe_consumer_groups([group],
                                                       request_timeout=self._timeout)
        description = self._result(futures[group], f"describe group {group}")
        members = [GroupMember(
            member_id=m.member_id, client_id=m.client_id, host=m.host.lstrip("/"),
            partitions=tuple(sorted(_tp(p) for p in (
                m.assignment.topic_partitions if m.assignment else ()))))
            for m in description.members]
        return sorted(members, key=lambda m: (m.client_id, m.member_id))

    def topic_ids(self, topics: Sequence[str]) -> dict[str, str]:
        if not topics:
            return {}
        futures = self._admin.describe_topics(
            confluent_kafka.TopicCollection(list(topics)), request_timeout=self._timeout)
        ids: dict[str, str] = {}
        for name, future in futures.items():
            try:
                description = future.result(timeout=self._timeout)
            except KafkaException as exc:
                if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue
                raise _from_exception(exc, f"describe topic {name}") from None
            ids[name] = _uuid_text(description.topic_id)
        return ids

    def close(self) -> None:
        """AdminClient has no close; its threads end when it is collected."""
