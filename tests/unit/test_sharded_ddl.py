"""A table on a cluster of several shards (pure): `<name>_local` replicated on every shard with
a Distributed `<name>` in front, sharded by the model's Key columns; plans create and alter
both ON CLUSTER, the local table first."""

from __future__ import annotations

from typing import Annotated

import pytest
from chute import ClickHouseType, Codec, Key, OlapConfig, OlapTable
from chute.clickhouse import ExistingTable
from chute.ddl import TableDefinition, render_create_distributed, render_create_table
from chute.identifiers import InvalidIdentifierError
from chute.server import ServerProfile, parse_version
from control_plane.plan import Plan, plan_tables
from pydantic import BaseModel

OLD = ServerProfile(parse_version("18.16.1"))
SHARDS = {"chute": 2, "single": 1}


class Event(BaseModel):
    id: Key[str]
    n: int


class Pair(BaseModel):
    user: Key[str]
    day: Key[Annotated[int, ClickHouseType("UInt16")]]
    n: int


class NoKey(BaseModel):
    n: int


def sharded(model: type[BaseModel] = Event, name: str = "events",
            config: OlapConfig | None = None, exactly_once: bool = False) -> TableDefinition:
    return OlapTable[model](name, config).definition(  # type: ignore[valid-type]
        OLD, default_cluster="chute", shards=SHARDS, exactly_once=exactly_once)


def test_the_local_table_holds_the_rows_replicated_per_shard() -> None:
    table = sharded()
    assert table.sharded and table.local_name == "events_local"
    assert render_create_table(table, "db") == (
        "CREATE TABLE IF NOT EXISTS `db`.`events_local` ON CLUSTER `chute`\n"
        "(\n    `id` String,\n    `n` Int64\n)\n"
        "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/db/events_local', "
        "'{replica}')\n"
        "ORDER BY (`id`)")


def test_the_distributed_table_in_front_shards_by_the_key() -> None:
    assert render_create_distributed(sharded(), "db") == (
        "CREATE TABLE IF NOT EXISTS `db`.`events` ON CLUSTER `chute`\n"
        "(\n    `id` String,\n    `n` Int64\n)\n"
        "ENGINE = Distributed('chute', 'db', 'events_local', sipHash64(`id`))")


def test_every_key_column_in_field_order_or_rand_without_a_key() -> None:
    assert sharded(Pair, "pairs").sharding_key == "sipHash64(`user`, `day`)"
    assert sharded(NoKey, "counts").sharding_key == "rand()"


def test_the_distributed_table_has_no_codec() -> None:
    class Coded(BaseModel):
        id: Key[str]
        n: Annotated[int, Codec("Delta, ZSTD")]

    table = sharded(Coded, "coded")
    assert "CODEC(Delta, ZSTD)" in render_create_table(table, "db")
    assert "CODEC" not in render_create_distributed(table, "db")


def test_one_shard_or_a_plain_table_is_not_sharded() -> None:
    one = OlapTable[Event]("events").definition(OLD, default_cluster="single", shards=SHARDS)
    assert not one.sharded and one.local_name == "events"
    plain = OlapTable[Event]("events", OlapConfig(cluster="")).definition(
        OLD, default_cluster="chute", shards=SHARDS)
    assert not plain.sharded and plain.cluster is None
    with pytest.raises(ValueError, match="not sharded"):
        render_create_distributed(one, "db")


def test_a_local_name_past_the_identifier_limit_is_refused() -> None:
    with pytest.raises(InvalidIdentifierError):
        sharded(name="t" * 125)


def test_a_new_table_is_created_local_first_then_distributed() -> None:
    plan = Plan()
    plan_tables([sharded()], {}, "db", plan)
    assert [(a.kind, a.target) for a in plan.actions] == [
        ("create_table", "events_local"), ("create_table", "events")]
    assert plan.actions[1].sql == render_create_distributed(sharded(), "db")


def _have(columns: dict[str, str], engine: str, key: str | None = "id") -> ExistingTable:
    return ExistingTable(columns, frozenset({"id"}) if key else frozenset(), engine, key)


def test_an_up_to_date_sharded_table() -> None:
    both = {"id": "String", "n": "Int64"}
    plan = Plan()
    plan_tables([sharded()], {"events_local": _have(both, "ReplicatedMergeTree"),
                              "events": _have(both, "Distributed", None)}, "db", plan)
    assert plan.describe() == "Nothing to change.\n  = table db.events is up to date"


def test_a_missing_distributed_table_is_created() -> None:
    plan = Plan()
    plan_tables([sharded()], {"events_local": _have({"id": "String", "n": "Int64"},
                                                    "ReplicatedMergeTree")}, "db", plan)
    assert [(a.kind, a.target) for a in plan.actions] == [("create_table", "events")]


RECREATE = ["DROP TABLE IF EXISTS `db`.`events` ON CLUSTER `chute`",
            render_create_distributed(sharded(), "db")]


def test_a_new_column_is_added_to_the_local_table_then_the_distributed_one_recreated() -> None:
    """18.16 refuses ALTER ... ON CLUSTER of a Distributed table on shards that replicate
    themselves: the Distributed table (which stores nothing) is created again instead."""
    plan = Plan()
    plan_tables([sharded()], {"events_local": _have({"id": "String"}, "ReplicatedMergeTree"),
                              "events": _have({"id": "String"}, "Distributed", None)}, "db", plan)
    assert [a.sql for a in plan.actions] == [
        "ALTER TABLE `db`.`events_local` ON CLUSTER `chute` ADD COLUMN `n` Int64", *RECREATE]
    assert not any(a.destructive for a in plan.actions)
    assert "differing: n" in plan.actions[1].description


def test_the_distributed_table_catches_up_with_its_local_table() -> None:
    """An apply stopped between the local table's ALTER and the Distributed table: the next
    apply recreates the Distributed table with the model's columns."""
    plan = Plan()
    plan_tables([sharded()], {
        "events_local": _have({"id": "String", "n": "Int64"}, "ReplicatedMergeTree"),
        "events": _have({"id": "String", "n": "Int32", "gone": "String"}, "Distributed", None)},
        "db", plan)
    assert [a.sql for a in plan.actions] == RECREATE
    assert "differing: gone, n" in plan.actions[0].description


def test_a_dropped_column_goes_from_both_only_with_the_flag() -> None:
    local = _have({"id": "String", "n": "Int64", "old": "String"}, "ReplicatedMergeTree")
    front = _have({"id": "String", "n": "Int64"}, "Distributed", None)
    kept = Plan()
    plan_tables([sharded()], {"events_local": local, "events": front}, "db", kept)
    assert not kept.actions and kept.warnings  # kept in the local table, not in the model
    dropped = Plan()
    plan_tables([sharded()], {"events_local": local, "events": front}, "db", dropped,
                allow_destructive=True)
    assert [(a.sql, a.destructive) for a in dropped.actions] == [
        ("ALTER TABLE `db`.`events_local` ON CLUSTER `chute` DROP COLUMN `old`", True)]


def test_a_table_that_holds_rows_under_the_distributed_name_is_a_conflict() -> None:
    plan = Plan()
    plan_tables([sharded()], {"events": _have({"id": "String", "n": "Int64"},
                                              "ReplicatedMergeTree")}, "db", plan)
    assert not plan.actions
    [conflict] = plan.conflicts
    assert conflict.startswith("table db.events is a ReplicatedMergeTree, but cluster chute has "
                               "several shards")


def test_exactly_once_on_several_shards_is_a_conflict() -> None:
    plan = Plan()
    plan_tables([sharded(exactly_once=True)], {}, "db", plan)
    assert not plan.actions
    [conflict] = plan.conflicts
    assert "exactly-once" in conflict and "not atomic" in conflict


def test_every_session_inserts_into_distributed_tables_synchronously() -> None:
    from chute.clickhouse import connect
    from chute.settings import ClickHouseConnectionSettings

    client = connect(ClickHouseConnectionSettings())  # no connection until the first query
    assert client.settings["insert_distributed_sync"] == 1
    quorum = connect(ClickHouseConnectionSettings(clickhouse_insert_quorum=2))
    assert quorum.settings["insert_distributed_sync"] == 1
    assert quorum.settings["insert_quorum"] == 2
    # The watermark read after a failover sees every insert the quorum acknowledged.
    assert quorum.settings["select_sequential_consistency"] == 1
