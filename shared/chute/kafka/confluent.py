"""The seam on confluent-kafka (librdkafka).

librdkafka runs its network I/O and heartbeats on its own threads and calls rebalance and
delivery callbacks only from `poll()`/`consume()`: consumer callbacks therefore run on the
polling thread by construction; producer delivery reports are served by one daemon thread
per producer that polls it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, Message
from confluent_kafka import TopicPartition as CTopicPartition
from confluent_kafka.admin import AdminClient, NewPartitions, NewTopic, OffsetSpec

from chute.kafka.seam import (
    CommitRebalanced,
    ConsumerOptions,
    DeliveryCallback,
    Headers,
    KafkaClientError,
    KafkaTimeout,
    ProducerOptions,
    RebalanceListener,
    Record,
    RecordTooLarge,
    TopicConfig,
    TopicExists,
    TopicPartition,
    Waiter,
)

# librdkafka's own log lines (connection refused, ...) go to Python logging, not stderr.
_LOG = logging.getLogger("chute.kafka.librdkafka")

_REBALANCED = {
    KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID, KafkaError._ASSIGNMENT_LOST, KafkaError.FENCED_INSTANCE_ID,
}
_TIMEOUTS = {KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT, KafkaError.REQUEST_TIMED_OUT}


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


# --- producer ----------------------------------------------------------------------------


class ConfluentProducer:
    def __init__(self, bootstrap: str, options: ProducerOptions,
                 extra: Mapping[str, Any] | None = None) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "client.id": options.client_id,
            "acks": "all",
            "linger.ms": options.linger_ms,
            "request.timeout.ms": options.request_timeout_ms,
            "message.timeout.ms": options.delivery_timeout_ms,
            "message.max.bytes": options.max_request_bytes,
            "compression.type": "none",
            # Internal retries may duplicate a record (at-least-once, as a client retry
            # would); they never outlive message.timeout.ms.
            "enable.idempotence": False,
            "reconnect.backoff.max.ms": 2_000,
            "socket.connection.setup.timeout.ms": max(1_000, options.request_timeout_ms),
            "logger": _LOG,
        }
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
                 extra: Mapping[str, Any] | None = None) -> None:
        config: dict[str, Any] = {
            "bootstrap.servers": bootstrap,
            "group.id": options.group_id,
            "client.id": options.client_id,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # Incremental rebalances: a joining or leaving member moves only the partitions
            # that change owner; the others keep flowing.
            "partition.assignment.strategy": "cooperative-sticky",
            "session.timeout.ms": options.session_timeout_ms,
            "heartbeat.interval.ms": options.heartbeat_interval_ms,
            "max.poll.interval.ms": options.max_poll_interval_ms,
            "fetch.wait.max.ms": options.fetch_max_wait_ms,
            "fetch.max.bytes": options.fetch_max_bytes,
            "max.partition.fetch.bytes": options.max_partition_fetch_bytes,
            # Prefetched, not yet consumed data (KiB, one queue for all partitions): bounds the
            # client's own memory while leaving a full batch ready to consume.
            "queued.max.messages.kbytes": max(1024, options.fetch_max_bytes // 1024),
            "reconnect.backoff.max.ms": 2_000,
            "enable.partition.eof": False,
            "logger": _LOG,
        }
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
             ) -> dict[TopicPartition, list[Record]]:
        # Any: the typed Message getters are optional; a fetched record has them all.
        messages: list[Any] = self._consumer.consume(max_records or self._max_records, timeout)
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        result: dict[TopicPartition, list[Record]] = {}
        current: list[Record] | None = None
        current_key: tuple[str, int] | None = None
        for m in messages:
            err = m.error()
            if err is not None:
                if err.fatal():
                    raise _error(err, "consume")
                continue  # informational (broker down, ...): librdkafka retries by itself
            topic = m.topic()
            partition = m.partition()
            if (topic, partition) != current_key:
                current_key = (topic, partition)
                current = result.setdefault(TopicPartition(topic, partition), [])
            assert current is not None
            headers = m.headers()
            current.append(Record(topic, partition, m.offset(), m.timestamp()[1], m.key(),
                                  m.value(), tuple(headers) if headers else ()))
        return result

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


# --- admin -------------------------------------------------------------------------------


class ConfluentAdmin:
    def __init__(self, bootstrap: str, timeout: float = 10.0,
                 extra: Mapping[str, Any] | None = None) -> None:
        config: dict[str, Any] = {"bootstrap.servers": bootstrap, "client.id": "chute-admin",
                                  "socket.connection.setup.timeout.ms": int(timeout * 1000),
                                  "logger": _LOG}
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

    def close(self) -> None:
        """AdminClient has no close; its threads end when it is collected."""
