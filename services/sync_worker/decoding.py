"""The decode-and-batch step: one partition's fetched records validated into its pipeline's
buffer, handed to the insert step whenever the buffer is full (so batches are exactly
max_batch_rows, or reach max_batch_bytes). The hot path of the worker: runs of records are
validated in one pass and appended column by column; a run holding an invalid record, an
empty one or one of another model definition is taken record by record."""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable

import structlog
from chute import metrics
from chute.kafka import RecordBatch, TopicPartition
from pydantic import BaseModel

from sync_worker.assignment import AssignmentManager
from sync_worker.inserting import InsertStep
from sync_worker.intake import model_header, one_model, run_end
from sync_worker.policy import FlushReason
from sync_worker.routes import MODEL_MISMATCH, PipelineControl, Route
from sync_worker.rows import DecodeFailure, Position, fits_model
from sync_worker.steps import DeadLetterRatioExceeded

log = structlog.get_logger()


class DecodeStep:
    """`submit((partition, records))`: records of a partition this worker owns (the assignment
    manager's `assigned`), as the consumer returned them; the first offset fetched of each is
    noted there. Exactly-once: records up to the partition's watermark are skipped but
    committed. poll, join and close go on to the insert step: the buffers are its input."""

    def __init__(self, routes: dict[str, Route], insert: InsertStep, control: PipelineControl,
                 assignment: AssignmentManager, clock: Callable[[], float]) -> None:
        self.routes = routes
        self.insert = insert
        self.control = control
        self.assigned = assignment.assigned
        self.watermarks = assignment.watermarks
        self.first_fetched = assignment.first_fetched
        self.clock = clock

    def submit(self, item: tuple[TopicPartition, RecordBatch]) -> None:
        tp, batch = item
        if tp not in self.assigned:
            return  # fetched before a revocation: the new owner reads it
        route = self.routes[tp.topic]
        offsets = batch.offsets
        if offsets and tp not in self.first_fetched:
            self.first_fetched[tp] = offsets[0]
        if not route.taking:
            return
        buf = route.buffer
        start, n = 0, len(offsets)
        if route.exactly_once and n and offsets[0] <= self.watermarks.get(tp, -1):
            # Already in the table (offsets ascend): skipped, but committed.
            start = bisect_right(offsets, self.watermarks[tp])
            buf.note_offset(tp, offsets[start - 1], self.clock())
        try:
            while start < n:
                end = n if route.held is not None else run_end(buf, batch.values, start, n)
                if not self._take_run(route, tp, batch, start, end):
                    return  # the pipeline takes nothing more
                start = end
                if buf.full and route.held is None:
                    self.insert.submit((route, FlushReason.ROWS
                                        if buf.count >= buf.limits.max_rows
                                        else FlushReason.BYTES))
                    if not route.taking:
                        return
        except DeadLetterRatioExceeded as exc:
            self.control.fail(route, str(exc))
            return
        metrics.SYNC_BUFFERED_ROWS.labels(route.table).set(buf.count)

    def poll(self, now: float) -> None:
        self.insert.poll(now)

    def join(self, reason: str) -> dict[TopicPartition, int]:
        return self.insert.join(reason)

    def close(self) -> None:
        self.insert.close()

    def _take_run(self, route: Route, tp: TopicPartition, batch: RecordBatch, start: int,
                  end: int) -> bool:
        """Records [start, end) into the buffer; False when the pipeline stopped taking
        records (held for another model, or failed)."""
        values = batch.values[start:end]
        rows = None
        if one_model(batch.headers[start:end], route.fingerprint_bytes):
            rows = route.decoder.decode_all(values)
        if rows is None:
            return self._take_each(route, tp, batch, start, end)
        now = self.clock()
        buf = route.buffer
        buf.extend(route.builder.columns_of(rows), values, tp.partition,
                   batch.offsets[start:end], batch.timestamps[start:end], now)
        buf.note_offset(tp, batch.offsets[end - 1], now)
        route.guard.record(False, len(rows))
        return True

    def _take_each(self, route: Route, tp: TopicPartition, batch: RecordBatch, start: int,
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
                envelope = route.dead_letter(position, value, row.error_type,
                                             row.error_message)
                if envelope is not None:
                    buf.add_dead_letter(envelope, tp, offset, now)
                continue
            good.append(i)
            rows.append(row)
        keep()
        return True

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
            self.insert.submit((route, FlushReason.MODEL_CHANGE))
        self.control.hold(route, MODEL_MISMATCH)
