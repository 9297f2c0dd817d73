"""The migration statements on a current ClickHouse, run in-process by chDB (PyPI `chdb-core`,
see tests/current_server.py). A table created for 18.16 (DateTime('UTC')) is migrated to the current
server's mapping (DateTime64), with the other lossless changes, and its row is kept."""

from __future__ import annotations

import enum
from datetime import datetime
from decimal import Decimal
from typing import Annotated

from chute import ClickHouseDecimal, ClickHouseType, Key, LowCardinality, OlapTable
from chute.clickhouse import ExistingTable, key_columns
from chute.ddl import render_create_table
from chute.server import OLD_SERVER
from control_plane.plan import Plan, plan_tables
from pydantic import BaseModel

from tests.current_server import CurrentServer


class Kind1(enum.StrEnum):
    A = "a"


class Kind2(enum.StrEnum):
    A = "a"
    B = "b"


class V1(BaseModel):
    id: Key[str]
    kind: Key[Kind1]
    ts: datetime
    n: Annotated[int, ClickHouseType("Int32")]
    name: str
    price: Annotated[Decimal, ClickHouseDecimal(18, 4)]
    maybe: str
    old: str


class V2(BaseModel):
    id: Key[str]
    kind: Key[Kind2]
    ts: datetime
    n: int
    name: Annotated[str, LowCardinality()]
    price: Annotated[Decimal, ClickHouseDecimal(38, 9)]
    maybe: str | None


def _existing(server: CurrentServer) -> ExistingTable:
    columns = server.column_types("db", "t")
    (table,) = server.rows("SELECT engine, sorting_key, partition_key, primary_key "
                              "FROM system.tables WHERE database = 'db' AND name = 't'")
    keys = [table["sorting_key"], table["partition_key"], table["primary_key"]]
    return ExistingTable(columns, key_columns(keys, columns), table["engine"],
                         table["sorting_key"])


def test_a_table_from_18_16_migrates_to_the_current_mapping(current_ch: CurrentServer) -> None:
    session = current_ch
    profile = current_ch.profile
    assert profile.has_datetime64
    session.execute("CREATE DATABASE db")
    session.execute(render_create_table(OlapTable[V1]("t").definition(OLD_SERVER), "db"))
    session.execute("INSERT INTO db.t VALUES ('r1', 'a', '2024-05-01 12:00:00', -5, 'x', "
                  "12345678901234.5678, 'm', 'o')")

    plan = Plan()
    plan_tables([OlapTable[V2]("t").definition(profile)], {"t": _existing(session)}, "db",
                plan, allow_destructive=True)
    assert plan.conflicts == [], plan.describe()
    assert sorted(a.kind for a in plan.actions) == ["drop_column"] + ["modify_column"] * 6
    for action in plan.actions:
        assert action.sql is not None
        session.execute(action.sql)

    assert _existing(session).columns == {
        "id": "String", "kind": "Enum8('a' = 1, 'b' = 2)", "ts": "DateTime64(3, 'UTC')",
        "n": "Int64", "name": "LowCardinality(String)", "price": "Decimal(38, 9)",
        "maybe": "Nullable(String)"}
    (row,) = session.rows("SELECT id, kind, toString(ts) AS ts, n, name, toString(price) AS "
                            "price, maybe FROM db.t")
    assert row == {"id": "r1", "kind": "a", "ts": "2024-05-01 12:00:00.000", "n": -5,
                   "name": "x", "price": "12345678901234.5678", "maybe": "m"}
    again = Plan()
    plan_tables([OlapTable[V2]("t").definition(profile)], {"t": _existing(session)}, "db", again)
    assert again.describe() == "Nothing to change.\n  = table db.t is up to date"
