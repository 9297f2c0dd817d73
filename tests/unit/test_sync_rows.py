from __future__ import annotations

import base64
import random
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from chute import Key
from chute.server import OLD_SERVER
from chute.typemap import columns_for
from pydantic import BaseModel, Field, TypeAdapter
from sync_worker.rows import (
    ColumnBuilder,
    DecodeFailure,
    Position,
    RowDecoder,
    dead_letter_envelope,
    epoch_seconds,
)

from testkit.seed import TEST_SEED


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
        "error_message": "bad", "payload": base64.b64encode(b"\xffgarbage").decode(),
        "payload_encoding": "base64"}


@pytest.mark.parametrize("payload", [
    b"\xffgarbage", b"\\xffgarbage", b"", b"caf\xc3\xa9", b"\xed\xa0\x80 lone surrogate",
    b"nul \x00 byte", b"\x01" * 1000, b'{"a":"b","c":"d"}' * 100, b"\xff" * 100_000])
def test_a_dead_letter_gives_back_every_byte_of_its_payload(payload: bytes) -> None:
    """And its payload field is at most 3/2 of the record (what the dead-letter topic's
    max.message.bytes is sized for): control characters escape to 6 bytes each, so such text
    goes as base64."""
    envelope = dead_letter_envelope(
        pipeline="p", position=Position("p", 0, 0, 0), payload=payload,
        error_type="InvalidJSON", error_message="bad")
    env = orjson.loads(envelope)
    got = (base64.b64decode(env["payload"]) if env["payload_encoding"] == "base64"
           else env["payload"].encode())
    assert got == payload
    assert len(envelope) <= len(payload) * 3 // 2 + 300
    if payload.isascii() and payload.isalnum():
        assert env["payload_encoding"] == "utf-8"


def _datetimes(rng: random.Random, suffix: str, n: int) -> list[datetime]:
    adapter: TypeAdapter[datetime] = TypeAdapter(datetime)
    return [adapter.validate_json(
        f'"{rng.randint(1970, 2105)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}T'
        f'{rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:{rng.randint(0, 59):02d}'
        f'.{rng.randint(0, 999_999):06d}{suffix}"') for _ in range(n)]


@pytest.mark.parametrize("suffix", ["Z", "+00:00", "+05:30", "-08:00", "+14:00", ""])
def test_epoch_seconds_of_a_column_equal_the_per_value_converter(suffix: str) -> None:
    print(f"seed {TEST_SEED}")
    rng = random.Random(f"{TEST_SEED}{suffix}")
    values = _datetimes(rng, suffix, 2_000)
    (timestamp,) = [c for c in columns_for(Event, OLD_SERVER) if c.name == "timestamp"]
    assert timestamp.convert is not None
    assert epoch_seconds(values, timestamp.convert) == [timestamp.convert(v) for v in values]


def test_epoch_seconds_of_mixed_zones_fall_back_to_each_value() -> None:
    rng = random.Random(TEST_SEED)
    values = [*_datetimes(rng, "Z", 50), *_datetimes(rng, "+02:00", 50),
              *_datetimes(rng, "", 50),
              datetime(2024, 3, 31, 1, 30, tzinfo=ZoneInfo("Europe/Amsterdam"))]
    rng.shuffle(values)
    (timestamp,) = [c for c in columns_for(Event, OLD_SERVER) if c.name == "timestamp"]
    assert timestamp.convert is not None
    assert epoch_seconds(values, timestamp.convert) == [timestamp.convert(v) for v in values]
    summer = [datetime(2024, 7, 1, 12, tzinfo=ZoneInfo("Europe/Amsterdam"))] * 3
    assert epoch_seconds(summer, timestamp.convert) == [1_719_828_000] * 3  # 10:00 UTC


def test_columns_of_many_rows_equal_those_built_one_at_a_time() -> None:
    dec = RowDecoder(Event)
    values = [GOOD.replace(b'"a"', f'"r{i}"'.encode()) for i in range(100)]
    rows = dec.decode_all(values)
    assert rows is not None
    builder = ColumnBuilder(columns_for(Event, OLD_SERVER), exactly_once=True)
    one_by_one = [builder.build([r], [0], [i], "t-id") for i, r in enumerate(rows)]
    together = builder.build(rows, [0] * 100, list(range(100)), "t-id")
    assert together == [[c[0] for c in (built[k] for built in one_by_one)]
                        for k in range(len(builder.names))]
    assert together[2][0] == 1_704_067_201  # 2024-01-01T00:00:01Z


def test_decode_all_gives_none_when_any_record_is_bad() -> None:
    dec = RowDecoder(Event)
    assert dec.decode_all([GOOD, GOOD]) is not None
    assert dec.decode_all([GOOD, b'{"id": "a"}']) is None
    assert dec.decode_all([GOOD, None]) is None  # type: ignore[list-item]
    assert dec.decode_all([]) == []


class Part(BaseModel):
    amount: Decimal
    name: str = Field("n", alias="Name")


class Loose(BaseModel):
    anything: dict[str, Any] = {}
    numbered: dict[int, str] = {}
    parts: dict[str, Part] = {}
    tags: dict[str, set[int]] = {}
    part: Part | None = None


def test_dicts_and_nested_models_are_stored_as_the_json_that_was_validated() -> None:
    """Not a Python repr, and no failure on what JSON holds but orjson does not write (ints
    past 64 bits, int keys): the column holds the field's JSON as it went to Kafka."""
    value = (b'{"anything":{"a":18446744073709551616,"b":[1.5,null,"x"]},'
             b'"numbered":{"1":"x"},"parts":{"k":{"amount":"1.50","Name":"z"}},'
             b'"tags":{"t":[2,1,2]},"part":{"amount":"2.5","Name":"y"}}')
    row = RowDecoder(Loose).decode(value)
    assert not isinstance(row, DecodeFailure)
    columns = ColumnBuilder(columns_for(Loose, OLD_SERVER), exactly_once=False).columns_of([row])
    assert [column[0] for column in columns] == [
        '{"a":18446744073709551616,"b":[1.5,null,"x"]}', '{"1":"x"}',
        '{"k":{"amount":"1.50","Name":"z"}}', '{"t":[1,2]}', '{"amount":"2.5","Name":"y"}']
