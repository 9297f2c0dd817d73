"""The seam on kafka-python (pure Python).

kafka-python 3 drives its network I/O on an IO thread and awaits an
`AsyncConsumerRebalanceListener` there, in the middle of the `KafkaConsumer.poll()` call that
joins the group; a blocking call on that thread would stall heartbeats. To give callers the
seam's promise (callbacks on the polling thread), `KafkaPythonConsumer.poll()` hands the
client's own `poll()` to a private thread and waits on a queue; the listener posts each group
event on that queue and awaits a `kafka.future.Future` that the polling thread completes once
the caller's callback returned. Heartbeats continue meanwhile (the IO thread only awaits), and
the polling thread may commit revoked partitions while the join waits. While the caller does
not poll (a long insert), that thread keeps polling with every partition paused, so a group
join in flight completes and heartbeats resume (`KafkaPythonConsumer._keep_alive`).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kafka.errors as kerrors
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka import TopicPartition as KTopicPartition
from kafka.admin import NewPartitions, NewTopic, OffsetSpec
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.future import Future
from kafka.structs import OffsetAndMetadata

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

BACKEND: Backend = "kafka-python"

_REBALANCED = (kerrors.CommitFailedError, kerrors.RebalanceInProgressError,
               kerrors.IllegalGenerationError, kerrors.UnknownMemberIdError)
_TOO_LARGE = (kerrors.MessageSizeTooLargeError, kerrors.RecordListTooLargeError)


def _error(exc: BaseException, context: str) -> KafkaClientError:
    message = f"{context}: {type(exc).__name__}: {exc}"
    name = type(exc).__name__
    if isinstance(exc, KafkaClientError):
        return exc
    if isinstance(exc, _REBALANCED):
        return CommitRebalanced(message, code=name)
    if isinstance(exc, _TOO_LARGE):
        return RecordTooLarge(message, code=name)
    if isinstance(exc, kerrors.TopicAlreadyExistsError):
        return TopicExists(message)
    if isinstance(exc, kerrors.KafkaTimeoutError):
        return KafkaTimeout(message, retriable=True, code=name)
    retriable = isinstance(exc, kerrors.KafkaError) and bool(getattr(exc, "retriable", False))
    return KafkaClientError(message, retriable=retriable or isinstance(exc, OSError), code=name)


def _ktp(tp: TopicPartition) -> KTopicPartition:
    return KTopicPartition(tp.topic, tp.partition)


def _tp(ktp: Any) -> TopicPartition:
    return TopicPartition(ktp.topic, ktp.partition)


# --- producer ----------------------------------------------------------------------------


class KafkaPythonProducer:
    def __init__(self, bootstrap: str, options: ProducerOptions,
                 extra: Mapping[str, Any] | None = None,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        config = backend_config(BACKEND, producer_settings(bootstrap, options), security)
        config.update({
            "batch_size": 512 * 1024,
            "max_request_size": options.max_request_bytes,
            "compression_type": None,
            "delivery_timeout_ms": options.delivery_timeout_ms,
            # kafka-python 3.0.12's idempotent producer never recovers once batches expired
            # while the broker was down (seen in the Kafka-outage fault test), so: no
            # idempotence and no internal retries, which could then reorder or duplicate. A
            # failed send is reported to the caller.
            "retries": 0,
            "enable_idempotence": False,
            "metrics_enabled": False,  # kafka-python's own metrics cost CPU
            "max_block_ms": options.max_block_ms,
            "bootstrap_timeout_ms": options.bootstrap_timeout_ms,
        })
        config.update(extra or {})
        try:
            self._producer = KafkaProducer(**config)
        except kerrors.KafkaError as exc:
            raise _error(exc, f"connect to {bootstrap}") from None

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             partition: int | None = None, headers: Headers = (),
             on_delivery: DeliveryCallback | None = None) -> None:
        try:
            future = self._producer.send(topic, value=value, key=key, partition=partition,
                                         headers=list(headers) if headers else None)
        except kerrors.KafkaError as exc:
            raise _error(exc, f"produce to {topic}") from None
        if on_delivery is not None:
            callback = on_delivery
            future.add_callback(lambda _metadata: callback(None))
            future.add_errback(lambda exc: callback(_error(exc, f"produce to {topic}")))

    def deliver(self, topic: str, values: Sequence[bytes], timeout: float) -> None:
        waiter = Waiter(len(values))
        for value in values:
            self.send(topic, value, on_delivery=waiter)
        waiter.wait(timeout)

    def partitions_for(self, topic: str) -> list[int]:
        try:
            found = self._producer.partitions_for(topic)
        except kerrors.KafkaError as exc:
            raise _error(exc, f"metadata for {topic}") from None
        if not found:
            raise LookupError(f"no partitions known for topic {topic!r}")
        return sorted(found)

    def flush(self, timeout: float) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except kerrors.KafkaError as exc:
            raise _error(exc, "flush") from None

    def close(self, timeout: float) -> None:
        self._producer.close(timeout=timeout)


# --- consumer ----------------------------------------------------------------------------

_LOG = logging.getLogger("chute.kafka.kafkapython")


@dataclass
class _GroupEvent:
    kind: str  # "assigned" | "revoked" | "lost"
    partitions: list[TopicPartition]
    done: Future = field(default_factory=Future)


@dataclass
class _Fetched:
    records: dict[Any, list[Any]] | None = None
    error: BaseException | None = None


class _Relay(AsyncConsumerRebalanceListener):  # type: ignore[misc]
    """Runs on kafka-python's IO thread: posts each event for the polling thread and awaits
    its completion without blocking the loop (heartbeats go on)."""

    def __init__(self, owner: KafkaPythonConsumer) -> None:
        self.owner = owner

    async def _post(self, kind: str, partitions: set[Any]) -> None:
        if self.owner.closing or not partitions:
            return
        event = _GroupEvent(kind, sorted(_tp(p) for p in partitions))
        self.owner.results.put(event)
        await event.done

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        await self._post("revoked", revoked)

    async def on_partitions_assigned(self, assigned: set[Any]) -> None:
        await self._post("assigned", assigned)

    async def on_partitions_lost(self, lost: set[Any]) -> None:
        await self._post("lost", lost)


class KafkaPythonConsumer:
    def __init__(self, bootstrap: str, options: ConsumerOptions,
                 extra: Mapping[str, Any] | None = None,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        config = backend_config(BACKEND, consumer_settings(bootstrap, options), security)
        config.update({
            "partition_assignment_strategy": (CooperativeStickyAssignor,),
            "max_poll_records": options.max_poll_records,
            "metrics_enabled": False,
        })
        config.update(extra or {})
        try:
            self._consumer = KafkaConsumer(**config)
        except kerrors.KafkaError as exc:
            raise _error(exc, f"connect to {bootstrap}") from None
        self._listener: RebalanceListener | None = None
        self.closing = False
        self.results: queue.Queue[_GroupEvent | _Fetched] = queue.Queue()
        self._requests: queue.Queue[tuple[int, int] | None] = queue.Queue()
        self._poller: threading.Thread | None = None
        # Keep-alive polls while the caller is busy elsewhere (an insert): see _keep_alive.
        self._keep_alive_seconds = options.heartbeat_interval_ms / 1000
        self._max_poll_interval = options.max_poll_interval_ms / 1000
        self._last_caller_poll = time.monotonic()
        self._caller_paused: set[TopicPartition] = set()
        self._paused_lock = threading.Lock()

    @property
    def cooperative(self) -> bool:
        return True

    def subscribe(self, topics: Sequence[str], listener: RebalanceListener) -> None:
        self._listener = listener
        # The group leader assigns only partitions its metadata knows; a first join before
        # the client fetched the topics' metadata assigns nothing until the next refresh
        # (minutes). Fetch it now.
        with contextlib.suppress(kerrors.KafkaError):
            self._consumer.topics()
        self._consumer.subscribe(topics=list(topics), listener=_Relay(self))

    def _poll_forever(self) -> None:
        while True:
            try:
                request = self._requests.get(timeout=self._keep_alive_seconds)
            except queue.Empty:
                self._keep_alive()
                continue
            if request is None:
                return
            timeout_ms, max_records = request
            try:
                records = self._consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
                self.results.put(_Fetched(records=records))
            except BaseException as exc:
                self.results.put(_Fetched(error=exc))

    def poll(self, timeout: float, max_records: int | None = None
             ) -> dict[TopicPartition, RecordBatch]:
        if self._poller is None:
            self._poller = threading.Thread(target=self._poll_forever, name="kafka-poll",
                                            daemon=True)
            self._poller.start()
        self._last_caller_poll = time.monotonic()
        self._requests.put((max(0, int(timeout * 1000)),
                            max_records or self._consumer.config["max_poll_records"]))
        failure: BaseException | None = None
        while True:
            item = self.results.get()
            if isinstance(item, _GroupEvent):
                try:
                    self._handle(item)
                except BaseException as exc:  # re-raised once the client's poll returned
                    failure = failure or exc
                finally:
                    item.done.success(None)
                    self._wake_io_loop()
                continue
            if failure is not None:
                raise failure
            if item.error is not None:
                raise _error(item.error, "poll") from item.error
            return self._convert(item.records or {})

    def _keep_alive(self) -> None:
        """kafka-python stops heartbeating while its JoinGroup/SyncGroup round trip is in
        flight and starts again only in the next poll() after it completed. A rebalance that
        begins just before the caller starts a long insert would leave the member silent for
        longer than the session timeout, and the broker evicts it. So while the caller does
        not poll, this thread polls with every partition paused: the group protocol goes on
        (rebalance callbacks are queued for the caller's next poll, as always) and no record
        is taken. Records of a partition assigned during this poll, which was not paused yet,
        are put back by seeking to the first of them."""
        if time.monotonic() - self._last_caller_poll > self._max_poll_interval / 2:
            # The caller hangs: let max_poll_interval remove the member, as it should (the
            # client counts from its last poll, a keep-alive one too: at most 1.5 times it).
            return
        try:
            assigned = set(self._consumer.assignment())
            with self._paused_lock:
                paused_here = {p for p in assigned if _tp(p) not in self._caller_paused}
            if paused_here:
                self._consumer.pause(*paused_here)
            fetched = self._consumer.poll(timeout_ms=100)
            for ktp, messages in fetched.items():
                if messages:
                    self._consumer.seek(ktp, messages[0].offset)
            with self._paused_lock:
                resume = [p for p in paused_here | set(self._consumer.assignment())
                          if _tp(p) not in self._caller_paused]
            if resume:
                self._consumer.resume(*resume)
        except Exception:  # the caller's next poll reports the client's trouble
            _LOG.debug("keep-alive poll failed", exc_info=True)

    def _wake_io_loop(self) -> None:
        """Completing the event's future from this thread only queues the listener's
        continuation; the IO loop sees it when something wakes it. Any blocking consumer call
        schedules work on the loop and wakes it: a metadata request (cached answers, such as
        committed offsets, could come back stale), answer ignored."""
        with contextlib.suppress(Exception):
            self._consumer.topics()

    def _handle(self, event: _GroupEvent) -> None:
        listener = self._listener
        if listener is None:
            return
        if event.kind == "assigned":
            for tp, offset in listener.on_assigned(event.partitions).items():
                self._consumer.seek(_ktp(tp), offset)
        elif event.kind == "revoked":
            listener.on_revoked(event.partitions)
        else:
            listener.on_lost(event.partitions)

    @staticmethod
    def _convert(fetched: dict[Any, list[Any]]) -> dict[TopicPartition, RecordBatch]:
        result = {}
        for ktp, messages in fetched.items():
            topic, partition = ktp.topic, ktp.partition
            result[TopicPartition(topic, partition)] = RecordBatch(
                topic, partition, [m.offset for m in messages],
                [m.timestamp for m in messages], [m.key for m in messages],
                [m.value for m in messages],
                [tuple(m.headers) if m.headers else () for m in messages])
        return result

    def assignment(self) -> set[TopicPartition]:
        return {_tp(p) for p in self._consumer.assignment()}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(_ktp(partition), offset)
        except (kerrors.KafkaError, AssertionError) as exc:
            raise _error(exc, f"seek {partition.topic}:{partition.partition}") from None

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        tps = list(partitions)
        with self._paused_lock:
            self._caller_paused.update(tps)
            self._consumer.pause(*[_ktp(tp) for tp in tps])

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        tps = list(partitions)
        with self._paused_lock:
            self._caller_paused.difference_update(tps)
            self._consumer.resume(*[_ktp(tp) for tp in tps])

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            self._consumer.commit(
                {_ktp(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        except kerrors.KafkaError as exc:
            raise _error(exc, "commit") from None

    def committed(self, partitions: Iterable[TopicPartition], timeout: float = 10.0
                  ) -> dict[TopicPartition, int | None]:
        result: dict[TopicPartition, int | None] = {}
        try:
            for tp in partitions:
                result[tp] = self._consumer.committed(_ktp(tp), timeout_ms=int(timeout * 1000))
        except kerrors.KafkaError as exc:
            raise _error(exc, "committed offsets") from None
        return result

    def end_offsets(self, partitions: Iterable[TopicPartition], timeout: float = 10.0
                    ) -> dict[TopicPartition, int]:
        try:
            ends = self._consumer.end_offsets([_ktp(tp) for tp in partitions],
                                              timeout_ms=int(timeout * 1000))
        except kerrors.KafkaError as exc:
            raise _error(exc, "end offsets") from None
        return {_tp(k): int(v) for k, v in ends.items()}

    def highwater(self, partition: TopicPartition) -> int | None:
        end = self._consumer.highwater(_ktp(partition))
        return None if end is None else int(end)

    def close(self) -> None:
        self.closing = True
        if self._poller is not None:
            self._requests.put(None)
            self._poller.join(timeout=30)
        self._consumer.close(autocommit=False)


# --- admin -------------------------------------------------------------------------------


class KafkaPythonAdmin:
    def __init__(self, bootstrap: str, timeout: float = 10.0,
                 extra: Mapping[str, Any] | None = None,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        config = backend_config(BACKEND, {
            "bootstrap": bootstrap, "client_id": "chute-admin",
            "request_timeout_ms": int(timeout * 1000)}, security)
        config["bootstrap_timeout_ms"] = int(timeout * 1000)
        config.update(extra or {})
        try:
            self._admin = KafkaAdminClient(**config)
        except kerrors.KafkaError as exc:
            raise _error(exc, f"connect to {bootstrap}") from None

    def topic_partitions(self) -> dict[str, int]:
        try:
            topics = self._admin.describe_topics()
        except kerrors.KafkaError as exc:
            raise _error(exc, "list topics") from None
        return {str(t["name"]): len(t["partitions"]) for t in topics
                if not t.get("is_internal") and not str(t["name"]).startswith("__")}

    def create_topic(self, topic: TopicConfig) -> bool:
        try:
            self._admin.create_topics(
                [NewTopic(topic.name, topic.partitions, topic.replication_factor,
                          topic_configs=dict(topic.configs))],
                wait_for_metadata=True)
        except kerrors.TopicAlreadyExistsError:
            return False
        except kerrors.KafkaError as exc:
            raise _error(exc, f"create topic {topic.name}") from None
        return True

    def broker_count(self) -> int:
        try:
            return len(self._admin.describe_cluster()["brokers"])
        except kerrors.KafkaError as exc:
            raise _error(exc, "describe cluster") from None

    def under_replicated(self) -> dict[str, list[int]]:
        try:
            topics = self._admin.describe_topics()
        except kerrors.KafkaError as exc:
            raise _error(exc, "describe topics") from None
        result: dict[str, list[int]] = {}
        for t in topics:
            name = str(t["name"])
            if t.get("is_internal") or name.startswith("__"):
                continue
            short = sorted(int(p["partition_index"]) for p in t["partitions"]
                           if len(p["isr_nodes"]) < len(p["replica_nodes"]))
            if short:
                result[name] = short
        return result

    def add_partitions(self, topic: str, total: int) -> None:
        try:
            self._admin.create_partitions({topic: NewPartitions(total)})
        except kerrors.KafkaError as exc:
            raise _error(exc, f"add partitions to {topic}") from None

    def delete_topic(self, topic: str) -> None:
        try:
            self._admin.delete_topics([topic])
        except kerrors.KafkaError as exc:
            raise _error(exc, f"delete topic {topic}") from None

    def group_offsets(self, group: str, partitions: Sequence[TopicPartition]
                      ) -> dict[TopicPartition, int | None]:
        try:
            found = self._admin.list_group_offsets(
                {group: [_ktp(tp) for tp in partitions]}).get(group, {})
        except kerrors.KafkaError as exc:
            raise _error(exc, f"offsets of group {group}") from None
        result: dict[TopicPartition, int | None] = {}
        for tp in partitions:
            mark = found.get(_ktp(tp))
            result[tp] = mark.offset if mark is not None and mark.offset >= 0 else None
        return result

    def _offsets(self, partitions: Sequence[TopicPartition], spec: Any
                 ) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        try:
            found = self._admin.list_partition_offsets({_ktp(tp): spec for tp in partitions})
        except kerrors.KafkaError as exc:
            raise _error(exc, "list offsets") from None
        return {_tp(k): int(v.offset) for k, v in found.items()}

    def start_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return self._offsets(partitions, OffsetSpec.EARLIEST)

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return self._offsets(partitions, OffsetSpec.LATEST)

    def group_members(self, group: str) -> list[str]:
        try:
            groups = self._admin.describe_groups([group])
        except kerrors.KafkaError as exc:
            raise _error(exc, f"describe group {group}") from None
        members: list[str] = []
        for description in (groups.values() if isinstance(groups, dict) else groups):
            for member in _field(description, "members") or ():
                members.append(str(_field(member, "client_id")))
        return sorted(members)

    def describe_group(self, group: str) -> list[GroupMember]:
        try:
            groups = self._admin.describe_groups([group])
        except kerrors.KafkaError as exc:
            raise _error(exc, f"describe group {group}") from None
        members: list[GroupMember] = []
        for description in (groups.values() if isinstance(groups, dict) else groups):
            for member in _field(description, "members") or ():
                assignment = _field(member, "member_assignment")
                members.append(GroupMember(
                    member_id=str(_field(member, "member_id")),
                    client_id=str(_field(member, "client_id")),
                    host=str(_field(member, "client_host")).lstrip("/"),
                    partitions=_assigned(assignment)))
        return sorted(members, key=lambda m: (m.client_id, m.member_id))

    def topic_ids(self, topics: Sequence[str]) -> dict[str, str]:
        if not topics:
            return {}
        try:
            described = self._admin.describe_topics(list(topics))
        except kerrors.UnknownTopicOrPartitionError:
            described = []
        except kerrors.KafkaError as exc:
            raise _error(exc, "describe topics") from None
        return {str(t["name"]): str(uuid.UUID(str(t["topic_id"]))) for t in described
                if not t.get("error_code") and t.get("topic_id")}

    def close(self) -> None:
        self._admin.close()


def _assigned(assignment: Any) -> tuple[TopicPartition, ...]:
    """A member's parsed assignment: {"assigned_partitions": [{"topic", "partitions"}]}."""
    found = [TopicPartition(str(_field(entry, "topic")), int(p))
             for entry in (_field(assignment, "assigned_partitions") or ()) if assignment
             for p in _field(entry, "partitions") or ()]
    return tuple(sorted(found))


def _field(value: Any, name: str) -> Any:
    """describe_groups answers dicts or named tuples, by kafka-python version."""
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)
