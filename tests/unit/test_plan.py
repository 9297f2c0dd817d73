"""Planning table migrations (pure): what plan shows and which statements apply would run."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import pytest
from chute import ClickHouseType, Key, LifeCycle, OlapConfig, OlapTable
from chute.clickhouse import ExistingTable, key_columns
from chute.ddl import (
    TableDefinition,
    render_add_column,
    render_drop_column,
    render_modify_column,
)
from chute.registry import TopicSpec
from chute.server import CURRENT_SERVER, OLD_SERVER, ServerProfile
from chute.typemap import ColumnSpec
from control_plane.plan import Plan, make_plan, plan_tables
from pydantic import BaseModel, ValidationError


class Event(BaseModel):
    id: Key[str]
    count: int
    ts: datetime


def _definition(model: type[BaseModel], life_cycle: str = "fully_managed",
                profile: ServerProfile = OLD_SERVER) -> TableDefinition:
    table: OlapTable[Any] = OlapTable[model]("events", {"life_cycle": life_cycle})  # type: ignore[valid-type]
    return table.definition(profile)


def _existing(columns: dict[str, str], keys: tuple[str, ...] = ("id",)) -> ExistingTable:
    return ExistingTable(columns, frozenset(keys))


def _plan(model: type[BaseModel], columns: dict[str, str] | None, *,
          life_cycle: str = "fully_managed", allow_destructive: bool = False,
          profile: ServerProfile = OLD_SERVER) -> Plan:
    plan = Plan()
    existing = {} if columns is None else {"events": _existing(columns)}
    plan_tables([_definition(model, life_cycle, profile)], existing, "db", plan,
                allow_destructive)
    return plan


CURRENT = {"id": "String", "count": "Int64", "ts": "DateTime('UTC')"}


def test_alter_statements_render_as_strings() -> None:
    column = ColumnSpec("count", "Nullable(Int64)", default="0", codec="ZSTD(3)")
    assert render_add_column("db", "events", column) == (
        "ALTER TABLE `db`.`events` ADD COLUMN `count` Nullable(Int64) DEFAULT 0 CODEC(ZSTD(3))")
    assert render_modify_column("db", "events", ColumnSpec("count", "Int64")) == (
        "ALTER TABLE `db`.`events` MODIFY COLUMN `count` Int64")
    assert render_drop_column("db", "events", "count") == (
        "ALTER TABLE `db`.`events` DROP COLUMN `count`")


def test_current_server_modifies_datetime_to_datetime64() -> None:
    plan = _plan(Event, CURRENT, profile=CURRENT_SERVER)
    (action,) = plan.actions
    assert action.kind == "modify_column"
    assert action.sql == "ALTER TABLE `db`.`events` MODIFY COLUMN `ts` DateTime64(3, 'UTC')"
    assert "DateTime('UTC') -> DateTime64(3, 'UTC')" in plan.describe()


def test_current_server_raises_datetime64_precision() -> None:
    class Fine(BaseModel):
        id: Key[str]
        count: int
        ts: Annotated[datetime, ClickHouseType("DateTime64(6, 'UTC')")]

    plan = _plan(Fine, {**CURRENT, "ts": "DateTime64(3, 'UTC')"}, profile=CURRENT_SERVER)
    assert [a.sql for a in plan.actions] == [
        "ALTER TABLE `db`.`events` MODIFY COLUMN `ts` DateTime64(6, 'UTC')"]


def test_a_table_matching_its_model_is_up_to_date() -> None:
    plan = _plan(Event, CURRENT)
    assert plan.describe() == "Nothing to change.\n  = table db.events is up to date"


def test_widening_an_integer_is_a_modify() -> None:
    plan = _plan(Event, {**CURRENT, "count": "Int32"})
    (action,) = plan.actions
    assert action.kind == "modify_column" and not action.destructive
    assert action.sql == "ALTER TABLE `db`.`events` MODIFY COLUMN `count` Int64"
    assert plan.describe().splitlines() == [
        "1 change(s) to make:",
        "  ~ modify column db.events.count: Int32 -> Int64 (stored values are kept)"]


def test_narrowing_is_a_conflict_that_says_what_to_do() -> None:
    class Narrow(BaseModel):
        id: Key[str]
        count: Annotated[int, ClickHouseType("Int32")]
        ts: datetime

    plan = _plan(Narrow, CURRENT)
    assert plan.actions == []
    (conflict,) = plan.conflicts
    assert "db.events.count is Int64, the model says Int32" in conflict
    assert "wrap" in conflict
    assert 'ClickHouseType("Int64")' in conflict
    assert "add a field with a new name" in conflict
    text = plan.describe()
    assert not text.startswith("Nothing to change.")
    assert text.startswith("No change to make; 1 conflict to read:")


def test_key_columns_change_only_without_rewriting_data() -> None:
    class WideKey(BaseModel):
        id: Key[Annotated[str, ClickHouseType("LowCardinality(String)")]]
        count: int
        ts: datetime

    plan = _plan(WideKey, CURRENT)
    assert plan.actions == []
    assert "sorting or partition key" in plan.conflicts[0]


def test_a_removed_field_is_kept_without_the_flag() -> None:
    plan = _plan(Event, {**CURRENT, "old": "String"})
    assert plan.actions == []
    (warning,) = plan.warnings
    assert "db.events.old (String) is not in the model; kept" in warning
    assert "--allow-destructive" in warning
    text = plan.describe()
    assert text.splitlines()[0] == "No change to make; 1 warning to read:"
    assert "table db.events is up to date" not in text


def test_a_removed_field_is_dropped_with_the_flag() -> None:
    plan = _plan(Event, {**CURRENT, "old": "String"}, allow_destructive=True)
    (action,) = plan.actions
    assert action.kind == "drop_column" and action.destructive
    assert action.sql == "ALTER TABLE `db`.`events` DROP COLUMN `old`"
    assert plan.describe().splitlines()[1].startswith("  - drop column db.events.old (String)")


def test_deletion_protected_adds_and_modifies_but_never_drops() -> None:
    class V2(BaseModel):
        id: Key[str]
        count: int
        ts: datetime
        extra: str

    plan = _plan(V2, {**CURRENT, "count": "Int32", "old": "String"},
                 life_cycle="deletion_protected", allow_destructive=True)
    assert [a.kind for a in plan.actions] == ["modify_column", "add_column"]
    (warning,) = plan.warnings
    assert "deletion_protected" in warning and "never drops" in warning


def test_deletion_protected_table_is_created_when_missing() -> None:
    plan = _plan(Event, None, life_cycle="deletion_protected")
    assert [a.kind for a in plan.actions] == ["create_table"]


def test_externally_managed_is_never_created() -> None:
    plan = _plan(Event, None, life_cycle="externally_managed")
    assert plan.actions == []
    assert "externally_managed and does not exist" in plan.conflicts[0]


def test_externally_managed_reports_drift_and_changes_nothing() -> None:
    class V2(BaseModel):
        id: Key[str]
        count: Annotated[int, ClickHouseType("Int32")]
        ts: datetime
        missing: str

    plan = _plan(V2, {**CURRENT, "other": "String"}, life_cycle="externally_managed",
                 allow_destructive=True)
    assert plan.actions == []
    assert len(plan.conflicts) == 1 and "no column missing" in plan.conflicts[0]
    assert any("drift: column db.events.count is Int64, the model says Int32" in w
               for w in plan.warnings)
    assert any("drift: column db.events.other (String) is not in the model" in w
               for w in plan.warnings)


def test_externally_managed_column_that_cannot_hold_the_values_is_a_conflict() -> None:
    plan = _plan(Event, {**CURRENT, "count": "Int32"}, life_cycle="externally_managed")
    assert plan.actions == []
    assert "db.events.count is Int32, the model says Int64" in plan.conflicts[0]


def test_externally_managed_that_matches_is_up_to_date() -> None:
    plan = _plan(Event, CURRENT, life_cycle="externally_managed")
    assert plan.describe() == (
        "Nothing to change.\n  = table db.events (externally managed) is up to date")


def test_exactly_once_columns_are_never_dropped_or_modified() -> None:
    definition = OlapTable[Event]("events").definition(OLD_SERVER, exactly_once=True)
    changed = {**CURRENT, "_chute_partition": "UInt16", "_chute_offset": "UInt64",
               "_chute_topic_id": "String"}
    plan = Plan()
    plan_tables([definition], {"events": _existing(changed)}, "db", plan, True)
    assert plan.actions == []
    assert "never modifies its own columns" in plan.conflicts[0]

    plain = _definition(Event)  # delivery switched back: the columns are left alone
    left = {**CURRENT, "_chute_partition": "UInt32", "_chute_offset": "UInt64",
            "_chute_topic_id": "String"}
    plan = Plan()
    plan_tables([plain], {"events": _existing(left)}, "db", plan, True)
    assert plan.actions == []
    assert len(plan.warnings) == 3
    assert all("never drops its own columns" in w for w in plan.warnings)


def test_warnings_only_plan_does_not_say_nothing_to_change() -> None:
    plan = make_plan([TopicSpec("events", 2, 60_000)], {"events": 4}, [], {}, "db")
    assert plan.describe().splitlines()[0] == "No change to make; 1 warning to read:"


def test_changes_with_conflicts_say_none_are_applied() -> None:
    class V2(BaseModel):
        id: Key[str]
        count: Annotated[int, ClickHouseType("Int8")]
        ts: datetime
        extra: str

    plan = _plan(V2, CURRENT)
    assert plan.describe().splitlines()[0] == (
        "1 change(s) to make, none applied until the conflicts are resolved; 1 conflict:")


def test_life_cycle_accepts_moose_spelling_and_refuses_others() -> None:
    assert OlapConfig(life_cycle="FULLY_MANAGED").life_cycle is LifeCycle.FULLY_MANAGED
    assert OlapConfig.model_validate(
        {"life_cycle": "deletion_protected"}).life_cycle is LifeCycle.DELETION_PROTECTED
    assert OlapConfig().life_cycle is LifeCycle.FULLY_MANAGED
    with pytest.raises(ValidationError, match="life_cycle"):
        OlapConfig.model_validate({"life_cycle": "managed"})


def test_key_columns_are_read_from_key_expressions() -> None:
    cols = {"id": "String", "ts": "DateTime", "tenant": "String", "v": "Int64"}
    assert key_columns(["id, `tenant`", "toYYYYMM(ts)", ""], cols) == {"id", "tenant", "ts"}


def test_engine_and_sorting_key_drift_are_reported_not_changed() -> None:
    plan = Plan()
    have = ExistingTable(CURRENT, frozenset({"ts"}), "ReplacingMergeTree", "ts")
    plan_tables([_definition(Event)], {"events": have}, "db", plan)
    assert plan.actions == []
    assert [w.split(";")[0] for w in plan.warnings] == [
        "drift: table db.events is a ReplacingMergeTree, the model says MergeTree",
        "drift: table db.events is ordered by (ts), the model says (id)"]
    assert all("define a table with a new name" in w for w in plan.warnings)


def test_matching_engine_and_sorting_key_are_up_to_date() -> None:
    plan = Plan()
    have = ExistingTable(CURRENT, frozenset({"id"}), "MergeTree", "`id`")
    plan_tables([_definition(Event)], {"events": have}, "db", plan)
    assert plan.describe() == "Nothing to change.\n  = table db.events is up to date"


def test_status_notes_a_table_that_differs_from_its_model() -> None:
    from control_plane.status import schema_note

    definition = _definition(Event)
    assert schema_note(definition, {"events": _existing(CURRENT)}, "db") is None
    drifted = _existing({**CURRENT, "count": "Int32", "old": "String"})
    assert schema_note(definition, {"events": drifted}, "db") == (
        "table db.events differs from its model: 1 change to apply, 1 warning "
        "(chute plan lists them)")


def test_an_exactly_once_table_without_topic_ids_is_tagged_or_warned_about() -> None:
    definition = OlapTable[Event]("events").definition(OLD_SERVER, exactly_once=True)
    old = _existing({**CURRENT, "_chute_partition": "UInt32", "_chute_offset": "UInt64"})
    plan = Plan()
    plan_tables([definition], {"events": old}, "db", plan, topic_ids={"events": "t-1"})
    assert [a.kind for a in plan.actions] == ["add_column", "backfill_topic_id"]
    assert plan.actions[1].sql == (
        "ALTER TABLE `db`.`events` UPDATE `_chute_topic_id` = 't-1' WHERE `_chute_topic_id` = ''"
        " AND NOT (`_chute_partition` = 0 AND `_chute_offset` = 0)")
    assert plan.actions[1].mutation_of == ("db", "events")
    unknown = Plan()
    plan_tables([definition], {"events": old}, "db", unknown)
    assert [a.kind for a in unknown.actions] == ["add_column"]
    assert "no longer count as a watermark" in unknown.warnings[0]
    # A table switched to exactly-once just now: its rows are never tagged.
    fresh = Plan()
    plan_tables([definition], {"events": _existing(CURRENT)}, "db", fresh,
                topic_ids={"events": "t-1"})
    assert [a.kind for a in fresh.actions] == ["add_column"] * 3
