"""ClickHouse adapter: connections over the native protocol and the few queries chute needs."""

from __future__ import annotations

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


def row_count(client: Client, database: str, table: str) -> int:
    rows = client.execute(f"SELECT count() FROM {quote_identifier(database)}."
                          f"{quote_identifier(table)}")
    return int(rows[0][0])
