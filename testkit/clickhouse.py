"""Reading ClickHouse tables in tests and the bench."""

from __future__ import annotations

from typing import Any


def count_rows(ch: Any, table: str, where: str = "") -> int:
    """Plain count() of a table (no FINAL), with an optional WHERE clause."""
    return int(ch.execute(f"SELECT count() FROM `{table}` {where}")[0][0])
