"""The insert step: a pipeline's batch into its table, then its offsets to the commit step.

Each pipeline (route) pauses, retries and fails on its own: a failing insert pauses that
route's partitions and holds its batch until a retry succeeds (`PipelineState` decides when),
while the other routes keep inserting and committing. Dead letters are produced and
acknowledged before the insert, so in exactly-once mode the watermark never passes a record
whose dead letter is not durable."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable

import structlog
from chute import kafka, metrics
from chute.kafka import TopicPartition

from sync_worker.buffer import TableBuffer
from sync_worker.committing import CommitStep
from sync_worker.errors import classify
from sync_worker.policy import FlushReason
from sync_worker.retry import Retrier
from sync_worker.routes import HeldBatch, PipelineControl, Route
from sync_worker.settings import SyncSettings
from sync_worker.steps import DeadLetterRatioExceeded, FlushAbandoned
from sync_worker.writer import InsertStillRunning, Isolator, Writer, first_missing, new_query_id

log = structlog.get_logger()

_E2E_SAMPLES = 500  # rows per batch whose end-to-end latency is observed


class InsertStep:
    """`submit((route, reason))` inserts that route's batch now (or retries the held one) and
    commits it; `poll(now)` flushes the batches that are due and retries the pipelines whose
    next attempt is; `join` inserts everything before the retrier's deadline; `close` drops
    what every route holds. `topic_ids`: Kafka's id of each exactly-once topic, kept by the
    assignment manager."""

    def __init__(self, settings: SyncSettings, routes: dict[str, Route], writer: Writer,
                 producer: kafka.Producer, commits: CommitStep, control: PipelineControl,
                 retrier: Retrier, topic_ids: dict[str, str],
                 clock: Callable[[], float]) -> None:
        self.settings = settings
        self.routes = routes
        self.writer = writer
        self.producer = producer
        self.commits = commits
        self.control = control
        self.retrier = retrier
        self.topic_ids = topic_ids
        self.clock = clock
        self._inserts_done = 0

    # --- the step interface -------------------------------------------------------------

    def submit(self, item: tuple[Route, str]) -> None:
        """Nothing of that route is fetched while its batch is held. (An insert thread
        overlapping the next batch's decoding was measured: no gain, both need the GIL.)"""
        route, reason = item
        metrics.SYNC_BUFFERED_ROWS.labels(route.table).set(0)
        done = self._attempt(route, reason)
        if done is not None:
            self.commits.submit(done)

    def poll(self, now: float) -> None:
        for route in self.routes.values():
            state = route.state
            if state.flowing:
                reason = route.buffer.due(now)
                if reason is not None:
                    self.submit((route, reason))
            elif state.due(now):
                self.submit((route, FlushReason.RETRY))
            else:
                self.control.pause(route)  # also partitions assigned since it stopped

    def join(self, reason: str) -> dict[TopicPartition, int]:
        """Insert and commit everything buffered now, retrying until the retrier's deadline
        (the stop deadline, or `sync_shutdown_flush_seconds` from now); returns the offsets
        it covered (committed, unless a rebalance refused the commit: logged). Failed and
        held pipelines insert nothing more. FlushAbandoned, naming the pipelines that could
        not finish in time, once all the others are done."""
        offsets: dict[TopicPartition, int] = {}
        abandoned: list[str] = []
        for route in self.routes.values():
            if not route.taking:
                continue
            try:
                while route.held is not None or route.buffer.pending:
                    done = self._flush_before_deadline(route, reason)
                    self.commits.submit(done)
                    offsets.update(done)
            except FlushAbandoned as exc:
                # The other pipelines still flush and commit first.
                abandoned.append(f"{route.name}: {exc}")
        if abandoned:
            # The caller drops what is left (nothing of it was committed: re-delivered).
            raise FlushAbandoned("; ".join(abandoned), offsets)
        return offsets

    def close(self) -> None:
        for route in self.routes.values():
            route.drop_pending()
            metrics.SYNC_BUFFERED_ROWS.labels(route.table).set(0)

    # --- attempts -----------------------------------------------------------------------

    def _flush_before_deadline(self, route: Route, reason: str) -> dict[TopicPartition, int]:
        deadline = self.retrier.deadline
        if deadline is None:
            deadline = self.clock() + self.settings.sync_shutdown_flush_seconds
        while True:
            done = self._attempt(route, reason)
            if done is not None:
                return done
            retry_at = route.state.next_attempt
            if retry_at is None or retry_at > deadline:
                raise FlushAbandoned(f"{route.table}: {route.state.reason}")
            self.retrier.wait_until(retry_at)

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
                self.control.fail(route, str(exc))
                return None
            except Exception as exc:
                self._attempt_failed(route, exc)
                return None
            route.held = None
        if route.state.succeeded():
            log.info("resumed", pipeline=route.name, table=route.table)
            self.control.resume(route)
            self.control.observe(route)
        return offsets

    def _attempt_failed(self, route: Route, exc: BaseException) -> None:
        kind = classify(exc)
        error = f"{type(exc).__name__}: {exc}"
        self.writer.reset()  # the next attempt starts on a fresh connection
        metrics.SYNC_ERRORS.labels(route.table, kind).inc()
        delay = route.state.failed_attempt(kind, error, self.clock())
        self.control.pause(route)
        self.control.observe(route)
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
                envelope = route.dead_letter(buf.position(index), buf.values[index],
                                             f"ClickHouseRejected:{type(exc).__name__}",
                                             str(exc))
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
        self.producer.deliver(route.dead_letter_topic, envelopes, timeout=30)

    def _observe(self, route: Route, buf: TableBuffer, rows: int) -> None:
        metrics.SYNC_ROWS_INSERTED.labels(route.table).inc(buf.count)
        metrics.SYNC_BATCH_ROWS.labels(route.table).observe(rows)
        metrics.SYNC_BATCH_BYTES.labels(route.table).observe(buf.size)
        now_ms = time.time() * 1000
        step = max(1, len(buf.timestamps) // _E2E_SAMPLES)
        histogram = metrics.SYNC_END_TO_END_SECONDS.labels(route.table)
        for timestamp in buf.timestamps[::step]:
            histogram.observe(max(0.0, (now_ms - timestamp) / 1000))
