from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
from chute import Key
from chute.server import OLD_SERVER
from chute.typemap import columns_for
from pydantic import BaseModel
from sync_worker.rows import (
    ColumnBuilder,
    DecodeFailure,
    Position,
    RowDecoder,
    dead_letter_envelope,
)


class Event(BaseModel):
    id: Key[str]
    user_id: str
    timestamp: datetime
    event_type: str


GOOD = b'{"id":"a","user_id":"u","timestamp":"2024-01-01T00:00:01Z","event_type":"click"}'


def test_decode_good_bad_json_and_invalid_records() -> None:
    dec = RowDecoder(Event)
    row = dec.decode(GOOD)
    assert isinstance(row, Event) and row.id == "a"
    garbage = dec.decode(b"\x00\xffnot json")
    assert isinstance(garbage, DecodeFailure) and garbage.error_type == "InvalidJSON"
    invalid = dec.decode(b'{"id": "a"}')
    assert isinstance(invalid, DecodeFailure) and invalid.error_type == "ValidationError"
    assert "user_id: Field required" in invalid.error_message
    empty = dec.decode(None)
    assert isinstance(empty, DecodeFailure) and empty.error_type == "EmptyRecord"


def test_columns_are_built_with_converters_and_positions() -> None:
    row = RowDecoder(Event).decode(GOOD)
    assert isinstance(row, Event)
    builder = ColumnBuilder(columns_for(Event, OLD_SERVER), exactly_once=True)
    data = builder.build([row, row], [2, 2], [10, 11], "c0ffee00-0000-4000-8000-000000000001")
    assert builder.names == ["id", "user_id", "timestamp", "event_type",
                             "_chute_partition", "_chute_offset", "_chute_topic_id"]
    assert data[4:] == [[2, 2], [10, 11], ["c0ffee00-0000-4000-8000-000000000001"] * 2]
    with pytest.raises(ValueError, match="id of their topic"):
        builder.build([row], [2], [10])
    assert data[0] == ["a", "a"]
    assert data[2] == [1704067201, 1704067201]


def test_dead_letter_envelope_has_every_field() -> None:
    env = orjson.loads(dead_letter_envelope(
        pipeline="events", position=Position("events", 1, 42, 0), payload=b"\xffgarbage",
        error_type="InvalidJSON", error_message="bad",
        now=datetime(2024, 1, 1, tzinfo=UTC)))
    assert env == {
        "failed_at": "2024-01-01T00:00:00+00:00", "source": "sync", "pipeline": "events",
        "topic": "events", "partition": 1, "offset": 42, "error_type": "InvalidJSON",
        "error_message": "bad", "payload": "\\xffgarbage"}
