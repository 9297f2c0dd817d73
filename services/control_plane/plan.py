"""Pure planning: desired topics and tables versus what exists -> a list of actions."""

from __future__ import annotations

from dataclasses import dataclass, field

from chute.ddl import TableDefinition, render_column, render_create_table
from chute.identifiers import quote_identifier
from chute.registry import TopicSpec


@dataclass(frozen=True)
class Action:
    kind: str  # create_topic | add_partitions | create_table | add_column
    target: str
    description: str
    sql: str | None = None
    topic: TopicSpec | None = None


@dataclass
class Plan:
    actions: list[Action] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    up_to_date: list[str] = field(default_factory=list)

    @property
    def empty(self) -> bool:
        return not self.actions

    def describe(self) -> str:
        lines = []
        for action in self.actions:
            lines.append(f"  + {action.description}")
        for warning in self.warnings:
            lines.append(f"  ! {warning}")
        for name in self.up_to_date:
            lines.append(f"  = {name} is up to date")
        if self.empty:
            lines.insert(0, "Nothing to change.")
        else:
            lines.insert(0, f"{len(self.actions)} change(s) to make:")
        return "\n".join(lines)


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


def _normal(type_text: str) -> str:
    return type_text.replace(" ", "")


def plan_tables(desired: list[TableDefinition], existing: dict[str, dict[str, str]],
                database: str, plan: Plan) -> None:
    for table in desired:
        have = existing.get(table.name)
        qualified = f"{database}.{table.name}"
        if have is None:
            order = ", ".join(table.order_by) or "no key"
            plan.actions.append(Action(
                "create_table", table.name,
                f"create table {qualified} ({len(table.columns)} columns, "
                f"{table.engine}, ORDER BY {order})",
                sql=render_create_table(table, database)))
            continue
        changed = False
        for column in table.columns:
            if column.name not in have:
                changed = True
                plan.actions.append(Action(
                    "add_column", table.name,
                    f"add column {column.name} {column.type} to {qualified}",
                    sql=f"ALTER TABLE {quote_identifier(database)}.{quote_identifier(table.name)}"
                        f" ADD COLUMN {render_column(column)}"))
            elif _normal(have[column.name]) != _normal(column.type):
                plan.warnings.append(
                    f"column {qualified}.{column.name} is {have[column.name]} but the model "
                    f"says {column.type}; chute does not change column types, migrate by hand")
        for name in have:
            if name not in {c.name for c in table.columns}:
                plan.warnings.append(
                    f"column {qualified}.{name} is not in the model; it is left in place")
        if not changed:
            plan.up_to_date.append(f"table {qualified}")


def make_plan(topics: list[TopicSpec], existing_topics: dict[str, int],
              tables: list[TableDefinition], existing_tables: dict[str, dict[str, str]],
              database: str) -> Plan:
    plan = Plan()
    plan_topics(topics, existing_topics, plan)
    plan_tables(tables, existing_tables, database, plan)
    return plan
