"""The assignment manager: which partitions this worker owns, where each starts, what is
committed, and (exactly-once) the watermark in the table and the topic id it belongs to.

The seam calls on_assigned / on_revoked / on_lost inside consumer.poll(), on the loop's
thread, never on a client's network thread: heartbeats go on while a revocation inserts."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence

import structlog
from chute import kafka, metrics
from chute.kafka import KafkaClientError, TopicPartition

from sync_worker.committing import CommitStep
from sync_worker.retry import Retrier
from sync_worker.routes import PipelineControl, Route
from sync_worker.writer import Writer

log = structlog.get_logger()


def partition_names(tps: Iterable[TopicPartition]) -> str:
    return ",".join(f"{tp.topic}:{tp.partition}" for tp in sorted(tps))


class AssignmentManager:
    """`assigned`, `committed`, `watermarks`, `topic_ids` and `first_fetched` are shared by
    reference with the steps that read them (never rebound). `first_fetched`: the first offset
    fetched of each owned partition (where a partition with no commit and no watermark is read
    again from). `read_topic_ids`: asks Kafka for topics' ids (exactly-once streams only)."""

    def __init__(self, routes: dict[str, Route], consumer: kafka.Consumer, writer: Writer,
                 retrier: Retrier, control: PipelineControl, commits: CommitStep,
                 read_topic_ids: Callable[[Sequence[str]], dict[str, str]] | None) -> None:
        self.routes = routes
        self.consumer = consumer
        self.writer = writer
        self.retrier = retrier
        self.control = control
        self.commits = commits
        self.read_topic_ids = read_topic_ids
        self.assigned = control.assigned
        self.committed = commits.committed
        self.watermarks: dict[TopicPartition, int] = {}
        self.topic_ids: dict[str, str] = {}
        self.first_fetched: dict[TopicPartition, int] = {}

    def on_assigned(self, assigned: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        """Where each new partition starts: its committed offset, or past the exactly-once
        watermark when the table already holds later rows (returned to the seam, which starts
        fetching there). Partitions without either start at the earliest offset."""
        log.info("partitions assigned", partitions=partition_names(assigned))
        self.assigned.update(assigned)
        return self.start_offsets(assigned)

    def forget(self, partitions: Sequence[TopicPartition]) -> None:
        for tp in partitions:
            self.assigned.discard(tp)
            self.watermarks.pop(tp, None)
            self.committed.pop(tp, None)
            self.first_fetched.pop(tp, None)
            with contextlib.suppress(KeyError):
                metrics.SYNC_CONSUMER_LAG.remove(tp.topic, str(tp.partition))

    def rewind(self, partitions: set[TopicPartition]) -> None:
        """Seek partitions still owned back to where the table and the commits say they
        are, or (neither says anything) to the first offset fetched, so rows dropped from
        the buffers are read again."""
        if not partitions:
            return
        starts = self.start_offsets(sorted(partitions))
        for tp in sorted(partitions):
            offset = starts.get(tp, self.first_fetched.get(tp))
            if offset is not None:
                self.consumer.seek(tp, offset)

    def start_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        found: dict[TopicPartition, int | None] = {}

        def read_committed() -> None:
            found.update(self.consumer.committed(partitions))

        self.retrier.run(read_committed, ",".join(sorted({tp.topic for tp in partitions})),
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
        self.commits.submit(caught_up)
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
        self.control.fail(route, (
            f"table {route.table} holds offset {mark} of {tp.topic}:{tp.partition} but the "
            f"topic ends at offset {end}: those rows did not come from this topic. Nothing is "
            "skipped or inserted: remove the rows above the topic's end (or re-create the "
            "table), then restart the worker."), pause_now=False)
        return True

    def _read_watermarks(self, table: str, topic_id: str) -> dict[int, int]:
        result: dict[int, int] = {}

        def read() -> None:
            result.update(self.writer.read_watermarks(table, topic_id))

        self.retrier.run(read, table, "watermark read")
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

        self.retrier.run(ask, ",".join(topics), "topic id read")
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
