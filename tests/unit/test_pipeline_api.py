from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest
from chute import (
    IngestApi,
    IngestConfig,
    IngestPipeline,
    IngestPipelineConfig,
    Key,
    OlapTable,
    Stream,
    StreamConfig,
)
from chute.registry import DefinitionError, Definitions, load_definitions
from pydantic import BaseModel


class Event(BaseModel):
    id: Key[str]
    user_id: str
    timestamp: datetime
    event_type: str


def test_pipeline_builds_table_stream_ingest_and_dead_letter_queue() -> None:
    p = IngestPipeline[Event]("events", IngestPipelineConfig(
        ingest=True, stream=True, table=True, dead_letter_queue=True))
    assert p.model is Event
    assert p.table is not None and p.table.name == "events"
    assert p.stream is not None and p.stream.destination is p.table
    assert p.ingest_api is not None and p.ingest_api.destination is p.stream
    defs = Definitions.from_resources([p])
    assert sorted(defs.tables) == ["events", "events_dlq"]
    assert sorted(defs.streams) == ["events", "events_dlq"]
    assert list(defs.ingest_apis) == ["events"]
    assert {t.name: t.partitions for t in defs.topics()} == {"events": 4, "events_dlq": 1}


def test_config_as_dict_and_batch_settings() -> None:
    p = IngestPipeline[Event]("clicks", {
        "table": True, "dead_letter_queue": False,
        "stream": {"parallelism": 8, "max_batch_rows": 500, "max_batch_wait": 0.25}})
    assert p.stream is not None
    assert p.stream.config.partitions == 8
    assert p.stream.config.max_batch_rows == 500
    assert p.stream.dead_letter is None


def test_standalone_pieces() -> None:
    table = OlapTable[Event]("raw_events", {"order_by_fields": ["id", "timestamp"]})
    stream = Stream[Event]("raw_events", StreamConfig(destination=table))
    api = IngestApi[Event]("raw_events", IngestConfig(destination=stream))
    defs = Definitions.from_resources([table, stream, api])
    assert [s.name for s in defs.synced_streams()] == ["raw_events", "raw_events_dlq"]
    assert defs.streams["raw_events"] is stream


def test_model_is_required() -> None:
    with pytest.raises(TypeError, match=r"needs its model"):
        OlapTable("events")


def test_unknown_config_key_is_refused() -> None:
    with pytest.raises(ValueError, match="not_a_setting"):
        IngestPipeline[Event]("x", {"not_a_setting": 1})


def test_destination_with_other_model_is_refused() -> None:
    class Other(BaseModel):
        a: int

    with pytest.raises(TypeError, match="destination table"):
        Stream[Event]("s", StreamConfig(destination=OlapTable[Other]("o")))


def test_exactly_once_adds_position_columns() -> None:
    from chute.server import OLD_SERVER

    p = IngestPipeline[Event]("eo", {"stream": StreamConfig(delivery="exactly_once")})
    assert p.table is not None
    defs = Definitions.from_resources([p])
    names = [c.name for c in defs.table_definition("eo", OLD_SERVER).columns]
    assert names[-3:] == ["_chute_partition", "_chute_offset", "_chute_topic_id"]
    assert defs.exactly_once_tables() == {"eo"}  # not the dead-letter table


def test_constructing_a_stream_changes_no_table() -> None:
    """Whether a table is exactly-once is derived from the definitions collected, not from
    which streams happened to be constructed."""
    from chute.server import OLD_SERVER

    table = OlapTable[Event]("shared")
    before = table.definition(OLD_SERVER)
    eo = Stream[Event]("eo_stream", {"destination": table, "delivery": "exactly_once"})
    assert table.definition(OLD_SERVER) == before
    only_table = Definitions.from_resources([table])
    assert not only_table.exactly_once_tables()
    with_stream = Definitions.from_resources([table, eo])
    assert with_stream.exactly_once_tables() == {"shared"}
    assert sorted(with_stream.streams) == ["eo_stream", "eo_stream_dlq"]
    assert sorted(with_stream.tables) == ["eo_stream_dlq", "shared"]


def test_load_definitions_from_module_and_directory(tmp_path: Path) -> None:
    defs = load_definitions("schemas")
    assert "events" in defs.ingest_apis
    (tmp_path / "orders.py").write_text(
        "from pydantic import BaseModel\n"
        "from chute import IngestPipeline, Key\n"
        "class Order(BaseModel):\n"
        "    id: Key[int]\n"
        "    total: float\n"
        "orders = IngestPipeline[Order]('orders', {'dead_letter_queue': False})\n")
    both = load_definitions(f"schemas,{tmp_path}")
    assert sorted(both.ingest_apis) == ["events", "orders"]


def test_load_definitions_reports_broken_files(tmp_path: Path) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('boom')\n")
    with pytest.raises(DefinitionError, match=r"broken\.py: boom"):
        load_definitions(str(tmp_path))
    with pytest.raises(DefinitionError, match="cannot import schema module"):
        load_definitions("no_such_module_here")


def test_duplicate_names_are_refused() -> None:
    a = IngestPipeline[Event]("dup")
    b = IngestPipeline[Event]("dup")
    with pytest.raises(DefinitionError, match="defined twice"):
        Definitions.from_resources([a, b])


def test_exactly_once_with_partition_by_is_refused() -> None:
    with pytest.raises(ValueError, match=r"exactly_once.*partition_by.*not atomic"):
        IngestPipeline[Event]("po", {"table": {"partition_by": "toYYYYMM(timestamp)"},
                                     "stream": {"delivery": "exactly_once"}})
    # Either alone is fine.
    IngestPipeline[Event]("pa", {"table": {"partition_by": "toYYYYMM(timestamp)"}})
    IngestPipeline[Event]("pe", {"stream": {"delivery": "exactly_once"}})
