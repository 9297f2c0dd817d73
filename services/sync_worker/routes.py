"""Where each topic's records go (a route: one pipeline), and the side effects of a
pipeline's state changes: pausing and resuming its partitions, its state metric."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
from chute import kafka, metrics
from chute.fingerprint import model_fingerprint
from chute.kafka import TopicPartition
from chute.pipeline import Stream
from chute.registry import Definitions
from chute.server import ServerProfile

from sync_worker.buffer import TableBuffer
from sync_worker.pipeline_state import PipelineState, Status
from sync_worker.policy import Backoff, BatchLimits, DeadLetterGuard
from sync_worker.rows import ColumnBuilder, Position, RowDecoder, dead_letter_envelope, field_names
from sync_worker.settings import SyncSettings
from sync_worker.steps import DeadLetterRatioExceeded
from sync_worker.writer import Isolator

log = structlog.get_logger()

MODEL_MISMATCH = "records from a newer/other model definition: reload the worker"


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

    @property
    def taking(self) -> bool:
        """Whether records are taken: flowing, or retrying (what was already fetched is kept;
        its partitions are paused, so that is bounded). A failed or held pipeline takes
        nothing more: those records are not committed and come again after a restart."""
        return self.state.flowing or self.state.next_attempt is not None

    def drop_pending(self) -> None:
        """Forget what is buffered or held (it is re-delivered: nothing of it is committed).
        A retrying pipeline stays so; its next attempt finds nothing held and resumes it."""
        self.buffer.clear()
        self.held = None

    def dead_letter(self, position: Position, payload: bytes | None, error_type: str,
                    message: str) -> bytes | None:
        """Log and count a record that cannot be stored; returns its envelope (None when the
        stream has no dead-letter queue). Raises DeadLetterRatioExceeded when this record
        tips the pipeline's dead-letter ratio over its limit: that record is not
        dead-lettered, it stays uncommitted."""
        guard = self.guard
        guard.record(True)
        if guard.tripped:
            raise DeadLetterRatioExceeded(
                f"{guard.ratio:.0%} of the last {guard.window} records of {self.name} went "
                f"to the dead-letter queue (limit {guard.limit:.0%}); last error at "
                f"{position.topic}:{position.partition}:{position.offset}: "
                f"{error_type}: {message[:300]}. Pipeline stopped, nothing past its last "
                "insert committed: check the model, the topic and the table, then restart.")
        log.warning("dead letter", table=self.table, topic=position.topic,
                    partition=position.partition, offset=position.offset,
                    error_type=error_type, error=message[:300])
        metrics.SYNC_DLQ_RECORDS.labels(self.table).inc()
        if self.dead_letter_topic is None:
            log.error("record dropped: the stream has no dead-letter queue", table=self.table,
                      partition=position.partition, offset=position.offset)
            return None
        return dead_letter_envelope(pipeline=self.stream.name, position=position,
                                    payload=payload, error_type=error_type,
                                    error_message=message)


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


class PipelineControl:
    """What a pipeline's state change does outside the pipeline: its partitions paused or
    resumed on the consumer (those this worker owns: `assigned`, kept by the assignment
    manager), its state metric, the log line of a failure."""

    def __init__(self, routes: dict[str, Route], consumer: kafka.Consumer,
                 assigned: set[TopicPartition], clock: Callable[[], float]) -> None:
        self.routes = routes
        self.consumer = consumer
        self.assigned = assigned
        self.clock = clock
        for route in routes.values():
            self.observe(route)

    @property
    def paused(self) -> bool:
        """Whether any pipeline is not flowing."""
        return any(not route.state.flowing for route in self.routes.values())

    def partitions(self, route: Route) -> list[TopicPartition]:
        topic = route.stream.topic
        return [tp for tp in self.assigned if tp.topic == topic]

    def pause(self, route: Route) -> None:
        partitions = self.partitions(route)
        if partitions:
            self.consumer.pause(partitions)
        metrics.SYNC_PAUSED.set(1)

    def resume(self, route: Route) -> None:
        partitions = self.partitions(route)
        if partitions:
            self.consumer.resume(partitions)
        metrics.SYNC_PAUSED.set(1 if self.paused else 0)

    def observe(self, route: Route) -> None:
        current = route.state.status
        for status in Status:
            metrics.SYNC_PIPELINE_STATE.labels(route.name, status.value).set(
                1 if status is current else 0)

    def fail(self, route: Route, reason: str, pause_now: bool = True) -> None:
        """Failed for good (until a restart): nothing buffered or held is inserted or
        committed, so all of it is delivered again. Its partitions are paused now, or (while
        an assignment is being handled) by the next poll of the insert step; its records are
        not taken meanwhile (`Route.taking`)."""
        log.error("pipeline failed", pipeline=route.name, table=route.table, reason=reason)
        route.state.fail(reason, self.clock())
        route.drop_pending()
        if pause_now:
            self.pause(route)
        self.observe(route)

    def hold(self, route: Route, reason: str) -> None:
        """Paused without retries, until the worker is reloaded."""
        if route.state.status is not Status.FAILED:
            route.state.hold(reason, self.clock())
        self.pause(route)
        self.observe(route)
