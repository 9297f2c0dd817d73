"""The sync loop: poll Kafka, then the steps decode -> batch -> insert -> commit (steps.py).

Offsets are committed only after ClickHouse acknowledged the insert holding them (and the
dead-letter producer acknowledged the envelopes), so a crash at any moment re-delivers and
never loses. Each pipeline (route) pauses, retries and fails on its own: the others keep
polling, inserting and committing.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence

import structlog
from chute import kafka
from chute.kafka import TopicPartition

from sync_worker.assignment import AssignmentManager, partition_names
from sync_worker.committing import CommitStep
from sync_worker.decoding import DecodeStep
from sync_worker.inserting import InsertStep
from sync_worker.pipeline_state import PipelineState
from sync_worker.policy import FlushReason
from sync_worker.retry import Retrier
from sync_worker.routes import PipelineControl, Route
from sync_worker.settings import SHUTDOWN_PRODUCER_FLUSH_SECONDS, SyncSettings
from sync_worker.steps import FlushAbandoned
from sync_worker.writer import Writer

log = structlog.get_logger()

_LAG_INTERVAL = 5.0  # seconds between consumer-lag reports


class SyncWorker:
    """Owns the consumer and the loop; the steps and the assignment manager do the work.
    `clock` and `sleep` are injected (tests run the loop on a manual clock); `topic_ids`
    asks Kafka for topics' ids (exactly-once streams)."""

    def __init__(self, settings: SyncSettings, consumer: kafka.Consumer, producer: kafka.Producer,
                 writer: Writer, routes: dict[str, Route],
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 topic_ids: Callable[[Sequence[str]], dict[str, str]] | None = None) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.routes = routes
        self.clock = clock
        self.stopping = False
        self.stop_at: float | None = None  # when a stop was asked for: the flushes' deadline
        self.closing = False
        self.last_loop = clock()
        self._next_lag_update = 0.0
        self.retrier = Retrier(settings, clock, sleep, writer.reset, self._while_waiting)
        self.control = PipelineControl(routes, consumer, set(), clock)
        self.commits = CommitStep(consumer, self.retrier, {})
        self.assignment = AssignmentManager(routes, consumer, writer, self.retrier,
                                            self.control, self.commits, topic_ids)
        self.inserts = InsertStep(settings, routes, writer, producer, self.commits,
                                  self.control, self.retrier, self.assignment.topic_ids, clock)
        self.decode = DecodeStep(routes, self.inserts, self.control, self.assignment, clock)

    # --- what the service and /health read ----------------------------------------------

    @property
    def assigned(self) -> set[TopicPartition]:
        return self.assignment.assigned

    @property
    def committed(self) -> dict[TopicPartition, int]:
        return self.assignment.committed

    @property
    def paused(self) -> bool:
        return self.control.paused

    @property
    def stop_deadline(self) -> float | None:
        return self.retrier.deadline

    def pipeline_states(self) -> dict[str, PipelineState]:
        return {route.name: route.state for route in self.routes.values()}

    # --- lifecycle ----------------------------------------------------------------------

    def subscribe(self) -> None:
        self.consumer.subscribe(sorted(self.routes), _Listener(self))
        log.info("subscribed", topics=sorted(self.routes), group=self.settings.sync_group)

    def request_stop(self) -> None:
        """From the signal handler or the definitions watcher: the flushes from now on end by
        the stop deadline (a revocation flush under way keeps its own budget if sooner)."""
        if not self.stopping:
            self.stopping = True
            self.stop_at = self.clock() + self.settings.sync_shutdown_flush_seconds
            current = self.retrier.deadline
            self.retrier.deadline = self.stop_at if current is None else min(current,
                                                                              self.stop_at)
            log.info("stopping: flushing buffers before leaving the group")

    def run(self) -> None:
        self.subscribe()
        while not self.stopping:
            try:
                self.poll_once()
            except FlushAbandoned as exc:
                # SIGTERM during a retried flush: give up on it, commit nothing more.
                log.warning("flush abandoned on shutdown; rows will be re-delivered",
                            error=str(exc))
                self.closing = True
                self.consumer.close()
                return
        self.shutdown()

    def shutdown(self) -> None:
        try:
            self.decode.join(FlushReason.SHUTDOWN)
        except FlushAbandoned as exc:
            log.warning("shutdown flush abandoned; rows will be re-delivered", error=str(exc))
        self.closing = True
        self.consumer.close()
        self.producer.flush(timeout=SHUTDOWN_PRODUCER_FLUSH_SECONDS)
        log.info("left the consumer group")

    # --- the loop -----------------------------------------------------------------------

    def poll_once(self) -> None:
        now = self.clock()
        self.last_loop = now
        # Rebalance callbacks run inside poll(): revoked partitions are flushed (or dropped)
        # and new ones positioned before any of their records is returned.
        records = self.consumer.poll(max(0.001, self._poll_timeout(now)))
        for tp, batch in records.items():
            self.decode.submit((tp, batch))
        now = self.clock()
        self.decode.poll(now)
        if now >= self._next_lag_update:
            self._next_lag_update = now + _LAG_INTERVAL
            self.assignment.update_lag()

    def _poll_timeout(self, now: float) -> float:
        """Until the first batch or retry comes due, at most half a second."""
        timeout = 0.5
        for route in self.routes.values():
            state = route.state
            due_in = route.buffer.seconds_until_due(now) if state.flowing else (
                None if state.next_attempt is None else state.next_attempt - now)
            if due_in is not None:
                timeout = max(0.0, min(timeout, due_in))
        return timeout

    def _while_waiting(self, now: float) -> None:
        """Between the sleeps of a retry: the loop is alive (for /health) and lag keeps
        being reported, asked from the broker since nothing is fetched; not while a stop or
        a revocation budget runs (asking the broker may take seconds per partition)."""
        self.last_loop = now
        if now >= self._next_lag_update and self.retrier.deadline is None:
            self._next_lag_update = now + _LAG_INTERVAL
            self.assignment.update_lag(ask_broker=True)

    # --- rebalancing (inside consumer.poll(), on this thread) ---------------------------

    def on_assigned(self, assigned: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return self.assignment.on_assigned(assigned)

    def flush_for_revocation(self, revoked: Sequence[TopicPartition]) -> None:
        """Insert and commit what is buffered before the partitions go to another worker, so
        the next owner (and its exactly-once watermark) starts after our last insert. Retries
        stop after sync_rebalance_flush_seconds (an insert under way finishes first); then the
        buffered rows are dropped: nothing was committed for them, the next owner re-reads."""
        log.info("partitions revoked", partitions=partition_names(revoked))
        kept = self.assigned - set(revoked)
        budget = self.clock() + self.settings.sync_rebalance_flush_seconds
        self.retrier.deadline = budget if self.stop_at is None else min(budget, self.stop_at)
        try:
            self.decode.join(FlushReason.REBALANCE)
        except FlushAbandoned as exc:
            log.warning("rebalance flush abandoned; rows will be re-delivered", error=str(exc))
            self.retrier.deadline = self.stop_at
            self._drop_buffered(kept)
        finally:
            # Back to the stop deadline, also when a stop was asked for during the flush.
            self.retrier.deadline = self.stop_at
        self.assignment.forget(revoked)

    def on_lost(self, lost: Sequence[TopicPartition]) -> None:
        """This worker was evicted: the partitions may already belong to another worker, so
        their buffered rows must never be inserted (nor their offsets committed)."""
        log.warning("partitions lost; their buffered rows are dropped",
                    partitions=partition_names(lost))
        self._drop_buffered(self.assigned - set(lost))
        self.assignment.forget(lost)

    def _drop_buffered(self, kept: set[TopicPartition]) -> None:
        """Empty every buffer and rewind the partitions still owned, so the dropped rows of
        those partitions are read again."""
        self.decode.close()
        self.assignment.rewind(kept)


class _Listener:
    """The worker's side of the seam's rebalance callbacks (run inside poll())."""

    def __init__(self, worker: SyncWorker) -> None:
        self.worker = worker

    def on_assigned(self, partitions: Sequence[TopicPartition]
                    ) -> Mapping[TopicPartition, int]:
        return self.worker.on_assigned(partitions)

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        if not self.worker.closing:
            self.worker.flush_for_revocation(partitions)

    def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        self.worker.on_lost(partitions)
