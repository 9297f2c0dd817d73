"""Body parsing, validation and encoding of the ingest API: pure, no Kafka."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated
from uuid import UUID

import orjson
import pytest
from chute import Key
from ingest_api.body import (
    KEY_SEPARATOR,
    MAX_REPORTED_ERRORS,
    EmptyBodyError,
    MalformedJSONError,
    RecordCodec,
    SchemaError,
    parse_records,
)
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from schemas.events import Event

NDJSON = "application/x-ndjson"


def event(i: int = 0, **changes: object) -> dict[str, object]:
    record: dict[str, object] = {
        "id": f"e{i}", "user_id": f"u{i}", "timestamp": "2024-05-01T12:00:00.123Z",
        "event_type": "click"}
    record.update(changes)
    return record


@pytest.fixture
def codec() -> RecordCodec:
    return RecordCodec(Event)


# --- shapes ------------------------------------------------------------------------------------

def test_one_object(codec: RecordCodec) -> None:
    batch = codec.decode(orjson.dumps(event(1)))
    assert len(batch) == 1
    assert orjson.loads(batch.values[0])["id"] == "e1"


def test_array_of_objects(codec: RecordCodec) -> None:
    batch = codec.decode(orjson.dumps([event(i) for i in range(5)]))
    assert [orjson.loads(v)["id"] for v in batch.values] == [f"e{i}" for i in range(5)]


def test_empty_array_is_zero_records(codec: RecordCodec) -> None:
    assert len(codec.decode(b" [ ] ")) == 0


def test_ndjson_by_content_type(codec: RecordCodec) -> None:
    body = b"\n".join(orjson.dumps(event(i)) for i in range(3))
    batch = codec.decode(body, NDJSON + "; charset=utf-8")
    assert [orjson.loads(v)["id"] for v in batch.values] == ["e0", "e1", "e2"]


def test_ndjson_single_line_with_content_type(codec: RecordCodec) -> None:
    assert len(codec.decode(orjson.dumps(event()) + b"\n", NDJSON)) == 1


def test_ndjson_sniffed_without_content_type(codec: RecordCodec) -> None:
    body = b"\r\n".join(orjson.dumps(event(i)) for i in range(3)) + b"\r\n\r\n"
    batch = codec.decode(body, "application/json")
    assert [orjson.loads(v)["id"] for v in batch.values] == ["e0", "e1", "e2"]


def test_ndjson_blank_lines_are_skipped_and_do_not_count(codec: RecordCodec) -> None:
    body = b"\n\n" + orjson.dumps(event(0)) + b"\n   \n" + orjson.dumps(event(1, user_id=5))
    with pytest.raises(SchemaError) as info:
        codec.decode(body, NDJSON)
    assert [e.as_dict() for e in info.value.errors] == [
        {"index": 1, "path": "user_id", "message": "Input should be a valid string"}]


def test_pretty_printed_object_is_one_record(codec: RecordCodec) -> None:
    body = orjson.dumps(event(7), option=orjson.OPT_INDENT_2)
    assert b"\n" in body
    assert len(codec.decode(body)) == 1


def test_parse_records_shapes() -> None:
    assert parse_records(b'{"a": 1}') == [{"a": 1}]
    assert parse_records(b'[{"a": 1}, 2]') == [{"a": 1}, 2]
    assert parse_records(b'{"a": 1}\n{"a": 2}\n') == [{"a": 1}, {"a": 2}]
    assert parse_records(b'{"a": 1}', NDJSON) == [{"a": 1}]


# --- empty and malformed -----------------------------------------------------------------------

@pytest.mark.parametrize("body", [b"", b"   \n\t "])
def test_empty_body(codec: RecordCodec, body: bytes) -> None:
    with pytest.raises(EmptyBodyError) as info:
        codec.decode(body)
    assert info.value.status == 400
    with pytest.raises(EmptyBodyError):
        codec.decode(body, NDJSON)
    with pytest.raises(EmptyBodyError):
        parse_records(body)


def test_malformed_array_has_position(codec: RecordCodec) -> None:
    with pytest.raises(MalformedJSONError) as info:
        codec.decode(b'[{"id": "a"}, {"id": ]')
    err = info.value
    assert err.status == 400
    assert (err.line, err.column, err.position) == (1, 22, 21)
    detail = err.detail()
    assert detail["line"] == 1 and detail["column"] == 22 and detail["position"] == 21
    assert detail["error"].startswith("malformed JSON at line 1 column 22")


def test_malformed_object_on_later_line(codec: RecordCodec) -> None:
    with pytest.raises(MalformedJSONError) as info:
        codec.decode(b'{\n  "id": "a",\n  "user_id": \n}')
    assert (info.value.line, info.value.column) == (4, 1)


def test_malformed_ndjson_line_position_is_in_the_whole_body(codec: RecordCodec) -> None:
    first = orjson.dumps(event(0))
    body = first + b"\n" + b'{"id": "x", oops}\n'
    with pytest.raises(MalformedJSONError) as info:
        codec.decode(body, NDJSON)
    err = info.value
    assert err.line == 2
    assert err.column == 13
    assert err.position == len(first) + 1 + 12
    with pytest.raises(MalformedJSONError) as sniffed:
        codec.decode(body)
    assert (sniffed.value.line, sniffed.value.position) == (2, err.position)


def test_garbage_after_a_value_on_the_same_line(codec: RecordCodec) -> None:
    with pytest.raises(MalformedJSONError) as info:
        codec.decode(orjson.dumps(event()) + b" trailing")
    assert info.value.line == 1


def test_invalid_utf8_is_malformed(codec: RecordCodec) -> None:
    with pytest.raises(MalformedJSONError):
        codec.decode(b'{"id": "\xff"}')


def test_parse_records_malformed() -> None:
    with pytest.raises(MalformedJSONError) as info:
        parse_records(b"[1, 2")
    assert (info.value.line, info.value.column, info.value.position) == (1, 6, 5)


# --- schema errors -----------------------------------------------------------------------------

def test_every_error_of_every_record_is_listed(codec: RecordCodec) -> None:
    records = [event(0), event(1, timestamp="yesterday"), event(2),
               {"id": "e3", "user_id": None}]
    with pytest.raises(SchemaError) as info:
        codec.decode(orjson.dumps(records))
    err = info.value
    assert err.status == 422
    listed = [(e.index, e.path) for e in err.errors]
    assert listed == [(1, "timestamp"), (3, "user_id"), (3, "timestamp"), (3, "event_type")]
    assert all(e.message for e in err.errors)
    detail = err.detail()
    assert detail["records"] == 4
    assert detail["invalid_records"] == 2
    assert detail["error_count"] == 4
    assert detail["errors"][0]["path"] == "timestamp"
    assert detail["error"]


def test_elements_that_are_not_objects(codec: RecordCodec) -> None:
    with pytest.raises(SchemaError) as info:
        codec.decode(orjson.dumps([event(0), 42, [event(1)], "x", None]))
    errors = [e.as_dict() for e in info.value.errors]
    assert [(e["index"], e["path"]) for e in errors] == [(1, ""), (2, ""), (3, ""), (4, "")]
    assert errors[0]["message"] == "record must be a JSON object, got a number"
    assert errors[1]["message"] == "record must be a JSON object, got an array"


def test_top_level_scalar_is_not_an_object(codec: RecordCodec) -> None:
    with pytest.raises(SchemaError) as info:
        codec.decode(b'"hello"')
    assert [e.as_dict() for e in info.value.errors] == [
        {"index": 0, "path": "", "message": "record must be a JSON object, got a string"}]


def test_ndjson_errors_carry_the_record_index(codec: RecordCodec) -> None:
    body = b"\n".join(orjson.dumps(r) for r in [event(0), event(1), {"id": 3}, [1]])
    with pytest.raises(SchemaError) as info:
        codec.decode(body, NDJSON)
    err = info.value
    assert {e.index for e in err.errors} == {2, 3}
    assert ("id" in [e.path for e in err.errors if e.index == 2])
    assert err.records == 4


class Line(BaseModel):
    sku: str
    qty: int


class Order(BaseModel):
    order_id: Key[int]
    lines: list[Line]


def test_nested_field_path() -> None:
    body = orjson.dumps({"order_id": 1, "lines": [{"sku": "a", "qty": 1},
                                                  {"sku": "b", "qty": "many"}]})
    with pytest.raises(SchemaError) as info:
        RecordCodec(Order).decode(body)
    assert [(e.index, e.path) for e in info.value.errors] == [(0, "lines.1.qty")]


def test_many_errors_are_capped_in_the_answer(codec: RecordCodec) -> None:
    records = [{"id": str(i)} for i in range(MAX_REPORTED_ERRORS)]
    with pytest.raises(SchemaError) as info:
        codec.decode(orjson.dumps(records))
    detail = info.value.detail()
    assert detail["error_count"] == 3 * MAX_REPORTED_ERRORS
    assert len(detail["errors"]) == MAX_REPORTED_ERRORS
    assert detail["truncated"] is True


# --- encoding and keys -------------------------------------------------------------------------

def test_encoded_records_round_trip_with_validate_json(codec: RecordCodec) -> None:
    records = [event(0, timestamp="2024-05-01T12:00:00.123456+02:00"),
               event(1, timestamp=1714564800), event(2, timestamp="2024-05-01T12:00:00")]
    batch = codec.decode(orjson.dumps(records))
    adapter = TypeAdapter(Event)
    decoded = [adapter.validate_json(v) for v in batch.values]
    assert decoded == [Event.model_validate(r) for r in records]
    assert decoded[1].timestamp == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert decoded[0].timestamp.utcoffset() is not None
    # compact JSON: no spaces, only the model's fields
    assert b" " not in batch.values[0]


def test_unknown_fields_are_dropped_and_values_coerced() -> None:
    class Reading(BaseModel):
        sensor: str
        value: float

    batch = RecordCodec(Reading).decode(b'{"sensor": "s1", "value": 3, "extra": true}')
    assert orjson.loads(batch.values[0]) == {"sensor": "s1", "value": 3.0}
    assert batch.keys is None


def test_aliases_survive_the_round_trip() -> None:
    class Aliased(BaseModel):
        model_config = ConfigDict(strict=True)
        user: str = Field(alias="userName")
        seen: datetime

    codec = RecordCodec(Aliased)
    batch = codec.decode(b'{"userName": "ann", "seen": "2024-01-02T03:04:05Z"}')
    assert orjson.loads(batch.values[0])["userName"] == "ann"
    assert TypeAdapter(Aliased).validate_json(batch.values[0]).user == "ann"


def test_key_is_the_key_field(codec: RecordCodec) -> None:
    batch = codec.decode(orjson.dumps([event(1), event(2)]))
    assert batch.keys == [b"e1", b"e2"]


def test_several_key_fields_are_joined() -> None:
    class Multi(BaseModel):
        tenant: Key[str]
        seq: Key[int]
        at: Annotated[datetime, "not a key"]
        uid: Key[UUID]

    uid = "12345678-1234-5678-1234-567812345678"
    batch = RecordCodec(Multi).decode(orjson.dumps(
        {"tenant": "acme", "seq": 7, "at": "2024-01-01T00:00:00Z", "uid": uid}))
    assert batch.keys == [KEY_SEPARATOR.join([b"acme", b"7", uid.encode()])]


def test_no_key_fields_means_no_keys() -> None:
    class Plain(BaseModel):
        a: int

    codec = RecordCodec(Plain)
    assert codec.key_fields == ()
    assert codec.decode(b'[{"a": 1}, {"a": 2}]').keys is None
