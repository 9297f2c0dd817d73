"""The one seam to ClickHouse: insert columns into a table; plus bad-row isolation."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from chute.identifiers import quote_identifier
from clickhouse_driver import Client

from sync_worker.errors import TRANSIENT


class ClickHouseWriter:
    def __init__(self, client: Client, database: str) -> None:
        self.client = client
        self.database = database

    def insert(self, table: str, names: list[str], columns: list[list[Any]]) -> None:
        cols = ", ".join(quote_identifier(n) for n in names)
        self.client.execute(
            f"INSERT INTO {quote_identifier(self.database)}.{quote_identifier(table)} "
            f"({cols}) VALUES",
            columns, columnar=True, types_check=False)

    def reset(self) -> None:
        """Drop the connection after a failure; the next insert reconnects."""
        self.client.disconnect()


class Isolator:
    """Inserts rows [0, n) left to right, halving the piece size around rows ClickHouse
    rejects until each bad row stands alone. Resumable: after a transient error, calling
    `run` again continues at `cursor`, so nothing already inserted is sent twice.

    Pieces are contiguous and in order, so each insert extends every Kafka partition's
    inserted rows by a prefix (what the exactly-once watermark relies on)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.cursor = 0
        self.piece = n
        self.rejected: list[tuple[int, BaseException]] = []
        self.inserts = 0

    def run(self, insert: Callable[[int, int], None],
            classify: Callable[[BaseException], str]) -> None:
        while self.cursor < self.n:
            end = min(self.n, self.cursor + self.piece)
            try:
                self.inserts += 1
                insert(self.cursor, end)
            except Exception as exc:
                if classify(exc) == TRANSIENT:
                    raise
                if end - self.cursor == 1:
                    self.rejected.append((self.cursor, exc))
                    self.cursor = end
                    self.piece = self.n - self.cursor  # optimistic: the rest may be clean
                else:
                    self.piece = max(1, (end - self.cursor) // 2)
                continue
            self.cursor = end
