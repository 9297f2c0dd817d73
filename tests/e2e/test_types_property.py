"""Property: every value the ingest API answers 200 for reads back from ClickHouse equal to what
was sent (after the documented normalisation), every value its column cannot hold is answered
422, and nothing reaches the dead-letter table.

Values are generated at, inside and just beyond each mapped type's boundaries (hypothesis),
one record per request with one field under test, through the real ingest API and sync worker
into the real ClickHouse (18.16 here). The boundaries below are written out from the
documented ranges (README "Types"), not taken from chute.constraints, so that the two are
checked against each other. Seeded: CHUTE_TEST_SEED (printed) reproduces a run.
"""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from ipaddress import IPv4Address
from typing import Any
from uuid import UUID

import httpx
import orjson
import pytest
from hypothesis import HealthCheck, given, seed, settings
from hypothesis import strategies as st

from testkit.seed import TEST_SEED
from tests.e2e.stack import Stack, end_offsets

pytestmark = pytest.mark.e2e

MakeStack = Callable[..., Stack]

SEED = TEST_SEED
EXAMPLES = int(os.environ.get("CHUTE_TEST_EXAMPLES", "400"))

FIELDS = '''
    i8: Annotated[int, ClickHouseType("Int8")] = 0
    i16: Annotated[int, ClickHouseType("Int16")] = 0
    i32: Annotated[int, ClickHouseType("Int32")] = 0
    i64: int = 0
    u8: Annotated[int, ClickHouseType("UInt8")] = 0
    u16: Annotated[int, ClickHouseType("UInt16")] = 0
    u32: Annotated[int, ClickHouseType("UInt32")] = 0
    u64: Annotated[int, ClickHouseType("UInt64")] = 0
    flag: bool = False
    f64: float = 0.0
    f32: Annotated[float, ClickHouseType("Float32")] = 0.0
    nonfinite: Annotated[float, AllowNonFinite()] = 0.0
    maybe: float | None = None
    dec: Decimal = Decimal(0)
    dec9_2: Annotated[Decimal, ClickHouseDecimal(9, 2)] = Decimal(0)
    dec64: Annotated[Decimal, ClickHouseType("Decimal64(4)")] = Decimal(0)
    rounded: Annotated[Decimal, ClickHouseDecimal(6, 1), AllowRounding()] = Decimal(0)
    day: date = date(2000, 1, 1)
    fixed: Annotated[str, ClickHouseType("FixedString(4)")] = ""
    text: str = ""
    choice: Literal["a", "b"] = "a"
    label: Annotated[str, ClickHouseType("Enum8('x' = 1, 'y' = -2)")] = "x"
    uid: UUID = UUID(int=0)
    ip: IPv4Address = IPv4Address("0.0.0.0")
    bytes_: list[Annotated[int, ClickHouseType("UInt8")]] = []
'''


@dataclass(frozen=True)
class Case:
    field: str
    json: bytes  # the value as JSON text
    accepted: bool  # the documented range says the column holds it
    expected: Any = None  # what reads back, when accepted


def _ok(field: str, json: bytes, expected: Any) -> Case:
    return Case(field, json, True, expected)


def _no(field: str, json: bytes) -> Case:
    return Case(field, json, False)


def _int_text(value: int) -> bytes:
    return str(value).encode()


def integers(field: str, low: int, high: int) -> st.SearchStrategy[Case]:
    edges = st.sampled_from([low, high, low + 1, high - 1, 0])
    inside = st.one_of(edges, st.integers(low, high)).map(
        lambda v: _ok(field, _int_text(v), v))
    beyond = st.one_of(st.sampled_from([low - 1, high + 1]), st.integers(max_value=low - 1),
                       st.integers(min_value=high + 1)).map(lambda v: _no(field, _int_text(v)))
    return st.one_of(inside, beyond)


FLOAT32_MAX = 3.4028234663852886e38
NON_FINITE = [(b"NaN", math.nan), (b'"NaN"', math.nan), (b"Infinity", math.inf),
              (b'"-Infinity"', -math.inf), (b"1e400", math.inf), (b"-1e400", -math.inf)]


def _float_text(value: float) -> bytes:
    return repr(value).encode()


def _as_float32(value: float) -> float:
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def floats64(field: str) -> st.SearchStrategy[Case]:
    edges = st.sampled_from([1.7976931348623157e308, -1.7976931348623157e308, 5e-324, -0.0,
                             2.2250738585072014e-308])
    inside = st.one_of(edges, st.floats(allow_nan=False, allow_infinity=False)).map(
        lambda v: _ok(field, _float_text(v), v))
    beyond = st.sampled_from(NON_FINITE).map(lambda p: _no(field, p[0]))
    return st.one_of(inside, beyond)


def floats32() -> st.SearchStrategy[Case]:
    exact = st.floats(width=32, allow_nan=False, allow_infinity=False)
    near = st.floats(-FLOAT32_MAX, FLOAT32_MAX)
    inside = st.one_of(exact, near, st.sampled_from([FLOAT32_MAX, -FLOAT32_MAX, 0.1])).map(
        lambda v: _ok("f32", _float_text(v), _as_float32(v)))
    beyond = st.one_of(st.sampled_from([3.5e38, -1e39, 1.7976931348623157e308]).map(
        lambda v: _no("f32", _float_text(v))), st.sampled_from(NON_FINITE).map(
        lambda p: _no("f32", p[0])))
    return st.one_of(inside, beyond)


def non_finite() -> st.SearchStrategy[Case]:
    finite = st.floats(allow_nan=False, allow_infinity=False).map(
        lambda v: _ok("nonfinite", _float_text(v), v))
    special = st.sampled_from(NON_FINITE).map(lambda p: _ok("nonfinite", p[0], p[1]))
    return st.one_of(finite, special)


def optional_floats() -> st.SearchStrategy[Case]:
    return st.one_of(st.just(_ok("maybe", b"null", None)), floats64("maybe"))


def decimals(field: str, precision: int, scale: int) -> st.SearchStrategy[Case]:
    """|x| < 10^(P-S) with at most S fractional digits, as JSON numbers and as strings."""
    top = 10**precision - 1  # the largest scaled value

    def text(value: Decimal, as_string: bool) -> bytes:
        body = str(value).encode()
        return b'"' + body + b'"' if as_string else body

    scaled = st.one_of(st.sampled_from([top, -top, 1, -1, 0]), st.integers(-top, top))
    inside = st.tuples(scaled, st.booleans()).map(
        lambda p: _ok(field, text(_scaled(p[0], scale), p[1]), _scaled(p[0], scale)))
    too_big = st.one_of(st.just(top + 1), st.integers(min_value=top + 1)).map(
        lambda n: _scaled(n, scale))
    too_fine = st.integers(-(10 ** (precision + 1)), 10 ** (precision + 1)).filter(
        lambda n: n % 10 != 0).map(lambda n: _scaled(n, scale + 1))
    beyond = st.tuples(st.one_of(too_big, too_big.map(lambda d: -d), too_fine),
                       st.booleans()).map(lambda p: _no(field, text(p[0], p[1])))
    return st.one_of(inside, beyond)


def _scaled(n: int, scale: int) -> Decimal:
    """n * 10^-scale, exactly (Decimal arithmetic would round to 28 digits)."""
    return Decimal(f"{n}E-{scale}")


def rounded() -> st.SearchStrategy[Case]:
    """Decimal(6, 1) with rounding opted in: any number below 10^5 after rounding half to
    even to one digit is stored rounded."""
    def case(n: int) -> Case:
        value = _scaled(n, 3)
        fitted = value.quantize(Decimal("0.1"), rounding=ROUND_HALF_EVEN)
        if abs(fitted) < 10**5:
            return _ok("rounded", str(value).encode(), fitted)
        return _no("rounded", str(value).encode())

    return st.one_of(st.sampled_from([99999949, 99999950, -99999950, 5, 15, 25]),
                     st.integers(-(10**9), 10**9)).map(case)


FIRST_DAY, LAST_DAY = date(1970, 1, 1), date(2105, 12, 31)


def days() -> st.SearchStrategy[Case]:
    def text(d: date) -> bytes:
        return f'"{d.isoformat()}"'.encode()

    inside = st.one_of(st.sampled_from([FIRST_DAY, LAST_DAY]),
                       st.dates(FIRST_DAY, LAST_DAY)).map(lambda d: _ok("day", text(d), d))
    beyond = st.one_of(
        st.sampled_from([FIRST_DAY - timedelta(days=1), LAST_DAY + timedelta(days=1),
                         date(1950, 1, 1), date(2149, 6, 6), date(2200, 1, 1)]),
        st.dates(max_value=FIRST_DAY - timedelta(days=1)),
        st.dates(min_value=LAST_DAY + timedelta(days=1))).map(lambda d: _no("day", text(d)))
    return st.one_of(inside, beyond)


FIRST_SECOND = datetime(1970, 1, 1)
LAST_INSTANT = datetime(2105, 12, 31, 23, 59, 59, 999999)  # fractions of the last second fit
ZONES = [UTC, timezone(timedelta(hours=2)), timezone(timedelta(hours=-5, minutes=-30)), None]


def timestamps() -> st.SearchStrategy[Case]:
    """DateTime('UTC') on 18.16: instants 1970-01-01 .. 2105-12-31 23:59:59 UTC, stored as whole
    seconds (finer digits dropped); any offset, naive = UTC."""
    def case(instant: datetime, zone: timezone | None, accepted: bool) -> Case:
        utc = instant.replace(tzinfo=UTC)
        sent = instant if zone is None else utc.astimezone(zone)
        text = f'"{sent.isoformat()}"'.encode()
        if not accepted:
            return _no("timestamp", text)
        return _ok("timestamp", text, utc.replace(microsecond=0))

    edges = st.sampled_from([FIRST_SECOND, LAST_INSTANT, LAST_INSTANT.replace(microsecond=0)])
    inside = st.tuples(st.one_of(edges, st.datetimes(FIRST_SECOND, LAST_INSTANT)),
                       st.sampled_from(ZONES)).map(lambda p: case(p[0], p[1], True))
    beyond_edges = st.sampled_from([FIRST_SECOND - timedelta(microseconds=1),
                                    LAST_INSTANT + timedelta(microseconds=1),
                                    datetime(1900, 1, 1), datetime(2300, 1, 1)])
    beyond = st.tuples(
        st.one_of(beyond_edges,
                  st.datetimes(datetime(2, 1, 1), FIRST_SECOND - timedelta(microseconds=1)),
                  st.datetimes(LAST_INSTANT + timedelta(microseconds=1),
                               datetime(9998, 12, 31))),
        st.sampled_from(ZONES)).map(lambda p: case(p[0], p[1], False))
    return st.one_of(inside, beyond)


def _json_string(text: str) -> bytes:
    return orjson.dumps(text)


def fixed_strings() -> st.SearchStrategy[Case]:
    """FixedString(4): at most 4 UTF-8 bytes, not ending in NUL (padding)."""
    def case(text: str) -> Case:
        if len(text.encode()) <= 4 and not text.endswith("\x00"):
            return _ok("fixed", _json_string(text), text)
        return _no("fixed", _json_string(text))

    return st.one_of(st.sampled_from(["", "abcd", "abcde", "\u00e9\u00e9", "\u00e9\u00e9a",
                                      "\U0001f600", "a\x00", "a\x00b"]),
                     st.text(max_size=6)).map(case)


def texts() -> st.SearchStrategy[Case]:
    return st.text().map(lambda t: _ok("text", _json_string(t), t))


def labels(field: str, members: list[str]) -> st.SearchStrategy[Case]:
    return st.one_of(st.sampled_from(members), st.text(max_size=3)).map(
        lambda t: _ok(field, _json_string(t), t) if t in members
        else _no(field, _json_string(t)))


def uuids() -> st.SearchStrategy[Case]:
    return st.one_of(st.uuids().map(lambda u: _ok("uid", _json_string(str(u)), u)),
                     st.just(_no("uid", b'"not-a-uuid"')))


def addresses() -> st.SearchStrategy[Case]:
    # 18.16 has no IPv4 type: the column is a String holding the canonical form.
    ok = st.ip_addresses(v=4).map(lambda a: _ok("ip", _json_string(str(a)), str(a)))
    return st.one_of(ok, st.just(_no("ip", b'"256.1.1.1"')))


def flags() -> st.SearchStrategy[Case]:
    return st.booleans().map(lambda b: _ok("flag", orjson.dumps(b), int(b)))  # UInt8


def byte_lists() -> st.SearchStrategy[Case]:
    ok = st.lists(st.integers(0, 255), max_size=4).map(
        lambda v: _ok("bytes_", orjson.dumps(v), v))
    bad = st.tuples(st.lists(st.integers(0, 255), max_size=3),
                    st.sampled_from([256, -1, 2**64])).map(
        lambda p: _no("bytes_", _int_list(p[0] + [p[1]])))
    return st.one_of(ok, bad)


def _int_list(values: list[int]) -> bytes:
    return b"[" + b",".join(_int_text(v) for v in values) + b"]"


CASES = st.one_of(
    integers("i8", -2**7, 2**7 - 1), integers("i16", -2**15, 2**15 - 1),
    integers("i32", -2**31, 2**31 - 1), integers("i64", -2**63, 2**63 - 1),
    integers("u8", 0, 2**8 - 1), integers("u16", 0, 2**16 - 1),
    integers("u32", 0, 2**32 - 1), integers("u64", 0, 2**64 - 1),
    flags(), floats64("f64"), floats32(), non_finite(), optional_floats(),
    decimals("dec", 38, 9), decimals("dec9_2", 9, 2), decimals("dec64", 18, 4), rounded(),
    days(), timestamps(), fixed_strings(), texts(), labels("choice", ["a", "b"]),
    labels("label", ["x", "y"]), uuids(), addresses(), byte_lists())


def record(record_id: str, case: Case) -> bytes:
    base = {"id": record_id, "user_id": "u", "timestamp": "2024-05-01T12:00:00Z",
            "event_type": "property"}
    base.pop(case.field, None)
    return orjson.dumps(base)[:-1] + b',"' + case.field.encode() + b'":' + case.json + b"}"


def same(expected: Any, got: Any) -> bool:
    if isinstance(expected, float) and math.isnan(expected):
        return isinstance(got, float) and math.isnan(got)
    if isinstance(expected, float) and isinstance(got, float) and expected == 0.0:
        return got == 0.0 and math.copysign(1, expected) == math.copysign(1, got)
    return bool(expected == got) and type(expected) is type(got)


def test_every_acknowledged_value_reads_back_and_every_other_is_refused(
        make_stack: MakeStack) -> None:
    print(f"\nhypothesis seed {SEED} (CHUTE_TEST_SEED), {EXAMPLES} examples "
          "(CHUTE_TEST_EXAMPLES)")
    stack = make_stack(extra_fields=FIELDS)
    stack.start_worker()
    stack.start_ingest()
    accepted: dict[str, Case] = {}
    refused: list[Case] = []
    client = httpx.Client(timeout=30, headers={"Content-Type": "application/json"})

    @seed(SEED)
    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck), print_blob=True)
    @given(CASES)
    def post(case: Case) -> None:
        record_id = f"p{len(accepted) + len(refused)}"
        response = client.post(stack.url, content=record(record_id, case))
        if case.accepted:
            assert response.status_code == 200, (case, response.text)
            accepted[record_id] = case
        else:
            assert response.status_code == 422, (case, response.text)
            paths = {e["path"].split(".")[0] for e in response.json()["errors"]}
            assert paths == {case.field}, (case, response.text)
            refused.append(case)

    try:
        post()
    finally:
        client.close()
    print(f"{len(accepted)} values answered 200, {len(refused)} answered 422, over "
          f"{len({c.field for c in accepted.values()} | {c.field for c in refused})} fields")
    assert sum(end_offsets(stack.name).values()) == len(accepted)
    stack.wait_count(len(accepted), timeout=60)
    columns = sorted({c.field for c in accepted.values()})
    rows = stack.ch.execute(f"SELECT id, {', '.join(f'`{c}`' for c in columns)} "
                            f"FROM `{stack.name}`")
    stored = {row[0]: dict(zip(columns, row[1:], strict=True)) for row in rows}
    assert set(stored) == set(accepted)
    wrong = [(rid, case.field, case.json, case.expected, stored[rid][case.field])
             for rid, case in accepted.items()
             if not same(case.expected, _read_back(stored[rid][case.field]))]
    assert wrong == [], wrong[:5]
    assert stack.count(f"{stack.name}_dlq") == 0


def _read_back(value: Any) -> Any:
    """clickhouse-driver's value as the test's expectation is written (UUID, IPv4 as text)."""
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, IPv4Address):
        return str(value)
    if isinstance(value, UUID):
        return value
    return value
