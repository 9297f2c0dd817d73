"""The sync loop: poll Kafka -> decode -> buffer per table -> insert -> commit.

Offsets are committed only after ClickHouse acknowledged the insert holding them (and the
dead-letter producer acknowledged the envelopes), so a crash at any moment re-delivers and
never loses. Each pipeline (route) pauses, retries and fails on its own (pipeline_state.py):
a failing insert pauses that route's partitions and holds its batch until a retry succeeds,
while the other routes keep polling, inserting and committing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from chute import kafka, metrics
from chute.fingerprint import model_fingerprint
from chute.kafka import CommitRebalanced, KafkaClientError, RecordBatch, TopicPartition
from chute.pipeline import Stream
from chute.registry import Definitions
from chute.server import ServerProfile
from pydantic import BaseModel

from sync_worker.buffer import TableBuffer
from sync_worker.errors import DATA, UNKNOWN, classify
from sync_worker.intake import model_header, one_model, run_end
from sync_worker.pipeline_state import PipelineState, Status
from sync_worker.policy import Backoff, BatchLimits, DeadLetterGuard, FlushReason
from sync_worker.rows import (
    ColumnBuilder,
    DecodeFailure,
    Position,
    RowDecoder,
    dead_letter_envelope,
    field_names,
    fits_model,
)
from sync_worker.settings import SHUTDOWN_PRODUCER_FLUSH_SECONDS, SyncSettings
from sync_worker.writer import InsertStillRunning, Isolator, Writer, first_missing, new_query_id

log = structlog.get_logger()

_E2E_SAMPLES = 500  # rows per batch whose end-to-end latency is observed


class DeadLetterRatioExceeded(RuntimeError):
    """Too many of a pipeline's records are going to the dead-letter queue: probably a
    misconfiguration. Stops that pipeline."""

MODEL_MISMATCH = "records from a newer/other model definition: reload the worker"


class FlushAbandoned(RuntimeError):
    """A flush could not finish before shutdown; its offsets stay uncommitted. `done`: the
    offsets of what other pipelines did flush meanwhile (still to be committed)."""

    def __init__(self, message: str, done: dict[TopicPartition, int] | None = None) -> None:
        super().__init__(message)
        self.done = done or {}


@dataclass
class HeldBatch:
    """A detached batch on its way in, kept across failed attempts so a retry resumes it
    (the isolator knows which rows are in; dead letters are not produced twice)."""

    batch: TableBuffer
    reason: str
    isolator: Isolator
    columns: list[list[Any]] | None = None
    dead_letters_sent: bool = False
    query_id: str = ""  # of the last insert sent: reconciled when its outcome is unknown


@dataclass
class Route:
    """Where one topic's records go, and how that pipeline is doing."""

    stream: Stream[Any]
    table: str
    decoder: RowDecoder
    builder: ColumnBuilder
    buffer: TableBuffer
    dead_letter_topic: str | None
    exactly_once: bool
    state: PipelineState
    guard: DeadLetterGuard
    fingerprint: str
    field_names: frozenset[str]  # the keys a record of this model may carry
    held: HeldBatch | None = None

    @property
    def fingerprint_bytes(self) -> bytes:
        return self.fingerprint.encode()

    @property
    def name(self) -> str:
        return self.stream.name

    def drop_pending(self) -> None:
        """Forget what is buffered or held (it is re-delivered: nothing of it is committed).
        A retrying pipeline stays so; its next attempt finds nothing held and resumes it."""
        self.buffer.clear()
        self.held = None


def build_routes(defs: Definitions, profile: ServerProfile,
                 settings: SyncSettings) -> dict[str, Route]:
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
            decoder=RowDecoder(stream.model, profile, cfg.extra),
            builder=ColumnBuilder(columns, exactly_once=stream.exactly_once),
            buffer=TableBuffer(table.name, stream.topic, limits, width=len(columns)),
            dead_letter_topic=stream.dead_letter.topic if stream.dead_letter else None,
            exactly_once=stream.exactly_once,
            state=PipelineState(Backoff(settings.sync_retry_initial_seconds,
                                        settings.sync_retry_max_seconds),
                                unknown_budget=settings.sync_retry_budget),
            guard=DeadLetterGuard(settings.sync_dlq_ratio_limit, settings.sync_dlq_ratio_window,
                                  settings.sync_dlq_ratio_min_records),
            fingerprint=model_fingerprint(stream.model),
            field_names=field_names(stream.model),
        )
    return routes


class SyncWorker:
    def __init__(self, settings: SyncSettings, consumer: kafka.Consumer, producer: kafka.Producer,
                 writer: Writer, routes: dict[str, Route],
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 topic_ids: Callable[[Sequence[str]], dict[str, str]] | None = None) -> None:
        self.settings = settings
        self.consumer = consumer
        self.producer = producer
        self.writer = writer
        self.routes = routes
        self.clock = clock
        self.sleep = sleep
        self.stopping = False
        self.stop_deadline: float | None = None
        # Exactly-once: highest offset already in the table, per partition, and Kafka's id of
        # each topic as read on its last assignment (the rows carry it; see chute.ddl).
        self.watermarks: dict[TopicPartition, int] = {}
        self.read_topic_ids = topic_ids
        self.topic_ids: dict[str, str] = {}
        self.committed: dict[TopicPartition, int] = {}
        self.last_loop = self.clock()
        self._next_lag_update = 0.0
        # Partitions this worker owns, as told by the rebalance callbacks (which the seam runs
        # inside poll(), on this thread).
        self.assigned: set[TopicPartition] = set()
        self.closing = False
        self._inserts_done = 0
        for route in routes.values():
            self._observe_state(route)

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
        self.producer.flush(timeout=SHUTDOWN_PRODUCER_FLUSH_SECONDS)
        log.info("left the consumer group")

    # --- the loop -----------------------------------------------------------------------

    def poll_once(self) -> None:
        now = self.clock()
        self.last_loop = now
        timeout = 0.5
        for route in self.routes.values():
            due_in = route.buffer.seconds_until_due(now) if route.state.flowing else (
                None if route.state.next_attempt is None else route.state.next_attempt - now)
            if due_in is not None:
                timeout = max(0.0, min(timeout, due_in))
        # Rebalance callbacks run inside poll(): revoked partitions are flushed (or dropped)
        # and new ones positioned before any of their records is returned.
        records = self.consumer.poll(max(0.001, timeout))
        for tp, messages in records.items():
            if tp in self.assigned:  # else fetched before a revocation: the owner re-reads
                self.accept(self.routes[tp.topic], tp, messages)
        now = self.clock()
        self.flush_due(now)
        if now >= self._next_lag_update:
            self._next_lag_update = now + 5.0
            self.update_lag()

    def accept(self, route: Route, tp: TopicPartition, batch: RecordBatch) -> None:
        """Validate one partition's records into the route's buffer; flush whenever it is
        full, so batches are exactly max_batch_rows (or reach max_batch_bytes). The hot path
        of the worker: runs of records are validated in one pass and appended column by
        column; a run holding an invalid record, an empty one or one of another model
        definition is taken record by record (`_accept_each`).

        A route that is retrying keeps what was already fetched (its partitions are paused,
        so that is bounded); a failed or held route takes nothing more: those records are
        not committed and come again after a restart."""
        state = route.state
        if not state.flowing and state.next_attempt is None:
            return
        buf = route.buffer
        offsets = batch.offsets
        start, n = 0, len(offsets)
        if route.exactly_once and n and offsets[0] <= self.watermarks.get(tp, -1):
            # Already in the table (offsets ascend): skipped, but committed.
            start = bisect_right(offsets, self.watermarks[tp])
            buf.note_offset(tp, offsets[start - 1], self.clock())
        try:
            while start < n:
                end = n if route.held is not None else run_end(buf, batch.values, start, n)
                if not self._accept_run(route, tp, batch, start, end):
                    return  # the pipeline takes nothing more
                start = end
                if buf.full and route.held is None:
                    self.flush(route, FlushReason.ROWS if buf.count >= buf.limits.max_rows
                               else FlushReason.BYTES)
                    if not state.flowing and state.next_attempt is None:
                        return
        except DeadLetterRatioExceeded as exc:
            self._stop_pipeline(route, str(exc))
            return
        metrics.SYNC_BUFFERED_ROWS.labels(route.table).set(buf.count)

    def _accept_run(self, route: Route, tp: TopicPartition, batch: RecordBatch, start: int,
                    end: int) -> bool:
        """Records [start, end) into the buffer; False when the pipeline stopped taking
        records (held for another model, or failed)."""
        values = batch.values[start:end]
        rows = None
        if one_model(batch.headers[start:end], route.fingerprint_bytes):
            rows = route.decoder.decode_all(values)
        if rows is None:
            return self._accept_each(route, tp, batch, start, end)
        now = self.clock()
        buf = route.buffer
        buf.extend(route.builder.columns_of(rows), values, tp.partition,
                   batch.offsets[start:end], batch.timestamps[start:end], now)
        buf.note_offset(tp, batch.offsets[end - 1], now)
        route.guard.record(False, len(rows))
        return True

    def _accept_each(self, route: Route, tp: TopicPartition, batch: RecordBatch, start: int,
                     end: int) -> bool:
        """Records [start, end) one at a time: invalid ones are dead-lettered, one of another
        model definition that does not fit this one holds the pipeline. The valid ones are
        buffered in one go at the end, in order."""
        buf = route.buffer
        decode = route.decoder.decode
        guard = route.guard
        fingerprint = route.fingerprint_bytes
        now = self.clock()
        good: list[int] = []
        rows: list[BaseModel] = []
        counted = 0  # of `good`, already told to the guard

        def keep() -> None:
            if good:
                buf.extend(route.builder.columns_of(rows), [batch.values[i] for i in good],
                           tp.partition, [batch.offsets[i] for i in good],
                           [batch.timestamps[i] for i in good], now)
            guard.record(False, len(good) - counted)

        for i in range(start, end):
            offset = batch.offsets[i]
            value = batch.values[i]
            model = model_header(batch.headers[i])
            row = decode(value)
            if (model is not None and model != fingerprint
                    and not fits_model(row, value, route.field_names)):
                keep()
                self._hold_for_model(route, tp, offset, model)
                return False
            buf.note_offset(tp, offset, now)
            if isinstance(row, DecodeFailure):
                metrics.SYNC_ERRORS.labels(route.table, "decode").inc()
                guard.record(False, len(good) - counted)  # the good ones before it first
                counted = len(good)
                position = Position(tp.topic, tp.partition, offset, batch.timestamps[i])
                envelope = self.dead_letter(route, position, value, row.error_type,
                                            row.error_message)
                if envelope is not None:
                    buf.add_dead_letter(envelope, tp, offset, now)
                continue
            good.append(i)
            rows.append(row)
        keep()
        return True

    def dead_letter(self, route: Route, position: Position, payload: bytes | None,
                    error_type: str, message: str) -> bytes | None:
        """Log and count a record that cannot be stored; returns its envelope (None when the
        stream has no dead-letter queue). Raises DeadLetterRatioExceeded when this record
        tips the pipeline's dead-letter ratio over its limit: that record is not
        dead-lettered, it stays uncommitted."""
        guard = route.guard
        guard.record(True)
        if guard.tripped:
            raise DeadLetterRatioExceeded(
                f"{guard.ratio:.0%} of the last {self.settings.sync_dlq_ratio_window} "
                f"records of {route.name} went to the dead-letter queue (limit "
                f"{self.settings.sync_dlq_ratio_limit:.0%}); last error at "
                f"{position.topic}:{position.partition}:{position.offset}: "
                f"{error_type}: {message[:300]}. Pipeline stopped, nothing past its last "
                "insert committed: check the model, the topic and the table, then restart.")
        log.warning("dead letter", table=route.table, topic=position.topic,
                    partition=position.partition, offset=position.offset,
                    error_type=error_type, error=message[:300])
        metrics.SYNC_DLQ_RECORDS.labels(route.table).inc()
        if route.dead_letter_topic is None:
            log.error("record dropped: the stream has no dead-letter queue", table=route.table,
                      partition=position.partition, offset=position.offset)
            return None
        return dead_letter_envelope(pipeline=route.stream.name, position=position,
                                    payload=payload, error_type=error_type,
                                    error_message=message)

    # --- the route state machine ------------------------------------------------------------

    @property
    def paused(self) -> bool:
        """Whether any pipeline is not flowing."""
        return any(not route.state.flowing for route in self.routes.values())

    def pipeline_states(self) -> dict[str, PipelineState]:
        return {route.name: route.state for route in self.routes.values()}

    def _route_partitions(self, route: Route) -> list[TopicPartition]:
        topic = route.stream.topic
        return [tp for tp in self.assigned if tp.topic == topic]

    def _pause_route(self, route: Route) -> None:
        partitions = self._route_partitions(route)
        if partitions:
            self.consumer.pause(partitions)
        metrics.SYNC_PAUSED.set(1)

    def _resume_route(self, route: Route) -> None:
        partitions = self._route_partitions(route)
        if partitions:
            self.consumer.resume(partitions)
        metrics.SYNC_PAUSED.set(1 if self.paused else 0)

    def _observe_state(self, route: Route) -> None:
        current = route.state.status
        for status in Status:
            metrics.SYNC_PIPELINE_STATE.labels(route.name, status.value).set(
                1 if status is current else 0)

    def _stop_pipeline(self, route: Route, reason: str, pause_now: bool = True) -> None:
        """Failed for good (until a restart): nothing buffered or held is inserted or
        committed, so all of it is delivered again. Its partitions are paused now, or (while
        an assignment is being handled) by the next flush_due; its records are dropped by
        accept meanwhile."""
        log.error("pipeline failed", pipeline=route.name, table=route.table, reason=reason)
        route.state.fail(reason, self.clock())
        route.buffer.clear()
        route.held = None
        if pause_now:
            self._pause_route(route)
        self._observe_state(route)

    def _hold_for_model(self, route: Route, tp: TopicPartition, offset: int,
                        fingerprint: bytes) -> None:
        """A record validated by a model this worker does not have, carrying a field this
        model lacks (or invalid for it): insert what came before it, then pause the pipeline
        without retrying (the record stays uncommitted)."""
        log.error("pipeline paused", pipeline=route.name, reason=MODEL_MISMATCH,
                  topic=tp.topic, partition=tp.partition, offset=offset,
                  record_model=fingerprint.decode("ascii", errors="replace"),
                  worker_model=route.fingerprint)
        if route.held is None and route.buffer.pending:
            self.flush(route, FlushReason.MODEL_CHANGE)
        if route.state.status is not Status.FAILED:
            route.state.hold(MODEL_MISMATCH, self.clock())
        self._pause_route(route)
        self._observe_state(route)

    def flush_due(self, now: float) -> None:
        """Flush the routes whose batch is due and retry the routes whose next attempt is."""
        for route in self.routes.values():
            state = route.state
            if state.flowing:
                reason = route.buffer.due(now)
                if reason is not None:
                    self.flush(route, reason)
            elif state.due(now):
                self.flush(route, FlushReason.RETRY)
            else:
                self._pause_route(route)  # also partitions assigned since it stopped

    # --- flushing -----------------------------------------------------------------------

    def flush_all(self, reason: str) -> dict[TopicPartition, int]:
        """Insert everything buffered now (retrying until the stop deadline) and return the
        offsets it covers (committed here unless this runs on kafka-python's IO thread, on
        revocation). Failed and held pipelines insert nothing more. FlushAbandoned, naming
        the pipelines that could not finish in time, once all the others are done."""
        on_main = threading.current_thread() is threading.main_thread()
        offsets: dict[TopicPartition, int] = {}
        abandoned: list[str] = []
        for route in self.routes.values():
            state = route.state
            if not state.flowing and state.next_attempt is None:
                continue
            try:
                while route.held is not None or route.buffer.pending:
                    done = self._flush_before_deadline(route, reason)
                    if on_main:
                        self._commit(done)
                    offsets.update(done)
            except FlushAbandoned as exc:
                # The other pipelines still flush and commit first.
                abandoned.append(f"{route.name}: {exc}")
        if abandoned:
            # The caller drops what is left (nothing of it was committed: re-delivered).
            raise FlushAbandoned("; ".join(abandoned), offsets)
        return offsets

    def _flush_before_deadline(self, route: Route, reason: str) -> dict[TopicPartition, int]:
        deadline = self.stop_deadline
        if deadline is None:
            deadline = self.clock() + self.settings.sync_shutdown_flush_seconds
        while True:
            done = self._attempt(route, reason)
            if done is not None:
                return done
            retry_at = route.state.next_attempt
            if retry_at is None or retry_at > deadline:
                raise FlushAbandoned(f"{route.table}: {route.state.reason}")
            self._pause_until(retry_at)

    def flush(self, route: Route, reason: str) -> None:
        """Insert the route's batch (or retry the held one) and commit it. Nothing of that
        route is fetched while its batch is held. (An insert thread overlapping the next
        batch's decoding was measured: no gain, since both need the GIL.)"""
        metrics.SYNC_BUFFERED_ROWS.labels(route.table).set(0)
        done = self._attempt(route, reason)
        if done is not None:
            self._commit(done)

    def _attempt(self, route: Route, reason: str) -> dict[TopicPartition, int] | None:
        """One attempt at the held batch (detaching the buffer if none is held). Returns the
        offsets to commit, or None when it failed (the route's state says what next)."""
        if route.held is None and route.buffer.pending:
            batch = route.buffer.detach()
            route.held = HeldBatch(batch, reason, Isolator(batch.count))
        held = route.held
        offsets: dict[TopicPartition, int] = {}
        if held is not None:  # else the held batch was dropped (rebalance): nothing to retry
            try:
                offsets = self._write(route, held)
            except DeadLetterRatioExceeded as exc:
                self._stop_pipeline(route, str(exc))
                return None
            except Exception as exc:
                self._attempt_failed(route, exc)
                return None
            route.held = None
        if route.state.succeeded():
            log.info("resumed", pipeline=route.name, table=route.table)
            self._resume_route(route)
            self._observe_state(route)
        return offsets

    def _attempt_failed(self, route: Route, exc: BaseException) -> None:
        kind = classify(exc)
        error = f"{type(exc).__name__}: {exc}"
        self.writer.reset()  # the next attempt starts on a fresh connection
        metrics.SYNC_ERRORS.labels(route.table, kind).inc()
        delay = route.state.failed_attempt(kind, error, self.clock())
        self._pause_route(route)
        self._observe_state(route)
        if delay is None:
            log.error("pipeline failed", pipeline=route.name, table=route.table,
                      reason=route.state.reason)
            return
        log.warning("retrying", what="insert", pipeline=route.name, table=route.table,
                    kind=kind, attempt=route.state.attempts, delay_s=round(delay, 2),
                    error=error[:500])

    def _write(self, route: Route, held: HeldBatch) -> dict[TopicPartition, int]:
        """Produce the batch's dead letters, insert its rows (dead-lettering what ClickHouse
        rejects); returns the offsets to commit. Dead letters go out first: in exactly-once
        mode the insert moves the watermark past them, and a restart skips what is below it."""
        batch = held.batch
        started = time.perf_counter()
        if not held.dead_letters_sent:
            self._produce_dead_letters(route, batch.dead_letters)
            held.dead_letters_sent = True
        if batch.count and not held.isolator.done:
            self._insert(route, held)
        rows = batch.count
        self._maybe_inject_fault(rows)
        duration = time.perf_counter() - started
        if rows:
            self._observe(route, batch, rows)
            log.info("batch inserted", table=route.table, rows=rows, bytes=batch.size,
                     partitions=batch.describe_offsets(), duration_ms=round(duration * 1000, 1),
                     reason=held.reason, dead_letters=len(batch.dead_letters),
                     rejected=len(held.isolator.rejected))
        return {tp: offset + 1 for tp, offset in batch.last_offsets.items()}

    def _maybe_inject_fault(self, rows: int) -> None:
        if not self.settings.sync_fault_kill_after_inserts or not rows:
            return
        self._inserts_done += 1
        if self._inserts_done >= self.settings.sync_fault_kill_after_inserts:
            log.warning("fault injection: SIGKILL after insert, before commit", rows=rows)
            os.kill(os.getpid(), signal.SIGKILL)

    def _insert(self, route: Route, held: HeldBatch) -> None:
        """Run (or resume) the batch's isolator. In exactly-once mode a piece whose outcome
        is unknown is reconciled against the table's watermark before anything is resent."""
        buf = held.batch
        if held.columns is None:
            held.columns = route.builder.with_positions(
                buf.columns, buf.partitions, buf.offsets,
                self.topic_ids.get(route.stream.topic, ""))
        data = held.columns
        names = route.builder.names
        isolator = held.isolator

        def insert(lo: int, hi: int) -> None:
            held.query_id = new_query_id()
            self.writer.insert(route.table, names, [col[lo:hi] for col in data],
                               held.query_id)

        def reconcile(lo: int, hi: int) -> int:
            if self.writer.insert_running(held.query_id):
                raise InsertStillRunning(f"insert {held.query_id} is still running")
            first = first_missing(buf.partitions, buf.offsets, lo, hi,
                                  self.writer.read_watermarks(
                                      route.table, self.topic_ids[route.stream.topic]))
            log.warning("insert outcome reconciled", table=route.table, query_id=held.query_id,
                        rows_already_in=first - lo, rows_to_send=hi - first)
            return first

        def report(rejected: list[tuple[int, BaseException]]) -> None:
            envelopes = []
            for index, exc in rejected:
                metrics.SYNC_ERRORS.labels(route.table, "data").inc()
                envelope = self.dead_letter(route, buf.position(index), buf.values[index],
                                            f"ClickHouseRejected:{type(exc).__name__}", str(exc))
                if envelope is not None:
                    envelopes.append(envelope)
            self._produce_dead_letters(route, envelopes)

        started = time.perf_counter()
        isolator.run(insert, classify, reconcile if route.exactly_once else None, report)
        # The successful attempt only: retries and commits are not insert latency.
        metrics.SYNC_INSERT_SECONDS.labels(route.table).observe(time.perf_counter() - started)
        if isolator.rejected:
            buf.remove({index for index, _ in isolator.rejected})

    def _produce_dead_letters(self, route: Route, envelopes: list[bytes]) -> None:
        """Produce envelopes and wait until Kafka acknowledged every one."""
        if not envelopes or route.dead_letter_topic is None:
            return
        topic = route.dead_letter_topic
        self.producer.deliver(topic, envelopes, timeout=30)

    def _with_retry(self, action: Callable[[], None], table: str, what: str) -> None:
        """Blocking retry for what all pipelines need (offset commits, watermark reads on
        assignment): transient and schema errors are retried with backoff, unclassified ones
        `sync_retry_budget` times; up to the stop deadline once stopping."""
        backoff = Backoff(self.settings.sync_retry_initial_seconds,
                          self.settings.sync_retry_max_seconds)
        unknown = 0
        while True:
            try:
                action()
                if backoff.attempt:
                    log.info("resumed", what=what, table=table, attempts=backoff.attempt)
                return
            except Exception as exc:
                kind = classify(exc)
                unknown += kind == UNKNOWN
                if kind == DATA or unknown > self.settings.sync_retry_budget:
                    raise
                if not isinstance(exc, KafkaClientError):
                    # Only ClickHouse errors: the client belongs to the thread that inserts.
                    self.writer.reset()
                metrics.SYNC_ERRORS.labels(table, kind).inc()
                delay = backoff.next_delay()
                if self.stop_deadline is not None and self.clock() + delay > self.stop_deadline:
                    raise FlushAbandoned(f"{what} into {table} failed: {exc}") from exc
                log.warning("retrying", what=what, table=table, attempt=backoff.attempt,
                            delay_s=round(delay, 2), error=f"{type(exc).__name__}: {exc}")
                self._pause_until(self.clock() + delay)

    def _pause_until(self, end: float) -> None:
        """Wait without fetching until `end` on the injected clock: the consumer is not
        polled, so nothing new is buffered; its heartbeat thread keeps the membership.
        Lag keeps being reported meanwhile (only from the main thread), and however long
        that takes, no sleep is ever asked for a negative time."""
        while True:
            now = self.clock()
            if now >= end:
                return
            self.last_loop = now
            if now >= self._next_lag_update and \
                    threading.current_thread() is threading.main_thread():
                self._next_lag_update = now + 5.0
                self.update_lag(ask_broker=True)
                now = self.clock()
            self.sleep(max(0.0, min(0.2, end - now)))

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
        metrics.SYNC_ROWS_INSERTED.labels(route.table).inc(buf.count)
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
            route.drop_pending()
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
        self._refresh_topic_ids(partitions)
        marks_by_topic: dict[str, dict[int, int]] = {}
        caught_up: dict[TopicPartition, int] = {}
        starts: dict[TopicPartition, int] = {}
        for tp in partitions:
            route = self.routes[tp.topic]
            committed = found.get(tp)
            target = committed
            if route.exactly_once:
                if tp.topic not in marks_by_topic:
                    marks_by_topic[tp.topic] = self._read_watermarks(
                        route.table, self.topic_ids[tp.topic])
                mark = marks_by_topic[tp.topic].get(tp.partition)
                if mark is not None and self._watermark_beyond_end(route, tp, mark):
                    continue
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

    def _watermark_beyond_end(self, route: Route, tp: TopicPartition, mark: int) -> bool:
        """The table holds offset `mark` of this partition, for this very topic id, but the
        topic ends before it: the rows were not written by this topic's records (copied from
        elsewhere, or written by hand). Skipping to that mark would drop records: refuse
        loudly by failing the pipeline. (A re-created topic has a new id: no such mark.)"""
        try:
            end = self.consumer.end_offsets([tp]).get(tp)
        except KafkaClientError as exc:
            log.warning("cannot check the watermark against the topic's end", table=route.table,
                        partition=tp.partition, error=str(exc))
            return False
        if end is None or mark < end:
            return False
        self._stop_pipeline(route, (
            f"table {route.table} holds offset {mark} of {tp.topic}:{tp.partition} but the "
            f"topic ends at offset {end}: those rows did not come from this topic. Nothing is "
            "skipped or inserted: remove the rows above the topic's end (or re-create the "
            "table), then restart the worker."), pause_now=False)
        return True

    def _read_watermarks(self, table: str, topic_id: str) -> dict[int, int]:
        result: dict[int, int] = {}

        def read() -> None:
            result.update(self.writer.read_watermarks(table, topic_id))

        self._with_retry(read, table, "watermark read")
        return result

    def _refresh_topic_ids(self, partitions: Sequence[TopicPartition]) -> None:
        """Exactly-once: ask Kafka for the id of each assigned topic on every assignment (a
        topic deleted and re-created gets a new one, so its rows start a new watermark)."""
        topics = sorted({tp.topic for tp in partitions if self.routes[tp.topic].exactly_once})
        if not topics:
            return
        if self.read_topic_ids is None:
            raise RuntimeError("exactly-once streams need the topics' ids: pass topic_ids")
        read = self.read_topic_ids
        found: dict[str, str] = {}

        def ask() -> None:
            found.update(read(topics))
            missing = [t for t in topics if t not in found]
            if missing:
                raise KafkaClientError(f"no topic id for {', '.join(missing)} (yet)")

        self._with_retry(ask, ",".join(topics), "topic id read")
        self.topic_ids.update(found)

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
