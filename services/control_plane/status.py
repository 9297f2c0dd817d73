"""`chute status`: per pipeline, the topic's partitions and the sync group's lag (read from Kafka:
committed offsets against end offsets), records/s into the topic and rows/s into the table
(growth between two readings), the table's row count and its dead letters (rows of `<name>_dlq`);
then the sync workers in the group (as the group coordinator describes them: worker id, host,
assigned partitions) with the state each reports for its pipelines (`chute.sync_status`), so a
stack where no worker runs, or a pipeline that is stuck, says so with the reason.

The view is a pure function of readings (`render`, `rates`); `StatusSource` takes the readings
from Kafka and ClickHouse, and `run` prints once or, with `--watch`, redraws until Ctrl-C.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol, TextIO

from chute import clickhouse, kafka, sync_status
from chute.clickhouse import ExistingTable
from chute.ddl import TableDefinition
from chute.kafka import TopicPartition
from chute.registry import Definitions

from control_plane.plan import Plan, plan_tables
from control_plane.settings import ControlPlaneSettings

CLEAR_SCREEN = "\x1b[H\x1b[2J"  # cursor home, erase the screen


class StatusSettings(ControlPlaneSettings):
    sync_group: str = "chute-sync"  # CHUTE_SYNC_GROUP: the consumer group of the sync workers


# --- readings --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionState:
    partition: int
    start: int  # earliest offset still in the topic
    end: int  # offset the next record will get
    committed: int | None  # the group's committed offset; None when it never committed one

    @property
    def lag(self) -> int:
        """Records the group has not committed yet. Without a commit (or with one that
        retention overtook) the workers start at the earliest offset."""
        done = self.start if self.committed is None else max(self.committed, self.start)
        return max(0, self.end - done)


@dataclass(frozen=True)
class PipelineState:
    name: str
    table: str | None  # the destination table, if the stream has one
    partitions: tuple[PartitionState, ...] | None  # None: not read (see notes)
    rows: int | None  # rows in the table; None: no table, or not read
    dead_letters: int | None  # rows in the dead-letter table; None: no DLQ, or not read
    notes: tuple[str, ...] = ()  # why something is missing

    @property
    def lag(self) -> int | None:
        return None if self.partitions is None else sum(p.lag for p in self.partitions)

    @property
    def end_offset_sum(self) -> int | None:
        return None if self.partitions is None else sum(p.end for p in self.partitions)


@dataclass(frozen=True)
class Snapshot:
    at: float  # time.monotonic() of the reading
    taken: datetime  # wall-clock time of the reading, for the header
    group: str
    pipelines: tuple[PipelineState, ...]
    problems: tuple[str, ...] = ()  # servers that could not be read
    workers: tuple[kafka.GroupMember, ...] | None = None  # the group's members; None: not read
    reports: tuple[sync_status.PipelineReport, ...] = ()  # what those members last reported


@dataclass(frozen=True)
class Rates:
    records_in: float | None  # records/s appended to the topic
    rows_out: float | None  # rows/s added to the table


# --- pure: rates and rendering -----------------------------------------------------------------


def _growth(before: int | None, after: int | None, seconds: float) -> float | None:
    if before is None or after is None or seconds <= 0 or after < before:
        return None  # unknown, or a counter that went back (table truncated, topic recreated)
    return (after - before) / seconds


def rates(previous: Snapshot | None, current: Snapshot) -> dict[str, Rates]:
    """Per pipeline: growth of the topic's end offsets and of the table's rows since
    `previous`; None where there is no earlier reading to compare with."""
    before = {p.name: p for p in previous.pipelines} if previous is not None else {}
    seconds = current.at - previous.at if previous is not None else 0.0
    result = {}
    for pipeline in current.pipelines:
        old = before.get(pipeline.name)
        if old is None:
            result[pipeline.name] = Rates(None, None)
            continue
        result[pipeline.name] = Rates(
            _growth(old.end_offset_sum, pipeline.end_offset_sum, seconds),
            _growth(old.rows, pipeline.rows, seconds),
        )
    return result


def format_count(value: int | None) -> str:
    return "-" if value is None else f"{value:,}"


def format_rate(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 100 or value == 0 else f"{value:,.1f}"


def _table(headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            cell.rjust(w) if i in right else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(cells, widths, strict=True))
        ).rstrip()

    return [line(headers), *(line(row) for row in rows)]


HEADERS = ("PIPELINE", "PARTITIONS", "LAG", "IN/S", "OUT/S", "ROWS", "DEAD LETTERS")


def render(current: Snapshot, previous: Snapshot | None = None, *, source: str = "",
           partitions: bool = False, watch: float | None = None) -> str:
    """The whole screen for one reading, as text."""
    taken = current.taken.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    title = f"chute status  group {current.group}"
    if source:
        title += f"  {source}"
    title += f"  {taken}"
    lines = [title]
    if watch is not None:
        lines.append(f"refreshing every {watch:g} s; Ctrl-C to stop")
    lines.append("")
    speed = rates(previous, current)
    rows: list[list[str]] = []
    details: list[tuple[int, list[str]]] = []
    for pipeline in current.pipelines:
        rate = speed[pipeline.name]
        count = None if pipeline.partitions is None else len(pipeline.partitions)
        rows.append([
            pipeline.name, format_count(count), format_count(pipeline.lag),
            format_rate(rate.records_in), format_rate(rate.rows_out),
            format_count(pipeline.rows), format_count(pipeline.dead_letters),
        ])
        if partitions and pipeline.partitions:
            details.append((len(rows) - 1, [
                f"    partition {p.partition}: end {p.end:,}  committed "
                f"{format_count(p.committed)}  lag {p.lag:,}"
                for p in pipeline.partitions
            ]))
    table = _table(HEADERS, rows, right={1, 2, 3, 4, 5, 6})
    extra = dict(details)
    lines.append(table[0])
    for index, line in enumerate(table[1:]):
        lines.append(line)
        lines.extend(extra.get(index, []))
    if not current.pipelines:
        lines.append("(no streams defined: check CHUTE_SCHEMAS)")
    lines += render_workers(current)
    notes = [f"{p.name}: {note}" for p in current.pipelines for note in p.notes]
    if previous is None and current.pipelines:
        notes.append("IN/S and OUT/S appear from the second reading" if watch is not None
                     else "IN/S and OUT/S need two readings: use --watch")
    if notes or current.problems:
        lines.append("")
    lines.extend(f"! {problem}" for problem in current.problems)
    lines.extend(f"  {note}" for note in notes)
    return "\n".join(lines) + "\n"


def _partition_list(partitions: Sequence[TopicPartition]) -> str:
    by_topic: dict[str, list[int]] = {}
    for tp in sorted(partitions):
        by_topic.setdefault(tp.topic, []).append(tp.partition)
    return " ".join(f"{topic}:{','.join(map(str, parts))}" for topic, parts in by_topic.items())


def render_workers(current: Snapshot) -> list[str]:
    """The sync workers in the group, or the warning that none runs."""
    if current.workers is None:
        return []
    if not current.workers:
        if not any(p.table for p in current.pipelines):
            return []
        return ["", f"! no sync worker runs in group {current.group}: nothing moves records "
                    "from the topics to the tables"]
    by_worker: dict[str, list[sync_status.PipelineReport]] = {}
    for report in current.reports:
        by_worker.setdefault(report.worker, []).append(report)
    rows = []
    stuck = []
    for m in current.workers:
        mine = by_worker.get(m.client_id, [])
        rows.append([m.client_id, m.host, _pipeline_summary(mine),
                     _partition_list(m.partitions) or "(none assigned)"])
        stuck += [f"! {r.worker}: pipeline {r.pipeline} {r.state} for {r.stopped_seconds:.0f}s"
                  f": {r.reason}" for r in mine if r.state != "flowing"]
    table = _table(("WORKER", "HOST", "PIPELINES", "ASSIGNED PARTITIONS"), rows, right=set())
    return ["", *table, *stuck]


def _pipeline_summary(reports: Sequence[sync_status.PipelineReport]) -> str:
    if not reports:
        return "(no report yet)"
    counts: dict[str, int] = {}
    for report in reports:
        counts[report.state] = counts.get(report.state, 0) + 1
    return ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
def under_replicated_note(topic: str, partitions: Sequence[int]) -> str:
    """One line for a topic whose partitions have fewer in-sync replicas than replicas: a
    broker is down or behind; with fewer in sync than min.insync.replicas, ingest answers 503."""
    listed = ", ".join(str(p) for p in partitions)
    return (f"topic {topic}: {len(partitions)} partition(s) under-replicated ({listed}): "
            "fewer replicas in sync than assigned")


def schema_note(definition: TableDefinition, existing: Mapping[str, ExistingTable],
                database: str) -> str | None:
    """One line when the table differs from its model (what `chute plan` would list);
    `existing`: the database's tables (a sharded table is two: `<name>_local` and `<name>`)."""
    plan = Plan()
    plan_tables([definition], dict(existing), database, plan)
    counts = [f"{n} {word}{'s' if n != 1 else ''}" for n, word in (
        (len(plan.actions), "change to apply"), (len(plan.conflicts), "conflict"),
        (len(plan.warnings), "warning")) if n]
    if not counts:
        return None
    return (f"table {database}.{definition.name} differs from its model: {', '.join(counts)} "
            "(chute plan lists them)")


# --- I/O: readings from Kafka and ClickHouse -------------------------------------------------


def _dead_letter_tables(defs: Definitions) -> set[str]:
    return {s.dead_letter.name for s in defs.streams.values() if s.dead_letter is not None}


def _error(exc: BaseException) -> str:
    kind, text = type(exc).__name__, str(exc).strip()
    return text if text.startswith(kind) else f"{kind}: {text}" if text else kind


class StatusSource:
    """Readings of the defined streams; keeps its connections between readings and opens them
    again after a failure."""

    def __init__(self, settings: StatusSettings, defs: Definitions,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.defs = defs
        self.clock = clock
        self._admin: Any = None
        self._ch: Any = None
        # The dead-letter streams are shown as their pipeline's DEAD LETTERS column.
        hidden = _dead_letter_tables(defs)
        self.streams = [s for name, s in sorted(defs.streams.items()) if name not in hidden]

    def snapshot(self) -> Snapshot:
        problems: list[str] = []
        notes: dict[str, list[str]] = {s.name: [] for s in self.streams}
        offsets = self._read_kafka(problems, notes)
        workers = self._read_workers(problems) if offsets is not None else None
        counts = self._read_clickhouse(problems, notes)
        reports = self._read_reports(workers, problems) if counts is not None else ()
        pipelines = []
        for stream in self.streams:
            table = stream.destination.name if stream.destination is not None else None
            dlq = stream.dead_letter.name if stream.dead_letter is not None else None
            pipelines.append(PipelineState(
                name=stream.name,
                table=table,
                partitions=offsets.get(stream.topic) if offsets is not None else None,
                rows=counts.get(table) if counts is not None and table else None,
                dead_letters=counts.get(dlq) if counts is not None and dlq else None,
                notes=tuple(notes[stream.name]),
            ))
        return Snapshot(self.clock(), datetime.now(UTC), self.settings.sync_group,
                        tuple(pipelines), tuple(problems), workers, reports)

    def _read_reports(self, workers: tuple[kafka.GroupMember, ...] | None,
                      problems: list[str]) -> tuple[sync_status.PipelineReport, ...]:
        names = sorted({m.client_id for m in workers or ()})
        # Only the pipelines defined here: a worker id may have run other definitions before.
        defined = set(self.defs.streams)
        try:
            found = sync_status.read_reports(self._ch, self.settings.clickhouse_database, names,
                                             self.settings.clickhouse_cluster)
            return tuple(r for r in found if r.pipeline in defined)
        except Exception as exc:
            problems.append(f"ClickHouse: the workers' pipeline states: {_error(exc)}")
            self._close_clickhouse()
            return ()

    def _read_workers(self, problems: list[str]) -> tuple[kafka.GroupMember, ...] | None:
        try:
            return tuple(self._admin.describe_group(self.settings.sync_group))
        except Exception as exc:
            problems.append(f"Kafka: the members of group {self.settings.sync_group}: "
                            f"{_error(exc)}")
            return None

    def _read_kafka(self, problems: list[str],
                    notes: dict[str, list[str]]) -> dict[str, tuple[PartitionState, ...]] | None:
        try:
            if self._admin is None:
                self._admin = kafka.admin(self.settings.kafka_bootstrap, timeout=5.0,
                                          security=self.settings.kafka_security())
            admin = self._admin
            counts = admin.topic_partitions()
            under_replicated = admin.under_replicated()
            tps = []
            for stream in self.streams:
                if stream.topic not in counts:
                    notes[stream.name].append(f"topic {stream.topic} does not exist "
                                              "(chute apply creates it)")
                    continue
                tps += [TopicPartition(stream.topic, p) for p in range(counts[stream.topic])]
            if not tps:
                return {}
            for stream in self.streams:
                short = under_replicated.get(stream.topic)
                if short:
                    notes[stream.name].append(under_replicated_note(stream.topic, short))
            group = self.settings.sync_group
            committed = admin.group_offsets(group, tps)
            starts = admin.start_offsets(tps)
            ends = admin.end_offsets(tps)
        except Exception as exc:
            problems.append(f"Kafka {self.settings.kafka_bootstrap}: {_error(exc)}")
            self._close_admin()
            return None
        result: dict[str, list[PartitionState]] = {}
        for tp in tps:
            result.setdefault(tp.topic, []).append(
                PartitionState(tp.partition, starts[tp], ends[tp], committed.get(tp)))
        return {topic: tuple(parts) for topic, parts in result.items()}

    def _read_clickhouse(self, problems: list[str],
                         notes: dict[str, list[str]]) -> dict[str, int] | None:
        database = self.settings.clickhouse_database
        try:
            if self._ch is None:
                self._ch = clickhouse.connect(self.settings)
            existing = clickhouse.existing_tables(self._ch, database)
            profile = clickhouse.server_profile(self._ch)
            shards = clickhouse.cluster_shards(self._ch)
            counts: dict[str, int] = {}
            for stream in self.streams:
                for table in (stream.destination, stream.dead_letter):
                    name = table.name if table is not None else None
                    if name is None:
                        continue
                    if name in existing:
                        counts[name] = clickhouse.row_count(self._ch, database, name)
                    else:
                        notes[stream.name].append(f"table {database}.{name} does not exist "
                                                  "(chute apply creates it)")
                if stream.destination is not None and stream.destination.name in existing:
                    note = schema_note(self.defs.table_definition(
                                           stream.destination.name, profile,
                                           self.settings.clickhouse_cluster, shards),
                                       existing, database)
                    if note:
                        notes[stream.name].append(note)
        except Exception as exc:
            problems.append(f"ClickHouse {self.settings.clickhouse_host}:"
                            f"{self.settings.clickhouse_port}: {_error(exc)}")
            self._close_clickhouse()
            return None
        return counts

    def _close_admin(self) -> None:
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()
            self._admin = None

    def _close_clickhouse(self) -> None:
        if self._ch is not None:
            with contextlib.suppress(Exception):
                self._ch.disconnect()
            self._ch = None

    def close(self) -> None:
        self._close_admin()
        self._close_clickhouse()


# --- the command -------------------------------------------------------------------------------


class Source(Protocol):
    """Where `run` takes its readings from (StatusSource, or a scripted one in tests)."""

    settings: StatusSettings

    def snapshot(self) -> Snapshot: ...

    def close(self) -> None: ...


def describe_source(settings: StatusSettings) -> str:
    return (f"Kafka {settings.kafka_bootstrap}  ClickHouse {settings.clickhouse_host}:"
            f"{settings.clickhouse_port}/{settings.clickhouse_database}")


def run(source: Source, out: TextIO, *, watch: float | None = None,
        partitions: bool = False, sleep: Callable[[float], None] = time.sleep,
        refreshes: int | None = None) -> int:
    """Prints one reading, or with `watch` clears the screen and redraws every `watch` seconds
    (`refreshes` readings, or until Ctrl-C). Exit code 1 when a server could not be read."""
    # clickhouse_driver logs each refused connection with a traceback; the screen says it.
    logging.getLogger("clickhouse_driver").setLevel(logging.CRITICAL)
    where = describe_source(source.settings)
    previous: Snapshot | None = None
    done = 0
    try:
        while True:
            current = source.snapshot()
            text = render(current, previous, source=where, partitions=partitions, watch=watch)
            out.write(CLEAR_SCREEN + text if watch is not None else text)
            out.flush()
            done += 1
            if watch is None or (refreshes is not None and done >= refreshes):
                return 1 if current.problems else 0
            previous = current
            sleep(watch)
    except KeyboardInterrupt:
        return 0
    finally:
        source.close()
