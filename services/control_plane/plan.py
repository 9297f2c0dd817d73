"""Pure planning: desired topics and tables versus what exists -> actions, conflicts, warnings.

Which type changes are lossless is `chute.type_changes`; what each table's `life_cycle` lets
chute change is `chute.life_cycle`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from chute.clickhouse import ExistingTable, key_column_names
from chute.ddl import (
    CHUTE_COLUMN_PREFIX,
    OFFSET_COLUMN,
    TOPIC_ID_COLUMN,
    TableDefinition,
    on_cluster,
    render_add_column,
    render_backfill_topic_id,
    render_create_distributed,
    render_create_table,
    render_drop_column,
    render_drop_table,
    render_modify_column,
)
from chute.life_cycle import LifeCycle
from chute.registry import TopicSpec
from chute.type_changes import metadata_only_change, same_type, unsafe_change
from chute.typemap import ColumnSpec

_SYMBOLS = {"drop_column": "-", "modify_column": "~", "drop_table": "~"}


@dataclass(frozen=True)
class Action:
    kind: str  # create_topic | add_partitions | create_table | add_column | modify_column
    #            | drop_column | backfill_topic_id | drop_table (a Distributed table only)
    target: str
    description: str
    sql: str | None = None
    topic: TopicSpec | None = None
    destructive: bool = False  # loses data: applied only with --allow-destructive
    mutation_of: tuple[str, str] | None = None  # (database, table) apply waits for


@dataclass
class Plan:
    """What apply would do (actions), what it refuses to do until a person decides
    (conflicts: nothing is applied while there is one), and what it leaves as is (warnings)."""

    actions: list[Action] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        """No action to apply (there may still be conflicts or warnings)."""
        return not self.actions

    def entry_count(self) -> int:
        return len(self.actions) + len(self.conflicts) + len(self.warnings)

    def describe(self) -> str:
        lines = [self._headline()]
        lines += [f"  {_SYMBOLS.get(a.kind, '+')} {a.description}" for a in self.actions]
        lines += [f"  x {conflict}" for conflict in self.conflicts]
        lines += [f"  ! {warning}" for warning in self.warnings]
        lines += [f"  = {name} is up to date" for name in self.up_to_date]
        return "\n".join(lines)

    def _headline(self) -> str:
        attention = ", ".join(
            f"{n} {word}{'s' if n != 1 else ''}"
            for n, word in ((len(self.conflicts), "conflict"), (len(self.warnings), "warning"))
            if n)
        if not self.actions:
            return f"No change to make; {attention} to read:" if attention else \
                "Nothing to change."
        changes = f"{len(self.actions)} change(s) to make"
        if self.conflicts:
            return f"{changes}, none applied until the conflicts are resolved; {attention}:"
        return f"{changes}; {attention}:" if attention else f"{changes}:"


def _human_duration(ms: int) -> str:
    seconds = ms // 1000
    for unit, size in (("day", 86400), ("hour", 3600), ("minute", 60)):
        if seconds % size == 0 and seconds >= size:
            n = seconds // size
            return f"{n} {unit}{'s' if n != 1 else ''}"
    return f"{seconds} s"


def plan_topics(desired: list[TopicSpec], existing: dict[str, int], plan: Plan) -> None:
    for topic in desired:
        have = existing.get(topic.name)
        if have is None:
            plan.actions.append(Action(
                "create_topic", topic.name,
                f"create topic {topic.name} with {topic.partitions} partition(s), "
                f"retention {_human_duration(topic.retention_ms)}",
                topic=topic))
        elif have < topic.partitions:
            plan.actions.append(Action(
                "add_partitions", topic.name,
                f"grow topic {topic.name} from {have} to {topic.partitions} partitions",
                topic=topic))
        elif have > topic.partitions:
            plan.warnings.append(
                f"topic {topic.name} has {have} partitions, more than the {topic.partitions} "
                "defined; Kafka cannot shrink a topic, leaving it")
            plan.up_to_date.append(f"topic {topic.name}")
        else:
            plan.up_to_date.append(f"topic {topic.name}")


def plan_tables(desired: list[TableDefinition], existing: dict[str, ExistingTable],
                database: str, plan: Plan, allow_destructive: bool = False,
                topic_ids: Mapping[str, str] | None = None) -> None:
    """`topic_ids`: per exactly-once table, Kafka's id of the one topic that feeds it (what
    the migration of a table written before rows carried a topic id tags its rows with)."""
    for table in desired:
        if table.sharded and not _sharding_possible(table, existing, database, plan):
            continue
        have = existing.get(table.local_name)
        qualified = f"{database}.{table.local_name}"
        entries = plan.entry_count()
        if table.life_cycle is LifeCycle.EXTERNALLY_MANAGED:
            _check_external_table(table, have, qualified, plan)
        elif have is None:
            order = ", ".join(table.order_by) or "no key"
            plan.actions.append(Action(
                "create_table", table.local_name,
                f"create table {qualified} ({len(table.columns)} columns, "
                f"{table.server_engine}{on_cluster(table.cluster)}, ORDER BY {order})",
                sql=render_create_table(table, database)))
        else:
            _plan_columns(table, have, database, plan, allow_destructive)
            _plan_topic_id_backfill(table, have, database, plan, (topic_ids or {}).get(
                table.name))
            _check_engine_and_order(table, have, qualified, plan)
        if table.sharded and table.life_cycle is not LifeCycle.EXTERNALLY_MANAGED:
            _plan_distributed(table, existing.get(table.name), database, plan)
        if (have is not None and plan.entry_count() == entries
                and table.life_cycle is not LifeCycle.EXTERNALLY_MANAGED):
            plan.up_to_date.append(f"table {database}.{table.name}")


def _sharding_possible(table: TableDefinition, existing: Mapping[str, ExistingTable],
                       database: str, plan: Plan) -> bool:
    """A sharded table is `<name>_local` with a Distributed `<name>` in front. Refused (a
    conflict) where `<name>` already holds rows itself, and for exactly-once: an insert
    through the Distributed table spanning shards is not atomic, so what landed after a crash
    is not a prefix of the batch and the offset watermark would skip rows."""
    qualified = f"{database}.{table.name}"
    front = existing.get(table.name)
    if front is not None and front.engine not in (None, "Distributed"):
        plan.conflicts.append(
            f"table {qualified} is a {front.engine}, but cluster {table.cluster} has several "
            f"shards: the model's rows go to {table.local_name} on every shard with a "
            f"Distributed {table.name} in front. chute does not recreate tables: rename "
            f"{table.name} (e.g. to {table.local_name} on every replica, if it is the shard's "
            "table), or keep the table on a cluster with one shard")
        return False
    if any(c.name == OFFSET_COLUMN.name for c in table.columns):
        plan.conflicts.append(
            f"table {qualified} is fed by an exactly-once stream, and cluster {table.cluster} "
            "has several shards: refused, since an insert spanning shards is not atomic and "
            "the offset watermark could skip rows after a crash. Use at_least_once (with a "
            "ReplacingMergeTree by key to fold repeats), or a cluster with one shard")
        return False
    return True


def _plan_distributed(table: TableDefinition, front: ExistingTable | None,
                      database: str, plan: Plan) -> None:
    """The Distributed `<name>` is created after its local table and has the model's columns.
    When they differ (a column added, modified or dropped by this plan or an earlier one) it is
    dropped and created again ON CLUSTER, after the local table's ALTERs: ClickHouse 18.16
    refuses ALTER ... ON CLUSTER of a Distributed table on a cluster whose shards replicate
    themselves (internal_replication; allowed from 20.3 on), and CREATE and DROP it accepts.
    A Distributed table stores nothing (chute inserts with insert_distributed_sync=1, so no
    row waits in its queue); while it is away, reads fail and the sync worker's inserts are
    retried (unknown table: a schema error, retried without end)."""
    qualified = f"{database}.{table.name}"
    create = Action("create_table", table.name,
                    f"create table {qualified} (Distributed over {table.local_name} on every "
                    f"shard of {table.cluster}, sharded by {table.sharding_key})"
                    f"{on_cluster(table.cluster)}",
                    sql=render_create_distributed(table, database))
    if front is None:
        plan.actions.append(create)
        return
    model = {c.name: c.type for c in table.columns}
    differ = sorted(name for name in {*model, *front.columns}
                    if name not in model or name not in front.columns
                    or not same_type(front.columns[name], model[name]))
    if not differ:
        return
    plan.actions.append(Action(
        "drop_table", table.name,
        f"drop table {qualified} (Distributed, stores nothing) to create it again with the "
        f"model's columns (differing: {', '.join(differ)}){on_cluster(table.cluster)}",
        sql=render_drop_table(database, table.name, table.cluster)))
    plan.actions.append(create)


def _plan_columns(table: TableDefinition, have: ExistingTable, database: str, plan: Plan,
                  allow_destructive: bool) -> None:
    """The table holding the rows (`<name>_local` when sharded) against the model."""
    qualified = f"{database}.{table.local_name}"
    for column in table.columns:
        old_type = have.columns.get(column.name)
        if old_type is None:
            plan.actions.append(Action(
                "add_column", table.local_name,
                f"add column {column.name} {column.type} to {qualified}",
                sql=render_add_column(database, table.local_name, column, table.cluster)))
        elif not same_type(old_type, column.type):
            _plan_type_change(table, column, old_type, have, database, plan)
    model_columns = {c.name for c in table.columns}
    for name, type_text in have.columns.items():
        if name not in model_columns:
            _plan_removed_column(table, name, type_text, have, database, plan,
                                 allow_destructive)


def _plan_topic_id_backfill(table: TableDefinition, have: ExistingTable, database: str,
                            plan: Plan, topic_id: str | None) -> None:
    """An exactly-once table from before rows carried their topic's id: its watermark rows
    are tagged with the current topic's id, else the worker would no longer see them."""
    wanted = any(c.name == TOPIC_ID_COLUMN.name for c in table.columns)
    if not wanted or TOPIC_ID_COLUMN.name in have.columns or OFFSET_COLUMN.name not in have.columns:
        return
    qualified = f"{database}.{table.local_name}"
    if topic_id is None:
        plan.warnings.append(
            f"table {qualified} holds exactly-once positions without a topic id, and no single "
            "existing topic feeds it: its rows are not tagged, so they no longer count as a "
            "watermark (a worker starts from the committed offsets; rows inserted but not "
            "committed before the upgrade would be inserted again)")
        return
    plan.actions.append(Action(
        "backfill_topic_id", table.local_name,
        f"tag the exactly-once rows of {qualified} with topic id {topic_id} (their topic's "
        "current id; rows at partition 0 offset 0 stay untagged). Apply with the sync workers "
        "stopped, and only if the topic was not re-created since those rows were written",
        sql=render_backfill_topic_id(database, table.local_name, topic_id),
        mutation_of=(database, table.local_name)))


def _plan_type_change(table: TableDefinition, column: ColumnSpec, old_type: str,
                      have: ExistingTable, database: str, plan: Plan) -> None:
    where = f"column {database}.{table.local_name}.{column.name}"
    if column.name.startswith(CHUTE_COLUMN_PREFIX):
        plan.conflicts.append(
            f"{where} is {old_type}, but chute's exactly-once bookkeeping needs {column.type}; "
            "chute never modifies its own columns: fix the column by hand")
        return
    reason = unsafe_change(old_type, column.type)
    if (reason is None and column.name in have.key_columns
            and not metadata_only_change(old_type, column.type)):
        reason = ("it is part of the table's sorting or partition key, and ClickHouse changes "
                  "a key column only when no data is rewritten (Enum members appended)")
    if reason is None:
        plan.actions.append(Action(
            "modify_column", table.local_name,
            f"modify column {database}.{table.local_name}.{column.name}: "
            f"{old_type} -> {column.type} (stored values are kept)",
            sql=render_modify_column(database, table.local_name, column, table.cluster)))
        return
    plan.conflicts.append(
        f"{where} is {old_type}, the model says {column.type}: {reason}. chute changes a type "
        "only when every stored value converts unchanged. Either keep the column's type in the "
        f'model (e.g. Annotated[..., ClickHouseType("{old_type}")]) or add a field with a new '
        "name and type, copy the data into it, and remove the old field")


def _plan_removed_column(table: TableDefinition, name: str, type_text: str,
                         have: ExistingTable, database: str, plan: Plan,
                         allow_destructive: bool) -> None:
    where = f"column {database}.{table.local_name}.{name} ({type_text})"
    if name.startswith(CHUTE_COLUMN_PREFIX):
        plan.warnings.append(
            f"{where} is chute's exactly-once bookkeeping, unused since the stream's delivery "
            "changed; kept: chute never drops its own columns")
    elif name in have.key_columns:
        plan.warnings.append(
            f"{where} is not in the model but is part of the table's key, which ClickHouse "
            "cannot drop; kept, new rows get its default value")
    elif not table.life_cycle.may_drop:
        plan.warnings.append(
            f"{where} is not in the model; kept: the table is {table.life_cycle.value} "
            "and chute never drops its columns")
    elif allow_destructive:
        plan.actions.append(Action(
            "drop_column", table.local_name,
            f"drop {where} and all its data (not in the model; --allow-destructive)",
            sql=render_drop_column(database, table.local_name, name, table.cluster),
            destructive=True))
    else:
        plan.warnings.append(
            f"{where} is not in the model; kept. `chute apply --allow-destructive` drops it "
            "and all its data")


def _check_engine_and_order(table: TableDefinition, have: ExistingTable, qualified: str,
                            plan: Plan) -> None:
    """Drift that ALTER cannot fix: the engine and the sorting key are set at CREATE."""
    remedy = "chute does not recreate tables: to change it, define a table with a new " \
             "name and copy the rows into it"
    if have.engine is not None and have.engine != table.server_engine:
        plan.warnings.append(
            f"drift: table {qualified} is a {have.engine}, the model says "
            f"{table.server_engine}; "
            f"{remedy}")
    if (have.sorting_key is not None
            and key_column_names(have.sorting_key) != list(table.order_by)):
        plan.warnings.append(
            f"drift: table {qualified} is ordered by ({have.sorting_key}), the model "
            f"says ({', '.join(table.order_by)}); {remedy}")


def _check_external_table(table: TableDefinition, have: ExistingTable | None, qualified: str,
                          plan: Plan) -> None:
    """Externally managed: chute changes nothing, it reports what does not fit the model."""
    if have is None:
        plan.conflicts.append(
            f"table {qualified} is externally_managed and does not exist; chute does not "
            "create it: create it with a column for each field of the model")
        return
    entries = plan.entry_count()
    for column in table.columns:
        table_type = have.columns.get(column.name)
        where = f"column {qualified}.{column.name}"
        if table_type is None:
            plan.conflicts.append(
                f"table {qualified} is externally_managed and has no column {column.name} "
                f"({column.type}) for the model's field; add it, or remove the field")
        elif not same_type(table_type, column.type):
            reason = unsafe_change(column.type, table_type)
            if reason is None:
                plan.warnings.append(
                    f"drift: {where} is {table_type}, the model says {column.type}; the column "
                    "holds every value of the model's type (externally managed, left as is)")
            else:
                plan.conflicts.append(
                    f"{where} is {table_type}, the model says {column.type}, and the table is "
                    f"externally_managed: {reason}; change the column or the model")
    model_columns = {c.name for c in table.columns}
    for name, type_text in have.columns.items():
        if name not in model_columns:
            plan.warnings.append(
                f"drift: column {qualified}.{name} ({type_text}) is not in the model; new rows "
                "get its default value (externally managed, left as is)")
    _check_engine_and_order(table, have, qualified, plan)
    if plan.entry_count() == entries:
        plan.up_to_date.append(f"table {qualified} (externally managed)")


def make_plan(topics: list[TopicSpec], existing_topics: dict[str, int],
              tables: list[TableDefinition], existing_tables: dict[str, ExistingTable],
              database: str, allow_destructive: bool = False,
              topic_ids: Mapping[str, str] | None = None) -> Plan:
    plan = Plan()
    plan_topics(topics, existing_topics, plan)
    plan_tables(tables, existing_tables, database, plan, allow_destructive, topic_ids)
    return plan
