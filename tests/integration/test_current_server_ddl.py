"""The DDL chute renders for a current ClickHouse, executed on ClickHouse 26.x in-process
(chDB): every type mapping, every engine option, the example schemas, and the queries the
control plane runs. Inserts over the native protocol are tested on 18.16 only."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, Literal
from uuid import UUID

import pytest
from chute import (
    ClickHouseDecimal,
    ClickHouseDefault,
    ClickHouseType,
    Codec,
    DateTimePrecision,
    Key,
    LowCardinality,
    OlapTable,
)
from chute.ddl import render_backfill_topic_id, render_create_table
from chute.registry import load_definitions
from pydantic import BaseModel
from sync_worker.writer import watermark_query

from tests.current_server import CurrentServer
from tests.support import ROOT
from tests.unit.test_typemap_ddl import TYPE_TABLE, Color, Inner, _model_with


class EveryType(BaseModel):
    """One field of each mapping, with the annotations that change a column."""

    id: Key[str]
    n: int
    small: Annotated[int, ClickHouseType("UInt8")]
    x: float
    flag: bool
    at: datetime
    at_us: Annotated[datetime, DateTimePrecision(6)]
    day: date
    uid: UUID
    price: Decimal
    money: Annotated[Decimal, ClickHouseDecimal(18, 4)]
    ip4: IPv4Address
    ip6: IPv6Address
    maybe: int | None
    tags: list[str]
    colour: Color
    kind: Literal["a", "b"]
    inner: Inner
    attrs: dict[str, str]
    country: Annotated[str, LowCardinality()]
    code: Annotated[str, ClickHouseType("FixedString(3)")]
    body: Annotated[str, Codec("ZSTD(3)")]
    seen: Annotated[datetime, ClickHouseDefault("now()")]


@pytest.mark.parametrize(("annotation", "current"), [(row[0], row[2]) for row in TYPE_TABLE],
                         ids=[str(row[0]) for row in TYPE_TABLE])
def test_each_mapping_of_the_type_table_creates_on_a_current_server(
        current_ch: CurrentServer, annotation: Any, current: str) -> None:
    """The rendered type, executed: ClickHouse 26.x creates the column and reports that type."""
    model = _model_with(annotation)
    definition = OlapTable[model]("t").definition(current_ch.profile)  # type: ignore[valid-type]
    current_ch.execute("CREATE DATABASE db")
    current_ch.execute(render_create_table(definition, "db"))
    assert current_ch.column_types("db", "t")["value"] == current


def test_every_type_mapping_creates_the_columns_it_renders(current_ch: CurrentServer) -> None:
    definition = OlapTable[EveryType]("every_type").definition(current_ch.profile)
    current_ch.execute("CREATE DATABASE db")
    current_ch.execute(render_create_table(definition, "db"))
    assert current_ch.column_types("db", "every_type") == {
        c.name: c.type for c in definition.columns}
    assert current_ch.column_types("db", "every_type")["at"] == "DateTime64(3, 'UTC')"
    assert current_ch.column_types("db", "every_type")["flag"] == "Bool"
    assert current_ch.column_types("db", "every_type")["ip4"] == "IPv4"


def test_a_row_of_every_type_reads_back(current_ch: CurrentServer) -> None:
    definition = OlapTable[EveryType]("t").definition(current_ch.profile)
    current_ch.execute("CREATE DATABASE db")
    current_ch.execute(render_create_table(definition, "db"))
    current_ch.execute(
        "INSERT INTO db.t (id, n, small, x, flag, at, at_us, day, uid, price, money, ip4, ip6,"
        " maybe, tags, colour, kind, inner, attrs, country, code, body) VALUES ('r1', "
        "-9223372036854775808, 255, 1.5, true, '2299-12-31 23:59:59.999', "
        "'1900-01-01 00:00:00.000001', '2149-06-06', '00000000-0000-0000-0000-000000000001', "
        "'99999999999999999999999999999.999999999', '-99999999999999.9999', '255.255.255.255',"
        " '::1', NULL, ['a', 'b'], 'green', 'b', '{\"a\": 1}', '{}', 'NL', 'abc', 'text')")
    (row,) = current_ch.rows(
        "SELECT n, small, flag, toString(at) AS at, toString(at_us) AS at_us, "
        "toString(day) AS day, toString(price) AS price, toString(money) AS money, maybe, "
        "tags, colour, code, seen > toDateTime('2020-01-01') AS defaulted FROM db.t")
    assert row == {
        "n": -9223372036854775808, "small": 255, "flag": True,
        "at": "2299-12-31 23:59:59.999", "at_us": "1900-01-01 00:00:00.000001",
        "day": "2149-06-06", "price": "99999999999999999999999999999.999999999",
        "money": "-99999999999999.9999", "maybe": None, "tags": ["a", "b"],
        "colour": "green", "code": "abc", "defaulted": 1}


class Versioned(BaseModel):
    id: Key[str]
    at: datetime
    version: Annotated[int, ClickHouseType("UInt64")]
    sign: Annotated[int, ClickHouseType("Int8")]


ENGINE_OPTIONS: list[dict[str, Any]] = [
    {"engine": "ReplacingMergeTree", "ver": "version"},
    {"engine": "CollapsingMergeTree", "ver": "sign"},
    {"engine": "SummingMergeTree"},
    {"engine": "AggregatingMergeTree"},
    {"partition_by": "toYYYYMM(at)", "ttl": "toDateTime(at) + INTERVAL 90 DAY"},
    {"order_by_fields": ["at", "id"], "settings": {"index_granularity": 4096}},
]


@pytest.mark.parametrize("options", ENGINE_OPTIONS, ids=lambda o: ",".join(sorted(o)))
def test_every_engine_option_creates(current_ch: CurrentServer, options: dict[str, Any]) -> None:
    definition = OlapTable[Versioned]("t", options).definition(current_ch.profile)
    current_ch.execute("CREATE DATABASE db")
    current_ch.execute(render_create_table(definition, "db"))
    (table,) = current_ch.rows("SELECT engine FROM system.tables WHERE database = 'db'")
    assert table["engine"] == options.get("engine", "MergeTree")


def test_exactly_once_table_and_its_watermark_query(current_ch: CurrentServer) -> None:
    table = OlapTable[Versioned]("t")
    current_ch.execute("CREATE DATABASE db")
    current_ch.execute(render_create_table(
        table.definition(current_ch.profile, exactly_once=True), "db"))
    current_ch.execute("INSERT INTO db.t (id, at, version, sign, _chute_partition, _chute_offset,"
                       " _chute_topic_id) VALUES ('a', now(), 1, 1, 0, 41, 'x'),"
                       " ('b', now(), 1, 1, 2, 7, 'x'), ('c', now(), 1, 1, 2, 90, 'old')")
    # The query the worker sends, its parameter filled in as clickhouse-driver does.
    query = watermark_query("db", "t").replace("%(topic_id)s", "'x'")
    rows = current_ch.rows(f"SELECT * FROM ({query}) ORDER BY 1")
    assert [tuple(row.values()) for row in rows] == [(0, 41), (2, 7)]
    current_ch.execute(render_backfill_topic_id("db", "t", "y"))  # a mutation parses and runs


def test_the_example_schemas_create_with_their_dead_letter_tables(
        current_ch: CurrentServer) -> None:
    definitions = load_definitions(str(ROOT / "schemas"))
    current_ch.execute("CREATE DATABASE db")
    tables = definitions.table_definitions(current_ch.profile)
    for table in tables:
        current_ch.execute(render_create_table(table, "db"))
    names = {r["name"] for r in current_ch.rows(
        "SELECT name FROM system.tables WHERE database = 'db'")}
    assert names == {t.name for t in tables}
    assert {"events", "events_dlq"} <= names
