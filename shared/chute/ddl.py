"""CREATE and ALTER statements rendered as plain strings. Pure: applying them lives elsewhere."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from chute.identifiers import quote_identifier, quote_string, validate_identifier
from chute.life_cycle import LifeCycle
from chute.typemap import ColumnSpec

ENGINES_WITH_COLUMN_ARG = {"ReplacingMergeTree", "CollapsingMergeTree", "SummingMergeTree"}
ENGINES = {"MergeTree", "ReplacingMergeTree", "SummingMergeTree", "AggregatingMergeTree",
           "CollapsingMergeTree"}

# Columns added to exactly-once tables: the Kafka position each row came from, and the id of
# the topic it was read from (Kafka gives a topic a new id each time it is created). The sync
# worker reads max(offset) per partition of the current topic id back on assignment: rows of a
# deleted topic, and rows written before the table became exactly-once (topic id ''), never
# count as a watermark.
PARTITION_COLUMN = ColumnSpec("_chute_partition", "UInt32")
OFFSET_COLUMN = ColumnSpec("_chute_offset", "UInt64")
TOPIC_ID_COLUMN = ColumnSpec("_chute_topic_id", "String")
EXACTLY_ONCE_COLUMNS = (PARTITION_COLUMN, OFFSET_COLUMN, TOPIC_ID_COLUMN)
# Columns with this prefix are chute's own bookkeeping: never dropped or modified by a plan.
CHUTE_COLUMN_PREFIX = "_chute_"
# On a cluster of several shards a table's rows live in `<name>_local` on every shard.
LOCAL_SUFFIX = "_local"


@dataclass(frozen=True)
class TableDefinition:
    name: str
    columns: tuple[ColumnSpec, ...]
    engine: str = "MergeTree"
    engine_column: str | None = None
    order_by: tuple[str, ...] = ()
    partition_by: str | None = None
    ttl: str | None = None
    settings: dict[str, str | int] = field(default_factory=dict)
    life_cycle: LifeCycle = LifeCycle.FULLY_MANAGED
    # A <remote_servers> cluster: the table is then Replicated<engine>, created and altered
    # ON CLUSTER, its parts replicated through ZooKeeper (see replicated_engine_args).
    cluster: str | None = None
    # The cluster has several shards: the rows live in `<name>_local` (Replicated<engine>) on
    # every shard and `<name>` is a Distributed table in front of them, both ON CLUSTER, rows
    # spread by a hash of the model's Key columns (see render_create_distributed).
    sharded: bool = False

    @property
    def server_engine(self) -> str:
        """The engine as the server names it: 'ReplicatedMergeTree' on a cluster."""
        return f"Replicated{self.engine}" if self.cluster else self.engine

    @property
    def local_name(self) -> str:
        """The table that holds the rows: `<name>_local` when sharded, else `<name>`."""
        return f"{self.name}{LOCAL_SUFFIX}" if self.sharded else self.name

    @property
    def sharding_key(self) -> str:
        """The Distributed table's sharding expression: a hash of the model's Key columns (in
        field order), so rows with the same key land on the same shard (what
        ReplacingMergeTree's deduplication by key needs); rand() for a model without a Key."""
        keys = [quote_identifier(c.name) for c in self.columns if c.is_key]
        return f"sipHash64({', '.join(keys)})" if keys else "rand()"

    def __post_init__(self) -> None:
        validate_identifier(self.name, "table")
        if self.cluster is not None:
            validate_identifier(self.cluster, "cluster")
        if self.sharded:
            if self.cluster is None:
                raise ValueError(f"table {self.name}: sharded needs a cluster")
            validate_identifier(self.local_name, "table")
        if self.engine not in ENGINES:
            raise ValueError(f"table {self.name}: unknown engine {self.engine!r}; "
                             f"choose one of {sorted(ENGINES)}")
        names = {c.name for c in self.columns}
        for col in (*self.order_by, *([self.engine_column] if self.engine_column else [])):
            if col not in names:
                raise ValueError(f"table {self.name}: column {col!r} is not a field of the model")
        if self.engine_column and self.engine not in ENGINES_WITH_COLUMN_ARG:
            raise ValueError(f"table {self.name}: {self.engine} takes no column argument")
        if self.engine == "CollapsingMergeTree" and not self.engine_column:
            raise ValueError(f"table {self.name}: CollapsingMergeTree needs a sign column")
        for expr in (self.partition_by, self.ttl):
            if expr is not None and (";" in expr or "--" in expr):
                raise ValueError(f"table {self.name}: expression {expr!r} is not allowed")


def render_column(column: ColumnSpec) -> str:
    parts = [quote_identifier(column.name), column.type]
    if column.default is not None:
        parts.append(f"DEFAULT {column.default}")
    if column.codec is not None:
        parts.append(f"CODEC({column.codec})")
    return " ".join(parts)


def replicated_engine_args(database: str, table: str) -> list[str]:
    """A Replicated engine's first two parameters, as ClickHouse 18.16 and current servers take
    them: the table's ZooKeeper path (one per shard, from the server's {shard} macro) and this
    replica's name (its {replica} macro). The engine's own parameters follow them."""
    path = f"/clickhouse/tables/{{shard}}/{database}/{table}"
    return [quote_string(path), quote_string("{replica}")]


def on_cluster(cluster: str | None) -> str:
    """' ON CLUSTER `name`' for DDL that every replica of the cluster runs, else ''."""
    return f" ON CLUSTER {quote_identifier(cluster)}" if cluster else ""


def render_create_table(table: TableDefinition, database: str) -> str:
    """The table that holds the rows (`<name>_local` when sharded: render_create_distributed
    renders `<name>` in front of it)."""
    validate_identifier(database, "database")
    columns = ",\n    ".join(render_column(c) for c in table.columns)
    engine_args = [quote_identifier(table.engine_column)] if table.engine_column else []
    if table.cluster:
        engine_args = [*replicated_engine_args(database, table.local_name), *engine_args]
    order_by = ", ".join(quote_identifier(c) for c in table.order_by)
    lines = [
        f"CREATE TABLE IF NOT EXISTS {_qualified(database, table.local_name)}"
        f"{on_cluster(table.cluster)}",
        f"(\n    {columns}\n)",
        f"ENGINE = {table.server_engine}({', '.join(engine_args)})",
    ]
    if table.partition_by:
        lines.append(f"PARTITION BY {table.partition_by}")
    lines.append(f"ORDER BY ({order_by})" if table.order_by else "ORDER BY tuple()")
    if table.ttl:
        lines.append(f"TTL {table.ttl}")
    if table.settings:
        rendered = ", ".join(
            f"{validate_identifier(k, 'setting')} = "
            f"{v if isinstance(v, int) else quote_string(str(v))}"
            for k, v in sorted(table.settings.items())
        )
        lines.append(f"SETTINGS {rendered}")
    return "\n".join(lines)


def distributed_column(column: ColumnSpec) -> ColumnSpec:
    """A column of a Distributed table: the local table's, without a codec (a Distributed
    table stores nothing)."""
    return replace(column, codec=None)


def render_create_distributed(table: TableDefinition, database: str) -> str:
    """`<name>` ON CLUSTER in front of `<name>_local` on every shard of the cluster. An insert
    into it with insert_distributed_sync=1 (what the sync worker sends) returns once every
    shard has its rows; a read gathers all shards."""
    if not table.sharded or table.cluster is None:
        raise ValueError(f"table {table.name} is not sharded: it has no Distributed table")
    validate_identifier(database, "database")
    columns = ",\n    ".join(render_column(distributed_column(c)) for c in table.columns)
    args = [quote_string(table.cluster), quote_string(database), quote_string(table.local_name),
            table.sharding_key]
    return "\n".join([
        f"CREATE TABLE IF NOT EXISTS {_qualified(database, table.name)}"
        f"{on_cluster(table.cluster)}",
        f"(\n    {columns}\n)",
        f"ENGINE = Distributed({', '.join(args)})",
    ])


def _qualified(database: str, table: str) -> str:
    validate_identifier(database, "database")
    return f"{quote_identifier(database)}.{quote_identifier(table)}"


def _alter(database: str, table: str, cluster: str | None) -> str:
    return f"ALTER TABLE {_qualified(database, table)}{on_cluster(cluster)}"


def render_add_column(database: str, table: str, column: ColumnSpec,
                      cluster: str | None = None) -> str:
    return f"{_alter(database, table, cluster)} ADD COLUMN {render_column(column)}"


def render_modify_column(database: str, table: str, column: ColumnSpec,
                         cluster: str | None = None) -> str:
    """Changes the column's type (and default and codec) to the model's; ClickHouse converts
    the stored values. Only for changes `chute.type_changes` finds lossless."""
    return f"{_alter(database, table, cluster)} MODIFY COLUMN {render_column(column)}"


def render_drop_table(database: str, table: str, cluster: str | None = None) -> str:
    """Only ever rendered for a Distributed table, which stores nothing (see the plan)."""
    return f"DROP TABLE IF EXISTS {_qualified(database, table)}{on_cluster(cluster)}"


def render_drop_column(database: str, table: str, column: str,
                       cluster: str | None = None) -> str:
    return f"{_alter(database, table, cluster)} DROP COLUMN {quote_identifier(column)}"


# --- exactly-once migration -------------------------------------------------------------------


def render_backfill_topic_id(database: str, table: str, topic_id: str,
                             cluster: str | None = None) -> str:
    """Tags the rows an exactly-once worker wrote before rows carried their topic's id with the
    current topic's id, so they keep counting as its watermark. Rows with partition 0 and
    offset 0 are left untagged: rows written before the table became exactly-once read
    exactly that (the added columns' defaults) and must never count. A mutation: ClickHouse
    applies it in the background (see `system.mutations`)."""
    t, p, o = (quote_identifier(c.name) for c in (TOPIC_ID_COLUMN, PARTITION_COLUMN,
                                                   OFFSET_COLUMN))
    return (f"{_alter(database, table, cluster)} UPDATE {t} = {quote_string(topic_id)} "
            f"WHERE {t} = '' AND NOT ({p} = 0 AND {o} = 0)")
