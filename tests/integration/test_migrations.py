"""Model changes planned and applied against the real ClickHouse: type changes keep the data,
columns of removed fields are dropped only when asked, and table life cycles are respected."""

from __future__ import annotations

import enum
import subprocess
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any

import pytest
from chute import ClickHouseDecimal, ClickHouseType, IngestPipeline, Key, LowCardinality
from chute.registry import Definitions
from chute.settings import CommonSettings
from control_plane.apply import Connections, PlanRefused, apply_plan, compute_plan
from control_plane.plan import Plan
from pydantic import BaseModel

from tests.support import PYTHON, service_env

pytestmark = pytest.mark.integration


def _plan(*resources: Any, allow_destructive: bool = False) -> tuple[Connections, Plan]:
    conn = Connections.open(CommonSettings())
    return conn, compute_plan(conn, Definitions.from_resources(list(resources)), "default",
                              allow_destructive)


def _apply(*resources: Any, allow_destructive: bool = False) -> Plan:
    conn, plan = _plan(*resources, allow_destructive=allow_destructive)
    try:
        apply_plan(conn, plan, allow_destructive)
    finally:
        conn.close()
    return plan


def _types(ch: Any, table: str) -> dict[str, str]:
    return dict(ch.execute(
        "SELECT name, type FROM system.columns WHERE database = 'default' AND table = %(t)s",
        {"t": table}))


def _table_only(model: type[BaseModel], name: str, **table: Any) -> Any:
    return IngestPipeline[model](name, {  # type: ignore[valid-type]
        "table": table, "stream": {"partitions": 1}, "dead_letter_queue": False})


class Kind1(enum.StrEnum):
    A = "a"
    B = "b"


class Kind2(enum.StrEnum):
    A = "a"
    B = "b"
    C = "c"


class Before(BaseModel):
    id: Key[str]
    count: Annotated[int, ClickHouseType("Int32")]
    small: Annotated[int, ClickHouseType("UInt8")]
    name: str
    price: Annotated[Decimal, ClickHouseDecimal(18, 4)]
    kind: Kind1
    note: str


class After(BaseModel):
    id: Key[str]
    count: int  # Int64
    small: Annotated[int, ClickHouseType("Int32")]
    name: Annotated[str, LowCardinality()]
    price: Annotated[Decimal, ClickHouseDecimal(38, 9)]
    kind: Kind2
    note: str | None


ROWS = [("r1", -2_000_000_000, 255, "alpha", Decimal("12345678901234.5678"), "a", "x"),
        ("r2", 2_000_000_000, 0, "beta", Decimal("-0.0001"), "b", "")]


def test_lossless_type_changes_are_applied_and_keep_the_data(ch: Any, unique_name: str) -> None:
    _apply(_table_only(Before, unique_name))
    ch.execute(f"INSERT INTO `{unique_name}` (id, count, small, name, price, kind, note) VALUES",
               ROWS)

    plan = _apply(_table_only(After, unique_name))

    assert sorted(a.kind for a in plan.actions) == ["modify_column"] * 6, plan.describe()
    types = _types(ch, unique_name)
    assert types == {"id": "String", "count": "Int64", "small": "Int32",
                     "name": "LowCardinality(String)", "price": "Decimal(38, 9)",
                     "kind": "Enum8('a' = 1, 'b' = 2, 'c' = 3)", "note": "Nullable(String)"}
    got = ch.execute(f"SELECT id, count, small, name, price, kind, note FROM `{unique_name}` "
                     "ORDER BY id")
    assert got == ROWS
    ch.execute(f"INSERT INTO `{unique_name}` (id, count, kind, note) VALUES",
               [("r3", 2**40, "c", None)])
    assert ch.execute(f"SELECT count, kind, note FROM `{unique_name}` WHERE id = 'r3'") == [
        (2**40, "c", None)]
    assert _plan(_table_only(After, unique_name))[1].describe().startswith("Nothing to change.")


def test_a_lossy_type_change_is_refused_and_nothing_is_applied(
        ch: Any, unique_name: str) -> None:
    _apply(_table_only(Before, unique_name))
    ch.execute(f"INSERT INTO `{unique_name}` (id, count, small, name, price, kind, note) VALUES",
               ROWS)

    class Narrower(BaseModel):
        id: Key[str]
        count: Annotated[int, ClickHouseType("Int16")]  # would wrap
        small: Annotated[int, ClickHouseType("UInt8")]
        name: str
        price: Annotated[Decimal, ClickHouseDecimal(18, 4)]
        kind: Kind1
        note: str
        added: int  # a change that could be applied, held back by the conflict

    conn, plan = _plan(_table_only(Narrower, unique_name))
    try:
        assert [a.kind for a in plan.actions] == ["add_column"]
        assert len(plan.conflicts) == 1 and "is Int32, the model says Int16" in plan.conflicts[0]
        with pytest.raises(PlanRefused, match="conflict"):
            apply_plan(conn, plan)
    finally:
        conn.close()
    assert _types(ch, unique_name)["count"] == "Int32"
    assert "added" not in _types(ch, unique_name)
    assert ch.execute(f"SELECT count FROM `{unique_name}` ORDER BY id") == [
        (-2_000_000_000,), (2_000_000_000,)]


class WithOld(BaseModel):
    id: Key[str]
    keep: int
    old: str


class WithoutOld(BaseModel):
    id: Key[str]
    keep: int


def test_a_removed_field_is_dropped_only_with_allow_destructive(
        ch: Any, unique_name: str) -> None:
    _apply(_table_only(WithOld, unique_name))
    ch.execute(f"INSERT INTO `{unique_name}` (id, keep, old) VALUES", [("r1", 1, "gone soon")])

    plan = _apply(_table_only(WithoutOld, unique_name))
    assert plan.actions == []
    assert "not in the model; kept" in plan.warnings[0]
    assert not plan.describe().startswith("Nothing to change.")
    assert "old" in _types(ch, unique_name)

    conn, plan = _plan(_table_only(WithoutOld, unique_name), allow_destructive=True)
    try:
        assert [a.kind for a in plan.actions] == ["drop_column"]
        with pytest.raises(PlanRefused, match="--allow-destructive"):
            apply_plan(conn, plan)  # the apply step checks the flag too
        assert "old" in _types(ch, unique_name)
        apply_plan(conn, plan, allow_destructive=True)
    finally:
        conn.close()
    assert _types(ch, unique_name) == {"id": "String", "keep": "Int64"}
    assert ch.execute(f"SELECT id, keep FROM `{unique_name}`") == [("r1", 1)]


def test_deletion_protected_never_drops_but_adds_and_modifies(
        ch: Any, unique_name: str) -> None:
    class V1(BaseModel):
        id: Key[str]
        keep: Annotated[int, ClickHouseType("Int32")]
        old: str

    class V2(BaseModel):
        id: Key[str]
        keep: int
        added: str

    _apply(_table_only(V1, unique_name, life_cycle="deletion_protected"))
    ch.execute(f"INSERT INTO `{unique_name}` (id, keep, old) VALUES", [("r1", 7, "kept")])
    plan = _apply(_table_only(V2, unique_name, life_cycle="deletion_protected"),
                  allow_destructive=True)
    assert sorted(a.kind for a in plan.actions) == ["add_column", "modify_column"]
    assert "deletion_protected" in plan.warnings[0]
    assert _types(ch, unique_name) == {"id": "String", "keep": "Int64", "old": "String",
                                       "added": "String"}
    assert ch.execute(f"SELECT keep, old, added FROM `{unique_name}`") == [(7, "kept", "")]


def test_externally_managed_is_checked_never_created_or_altered(
        ch: Any, unique_name: str) -> None:
    pipeline = _table_only(WithoutOld, unique_name, life_cycle="externally_managed")
    conn, plan = _plan(pipeline)
    try:
        assert [a.kind for a in plan.actions] == ["create_topic"]  # the topic, not the table
        assert "does not exist" in plan.conflicts[0]
        with pytest.raises(PlanRefused):
            apply_plan(conn, plan)
    finally:
        conn.close()
    assert _types(ch, unique_name) == {}

    ch.execute(f"CREATE TABLE `{unique_name}` (id String, keep Int32, extra String) "
               "ENGINE = MergeTree ORDER BY id")
    before = ch.execute(f"SHOW CREATE TABLE `{unique_name}`")
    conn, plan = _plan(pipeline, allow_destructive=True)
    try:
        assert [a.kind for a in plan.actions] == ["create_topic"]
        assert "keep is Int32, the model says Int64" in plan.conflicts[0]
        assert any("drift: column default." f"{unique_name}.extra (String)" in w
                   for w in plan.warnings)
    finally:
        conn.close()
    ch.execute(f"ALTER TABLE `{unique_name}` MODIFY COLUMN keep Int64")
    plan = _apply(pipeline, allow_destructive=True)
    assert [a.kind for a in plan.actions] == ["create_topic"] and plan.conflicts == []
    assert len(plan.warnings) == 1 and "extra" in plan.warnings[0]
    after = ch.execute(f"SHOW CREATE TABLE `{unique_name}`")
    assert after == [(before[0][0].replace("keep Int32", "keep Int64"),)]


def test_exactly_once_columns_survive_a_destructive_apply(ch: Any, unique_name: str) -> None:
    exactly_once = IngestPipeline[WithoutOld](unique_name, {
        "stream": {"partitions": 1, "delivery": "exactly_once"}, "dead_letter_queue": False})
    _apply(exactly_once)
    assert {"_chute_partition", "_chute_offset"} <= _types(ch, unique_name).keys()
    plan = _apply(_table_only(WithoutOld, unique_name), allow_destructive=True)
    assert plan.actions == []
    assert {"_chute_partition", "_chute_offset"} <= _types(ch, unique_name).keys()


def test_an_exactly_once_table_from_before_topic_ids_is_migrated(
        ch: Any, admin: Any, unique_name: str) -> None:
    """A table written by an exactly-once worker that did not store topic ids: plan adds the
    column and tags the rows with the topic's current id, except rows at partition 0 offset 0
    (what rows from before the table was exactly-once read), so the watermark survives and
    no old row ever counts as one."""
    from chute import kafka
    from sync_worker.writer import ClickHouseWriter

    admin.create_topic(kafka.TopicConfig(unique_name, 2, {}))
    try:
        ch.execute(f"CREATE TABLE `{unique_name}` (id String, keep Int64, "
                   "_chute_partition UInt32, _chute_offset UInt64) "
                   "ENGINE = MergeTree ORDER BY id")
        rows = [("before-1", 0, 0, 0), ("before-2", 0, 0, 0)]  # from before exactly-once
        rows += [(f"p0-{o}", 0, 0, o) for o in range(1, 6)]
        rows += [(f"p1-{o}", 0, 1, o) for o in range(4)]
        ch.execute(f"INSERT INTO `{unique_name}` (id, keep, _chute_partition, _chute_offset) "
                   "VALUES", rows)
        pipeline = IngestPipeline[WithoutOld](unique_name, {
            "stream": {"partitions": 2, "delivery": "exactly_once"}, "dead_letter_queue": False})
        topic_id = admin.topic_ids([unique_name])[unique_name]
        conn, plan = _plan(pipeline)
        conn.close()
        assert [a.kind for a in plan.actions] == ["add_column", "backfill_topic_id"]
        assert "_chute_topic_id String" in plan.actions[0].description
        assert topic_id in plan.describe()
        _apply(pipeline)
        tagged = dict(ch.execute(f"SELECT _chute_topic_id, count() FROM `{unique_name}` "
                                 "GROUP BY _chute_topic_id"))
        assert tagged == {"": 2, topic_id: 9}
        writer = ClickHouseWriter(ch, "default")
        assert writer.read_watermarks(unique_name, topic_id) == {0: 5, 1: 3}
        again = _apply(pipeline)
        assert again.actions == []
    finally:
        admin.delete_topic(unique_name)


def test_cli_plan_and_apply_flag_and_exit_codes(
        ch: Any, unique_name: str, schema_dir: Path) -> None:
    schemas = ""

    def define(fields: str) -> None:
        # a new directory per version: a process loads a schema file once per path
        nonlocal schemas
        version = schema_dir / f"v{len(list(schema_dir.iterdir()))}"
        version.mkdir()
        schemas = str(version)
        (version / f"{unique_name}.py").write_text(
            "from chute import IngestPipeline, Key\nfrom pydantic import BaseModel\n"
            f"class M(BaseModel):\n    id: Key[str]\n{fields}"
            f"p = IngestPipeline[M]({unique_name!r}, {{'stream': {{'partitions': 1}}, "
            "'dead_letter_queue': False})\n")

    def chute(*args: str) -> tuple[int, str]:
        done = subprocess.run([PYTHON, "-m", "control_plane", *args], env=service_env(schemas),
                              capture_output=True, text=True, timeout=120, check=False)
        return done.returncode, done.stdout

    define("    old: str\n")
    assert chute("apply")[0] == 0
    define("    pass\n")
    code, out = chute("plan")
    assert code == 0, out
    assert "No change to make; 1 warning to read:" in out and "--allow-destructive" in out
    assert chute("apply")[0] == 0
    assert "old" in _types(ch, unique_name)
    code, out = chute("apply", "--allow-destructive")
    assert code == 0 and "- drop column" in out, out
    assert "old" not in _types(ch, unique_name)

    define("    id2: int\n")
    ch.execute(f"ALTER TABLE `{unique_name}` ADD COLUMN id2 String")
    code, out = chute("apply")
    assert code == 1, out
    assert f"x column default.{unique_name}.id2 is String, the model says Int64" in out
    assert "Nothing applied" in out


def test_status_reports_a_table_that_differs_from_its_model(ch: Any, unique_name: str) -> None:
    from control_plane.status import StatusSettings, StatusSource

    _apply(_table_only(WithOld, unique_name))
    source = StatusSource(StatusSettings(), Definitions.from_resources(
        [_table_only(WithoutOld, unique_name)]))
    try:
        (pipeline,) = source.snapshot().pipelines
    finally:
        source.close()
    assert pipeline.notes == (
        f"table default.{unique_name} differs from its model: 1 warning (chute plan lists them)",)


def test_the_control_plane_service_does_not_apply_a_plan_with_conflicts(
        ch: Any, unique_name: str) -> None:
    from control_plane.app import ControlState, apply_with_retry
    from control_plane.settings import ControlPlaneSettings

    class Narrower(BaseModel):
        id: Key[str]
        keep: Annotated[int, ClickHouseType("Int8")]
        added: str

    _apply(_table_only(WithoutOld, unique_name))
    state = ControlState()
    apply_with_retry(ControlPlaneSettings(apply_deadline_seconds=30),
                     Definitions.from_resources([_table_only(Narrower, unique_name)]), state)
    assert not state.applied.is_set()
    assert state.failed is not None and "is Int64, the model says Int8" in state.failed
    assert "added" not in _types(ch, unique_name)
