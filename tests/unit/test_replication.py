"""Topic replication and the replicated table DDL (pure)."""

from __future__ import annotations

import pytest
from chute import Key, OlapConfig, OlapTable
from chute.clickhouse import ExistingTable
from chute.ddl import render_add_column, render_create_table
from chute.registry import TopicSpec
from chute.replication import topic_replication
from chute.server import ServerProfile, parse_version
from chute.settings import CommonSettings
from chute.typemap import ColumnSpec
from control_plane.apply import PlanRefused, topic_config
from control_plane.plan import Plan, plan_tables
from pydantic import BaseModel

OLD = ServerProfile(parse_version("18.16.1"))


class Event(BaseModel):
    id: Key[str]
    n: int


@pytest.mark.parametrize(("brokers", "factor", "insync"),
                         [(1, 1, None), (2, 2, None), (3, 3, 2), (5, 3, 2)])
def test_default_is_min_three_copies_two_in_sync_from_three(
        brokers: int, factor: int, insync: int | None) -> None:
    copies = topic_replication(brokers)
    assert (copies.factor, copies.min_insync) == (factor, insync)


def test_the_stream_overrides_the_global_setting() -> None:
    assert topic_replication(5, default_factor=2).factor == 2
    copies = topic_replication(5, factor=5, min_insync=3, default_factor=2, default_min_insync=1)
    assert (copies.factor, copies.min_insync) == (5, 3)


def test_impossible_replication_is_refused_with_the_reason() -> None:
    with pytest.raises(ValueError, match="needs 3 brokers"):
        topic_replication(2, factor=3)
    with pytest.raises(ValueError, match="no write could ever be acknowledged"):
        topic_replication(3, factor=2, min_insync=3)


def test_topic_config_carries_factor_and_min_insync() -> None:
    spec = TopicSpec("events", 4, 60_000, replication_factor=None, min_insync_replicas=None)
    config = topic_config(spec, brokers=3)
    assert config.replication_factor == 3
    assert config.configs["min.insync.replicas"] == "2"
    settings = CommonSettings(kafka_replication_factor=2)
    assert topic_config(spec, 3, settings).replication_factor == 2
    with pytest.raises(PlanRefused, match="topic events"):
        topic_config(TopicSpec("events", 4, 60_000, 3), brokers=1)


def test_a_dead_letter_topic_takes_records_half_again_as_large_as_kafka_s_default() -> None:
    """Its records are other records whole (at most 3/2 of them, rows.payload_fields): made
    with the default limit, a large invalid record could not be dead-lettered and stopped
    its pipeline."""
    from chute import IngestPipeline
    from chute.kafka import DEFAULT_MAX_MESSAGE_BYTES, MAX_MESSAGE_BYTES
    from chute.registry import Definitions

    defs = Definitions.from_resources([IngestPipeline[Event]("events")])
    specs = {spec.name: spec for spec in defs.topics()}
    assert MAX_MESSAGE_BYTES not in topic_config(specs["events"]).configs
    dlq = int(topic_config(specs["events_dlq"]).configs[MAX_MESSAGE_BYTES])
    assert dlq >= DEFAULT_MAX_MESSAGE_BYTES * 3 // 2 + 20_000
    # A stream whose topic takes more: its dead letters too.
    big = Definitions.from_resources([IngestPipeline[Event]("big", {
        "stream": {"max_message_bytes": 8_000_000}})])
    specs = {spec.name: spec for spec in big.topics()}
    assert topic_config(specs["big"]).configs[MAX_MESSAGE_BYTES] == "8000000"
    assert int(topic_config(specs["big_dlq"]).configs[MAX_MESSAGE_BYTES]) >= 12_020_000


def test_a_clustered_table_is_replicated_on_cluster_with_macros() -> None:
    table = OlapTable[Event]("events").definition(OLD, default_cluster="chute")
    assert render_create_table(table, "db") == (
        "CREATE TABLE IF NOT EXISTS `db`.`events` ON CLUSTER `chute`\n"
        "(\n    `id` String,\n    `n` Int64\n)\n"
        "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/db/events', '{replica}')\n"
        "ORDER BY (`id`)")


def test_replacing_keeps_its_version_column_after_the_replication_parameters() -> None:
    table = OlapTable[Event]("t", OlapConfig(engine="ReplacingMergeTree", ver="n",
                                             cluster="c2")).definition(OLD, default_cluster="chute")
    assert ("ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/db/t', "
            "'{replica}', `n`)") in render_create_table(table, "db")
    assert "ON CLUSTER `c2`" in render_create_table(table, "db")


def test_an_empty_cluster_keeps_a_table_plain_under_the_global_setting() -> None:
    table = OlapTable[Event]("t", OlapConfig(cluster="")).definition(OLD, default_cluster="chute")
    assert table.cluster is None
    assert "ENGINE = MergeTree()" in render_create_table(table, "db")


def test_alters_of_a_clustered_table_run_on_cluster() -> None:
    table = OlapTable[Event]("t").definition(OLD, default_cluster="chute")
    have = ExistingTable({"id": "String"}, frozenset({"id"}), "ReplicatedMergeTree", "id")
    plan = Plan()
    plan_tables([table], {"t": have}, "db", plan)
    assert [a.sql for a in plan.actions] == [
        "ALTER TABLE `db`.`t` ON CLUSTER `chute` ADD COLUMN `n` Int64"]
    assert not plan.warnings  # ReplicatedMergeTree is what the model asks for
    assert render_add_column("db", "t", ColumnSpec("x", "UInt8")) == (
        "ALTER TABLE `db`.`t` ADD COLUMN `x` UInt8")


def test_a_plain_table_where_a_replicated_one_is_defined_is_reported_as_drift() -> None:
    table = OlapTable[Event]("t").definition(OLD, default_cluster="chute")
    have = ExistingTable({"id": "String", "n": "Int64"}, frozenset({"id"}), "MergeTree", "id")
    plan = Plan()
    plan_tables([table], {"t": have}, "db", plan)
    assert any("is a MergeTree, the model says ReplicatedMergeTree" in w for w in plan.warnings)


def test_status_names_the_under_replicated_partitions() -> None:
    from control_plane.status import under_replicated_note

    note = under_replicated_note("events", [0, 2])
    assert note.startswith("topic events: 2 partition(s) under-replicated (0, 2)")
