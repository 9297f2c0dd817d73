"""Property, for current servers (whose inserts cannot run here over the native protocol): a
value is accepted exactly when the documented range holds it, and what the sync writes for it
(the converter's ticks or the value itself) is exact. Boundaries written out from the README,
not taken from chute.constraints. Seeded: CHUTE_TEST_SEED."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Annotated, Any

import orjson
from chute import ClickHouseType
from chute.server import CURRENT_SERVER
from chute.typemap import columns_for
from chute.validation import RecordValidator
from hypothesis import given, seed, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from testkit.seed import TEST_SEED

SEED = TEST_SEED
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class Current(BaseModel):
    at: datetime = EPOCH  # DateTime64(3, 'UTC')
    seconds: Annotated[datetime, ClickHouseType("DateTime('UTC')")] = EPOCH
    day: date = date(1970, 1, 1)
    day32: Annotated[date, ClickHouseType("Date32")] = date(1970, 1, 1)
    i128: Annotated[int, ClickHouseType("Int128")] = 0
    u256: Annotated[int, ClickHouseType("UInt256")] = 0


VALIDATOR = RecordValidator(Current, CURRENT_SERVER)
CONVERT = {c.name: c.convert for c in columns_for(Current, CURRENT_SERVER)}


def _accepts(field: str, text: bytes) -> Any:
    try:
        record = VALIDATOR.validate_json(b'{"' + field.encode() + b'":' + text + b"}")
    except ValidationError as exc:
        assert {e["loc"][0] for e in exc.errors()} == {field}
        return None
    return getattr(record, field)


@seed(SEED)
@settings(max_examples=300, deadline=None, database=None)
@given(st.datetimes(datetime(1800, 1, 1), datetime(2400, 1, 1)),
       st.sampled_from(["at", "seconds"]))
def test_datetimes(instant: datetime, field: str) -> None:
    first, last = ((datetime(1900, 1, 1), datetime(2299, 12, 31, 23, 59, 59, 999999))
                   if field == "at" else (datetime(1970, 1, 1), datetime(2106, 2, 7, 6, 28, 15,
                                                                          999999)))
    value = _accepts(field, orjson.dumps(instant.isoformat() + "Z"))
    assert (value is not None) == (first <= instant <= last), instant
    if value is not None:
        micros = (instant.replace(tzinfo=UTC) - EPOCH) // timedelta(microseconds=1)
        expected = micros // 1000 if field == "at" else micros // 10**6
        convert = CONVERT[field]
        assert convert is not None and convert(value) == expected


@seed(SEED)
@settings(max_examples=200, deadline=None, database=None)
@given(st.dates(date(1800, 1, 1), date(2400, 1, 1)), st.sampled_from(["day", "day32"]))
def test_dates(day: date, field: str) -> None:
    first, last = ((date(1970, 1, 1), date(2149, 6, 6)) if field == "day"
                   else (date(1900, 1, 1), date(2299, 12, 31)))
    value = _accepts(field, orjson.dumps(day.isoformat()))
    assert (value is not None) == (first <= day <= last), day
    assert value is None or value == day


@seed(SEED)
@settings(max_examples=200, deadline=None, database=None)
@given(st.one_of(st.integers(), st.sampled_from([-2**127 - 1, -2**127, 2**127 - 1, 2**127, -1,
                                                 2**256 - 1, 2**256])),
       st.sampled_from(["i128", "u256"]))
def test_wide_integers(n: int, field: str) -> None:
    low, high = (-2**127, 2**127 - 1) if field == "i128" else (0, 2**256 - 1)
    value = _accepts(field, str(n).encode())
    assert (value is not None) == (low <= n <= high)
    assert value is None or value == n
