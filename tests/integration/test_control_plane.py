"""plan/apply against the real Kafka and ClickHouse."""

from __future__ import annotations

import enum
from datetime import UTC, date, datetime
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, Literal
from uuid import UUID

import pytest
from chute import ClickHouseDecimal, ClickHouseType, IngestPipeline, Key, LowCardinality
from chute.clickhouse import server_profile
from chute.registry import Definitions
from chute.settings import CommonSettings
from control_plane.apply import Connections, apply_plan, compute_plan
from pydantic import BaseModel
from sync_worker.rows import ColumnBuilder
from sync_worker.writer import ClickHouseWriter

pytestmark = pytest.mark.integration


class Kind(enum.StrEnum):
    A = "a"
    B = "b"


class Nested(BaseModel):
    x: int
    y: list[str]


class Everything(BaseModel):
    id: Key[str]
    n: int
    f: float
    flag: bool
    ts: datetime
    day: date
    uid: UUID
    price: Annotated[Decimal, ClickHouseDecimal(18, 4)]
    ip4: IPv4Address
    ip6: IPv6Address
    maybe: int | None
    tags: list[str]
    kind: Kind
    lit: Literal["x", "y"]
    nested: Nested
    small: Annotated[int, ClickHouseType("UInt16")]
    country: Annotated[str, LowCardinality()]
    attrs: dict[str, int]


def _apply(defs: Definitions) -> tuple[Connections, list[str]]:
    conn = Connections.open(CommonSettings())
    plan = compute_plan(conn, defs, "default")
    apply_plan(conn, plan)
    return conn, [a.kind for a in plan.actions]


def test_apply_creates_topic_and_table_then_changes_nothing(
        ch: Any, admin: Any, unique_name: str) -> None:
    pipeline = IngestPipeline[Everything](unique_name, {"stream": {"partitions": 3}})
    defs = Definitions.from_resources([pipeline])
    conn, kinds = _apply(defs)
    try:
        assert sorted(kinds) == ["create_table", "create_table", "create_topic", "create_topic"]
        topics = admin.topic_partitions()
        assert topics[unique_name] == 3
        assert topics[f"{unique_name}_dlq"] == 1

        types = dict(ch.execute(
            "SELECT name, type FROM system.columns WHERE database = 'default' AND table = %(t)s",
            {"t": unique_name}))
        profile = server_profile(ch)
        expected = {c.name: c.type for c in pipeline.table.definition(profile).columns}  # type: ignore[union-attr]
        assert {k: v.replace(" ", "") for k, v in types.items()} == {
            k: v.replace(" ", "") for k, v in expected.items()}
        if not profile.has_datetime64:
            assert types["ts"] == "DateTime('UTC')"
            assert types["flag"] == "UInt8"

        second = compute_plan(conn, defs, "default")
        assert second.empty, second.describe()
        assert f"table default.{unique_name} is up to date" in second.describe()
    finally:
        conn.close()


def test_new_field_is_added_as_a_column(ch: Any, unique_name: str) -> None:
    class V1(BaseModel):
        id: Key[str]

    class V2(BaseModel):
        id: Key[str]
        extra: int

    conn, _ = _apply(Definitions.from_resources([IngestPipeline[V1](unique_name)]))
    conn.close()
    conn, kinds = _apply(Definitions.from_resources([IngestPipeline[V2](unique_name)]))
    conn.close()
    assert kinds == ["add_column"]
    cols = [r[0] for r in ch.execute(
        "SELECT name FROM system.columns WHERE database='default' AND table=%(t)s",
        {"t": unique_name})]
    assert "extra" in cols


def test_every_supported_type_round_trips(ch: Any, unique_name: str) -> None:
    pipeline = IngestPipeline[Everything](unique_name)
    conn, _ = _apply(Definitions.from_resources([pipeline]))
    try:
        record = Everything(
            id="r1", n=-42, f=1.5, flag=True, ts=datetime(2024, 5, 1, 12, 30, 15, tzinfo=UTC),
            day=date(2024, 5, 1), uid=UUID("12345678-1234-5678-1234-567812345678"),
            price=Decimal("12.3456"), ip4=IPv4Address("10.1.2.3"), ip6=IPv6Address("::1"),
            maybe=None, tags=["a", "b"], kind=Kind.B, lit="y",
            nested=Nested(x=1, y=["z"]), small=65000, country="NL", attrs={"k": 1})
        assert pipeline.table is not None
        definition = pipeline.table.definition(conn.profile)
        builder = ColumnBuilder(list(definition.columns), exactly_once=False)
        ClickHouseWriter(conn.ch, "default").insert(
            unique_name, builder.names, builder.build([record], [0], [0]))
        (row,) = ch.execute(f"SELECT * FROM `{unique_name}`")
        got = dict(zip(builder.names, row, strict=True))
        assert got["id"] == "r1" and got["n"] == -42 and got["f"] == 1.5
        assert bool(got["flag"]) is True
        assert got["ts"].replace(tzinfo=UTC) == record.ts
        assert got["day"] == date(2024, 5, 1)
        assert got["uid"] == record.uid
        assert got["price"] == Decimal("12.3456")
        assert str(got["ip4"]) == "10.1.2.3" and str(got["ip6"]) == "::1"
        assert got["maybe"] is None
        assert got["tags"] == ["a", "b"]
        assert got["kind"] == "b" and got["lit"] == "y"
        assert Nested.model_validate_json(got["nested"]) == record.nested
        assert got["small"] == 65000 and got["country"] == "NL"
        assert got["attrs"] == '{"k":1}'
    finally:
        conn.close()
