"""The kafka-python group consumer, with rebalance callbacks on the polling thread.

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
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import kafka.errors as kerrors
from kafka import KafkaConsumer
from kafka.consumer.subscription_state import AsyncConsumerRebalanceListener
from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
from kafka.future import Future
from kafka.structs import OffsetAndMetadata

from chute.kafka.client_config import backend_config, consumer_settings
from chute.kafka.kafkapython.common import BACKEND, client_error, to_client, to_seam
from chute.kafka.seam import ConsumerOptions, RebalanceListener, RecordBatch, TopicPartition
from chute.kafka.security import PLAINTEXT, KafkaSecurity

_LOG = logging.getLogger("chute.kafka.kafkapython")
# A synchronous commit waits for the group coordinator, also through a rebalance in progress:
# bounded, so a commit on the way out cannot hold a stopping worker past its grace (the caller
# retries a timed-out commit until its deadline).
COMMIT_TIMEOUT_MS = 10_000
# How long close() waits for the polling thread's poll() to return: one keep-alive poll
# (100 ms) or a group join step, once its group events are answered.
CLOSE_POLLER_SECONDS = 5.0


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
        event = _GroupEvent(kind, sorted(to_seam(p) for p in partitions))
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
            raise client_error(exc, f"connect to {bootstrap}") from None
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
                raise client_error(item.error, "poll") from item.error
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
                paused_here = {p for p in assigned if to_seam(p) not in self._caller_paused}
            if paused_here:
                self._consumer.pause(*paused_here)
            fetched = self._consumer.poll(timeout_ms=100)
            for ktp, messages in fetched.items():
                if messages:
                    self._consumer.seek(ktp, messages[0].offset)
            with self._paused_lock:
                resume = [p for p in paused_here | set(self._consumer.assignment())
                          if to_seam(p) not in self._caller_paused]
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
                self._consumer.seek(to_client(tp), offset)
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
        return {to_seam(p) for p in self._consumer.assignment()}

    def seek(self, partition: TopicPartition, offset: int) -> None:
        try:
            self._consumer.seek(to_client(partition), offset)
        except (kerrors.KafkaError, AssertionError) as exc:
            raise client_error(exc, f"seek {partition.topic}:{partition.partition}") from None

    def pause(self, partitions: Iterable[TopicPartition]) -> None:
        tps = list(partitions)
        with self._paused_lock:
            self._caller_paused.update(tps)
            self._consumer.pause(*[to_client(tp) for tp in tps])

    def resume(self, partitions: Iterable[TopicPartition]) -> None:
        tps = list(partitions)
        with self._paused_lock:
            self._caller_paused.difference_update(tps)
            self._consumer.resume(*[to_client(tp) for tp in tps])

    def commit(self, offsets: Mapping[TopicPartition, int]) -> None:
        if not offsets:
            return
        try:
            self._consumer.commit(
                {to_client(tp): OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()},
                timeout_ms=COMMIT_TIMEOUT_MS)
        except kerrors.KafkaError as exc:
            raise client_error(exc, "commit") from None

    def committed(self, partitions: Iterable[TopicPartition], timeout: float = 10.0
                  ) -> dict[TopicPartition, int | None]:
        result: dict[TopicPartition, int | None] = {}
        try:
            for tp in partitions:
                result[tp] = self._consumer.committed(to_client(tp), timeout_ms=int(timeout * 1000))
        except kerrors.KafkaError as exc:
            raise client_error(exc, "committed offsets") from None
        return result

    def end_offsets(self, partitions: Iterable[TopicPartition], timeout: float = 10.0
                    ) -> dict[TopicPartition, int]:
        try:
            ends = self._consumer.end_offsets([to_client(tp) for tp in partitions],
                                              timeout_ms=int(timeout * 1000))
        except kerrors.KafkaError as exc:
            raise client_error(exc, "end offsets") from None
        return {to_seam(k): int(v) for k, v in ends.items()}

    def highwater(self, partition: TopicPartition) -> int | None:
        end = self._consumer.highwater(to_client(partition))
        return None if end is None else int(end)

    def close(self) -> None:
        self.closing = True
        if self._poller is not None:
            self._requests.put(None)
            # A group event posted before closing waits for a caller that polls no more, and
            # the polling thread's poll() (a group join, often a keep-alive one) waits for the
            # event. Answer such events without calling the listener, as _Relay does from now
            # on: the caller is leaving and has flushed what it could.
            deadline = time.monotonic() + CLOSE_POLLER_SECONDS
            while self._poller.is_alive() and time.monotonic() < deadline:
                self._answer_pending_events()
                self._poller.join(timeout=0.05)
        self._consumer.close(autocommit=False)

    def _answer_pending_events(self) -> None:
        while True:
            try:
                item = self.results.get_nowait()
            except queue.Empty:
                return
            if isinstance(item, _GroupEvent):
                item.done.success(None)
                self._wake_io_loop()
