"""chute: declare a pydantic model once, get an ingest endpoint, a Kafka topic, a ClickHouse
table and a batched sync between them."""

from chute.annotations import (
    ClickHouseDecimal,
    ClickHouseDefault,
    ClickHouseType,
    Codec,
    DateTimePrecision,
    Key,
    LowCardinality,
)
from chute.life_cycle import LifeCycle
from chute.pipeline import (
    DeadLetterRecord,
    IngestApi,
    IngestConfig,
    IngestPipeline,
    IngestPipelineConfig,
    OlapConfig,
    OlapTable,
    Stream,
    StreamConfig,
)

__all__ = [
    "ClickHouseDecimal",
    "ClickHouseDefault",
    "ClickHouseType",
    "Codec",
    "DateTimePrecision",
    "DeadLetterRecord",
    "IngestApi",
    "IngestConfig",
    "IngestPipeline",
    "IngestPipelineConfig",
    "Key",
    "LifeCycle",
    "LowCardinality",
    "OlapConfig",
    "OlapTable",
    "Stream",
    "StreamConfig",
]
