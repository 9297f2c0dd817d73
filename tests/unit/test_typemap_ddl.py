"""The type-mapping table of the design, rendered for an old (18.16) and a current server."""

from __future__ import annotations

import enum
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
    OlapConfig,
    OlapTable,
)
from chute.ddl import TableDefinition, render_create_table
from chute.identifiers import InvalidIdentifierError
from chute.server import CURRENT_SERVER, OLD_SERVER, ServerProfile, parse_version
from chute.typemap import UnsupportedTypeError, columns_for
from pydantic import BaseModel


class Color(enum.StrEnum):
    RED = "red"
    GREEN = "green"


class Inner(BaseModel):
    a: int
    b: str


# (annotation, old-server type, current-server type)
TYPE_TABLE: list[tuple[Any, str, str]] = [
    (str, "String", "String"),
    (int, "Int64", "Int64"),
    (float, "Float64", "Float64"),
    (bool, "UInt8", "Bool"),
    (datetime, "DateTime('UTC')", "DateTime64(3, 'UTC')"),
    (date, "Date", "Date"),
    (UUID, "UUID", "UUID"),
    (Decimal, "Decimal(38, 9)", "Decimal(38, 9)"),
    (Annotated[Decimal, ClickHouseDecimal(18, 4)], "Decimal(18, 4)", "Decimal(18, 4)"),
    (IPv4Address, "String", "IPv4"),
    (IPv6Address, "String", "IPv6"),
    (str | None, "Nullable(String)", "Nullable(String)"),
    (list[int], "Array(Int64)", "Array(Int64)"),
    (list[str | None], "Array(Nullable(String))", "Array(Nullable(String))"),
    (Color, "Enum8('red' = 1, 'green' = 2)", "Enum8('red' = 1, 'green' = 2)"),
    (Literal["a", "b"], "Enum8('a' = 1, 'b' = 2)", "Enum8('a' = 1, 'b' = 2)"),
    (Inner, "String", "String"),
    (dict[str, int], "String", "String"),
    (Annotated[int, ClickHouseType("UInt32")], "UInt32", "UInt32"),
    (Annotated[str, LowCardinality()], "LowCardinality(String)", "LowCardinality(String)"),
    (Annotated[datetime, DateTimePrecision(6)], "DateTime('UTC')", "DateTime64(6, 'UTC')"),
    (Annotated[str | None, LowCardinality()], "LowCardinality(Nullable(String))",
     "LowCardinality(Nullable(String))"),
]


def _model_with(annotation: Any) -> type[BaseModel]:
    return type("M", (BaseModel,), {"__annotations__": {"id": Key[str], "value": annotation}})


@pytest.mark.parametrize(("annotation", "old", "current"), TYPE_TABLE,
                         ids=[str(row[0]) for row in TYPE_TABLE])
def test_type_mapping_renders_per_server(annotation: Any, old: str, current: str) -> None:
    model = _model_with(annotation)
    for profile, expected in ((OLD_SERVER, old), (CURRENT_SERVER, current)):
        table = OlapTable[model]("t_types")  # type: ignore[valid-type]
        ddl = render_create_table(table.definition(profile), "default")
        assert f"`value` {expected}" in ddl, ddl
        assert "ORDER BY (`id`)" in ddl


def test_event_table_ddl_is_exact() -> None:
    class Event(BaseModel):
        id: Key[str]
        user_id: str
        timestamp: datetime
        event_type: str

    table = OlapTable[Event]("events")
    assert render_create_table(table.definition(OLD_SERVER), "default") == (
        "CREATE TABLE IF NOT EXISTS `default`.`events`\n"
        "(\n"
        "    `id` String,\n"
        "    `user_id` String,\n"
        "    `timestamp` DateTime('UTC'),\n"
        "    `event_type` String\n"
        ")\n"
        "ENGINE = MergeTree()\n"
        "ORDER BY (`id`)"
    )


def test_keys_in_field_order_engine_partition_ttl_settings_codec_default() -> None:
    class Row(BaseModel):
        tenant: Key[str]
        ts: Key[datetime]
        version: int
        body: Annotated[str, Codec("ZSTD(3)")]
        seen: Annotated[datetime, ClickHouseDefault("now()")]

    table = OlapTable[Row]("rows", OlapConfig(
        engine="ReplacingMergeTree", ver="version", partition_by="toYYYYMM(ts)",
        ttl="ts + INTERVAL 30 DAY", settings={"index_granularity": 8192}))
    ddl = render_create_table(table.definition(CURRENT_SERVER), "db1")
    assert "ENGINE = ReplacingMergeTree(`version`)" in ddl
    assert "ORDER BY (`tenant`, `ts`)" in ddl
    assert "PARTITION BY toYYYYMM(ts)" in ddl
    assert "TTL ts + INTERVAL 30 DAY" in ddl
    assert "SETTINGS index_granularity = 8192" in ddl
    assert "`body` String CODEC(ZSTD(3))" in ddl
    assert "`seen` DateTime64(3, 'UTC') DEFAULT now()" in ddl


def test_no_key_orders_by_tuple() -> None:
    class Row(BaseModel):
        a: int

    ddl = render_create_table(OlapTable[Row]("nokey").definition(OLD_SERVER), "default")
    assert ddl.endswith("ORDER BY tuple()")


def test_unsupported_type_names_the_field() -> None:
    class Bad(BaseModel):
        id: Key[str]
        blob: bytes | int

    with pytest.raises(UnsupportedTypeError, match=r"Bad\.blob"):
        columns_for(Bad, OLD_SERVER)


def test_unknown_class_names_the_field() -> None:
    class Thing:
        pass

    class Bad(BaseModel):
        model_config = {"arbitrary_types_allowed": True}
        thing: Thing

    with pytest.raises(UnsupportedTypeError, match=r"Bad\.thing: unsupported type Thing"):
        columns_for(Bad, CURRENT_SERVER)


def test_nullable_key_is_refused() -> None:
    class Bad(BaseModel):
        id: Key[str | None]

    with pytest.raises(UnsupportedTypeError, match=r"Bad\.id: a Key field cannot be optional"):
        columns_for(Bad, OLD_SERVER)


def test_nullable_array_is_refused() -> None:
    class Bad(BaseModel):
        tags: list[str] | None

    with pytest.raises(UnsupportedTypeError, match=r"Bad\.tags"):
        columns_for(Bad, OLD_SERVER)


@pytest.mark.parametrize("name", ["events; DROP TABLE x", "1abc", "a-b", "", "x" * 200, "ta`b"])
def test_bad_table_names_are_refused(name: str) -> None:
    class Row(BaseModel):
        a: int

    with pytest.raises(InvalidIdentifierError, match="invalid table name"):
        OlapTable[Row](name)


def test_bad_column_name_is_refused() -> None:
    Bad = type("Bad", (BaseModel,), {"__annotations__": {"Ünïcode": int}})
    with pytest.raises(InvalidIdentifierError, match="column"):
        columns_for(Bad, OLD_SERVER)


def test_order_by_must_name_fields() -> None:
    class Row(BaseModel):
        a: int

    with pytest.raises(ValueError, match="column 'nope' is not a field"):
        OlapTable[Row]("r", {"order_by_fields": ["nope"]}).definition(OLD_SERVER)


def test_table_definition_refuses_statement_injection_in_expressions() -> None:
    with pytest.raises(ValueError, match="not allowed"):
        TableDefinition("t", (), partition_by="x; DROP TABLE y")


def test_converters_turn_datetimes_into_ticks() -> None:
    class Row(BaseModel):
        ts: datetime

    dt = datetime.fromisoformat("2024-05-01T12:00:00.123456+00:00")
    (old,) = columns_for(Row, OLD_SERVER)
    (new,) = columns_for(Row, CURRENT_SERVER)
    assert old.convert is not None and new.convert is not None
    assert old.convert(dt) == 1714564800
    assert new.convert(dt) == 1714564800123
    naive = datetime(2024, 5, 1, 12, 0, 0)
    assert old.convert(naive) == 1714564800


@pytest.mark.parametrize(("text", "version"), [
    ("18.16.1", (18, 16, 1)), ("25.8.2.29", (25, 8, 2, 29)), ("23.3.1-lts", (23, 3, 1))])
def test_parse_version(text: str, version: tuple[int, ...]) -> None:
    assert parse_version(text) == version


def test_profile_features() -> None:
    assert not OLD_SERVER.has_datetime64 and CURRENT_SERVER.has_datetime64
    assert OLD_SERVER.session_settings() == {"allow_experimental_low_cardinality_type": 1}
    assert CURRENT_SERVER.session_settings() == {}
    assert ServerProfile((22, 2)).has_insert_deduplication_token


def test_an_enum_label_with_a_control_character_stops_the_service_at_start() -> None:
    """The server spells it with an escape in the column's type, which clickhouse-driver
    reads back as another label: every insert of the pipeline would fail."""

    class Tabbed(BaseModel):
        kind: Literal["a", "b\tc"]

    with pytest.raises(UnsupportedTypeError, match="control character"):
        columns_for(Tabbed, OLD_SERVER)


def test_a_field_the_worker_would_not_read_back_stops_the_service_at_start() -> None:
    """Records go to Kafka by alias and are validated again by the sync worker: a field
    written under a name it is not read by would be stored as its default after a 200."""
    from pydantic import AliasChoices, AliasPath, ConfigDict, Field

    class ReadOnlyAlias(BaseModel):
        x: int = Field(0, validation_alias="userX")

    class WriteOnlyAlias(BaseModel):
        x: int = Field(0, serialization_alias="X")

    class Excluded(BaseModel):
        x: int = Field(0, exclude=True)

    class Path(BaseModel):
        x: int = Field(0, validation_alias=AliasPath("a", "b"))

    refused: list[type[BaseModel]] = [ReadOnlyAlias, WriteOnlyAlias, Excluded, Path]
    for model in refused:
        with pytest.raises(UnsupportedTypeError, match=f"{model.__name__}.x"):
            columns_for(model, OLD_SERVER)

    class Alias(BaseModel):
        x: int = Field(0, alias="X")

    class Choices(BaseModel):
        x: int = Field(0, validation_alias=AliasChoices("userX", "x"))

    class ByName(BaseModel):
        model_config = ConfigDict(populate_by_name=True)
        x: int = Field(0, validation_alias="userX")

    accepted: list[type[BaseModel]] = [Alias, Choices, ByName]
    for model in accepted:
        assert [c.name for c in columns_for(model, OLD_SERVER)] == ["x"]
