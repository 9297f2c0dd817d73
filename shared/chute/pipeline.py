"""The pipeline API: OlapTable, Stream, IngestApi and IngestPipeline.

Mirrors Moose's Python API: `IngestPipeline[Event]("events", IngestPipelineConfig(...))`.
Resources are plain objects; `chute.registry` finds them in the user's schema modules.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, ClassVar, Generic, Literal, TypeVar

from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from chute.annotations import Key
from chute.ddl import EXACTLY_ONCE_COLUMNS, TableDefinition
from chute.identifiers import validate_identifier
from chute.life_cycle import LifeCycle
from chute.server import ServerProfile
from chute.typemap import columns_for

M = TypeVar("M", bound=BaseModel)

DEFAULT_PARTITIONS = 4
DEFAULT_RETENTION_SECONDS = 7 * 24 * 3600


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, arbitrary_types_allowed=True)


class OlapConfig(_Config):
    order_by_fields: tuple[str, ...] | None = None  # default: the model's Key fields
    engine: Literal["MergeTree", "ReplacingMergeTree", "SummingMergeTree",
                    "AggregatingMergeTree", "CollapsingMergeTree"] = "MergeTree"
    ver: str | None = None  # ReplacingMergeTree version / CollapsingMergeTree sign column
    partition_by: str | None = None
    ttl: str | None = None
    settings: dict[str, str | int] = Field(default_factory=dict)
    life_cycle: LifeCycle = LifeCycle.FULLY_MANAGED  # what chute may change: chute.life_cycle
    # Moose's `cluster`: the ClickHouse cluster the table is replicated on (Replicated engine,
    # ON CLUSTER DDL). None: CHUTE_CLICKHOUSE_CLUSTER; "": a plain table even when that is set.
    cluster: str | None = None


class StreamConfig(_Config):
    # `parallelism` is accepted too, Moose's name for it.
    partitions: int = Field(DEFAULT_PARTITIONS, ge=1, le=1024,
                            validation_alias=AliasChoices("partitions", "parallelism"))
    retention_period: int = Field(DEFAULT_RETENTION_SECONDS, ge=60)  # seconds
    # Copies of each partition and how many must be in sync for a write to be acknowledged
    # (acks=all). None: CHUTE_KAFKA_REPLICATION_FACTOR / _MIN_INSYNC_REPLICAS, else
    # min(3, brokers) copies and 2 in sync where there are 3 or more (chute.replication).
    replication_factor: int | None = Field(None, ge=1, le=16)
    min_insync_replicas: int | None = Field(None, ge=1, le=16)
    # The topic's max.message.bytes (the largest record batch it takes). None: the broker's
    # default (1,048,588 on Kafka 4.x); its dead-letter topic takes half as much again.
    max_message_bytes: int | None = Field(None, ge=1024)
    destination: OlapTable[Any] | None = None
    max_batch_rows: int = Field(100_000, ge=1)
    max_batch_bytes: int = Field(64 * 1024 * 1024, ge=1024)
    max_batch_wait: float = Field(1.0, gt=0, le=300)  # seconds
    delivery: Literal["at_least_once", "exactly_once"] = "at_least_once"
    dead_letter_queue: bool = True
    # Unknown fields and duplicate JSON keys. "ignore" (Moose's behaviour): unknown fields are
    # dropped, the last of duplicate keys counts. "reject": such a record is refused (422 at
    # the ingest API, dead-lettered by the sync worker).
    extra: Literal["ignore", "reject"] = "ignore"


class IngestConfig(_Config):
    destination: Stream[Any]


class IngestPipelineConfig(_Config):
    ingest: bool = True
    stream: bool | StreamConfig = True
    table: bool | OlapConfig = True
    dead_letter_queue: bool = True


def _config(config_type: type[Any], value: Any) -> Any:
    """Configs may be given as objects or plain dicts, as in Moose's examples."""
    if value is None:
        return config_type()
    if isinstance(value, dict):
        return config_type.model_validate(value)
    if not isinstance(value, config_type):
        raise TypeError(f"expected {config_type.__name__} or dict, got {type(value).__name__}")
    return value


class _Typed(Generic[M]):
    """Base of resources subscripted with their model: `OlapTable[Event](...)`."""

    model_type: ClassVar[type[BaseModel] | None] = None
    kind: ClassVar[str] = "resource"

    def __class_getitem__(cls, model: Any) -> Any:
        if isinstance(model, type) and issubclass(model, BaseModel):
            return _bind(cls, model)
        return super().__class_getitem__(model)  # type: ignore[misc]

    def __init__(self, name: str) -> None:
        validate_identifier(name, self.kind)
        if self.model_type is None:
            raise TypeError(
                f"{type(self).__name__}({name!r}) needs its model: "
                f"{type(self).__name__}[MyModel]({name!r}, ...)"
            )
        self.name = name
        self.model: type[BaseModel] = self.model_type

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"


_BOUND: dict[tuple[type[Any], type[BaseModel]], type[Any]] = {}


def _bind(cls: type[Any], model: type[BaseModel]) -> type[Any]:
    """`cls` specialised to `model`, cached so `OlapTable[Event]` is always the same class."""
    key = (cls, model)
    if key not in _BOUND:
        name = f"{cls.__name__}[{model.__name__}]"
        _BOUND[key] = type(name, (cls,), {"model_type": model, "__module__": cls.__module__})
    return _BOUND[key]


class OlapTable(_Typed[M]):
    kind = "table"

    def __init__(self, name: str, config: OlapConfig | dict[str, Any] | None = None) -> None:
        super().__init__(name)
        self.config: OlapConfig = _config(OlapConfig, config)

    def definition(self, profile: ServerProfile, *, exactly_once: bool = False,
                   default_cluster: str | None = None,
                   shards: Mapping[str, int] | None = None) -> TableDefinition:
        """The table's DDL. `exactly_once`: an exactly-once stream feeds it (decided where
        definitions are collected: `Definitions.table_definition`), which adds the columns
        holding each row's Kafka position. On `default_cluster` (CHUTE_CLICKHOUSE_CLUSTER)
        unless the table's config names its own cluster or none. `shards`: the number of
        shards of each cluster, as the server has them (chute.clickhouse.cluster_shards); on a
        cluster of several the table is sharded (a Distributed table in front)."""
        columns = columns_for(self.model, profile)
        cluster = self.cluster(default_cluster)
        order_by = self.config.order_by_fields
        if order_by is None:
            order_by = tuple(c.name for c in columns if c.is_key)
        if exactly_once:
            columns = [*columns, *EXACTLY_ONCE_COLUMNS]
        return TableDefinition(
            name=self.name,
            columns=tuple(columns),
            engine=self.config.engine,
            engine_column=self.config.ver,
            order_by=tuple(order_by),
            partition_by=self.config.partition_by,
            ttl=self.config.ttl,
            settings=dict(self.config.settings),
            life_cycle=self.config.life_cycle,
            cluster=cluster,
            sharded=cluster is not None and (shards or {}).get(cluster, 1) > 1,
        )

    def cluster(self, default_cluster: str | None) -> str | None:
        """The cluster the table is replicated on: its config's, else `default_cluster`
        (CHUTE_CLICKHOUSE_CLUSTER); None for a plain table."""
        cluster = self.config.cluster if self.config.cluster is not None else default_cluster
        return cluster or None


class Stream(_Typed[M]):
    kind = "stream"

    def __init__(self, name: str, config: StreamConfig | dict[str, Any] | None = None) -> None:
        super().__init__(name)
        self.config: StreamConfig = _config(StreamConfig, config)
        self.topic = name
        self.dead_letter: Stream[DeadLetterRecord] | None = None
        destination = self.config.destination
        if destination is not None:
            if destination.model is not self.model:
                raise TypeError(f"stream {name}: destination table {destination.name} has "
                                f"model {destination.model.__name__}, not {self.model.__name__}")
            if self.config.delivery == "exactly_once" and destination.config.partition_by:
                # One insert spanning several table partitions writes one part per
                # partition, not atomically, so what landed after a crash need not be a
                # prefix of the batch: the offset watermark would skip rows.
                raise ValueError(
                    f"stream {name}: delivery='exactly_once' cannot be combined with "
                    f"partition_by={destination.config.partition_by!r} on table "
                    f"{destination.name}: an insert spanning several table partitions is "
                    "not atomic. Drop partition_by or use at_least_once.")
            if self.config.dead_letter_queue:
                self.dead_letter = dead_letter_stream(name, self.config.max_message_bytes)

    @property
    def destination(self) -> OlapTable[Any] | None:
        return self.config.destination

    @property
    def exactly_once(self) -> bool:
        return self.config.delivery == "exactly_once"

    def parts(self) -> list[_Typed[Any]]:
        """The stream with its dead-letter stream and table, if it has them."""
        parts: list[_Typed[Any]] = [self]
        if self.dead_letter is not None:
            parts.append(self.dead_letter)
            if self.dead_letter.destination is not None:
                parts.append(self.dead_letter.destination)
        return parts


class IngestApi(_Typed[M]):
    kind = "ingest API"

    def __init__(self, name: str, config: IngestConfig | dict[str, Any]) -> None:
        super().__init__(name)
        self.config: IngestConfig = _config(IngestConfig, config)
        if self.config.destination.model is not self.model:
            raise TypeError(f"ingest API {name}: destination stream has another model")

    @property
    def destination(self) -> Stream[Any]:
        return self.config.destination


class IngestPipeline(_Typed[M]):
    """A table, a stream that syncs into it, and an ingest endpoint that feeds the stream."""

    kind = "pipeline"

    def __init__(
        self, name: str, config: IngestPipelineConfig | dict[str, Any] | None = None
    ) -> None:
        super().__init__(name)
        self.config: IngestPipelineConfig = _config(IngestPipelineConfig, config)
        cfg = self.config
        self.table: OlapTable[Any] | None = None
        self.stream: Stream[Any] | None = None
        self.ingest_api: IngestApi[Any] | None = None
        if cfg.table:
            table_cfg = cfg.table if isinstance(cfg.table, OlapConfig) else OlapConfig()
            self.table = _bind(OlapTable, self.model)(name, table_cfg)
        if cfg.stream:
            stream_cfg = cfg.stream if isinstance(cfg.stream, StreamConfig) else StreamConfig()
            stream_cfg = stream_cfg.model_copy(update={
                "destination": self.table,
                "dead_letter_queue": cfg.dead_letter_queue and stream_cfg.dead_letter_queue,
            })
            self.stream = _bind(Stream, self.model)(name, stream_cfg)
        if cfg.ingest:
            if self.stream is None:
                raise ValueError(f"pipeline {name}: ingest needs stream=True")
            self.ingest_api = _bind(IngestApi, self.model)(name, IngestConfig(
                destination=self.stream))

    def parts(self) -> list[_Typed[Any]]:
        parts: list[_Typed[Any]] = [self.table] if self.table is not None else []
        if self.stream is not None:
            parts += self.stream.parts()
        if self.ingest_api is not None:
            parts.append(self.ingest_api)
        return parts


class DeadLetterRecord(BaseModel):
    """The envelope of a record that could not be stored, in `<name>_dlq`."""

    failed_at: Key[datetime]
    source: Literal["ingest", "sync"]
    pipeline: str
    topic: str
    partition: int
    offset: int
    error_type: str
    error_message: str
    # The record's bytes: as text when they are UTF-8 ("utf-8"), else their base64
    # ("base64"; base64Decode(payload) in ClickHouse gives them back), so every byte is kept.
    payload: str
    payload_encoding: Literal["utf-8", "base64"] = "utf-8"


# A dead letter carries the record whole, at most 3/2 of it (escaped text, else base64), plus
# the envelope's other fields (an error message of at most 2,000 characters, JSON-escaped):
# its topic takes 3/2 of what the stream's topic takes, and 64 KiB more; at least 2 MiB.
DEAD_LETTER_MAX_MESSAGE_BYTES = 2 * 1024 * 1024
_DEAD_LETTER_ENVELOPE_BYTES = 64 * 1024


def dead_letter_stream(name: str, max_message_bytes: int | None = None
                       ) -> Stream[DeadLetterRecord]:
    """The dead-letter stream of stream `name`, whose topic takes `max_message_bytes` (None:
    the broker's default)."""
    dlq_name = f"{name}_dlq"
    table = OlapTable[DeadLetterRecord](dlq_name)
    largest = max(DEAD_LETTER_MAX_MESSAGE_BYTES,
                  (max_message_bytes or 0) * 3 // 2 + _DEAD_LETTER_ENVELOPE_BYTES)
    return Stream[DeadLetterRecord](dlq_name, StreamConfig(
        partitions=1, destination=table, dead_letter_queue=False,
        max_message_bytes=largest))


StreamConfig.model_rebuild()
IngestConfig.model_rebuild()
