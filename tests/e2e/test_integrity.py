"""Every acknowledged value is stored exactly as sent, or refused: the edge values that used to
be acknowledged and then altered or lost, through the real ingest API and straight to the
topic, on the real ClickHouse (18.16 here)."""

from __future__ import annotations

import base64
import math
from collections.abc import Callable
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import orjson
import pytest
from chute.kafka import producer

from tests.e2e.stack import Stack, end_offsets
from tests.support import KAFKA, wait_for

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]

EDGE_FIELDS = '''
    amount: Decimal = Decimal(0)
    day: date = date(2000, 1, 1)
    big: int = 0
    small: Annotated[int, ClickHouseType("UInt8")] = 0
    ratio: float = 0.0
    maybe: float | None = None
    anything: Annotated[float, AllowNonFinite()] = 0.0
    code: Annotated[str, ClickHouseType("FixedString(3)")] = "abc"
    cents: Annotated[Decimal, ClickHouseDecimal(10, 2), AllowRounding()] = Decimal(0)
'''
COLUMNS = ("timestamp", "amount", "day", "big", "small", "ratio", "maybe", "anything", "code",
           "cents")
BIGGEST = "99999999999999999999999999999.999999999"

# (field, the value as JSON text, what its column is called in the 422): values the columns
# cannot hold. Each line of the table these used to be acknowledged for, and a few more.
REFUSED: list[tuple[str, str, str]] = [
    ("amount", "1e30", "Decimal(38, 9)"), ("amount", "-1e29", "Decimal(38, 9)"),
    ("amount", "1e35", "Decimal(38, 9)"), ("amount", "0.0000000001", "Decimal(38, 9)"),
    ("amount", '"100000000000000000000000000000"', "Decimal(38, 9)"),
    ("day", '"1969-12-31"', "Date"), ("day", '"1950-01-01"', "Date"),
    ("day", '"2200-01-01"', "Date"), ("day", '"2106-01-01"', "Date"),
    ("timestamp", '"1900-01-01T00:00:00Z"', "DateTime('UTC')"),
    ("timestamp", '"1969-12-31T23:59:59Z"', "DateTime('UTC')"),
    ("timestamp", '"2300-01-01T00:00:00Z"', "DateTime('UTC')"),
    ("timestamp", '"2106-01-01T00:00:00Z"', "DateTime('UTC')"),
    ("big", "9223372036854775808", "Int64"), ("big", "18446744073709551621", "Int64"),
    ("big", "-9223372036854775809", "Int64"),
    ("small", "300", "UInt8"), ("small", "-1", "UInt8"),
    ("ratio", "NaN", "Float64"), ("ratio", "Infinity", "Float64"), ("ratio", "1e400", "Float64"),
    ("ratio", '"-Infinity"', "Float64"), ("maybe", "NaN", "Nullable(Float64)"),
    ("code", '"abcd"', "FixedString(3)"), ("code", '"\u00e9\u00e9"', "FixedString(3)"),
    ("cents", "99999999.995", "Decimal(10, 2)"),
]

# (field, the value as JSON text, what reads back): the edges the columns do hold.
STORED: list[tuple[str, str, Any]] = [
    ("amount", BIGGEST, Decimal(BIGGEST)),  # a JSON number with 38 digits, kept exactly
    ("amount", f'"-{BIGGEST}"', Decimal(f"-{BIGGEST}")),
    ("amount", "0.000000001", Decimal("0.000000001")),
    ("amount", "1234567890.123456789", Decimal("1234567890.123456789")),
    ("day", '"1970-01-01"', date(1970, 1, 1)), ("day", '"2105-12-31"', date(2105, 12, 31)),
    ("timestamp", '"1970-01-01T00:00:00Z"', datetime(1970, 1, 1, tzinfo=UTC)),
    ("timestamp", '"2105-12-31T23:59:59Z"', datetime(2105, 12, 31, 23, 59, 59, tzinfo=UTC)),
    # normalised: to UTC, and to the whole seconds a DateTime keeps
    ("timestamp", '"2024-05-01T14:00:00.999+02:00"', datetime(2024, 5, 1, 12, tzinfo=UTC)),
    ("big", "9223372036854775807", 2**63 - 1), ("big", "-9223372036854775808", -2**63),
    ("small", "255", 255), ("small", "0", 0),
    ("ratio", "1.7976931348623157e308", 1.7976931348623157e308), ("ratio", "5e-324", 5e-324),
    ("maybe", "null", None), ("maybe", "-0.5", -0.5),
    ("anything", '"NaN"', math.nan), ("anything", "Infinity", math.inf),
    ("anything", '"-Infinity"', -math.inf),
    ("code", '"abc"', "abc"), ("code", '"\u00e9"', "\u00e9"), ("code", '""', ""),
    ("cents", "1.005", Decimal("1.00")), ("cents", "1.015", Decimal("1.02")),  # opted in
]


def record(index: int, field: str, value: str) -> bytes:
    """A record's JSON with `field` set to the JSON text `value`, byte for byte."""
    base = {"id": f"r{index}", "user_id": "u", "timestamp": "2024-05-01T12:00:00Z",
            "event_type": "edge"}
    base.pop(field, None)
    return orjson.dumps(base)[:-1] + f',"{field}":{value}}}'.encode()


def same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b) and type(a) is type(b)


def stored_rows(stack: Stack) -> dict[str, dict[str, Any]]:
    rows = stack.ch.execute(f"SELECT id, {', '.join(COLUMNS)} FROM `{stack.name}`")
    return {row[0]: dict(zip(COLUMNS, row[1:], strict=True)) for row in rows}


def dead_letters(stack: Stack) -> list[tuple[Any, ...]]:
    """(offset, error_type, error_message, the payload's bytes as they arrived) of each."""
    rows = stack.ch.execute(
        f"SELECT offset, error_type, error_message, payload, payload_encoding "
        f"FROM `{stack.name}_dlq` ORDER BY offset", settings={"strings_as_bytes": True})
    return [(offset, error_type.decode(), message.decode(),
             base64.b64decode(payload) if encoding == "base64" else payload)
            for offset, error_type, message, payload, encoding in rows]


def wait_dead_letters(stack: Stack, count: int, timeout: float = 60) -> list[tuple[Any, ...]]:
    def enough() -> list[tuple[Any, ...]] | None:
        rows = dead_letters(stack)
        return rows if len(rows) >= count else None

    return wait_for(enough, timeout, f"{count} dead letters in {stack.name}_dlq")


def assert_stored_exactly(stack: Stack, sent: dict[str, tuple[str, str, Any]]) -> None:
    stack.wait_count(len(sent), timeout=60)
    rows = stored_rows(stack)
    assert set(rows) == set(sent)
    for record_id, (field, text, expected) in sent.items():
        got = rows[record_id][field]
        assert same(expected, got), f"{field} = {text} read back as {got!r}"


def test_the_api_refuses_what_a_column_cannot_hold_and_stores_the_rest_exactly(
        make_stack: MakeStack) -> None:
    stack = make_stack(extra_fields=EDGE_FIELDS)
    stack.start_worker()
    stack.start_ingest()
    before = sum(end_offsets(stack.name).values())
    for i, (field, text, column_type) in enumerate(REFUSED):
        response = stack.post(record(i, field, text))
        assert response.status_code == 422, (field, text, response.text)
        (error,) = response.json()["errors"]
        assert error["index"] == 0 and error["path"] == field, error
        assert column_type in error["message"], error["message"]
    assert sum(end_offsets(stack.name).values()) == before  # nothing reached Kafka
    sent = {}
    for i, (field, text, expected) in enumerate(STORED):
        response = stack.post(record(1000 + i, field, text))
        assert response.status_code == 200, (field, text, response.text)
        sent[f"r{1000 + i}"] = (field, text, expected)
    assert_stored_exactly(stack, sent)
    assert dead_letters(stack) == []


def test_records_straight_to_the_topic_meet_the_same_rules(make_stack: MakeStack) -> None:
    stack = make_stack(extra_fields=EDGE_FIELDS)
    stack.start_worker()
    p = producer(KAFKA)
    bad = [record(i, field, text) for i, (field, text, _) in enumerate(REFUSED)]
    bad.append(b'{"id":"s","user_id":"\\ud800","timestamp":"2024-05-01T12:00:00Z",'
               b'"event_type":"lone surrogate"}')
    # Not JSON, and not UTF-8; then the same text spelled with a backslash; then nothing.
    not_json = [b"\xff\xfe{not utf-8 \xed\xa0\x80", b"\\xff\\xfe{not utf-8", b""]
    bad += not_json
    sent = {}
    for i, (field, text, expected) in enumerate(STORED):
        p.send(stack.name, key=b"k", value=record(1000 + i, field, text))
        sent[f"r{1000 + i}"] = (field, text, expected)
    for value in bad:
        p.send(stack.name, key=b"k", value=value)
    p.close(timeout=10)
    assert_stored_exactly(stack, sent)
    letters = wait_dead_letters(stack, len(bad))
    assert len(letters) == len(bad)
    assert [row[3] for row in letters] == bad  # every byte as it arrived
    for (_, error_type, message, _), (field, _, column_type) in zip(letters, REFUSED,
                                                                    strict=False):
        assert error_type == "ValidationError" and field in message and column_type in message
    assert [row[1] for row in letters[-1 - len(not_json):]] == ["InvalidJSON"] * (
        1 + len(not_json))


def test_a_record_near_the_topic_s_limit_is_dead_lettered_whole(make_stack: MakeStack) -> None:
    """900 KB that are not JSON (nor UTF-8), produced straight to the topic: its dead letter
    (base64, 1.2 MB) fits the dead-letter topic, so the pipeline goes on and the records after
    it are stored (before, the dead letter was too large for Kafka and the pipeline failed
    after its retries)."""
    stack = make_stack({"max_batch_wait": 0.3})
    stack.start_worker()
    poison = bytes(range(128, 256)) * 7_000  # 896,000 bytes
    p = producer(KAFKA)
    p.send(stack.name, key=b"k", value=poison)
    for i in range(3):
        p.send(stack.name, key=b"k", value=record(i, "event_type", '"after"'))
    p.close(timeout=10)
    stack.wait_count(3, timeout=60)
    ids = stack.ch.execute(f"SELECT id FROM `{stack.name}` ORDER BY id")
    assert ids == [("r0",), ("r1",), ("r2",)]
    [letter] = wait_dead_letters(stack, 1)
    assert letter[1] == "InvalidJSON" and letter[3] == poison


def test_unknown_fields_and_duplicate_keys_are_ignored_by_default(make_stack: MakeStack) -> None:
    stack = make_stack()
    stack.start_worker()
    stack.start_ingest()
    body = (b'{"id":"a","user_id":"first","timestamp":"2024-05-01T12:00:00Z",'
            b'"event_type":"x","user_id":"last","not_a_field":1}')
    assert stack.post(body).status_code == 200
    stack.wait_count(1)
    assert stack.ch.execute(f"SELECT user_id FROM `{stack.name}`") == [("last",)]


def test_extra_reject_refuses_unknown_fields_and_duplicate_keys(make_stack: MakeStack) -> None:
    stack = make_stack({"extra": "reject"})
    stack.start_worker()
    stack.start_ingest()
    good = b'{"id":"a","user_id":"u","timestamp":"2024-05-01T12:00:00Z","event_type":"x"'
    unknown = good + b',"not_a_field":1}'
    twice = good + b',"user_id":"v"}'
    response = stack.post(unknown)
    assert response.status_code == 422
    assert response.json()["errors"][0]["path"] == "not_a_field"
    response = stack.post(b"[" + good + b"}," + twice + b"]")
    assert response.status_code == 422
    assert response.json()["errors"] == [{"index": 1, "path": "user_id", "message":
                                          "key 'user_id' appears more than once in the object"}]
    p = producer(KAFKA)
    for value in (unknown, twice, good + b"}"):
        p.send(stack.name, key=b"k", value=value)
    p.close(timeout=10)
    stack.wait_count(1)
    letters = wait_dead_letters(stack, 2)
    assert [row[3] for row in letters] == [unknown, twice]
