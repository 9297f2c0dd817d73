"""ClickHouse adapter: connections over the native protocol and the few queries chute needs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from clickhouse_driver import Client

from chute.identifiers import quote_identifier
from chute.server import ServerProfile, parse_version
from chute.settings import CommonSettings


def connect(settings: CommonSettings, profile: ServerProfile | None = None,
            **client_settings: Any) -> Client:
    """A client for chute's database. Pass the profile to send its required settings."""
    merged: dict[str, Any] = dict(profile.session_settings()) if profile else {}
    merged.update(client_settings)
    return Client(
        host=settings.clickhouse_host,
        port=settings.clickhouse_port,
        user=settings.clickhouse_user,
        password=settings.clickhouse_password,
        database=settings.clickhouse_database,
        connect_timeout=5,
        send_receive_timeout=60,
        settings=merged,
    )


def server_profile(client: Client) -> ServerProfile:
    rows = client.execute("SELECT version()")
    return ServerProfile(parse_version(str(rows[0][0])))


def connect_with_profile(settings: CommonSettings) -> tuple[Client, ServerProfile]:
    probe = connect(settings)
    try:
        profile = server_profile(probe)
    finally:
        probe.disconnect()
    return connect(settings, profile), profile


def existing_columns(client: Client, database: str) -> dict[str, dict[str, str]]:
    """{table: {column: type}} for every table in `database`."""
    rows = client.execute(
        "SELECT table, name, type FROM system.columns WHERE database = %(db)s",
        {"db": database},
    )
    tables: dict[str, dict[str, str]] = {}
    for table, name, type_ in rows:
        tables.setdefault(str(table), {})[str(name)] = str(type_)
    return tables


@dataclass(frozen=True)
class ExistingTable:
    """A table as the server has it: its columns' types and the columns its keys use."""

    columns: dict[str, str]
    key_columns: frozenset[str] = frozenset()


_KEY_NAME = re.compile(r"`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*)")


def key_columns(key_expressions: list[str], columns: dict[str, str]) -> frozenset[str]:
    """The columns named in sorting/partition/primary key expressions ('id, toYYYYMM(ts)')."""
    names = {a or b for text in key_expressions for a, b in _KEY_NAME.findall(text)}
    return frozenset(names & columns.keys())


def existing_tables(client: Client, database: str) -> dict[str, ExistingTable]:
    """Every table in `database` with its columns and key columns."""
    columns = existing_columns(client, database)
    rows = client.execute(
        "SELECT name, sorting_key, partition_key, primary_key FROM system.tables "
        "WHERE database = %(db)s", {"db": database})
    keys = {str(name): [str(k) for k in exprs] for name, *exprs in rows}
    return {table: ExistingTable(cols, key_columns(keys.get(table, []), cols))
            for table, cols in columns.items()}


def row_count(client: Client, database: str, table: str) -> int:
    rows = client.execute(f"SELECT count() FROM {quote_identifier(database)}."
                          f"{quote_identifier(table)}")
    return int(rows[0][0])
