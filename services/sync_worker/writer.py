"""The one seam to ClickHouse (inserts and the exactly-once watermark reads), and bad-row
isolation on top of it."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from chute.ddl import OFFSET_COLUMN, PARTITION_COLUMN, TOPIC_ID_COLUMN
from chute.identifiers import quote_identifier
from clickhouse_driver import Client

from sync_worker.errors import DATA

# clickhouse-driver sends an INSERT of more rows than its `insert_block_size` (default
# 1,048,576; chute does not change it) as several blocks, each applied on its own.
ATOMIC_ROWS = 1_048_576


class Writer(Protocol):
    """What the worker needs from ClickHouse; an in-memory fake implements it in tests."""

    def insert(self, table: str, names: list[str], columns: list[list[Any]],
               query_id: str) -> None: ...

    def read_watermarks(self, table: str, topic_id: str) -> dict[int, int]: ...

    def insert_running(self, query_id: str) -> bool: ...

    def reset(self) -> None: ...


class InsertStillRunning(TimeoutError):
    """The server still executes an insert whose answer was lost: its outcome is not known
    yet (a transient error: reconciled again on the next attempt)."""


def new_query_id() -> str:
    return f"chute-{uuid.uuid4()}"


def watermark_query(database: str, table: str) -> str:
    """Exactly-once: (partition, highest offset) of the rows read from the topic whose id is
    the parameter `topic_id`."""
    partition = quote_identifier(PARTITION_COLUMN.name)
    return (f"SELECT {partition}, max({quote_identifier(OFFSET_COLUMN.name)}) "
            f"FROM {quote_identifier(database)}.{quote_identifier(table)} "
            f"WHERE {quote_identifier(TOPIC_ID_COLUMN.name)} = %(topic_id)s "
            f"GROUP BY {partition}")


class ClickHouseWriter:
    def __init__(self, client: Client, database: str) -> None:
        self.client = client
        self.database = database

    def _table(self, table: str) -> str:
        return f"{quote_identifier(self.database)}.{quote_identifier(table)}"

    def insert(self, table: str, names: list[str], columns: list[list[Any]],
               query_id: str | None = None) -> None:
        cols = ", ".join(quote_identifier(n) for n in names)
        self.client.execute(f"INSERT INTO {self._table(table)} ({cols}) VALUES",
                            columns, columnar=True, types_check=False, query_id=query_id)

    def read_watermarks(self, table: str, topic_id: str) -> dict[int, int]:
        """Exactly-once: the highest Kafka offset in the table per Kafka partition, among the
        rows read from the topic with this id (Kafka's id of the current topic). Rows of an
        earlier topic of the same name, and rows from before the table was exactly-once
        (topic id ''), are not counted."""
        if not topic_id:
            raise ValueError(f"table {table}: a watermark needs the topic's id")
        rows = self.client.execute(watermark_query(self.database, table), {"topic_id": topic_id})
        return {int(p): int(o) for p, o in rows}

    def insert_running(self, query_id: str) -> bool:
        """Whether the server still executes that query: an insert whose connection was lost
        may still be applied, so its outcome is only known once it has left this list."""
        rows = self.client.execute(
            "SELECT count() FROM system.processes WHERE query_id = %(id)s", {"id": query_id})
        return bool(rows and rows[0][0])

    def reset(self) -> None:
        """Drop the connection after a failure; the next call reconnects."""
        self.client.disconnect()


class Isolator:
    """Inserts rows [0, n) left to right, halving the piece size around rows ClickHouse
    rejects until each bad row stands alone.

    Resumable: a failure other than a data error propagates and leaves the piece in doubt
    (its insert may have been applied although the answer was lost). The next `run` first
    asks `reconcile(lo, hi)` for the first row of the piece that is not in the table and
    continues there, so nothing already inserted is sent twice. Without `reconcile`
    (at-least-once) the piece is sent again.

    A data error on a piece larger than one block (`atomic_rows`) is reconciled too before
    the piece is halved, since the blocks before the bad row may have been applied.

    Rejected rows are handed to `report` before the next piece is inserted, so what they
    need (a durable dead letter) is done before an insert moves the exactly-once watermark
    past them. Pieces are contiguous and in order, so each insert extends every Kafka
    partition's inserted rows by a prefix (what the watermark relies on)."""

    def __init__(self, n: int, atomic_rows: int = ATOMIC_ROWS) -> None:
        self.n = n
        self.atomic_rows = atomic_rows
        self.cursor = 0
        self.piece = n
        self.rejected: list[tuple[int, BaseException]] = []
        self.unreported: list[tuple[int, BaseException]] = []
        self.in_doubt: tuple[int, int] | None = None
        self.inserts = 0

    @property
    def done(self) -> bool:
        return self.cursor >= self.n and not self.unreported

    def run(self, insert: Callable[[int, int], None],
            classify: Callable[[BaseException], str],
            reconcile: Callable[[int, int], int] | None = None,
            report: Callable[[list[tuple[int, BaseException]]], None] | None = None) -> None:
        if self.in_doubt is not None:
            lo, hi = self.in_doubt
            if reconcile is not None:
                first_missing = reconcile(lo, hi)
                assert lo <= first_missing <= hi
                self.cursor = first_missing
            self.in_doubt = None
        while True:
            if self.unreported and report is not None:
                report(self.unreported)
            self.unreported = []
            if self.cursor >= self.n:
                return
            end = min(self.n, self.cursor + self.piece)
            try:
                self.inserts += 1
                insert(self.cursor, end)
            except Exception as exc:
                if classify(exc) != DATA:
                    self.in_doubt = (self.cursor, end)
                    raise
                if reconcile is not None and end - self.cursor > self.atomic_rows:
                    # Sent as several blocks: those before the bad one may be in already.
                    self.in_doubt = (self.cursor, end)
                    self.cursor = reconcile(self.cursor, end)
                    self.in_doubt = None
                if end - self.cursor == 1:
                    self.rejected.append((self.cursor, exc))
                    self.unreported.append((self.cursor, exc))
                    self.cursor = end
                    self.piece = self.n - self.cursor  # optimistic: the rest may be clean
                else:
                    self.piece = max(1, (end - self.cursor) // 2)
                continue
            self.cursor = end


def first_missing(partitions: Sequence[int], offsets: Sequence[int], lo: int, hi: int,
                  watermarks: dict[int, int]) -> int:
    """The first row of rows [lo, hi) whose offset is above its partition's watermark.

    What one insert applied is a prefix of its rows (one block lands whole or not at all;
    clickhouse-driver sends a large insert as several blocks, in order), so every row from
    there on is missing from the table."""
    for i in range(lo, hi):
        if offsets[i] > watermarks.get(partitions[i], -1):
            return i
    return hi
