"""Applying a plan to the real Kafka and ClickHouse. Idempotent: re-running changes nothing."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import structlog
from chute import clickhouse, kafka
from chute.metrics import CONTROL_ACTIONS
from chute.registry import Definitions, TopicSpec
from chute.replication import topic_replication
from chute.server import ServerProfile
from chute.settings import CommonSettings
from clickhouse_driver import Client

from control_plane.plan import Plan, make_plan

log = structlog.get_logger()


@dataclass
class Connections:
    admin: kafka.Admin
    ch: Client
    profile: ServerProfile
    settings: CommonSettings = field(default_factory=CommonSettings)

    @classmethod
    def open(cls, settings: CommonSettings) -> Connections:
        ch, profile = clickhouse.connect_with_profile(settings)
        return cls(kafka.admin(settings.kafka_bootstrap, security=settings.kafka_security()),
                   ch, profile, settings)

    def close(self) -> None:
        self.admin.close()
        self.ch.disconnect()


def topic_config(spec: TopicSpec, brokers: int = 1,
                 settings: CommonSettings | None = None) -> kafka.TopicConfig:
    """The topic as Kafka creates it: its retention, its replication (chute.replication) and
    the largest record batch it takes, where the stream sets one."""
    settings = settings or CommonSettings()
    try:
        copies = topic_replication(brokers, spec.replication_factor, spec.min_insync_replicas,
                                   settings.kafka_replication_factor,
                                   settings.kafka_min_insync_replicas)
    except ValueError as exc:
        raise PlanRefused(f"topic {spec.name}: {exc}") from None
    configs = {"retention.ms": str(spec.retention_ms), **copies.topic_configs()}
    if spec.max_message_bytes is not None:
        configs[kafka.MAX_MESSAGE_BYTES] = str(spec.max_message_bytes)
    return kafka.TopicConfig(spec.name, spec.partitions, configs, copies.factor)


class PlanRefused(Exception):
    """A plan that must not be applied as it is (conflicts, or drops without the flag)."""


def compute_plan(conn: Connections, defs: Definitions, database: str,
                 allow_destructive: bool = False) -> Plan:
    return make_plan(
        defs.topics(), conn.admin.topic_partitions(),
        defs.table_definitions(conn.profile, conn.settings.clickhouse_cluster,
                               clickhouse.cluster_shards(conn.ch)),
        clickhouse.existing_tables(conn.ch, database),
        database, allow_destructive, exactly_once_topic_ids(conn.admin, defs))


def exactly_once_topic_ids(admin: kafka.Admin, defs: Definitions) -> dict[str, str]:
    """{table: Kafka's id of the topic feeding it} for tables fed by exactly one
    exactly-once stream whose topic exists."""
    feeds: dict[str, list[str]] = {}
    for stream in defs.synced_streams():
        if stream.exactly_once and stream.destination is not None:
            feeds.setdefault(stream.destination.name, []).append(stream.topic)
    single = {table: topics[0] for table, topics in feeds.items() if len(topics) == 1}
    ids = admin.topic_ids(sorted(set(single.values()))) if single else {}
    return {table: ids[topic] for table, topic in single.items() if topic in ids}


def _wait_for_mutations(ch: Client, database: str, table: str, timeout: float = 120.0) -> None:
    """ALTER ... UPDATE runs in the background: wait until ClickHouse finished it, so a worker
    started after apply reads the tagged rows."""
    deadline = time.monotonic() + timeout
    while True:
        rows = ch.execute("SELECT count() FROM system.mutations WHERE database = %(d)s AND "
                          "table = %(t)s AND is_done = 0", {"d": database, "t": table})
        if not rows or not rows[0][0]:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"the mutation of {database}.{table} is not done after "
                               f"{timeout:g} s; see system.mutations")
        time.sleep(0.1)


def apply_plan(conn: Connections, plan: Plan, allow_destructive: bool = False) -> None:
    """Applies every action, or none when the plan has conflicts. Checked again here, not only
    when planning, so that no code path drops data without the flag."""
    if plan.conflicts:
        raise PlanRefused(f"{len(plan.conflicts)} conflict(s) to resolve first: "
                          + "; ".join(plan.conflicts))
    destructive = [a.description for a in plan.actions if a.destructive]
    if destructive and not allow_destructive:
        raise PlanRefused("the plan drops data and --allow-destructive was not given: "
                          + "; ".join(destructive))
    creates = [a for a in plan.actions if a.kind == "create_topic"]
    brokers = conn.admin.broker_count() if creates else 1
    for action in plan.actions:
        if action.kind == "create_topic" and action.topic is not None:
            conn.admin.create_topic(topic_config(action.topic, brokers, conn.settings))
        elif action.kind == "add_partitions" and action.topic is not None:
            conn.admin.add_partitions(action.topic.name, action.topic.partitions)
        elif action.sql is not None:
            conn.ch.execute(action.sql)
            if action.mutation_of is not None:
                _wait_for_mutations(conn.ch, *action.mutation_of)
        CONTROL_ACTIONS.labels(action.kind).inc()
        log.info("applied", action=action.kind, target=action.target,
                 description=action.description)
    for warning in plan.warnings:
        log.warning("plan warning", message=warning)
