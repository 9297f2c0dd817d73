"""The sync loop: poll Kafka -> decode -> buffer per table -> insert -> commit.

Offsets are committed only after ClickHouse acknowledged the insert holding them (and the
dead-letter producer acknowledged the envelopes), so a crash at any moment re-delivers and
never loses. Transient ClickHouse errors are retried with backoff while nothing is fetched.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from chute import kafka, metrics
from chute.identifiers import quote_identifier
from chute.kafka import CommitRebalanced, KafkaClientError, Record, TopicPartition
from chute.pipeline import Stream
from chute.registry import Definitions
from chute.server import ServerProfile

from sync_worker.buffer import TableBuffer
from sync_worker.errors import TRANSIENT, classify
from sync_worker.policy import Backoff, BatchLimits, DeadLetterGuard, FlushReason
from sync_worker.rows import (
    ColumnBuilder,
    DecodeFailure,
    Position,
    RowDecoder,
    dead_letter_envelope,
)
from sync_worker.settings import SyncSettings
from sync_worker.writer import ClickHouseWriter, Isolator

log = structlog.get_logger()

_E2E_SAMPLES = 500  # rows per batch whose end-to-end latency is observed


class DeadLetterRatioExceeded(RuntimeError):
    """Too many records are going to the dead-letter queue: probably a misconfiguration."""


class FlushAbandoned(RuntimeError):
    """A flush could not finish before shutdown; its offsets stay uncommitted."""


@dataclass
class Route:
    """Where one topic's records go."""

    stream: Stream[Any]
    table: str
    decoder: RowDecoder
    builder: ColumnBuilder
    buffer: TableBuffer
    dead_letter_topic: str | None
    exactly_once: bool


def build_routes(defs: Definitions, profile: ServerProfile) -> dict[str, Route]:
    routes = {}
    for stream in defs.synced_streams():
        table = stream.destination
        assert table is not None
        definition = table.definition(profile)
        columns = [c for c in definition.columns if not c.name.startswith("_chute_")]
        cfg = stream.config
        metrics.init_sync_table(table.name)
        limits = BatchLimits(cfg.max_batch_rows, cfg.max_batch_bytes, cfg.max_batch_wait)
        routes[stream.topic] = Route(
            stream=stream,
            table=table.name,
            decoder=RowDecoder(stream.model),
            builder=ColumnBuilder(columns, exactly_once=table.exactly_once),
            buffer=TableBuffer(table.name, stream.topic, limits),
            dead_letter_topic=stream.dead_letter.topic if stream.dead_letter else None,
            exactly_once=table.exactly_once,
        )
    return routes


class SyncWorker:
    def __init__(self, settings: SyncSettings, consumer: kafka.Consumer, producer: kafka.Producer,
                 writer: ClickHouseWriter, routes: dict[str, Route],
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.writer = writer
        self.routes = routes
        self.clock = clock
        self.sleep = sleep
        self.stopping = False
        self.stop_deadline: float | None = None
        self.guard = DeadLetterGuard(settings.sync_dlq_ratio_limit, settings.sync_dlq_ratio_window,
                                     settings.sync_dlq_ratio_min_records)
        # Exactly-once: highest offset already in the table, per partition.
        self.watermarks: dict[TopicPartition, int] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.last_loop = self.clock()
        self.paused = False
        self._next_lag_update = 0.0
        # Partitions this worker owns, as told by the rebalance callbacks (which the seam runs
        # inside poll(), on this thread).
        self.assigned: set[TopicPartition] = set()
        self.closing = False
        self._inserts_done = 0

    # --- lifecycle ----------------------------------------------------------------------

    def subscribe(self) -> None:
        self.consumer.subscribe(sorted(self.routes), _Listener(self))
        log.info("subscribed", topics=sorted(self.routes), group=self.settings.sync_group)

    def request_stop(self) -> None:
        if not self.stopping:
            self.stopping = True
            self.stop_deadline = self.clock() + self.settings.sync_shutdown_flush_seconds
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
            self.flush_all(FlushReason.SHUTDOWN)
        except FlushAbandoned as exc:
            log.warning("shutdown flush abandoned; rows will be re-delivered", error=str(exc))
        self.closing = True
        self.consumer.close()
        self.producer.flush(timeout=5)
        log.info("left the consumer group")

    # --- the loop -----------------------------------------------------------------------

    def poll_once(self) -> None:
        now = self.clock()
        self.last_loop = now
        timeout = 0.5
        for route in self.routes.values():
            due_in = route.buffer.seconds_until_due(now)
            if due_in is not None:
                timeout = min(timeout, due_in)
        # Rebalance callbacks run inside poll(): revoked partitions are flushed (or dropped)
        # and new ones positioned before any of their records is returned.
        records = self.consumer.poll(max(0.001, timeout))
        for tp, messages in records.items():
            if tp in self.assigned:  # else fetched before a revocation: the owner re-reads
                self.accept(self.routes[tp.topic], tp, messages)
        now = self.clock()
        for route in self.routes.values():
            reason = route.buffer.due(now)
            if reason is not None:
                self.flush(route, reason)
        if now >= self._next_lag_update:
            self._next_lag_update = now + 5.0
            self.update_lag()

    def accept(self, route: Route, tp: TopicPartition, messages: list[Record]) -> None:
        """Decode one partition's messages into the route's buffer; flush whenever it is
        full, so batches are exactly max_batch_rows. The hot loop of the worker."""
        buf = route.buffer
        decode = route.decoder.decode
        mark = self.watermarks.get(tp, -1) if route.exactly_once else -1
        now = self.clock()
        good = 0
        for message in messages:
            offset = message.offset
            buf.note_offset(tp, offset, now)
            if offset <= mark:
                continue  # exactly-once: already in the table; skipped but committed
            value = message.value
            row = decode(value)
            if isinstance(row, DecodeFailure):
                metrics.SYNC_ERRORS.labels(route.table, "decode").inc()
                position = Position(tp.topic, tp.partition, offset, message.timestamp_ms)
                self.dead_letter(route, position, value, row.error_type, row.error_message)
                continue
            buf.add(row, tp.partition, offset, message.timestamp_ms, len(value), now)
            good += 1
            if buf.full:
                self.guard.record(False, good)
                good = 0
                self.flush(route, FlushReason.ROWS if len(buf.rows) >= buf.limits.max_rows
                           else FlushReason.BYTES)
                now = self.clock()
        self.guard.record(False, good)
        metrics.SYNC_BUFFERED_ROWS.labels(route.table).set(len(buf.rows))

    def dead_letter(self, route: Route, position: Position, payload: bytes | None,
                    error_type: str, message: str, into: TableBuffer | None = None) -> None:
        """Log and count a record that cannot be stored; its envelope goes out with the
        batch (`into`, default the route's filling buffer) before that batch's commit."""
        buffer = route.buffer if into is None else into
        log.warning("dead letter", table=route.table, topic=position.topic,
                    partition=position.partition, offset=position.offset,
                    error_type=error_type, error=message[:300])
        metrics.SYNC_DLQ_RECORDS.labels(route.table).inc()
        self.guard.record(True)
        if self.guard.tripped:
            raise DeadLetterRatioExceeded(
                f"{self.guard.ratio:.0%} of the last {self.settings.sync_dlq_ratio_window} "
                f"records went to the dead-letter queue (limit "
                f"{self.settings.sync_dlq_ratio_limit:.0%}); last error on {position.topic}: "
                f"{error_type}: {message[:300]}. Stopping without committing: check the "
                "model, the topic and the table.")
        tp = TopicPartition(position.topic, position.partition)
        if route.dead_letter_topic is None:
            log.error("record dropped: the stream has no dead-letter queue", table=route.table,
                      partition=position.partition, offset=position.offset)
            buffer.note_offset(tp, position.offset, self.clock())
            return
        envelope = dead_letter_envelope(pipeline=route.stream.name, position=position,
                                        payload=payload, error_type=error_type,
                                        error_message=message)
        buffer.add_dead_letter(envelope, tp, position.offset, self.clock())

    # --- flushing -----------------------------------------------------------------------

    def flush_all(self, reason: str) -> dict[TopicPartition, int]:
        """Insert everything buffered now and return the offsets it covers (committed here
        unless this runs on kafka-python's IO thread, on revocation)."""
        on_main = threading.current_thread() is threading.main_thread()
        offsets: dict[TopicPartition, int] = {}
        for route in self.routes.values():
            if route.buffer.pending:
                done = self._write(route, route.buffer.detach(), reason)
                if on_main:
                    self._commit(done)
                offsets.update(done)
        return offsets

    def flush(self, route: Route, reason: str) -> None:
        """Insert the route's batch and commit it. Nothing is fetched meanwhile, so a batch
        retried through a ClickHouse outage is all the memory held. (An insert thread
        overlapping the next batch's decoding was measured: no gain, since both need the GIL.)"""
        metrics.SYNC_BUFFERED_ROWS.labels(route.table).set(0)
        self._commit(self._write(route, route.buffer.detach(), reason))

    def _write(self, route: Route, batch: TableBuffer, reason: str) -> dict[TopicPartition, int]:
        """Insert a detached batch, dead-letter what ClickHouse rejects and produce the
        batch's envelopes; returns the offsets to commit."""
        started = time.perf_counter()
        if batch.rows:
            self._insert(route, batch)
        rows = len(batch.rows)
        self._produce_dead_letters(route, batch)
        self._maybe_inject_fault(rows)
        duration = time.perf_counter() - started
        if rows:
            self._observe(route, batch, rows)
            log.info("batch inserted", table=route.table, rows=rows, bytes=batch.size,
                     partitions=batch.describe_offsets(), duration_ms=round(duration * 1000, 1),
                     reason=reason, dead_letters=len(batch.dead_letters))
        return {tp: offset + 1 for tp, offset in batch.last_offsets.items()}

    def _maybe_inject_fault(self, rows: int) -> None:
        if not self.settings.sync_fault_kill_after_inserts or not rows:
            return
        self._inserts_done += 1
        if self._inserts_done >= self.settings.sync_fault_kill_after_inserts:
            log.warning("fault injection: SIGKILL after insert, before commit", rows=rows)
            os.kill(os.getpid(), signal.SIGKILL)

    def _insert(self, route: Route, buf: TableBuffer) -> None:
        data = route.builder.build(buf.rows, buf.partitions, buf.offsets)
        names = route.builder.names

        def insert(lo: int, hi: int) -> None:
            self.writer.insert(route.table, names, [col[lo:hi] for col in data])

        isolator = Isolator(len(buf.rows))

        def insert_all() -> None:
            started = time.perf_counter()
            isolator.run(insert, classify)
            # The successful attempt only: retries and commits are not insert latency.
            metrics.SYNC_INSERT_SECONDS.labels(route.table).observe(time.perf_counter() - started)

        self._with_retry(insert_all, route.table, "insert")
        for index, exc in isolator.rejected:
            metrics.SYNC_ERRORS.labels(route.table, "data").inc()
            self.dead_letter(route, buf.position(index),
                             buf.rows[index].model_dump_json().encode(),
                             f"ClickHouseRejected:{type(exc).__name__}", str(exc), into=buf)
        if isolator.rejected:
            buf.remove({index for index, _ in isolator.rejected})

    def _produce_dead_letters(self, route: Route, buf: TableBuffer) -> None:
        envelopes = buf.dead_letters
        if not envelopes or route.dead_letter_topic is None:
            return
        topic = route.dead_letter_topic

        def produce() -> None:
            self.producer.deliver(topic, envelopes, timeout=30)

        self._with_retry(produce, route.table, "dead-letter produce")

    def _with_retry(self, action: Callable[[], None], table: str, what: str) -> None:
        backoff = Backoff(self.settings.sync_retry_initial_seconds,
                          self.settings.sync_retry_max_seconds)
        while True:
            try:
                action()
                if self.paused:
                    log.info("resumed", table=table, attempts=backoff.attempt)
                    self.paused = False
                    metrics.SYNC_PAUSED.set(0)
                return
            except Exception as exc:
                if not isinstance(exc, KafkaClientError) and classify(exc) != TRANSIENT:
                    raise
                if not isinstance(exc, KafkaClientError):
                    # Only ClickHouse errors: the client belongs to the thread that inserts.
                    self.writer.reset()
                metrics.SYNC_ERRORS.labels(table, "transient").inc()
                self.paused = True
                metrics.SYNC_PAUSED.set(1)
                delay = backoff.next_delay()
                if self.stop_deadline is not None and self.clock() + delay > self.stop_deadline:
                    raise FlushAbandoned(f"{what} into {table} failed: {exc}") from exc
                log.warning("retrying", what=what, table=table, attempt=backoff.attempt,
                            delay_s=round(delay, 2), error=f"{type(exc).__name__}: {exc}")
                self._pause(delay)

    def _pause(self, delay: float) -> None:
        """Wait without fetching: the consumer is not polled, so nothing new is buffered.
        The consumer's heartbeat thread keeps the group membership."""
        end = self.clock() + delay
        while self.clock() < end:
            self.last_loop = self.clock()
            # Lag keeps being reported during an outage (it grows: that is the signal), but
            # only from the main thread, not from kafka-python's IO thread on revocation.
            if (self.clock() >= self._next_lag_update
                    and threading.current_thread() is threading.main_thread()):
                self._next_lag_update = self.clock() + 5.0
                self.update_lag(ask_broker=True)
            self.sleep(max(0.0, min(0.2, end - self.clock())))  # the lag read may overrun

    def _commit(self, offsets: dict[TopicPartition, int]) -> None:
        """Commit after the insert. Kafka unreachable: retried with backoff like an insert
        (the rows are in; giving up would only re-deliver them). Partitions moved to another
        worker: logged, nothing to retry (the new owner re-reads from the last commit)."""
        if not offsets:
            return
        rebalanced: list[CommitRebalanced] = []

        def commit() -> None:
            try:
                self.consumer.commit(offsets)
            except CommitRebalanced as exc:
                rebalanced.append(exc)

        self._with_retry(commit, ",".join(sorted({tp.topic for tp in offsets})),
                         "offset commit")
        if rebalanced:
            log.warning("commit failed after rebalance; rows may be delivered again",
                        error=str(rebalanced[0]))
            return
        self.committed.update(offsets)
        for tp in offsets:
            metrics.SYNC_COMMITS.labels(tp.topic).inc()

    def _observe(self, route: Route, buf: TableBuffer, rows: int) -> None:
        metrics.SYNC_ROWS_INSERTED.labels(route.table).inc(len(buf.rows))
        metrics.SYNC_BATCH_ROWS.labels(route.table).observe(rows)
        metrics.SYNC_BATCH_BYTES.labels(route.table).observe(buf.size)
        now_ms = time.time() * 1000
        step = max(1, len(buf.timestamps) // _E2E_SAMPLES)
        histogram = metrics.SYNC_END_TO_END_SECONDS.labels(route.table)
        for timestamp in buf.timestamps[::step]:
            histogram.observe(max(0.0, (now_ms - timestamp) / 1000))

    # --- rebalancing and exactly-once ---------------------------------------------------
    # The seam calls these inside consumer.poll(), on this thread, never on a client's
    # network thread: heartbeats go on while they insert, and during on_revoked the
    # partitions are still ours, so their offsets can be committed.

    def flush_for_revocation(self, revoked: Sequence[TopicPartition]) -> None:
        """Insert and commit what is buffered before the partitions go to another worker, so
        the next owner (and its exactly-once watermark) starts after our last insert. Retries
        stop after sync_rebalance_flush_seconds (an insert under way finishes first); then the
        buffered rows are dropped: nothing was committed for them, the next owner re-reads."""
        log.info("partitions revoked", partitions=_names(revoked))
        kept = self.assigned - set(revoked)
        previous = self.stop_deadline
        deadline = self.clock() + self.settings.sync_rebalance_flush_seconds
        self.stop_deadline = deadline if previous is None else min(previous, deadline)
        try:
            self.flush_all(FlushReason.REBALANCE)
        except FlushAbandoned as exc:
            log.warning("rebalance flush abandoned; rows will be re-delivered", error=str(exc))
            self.stop_deadline = previous
            self._drop_buffered(kept)
        finally:
            self.stop_deadline = previous
        self._forget(revoked)

    def on_lost(self, lost: Sequence[TopicPartition]) -> None:
        """This worker was evicted: the partitions may already belong to another worker, so
        their buffered rows must never be inserted (nor their offsets committed)."""
        log.warning("partitions lost; their buffered rows are dropped", partitions=_names(lost))
        self._drop_buffered(self.assigned - set(lost))
        self._forget(lost)

    def _drop_buffered(self, kept: set[TopicPartition]) -> None:
        """Empty every buffer and rewind the partitions still owned to where the table and
        the commits say they are, so the dropped rows of those partitions are read again."""
        for route in self.routes.values():
            route.buffer.clear()
            metrics.SYNC_BUFFERED_ROWS.labels(route.table).set(0)
        if kept:
            for tp, offset in self._start_offsets(sorted(kept)).items():
                self.consumer.seek(tp, offset)

    def _forget(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self.assigned.discard(tp)
            self.watermarks.pop(tp, None)
            self.committed.pop(tp, None)
            with contextlib.suppress(KeyError):
                metrics.SYNC_CONSUMER_LAG.remove(tp.topic, str(tp.partition))

    def on_assigned(self, assigned: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Where each new partition starts: its committed offset, or past the exactly-once
        watermark when the table already holds later rows (returned to the seam, which starts
        fetching there). Partitions without either start at the earliest offset."""
        log.info("partitions assigned", partitions=_names(assigned))
        self.assigned.update(assigned)
        return self._start_offsets(assigned)

    def _start_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        found: dict[TopicPartition, int | None] = {}

        def read_committed() -> None:
            found.update(self.consumer.committed(partitions))

        self._with_retry(read_committed, ",".join(sorted({tp.topic for tp in partitions})),
                         "committed offsets read")
        marks_by_table: dict[str, dict[int, int]] = {}
        caught_up: dict[TopicPartition, int] = {}
        starts: dict[TopicPartition, int] = {}
        for tp in partitions:
            route = self.routes[tp.topic]
            committed = found.get(tp)
            target = committed
            if route.exactly_once:
                if route.table not in marks_by_table:
                    marks_by_table[route.table] = self._read_watermarks(route.table)
                mark = marks_by_table[route.table].get(tp.partition)
                if mark is not None:
                    self.watermarks[tp] = mark
                    if target is None or target <= mark:
                        target = mark + 1
                        caught_up[tp] = target
                    log.info("exactly-once watermark", table=route.table,
                             partition=tp.partition, offset=mark, committed=committed)
            if target is not None:
                starts[tp] = target
                self.committed[tp] = committed if committed is not None else 0
        # Rows up to the watermark are in the table: commit that, so lag and the next
        # owner see it even if no new record arrives.
        self._commit(caught_up)
        return starts

    def _read_watermarks(self, table: str) -> dict[int, int]:
        result: dict[int, int] = {}

        def read() -> None:
            rows = self.writer.client.execute(
                f"SELECT _chute_partition, max(_chute_offset) FROM "
                f"{quote_identifier(self.writer.database)}.{quote_identifier(table)} "
                "GROUP BY _chute_partition")
            result.update({int(p): int(o) for p, o in rows})

        self._with_retry(read, table, "watermark read")
        return result

    def update_lag(self, ask_broker: bool = False) -> None:
        """Lag = end offset - committed offset, per owned partition. The end offsets come from
        the last fetch responses (no request, so the poll loop is not held up); while fetching
        is paused they are asked from the broker, so lag keeps growing during an outage."""
        assignment = sorted(self.assigned)
        if not assignment:
            return
        ends: dict[TopicPartition, int | None] = {}
        if not ask_broker:
            ends = {tp: self.consumer.highwater(tp) for tp in assignment}
        try:
            if ask_broker or any(end is None for end in ends.values()):
                ends = dict(self.consumer.end_offsets(assignment, timeout=2.0))
            missing = [tp for tp in assignment if tp not in self.committed]
            if missing:
                for tp, done in self.consumer.committed(missing, timeout=2.0).items():
                    self.committed[tp] = done or 0
        except KafkaClientError:
            return
        for tp, end in ends.items():
            done = self.committed.get(tp)
            if end is None or done is None:
                continue
            metrics.SYNC_CONSUMER_LAG.labels(tp.topic, str(tp.partition)).set(max(0, end - done))


def _names(tps: Iterable[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}:{tp.partition}" for tp in sorted(tps))


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
