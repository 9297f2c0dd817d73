"""ClickHouse adapter: connections over the native protocol and the few queries chute needs."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from clickhouse_driver import Client

from chute.identifiers import quote_identifier
from chute.server import ServerProfile, parse_version
from chute.settings import ClickHouseConnectionSettings


def tls_options(settings: ClickHouseConnectionSettings) -> dict[str, Any]:
    """clickhouse-driver's TLS arguments for the settings (none without CHUTE_CLICKHOUSE_SECURE).
    verify=False turns off both the certificate and the host name check."""
    if not settings.clickhouse_secure:
        return {}
    options: dict[str, Any] = {"secure": True, "verify": settings.clickhouse_verify}
    optional = {"ca_certs": settings.clickhouse_ca_file, "certfile": settings.clickhouse_cert_file,
                "keyfile": settings.clickhouse_key_file,
                "keypass": settings.clickhouse_key_password}
    options.update({k: v for k, v in optional.items() if v})
    return options


def connect(settings: ClickHouseConnectionSettings, profile: ServerProfile | None = None,
            **client_settings: Any) -> Client:
    """A client for chute's database. Pass the profile to send its required settings."""
    merged: dict[str, Any] = dict(profile.session_settings()) if profile else {}
    merged.update(quorum_settings(settings.clickhouse_insert_quorum))
    # An insert into a Distributed table (a sharded table's `<name>`) returns only once every
    # shard has its rows, instead of queueing them on the receiving server (18.16 has it).
    merged["insert_distributed_sync"] = 1
    merged.update(client_settings)
    extra: dict[str, Any] = {}
    if settings.clickhouse_alt_hosts.strip():
        # clickhouse-driver tries host:port, then each alternative in turn, on every connect:
        # a worker whose replica died reconnects to another one on its next attempt.
        extra["alt_hosts"] = settings.clickhouse_alt_hosts.strip()
    return Client(
        **extra,
        host=settings.clickhouse_host,
        port=settings.clickhouse_port,
        user=settings.clickhouse_user,
        password=settings.clickhouse_password,
        database=settings.clickhouse_database,
        connect_timeout=5,
        send_receive_timeout=60,
        settings=merged,
        **tls_options(settings),
    )


QUORUM_TIMEOUT_MS = 10_000


def quorum_settings(quorum: int) -> dict[str, int]:
    """Session settings for a replicated table's inserts and reads: with a quorum, an insert is
    acknowledged only once `quorum` replicas have it, and reads see every such insert on
    whichever replica answers (18.16 has both settings). What exactly-once's watermark read
    needs after failing over to another replica (see chute.replication's README section)."""
    if quorum <= 1:
        return {}
    # 18.16 waits up to 600 s for the quorum by default, longer than a connection's receive
    # timeout: 10 s gives a clear answer (UNKNOWN_STATUS_OF_INSERT) that the worker reconciles.
    return {"insert_quorum": quorum, "insert_quorum_timeout": QUORUM_TIMEOUT_MS,
            "select_sequential_consistency": 1}


def cluster_shards(client: Client) -> dict[str, int]:
    """{cluster: number of shards} of the server's <remote_servers> (system.clusters)."""
    rows = client.execute("SELECT cluster, uniqExact(shard_num) FROM system.clusters "
                          "GROUP BY cluster")
    return {str(name): int(shards) for name, shards in rows}


def server_profile(client: Client) -> ServerProfile:
    rows = client.execute("SELECT version()")
    return ServerProfile(parse_version(str(rows[0][0])))


def connect_with_profile(settings: ClickHouseConnectionSettings) -> tuple[Client, ServerProfile]:
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
    engine: str | None = None  # 'MergeTree', 'ReplacingMergeTree', ...; None: not read
    sorting_key: str | None = None  # as system.tables prints it: 'id, ts'; '' for tuple()


_KEY_NAME = re.compile(r"`([^`]+)`|([A-Za-z_][A-Za-z0-9_]*)")


def key_column_names(key_expression: str) -> list[str]:
    """The names in a key expression, in order: 'id, `ts`' -> ['id', 'ts'] (function names of
    an expression such as 'toYYYYMM(ts)' included)."""
    return [quoted or bare for quoted, bare in _KEY_NAME.findall(key_expression)]


def key_columns(key_expressions: list[str], columns: dict[str, str]) -> frozenset[str]:
    """The columns named in sorting/partition/primary key expressions ('id, toYYYYMM(ts)')."""
    names = {name for text in key_expressions for name in key_column_names(text)}
    return frozenset(names & columns.keys())


def existing_tables(client: Client, database: str) -> dict[str, ExistingTable]:
    """Every table in `database` with its columns and key columns."""
    columns = existing_columns(client, database)
    rows = client.execute(
        "SELECT name, engine, sorting_key, partition_key, primary_key FROM system.tables "
        "WHERE database = %(db)s", {"db": database})
    tables = {str(name): (str(engine), [str(k) for k in keys]) for name, engine, *keys in rows}
    result = {}
    for table, cols in columns.items():
        engine, keys = tables.get(table, (None, []))
        result[table] = ExistingTable(cols, key_columns(keys, cols), engine,
                                      keys[0] if keys else None)
    return result


def row_count(client: Client, database: str, table: str) -> int:
    rows = client.execute(f"SELECT count() FROM {quote_identifier(database)}."
                          f"{quote_identifier(table)}")
    return int(rows[0][0])
