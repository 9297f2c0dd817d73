"""What each column type accepts, per server profile: chute.chtypes, chute.constraints and
chute.validation, pure (no servers)."""

from __future__ import annotations

import enum
import math
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, Literal
from uuid import UUID

import orjson
import pytest
from chute import (
    AllowNonFinite,
    AllowRounding,
    ClickHouseDecimal,
    ClickHouseType,
    DateTimePrecision,
    Key,
)
from chute.chtypes import ChType, EnumMember, TypeSyntaxError, parse_type
from chute.server import CURRENT_SERVER, OLD_SERVER, ServerProfile
from chute.typemap import UnsupportedTypeError, columns_for
from chute.validation import RecordValidator
from pydantic import BaseModel, ValidationError, field_validator

# --- parsing column types ----------------------------------------------------------------------


def test_parse_nested_types() -> None:
    assert parse_type("Nullable(Decimal(18, 4))") == ChType(
        "Nullable", (ChType("Decimal", (18, 4)),))
    assert parse_type("Array(LowCardinality(String))").arg_type().unwrapped() == ChType("String")
    assert parse_type("DateTime64(3, 'UTC')") == ChType("DateTime64", (3, "UTC"))
    assert str(parse_type("DateTime64(3,'UTC')")) == "DateTime64(3, 'UTC')"


def test_parse_enum_members_with_quotes() -> None:
    ch = parse_type(r"Enum8('a' = 1, 'it\'s' = -2)")
    assert ch.args == (EnumMember("a", 1), EnumMember("it's", -2))
    assert parse_type(str(ch)) == ch


@pytest.mark.parametrize("text", ["UInt8)", "Decimal(18, 4", "String; DROP TABLE x", "",
                                  "Nullable(,)", "FixedString(3) x"])
def test_parse_refuses_what_it_does_not_understand(text: str) -> None:
    with pytest.raises(TypeSyntaxError):
        parse_type(text)


# --- helpers -----------------------------------------------------------------------------------


def validator_for(annotation: Any, profile: ServerProfile = OLD_SERVER,
                  **extras: Any) -> RecordValidator:
    model = type("Row", (BaseModel,), {"__annotations__": {"v": annotation}, **extras})
    return RecordValidator(model, profile)


def accepts(v: RecordValidator, value: Any) -> Any:
    return v.validate_json(b'{"v": ' + _json(value) + b"}").v  # type: ignore[attr-defined]


def _json(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()  # orjson stops at 64 bits
    return orjson.dumps(value)


def refusal(v: RecordValidator, value: Any) -> str:
    with pytest.raises(ValidationError) as info:
        accepts(v, value)
    errors = info.value.errors()
    assert errors[0]["loc"][0] == "v"
    return v.explain(errors[0])


# --- integers ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("ch", "low", "high"), [
    ("Int8", -128, 127), ("Int16", -32768, 32767), ("Int32", -2**31, 2**31 - 1),
    ("Int64", -2**63, 2**63 - 1), ("UInt8", 0, 255), ("UInt16", 0, 65535),
    ("UInt32", 0, 2**32 - 1), ("UInt64", 0, 2**64 - 1)])
def test_integer_bounds(ch: str, low: int, high: int) -> None:
    v = validator_for(Annotated[int, ClickHouseType(ch)])
    assert accepts(v, low) == low and accepts(v, high) == high
    for beyond in (low - 1, high + 1):
        message = refusal(v, beyond)
        assert ch in message and f"{low} .. {high}" in message


def test_default_int_is_int64() -> None:
    v = validator_for(int)
    assert "Int64" in refusal(v, 2**63)
    assert "Int64" in refusal(v, -2**63 - 1)
    refusal(v, b"18446744073709551621")  # 2^64 + 5


def test_an_int_written_as_a_float_is_taken_only_where_a_float_is_exact() -> None:
    """The JSON parser reads 9007199254740993.0 as the float 2^53: stored as an int, it would
    not be the number sent. From 2^53 on, such numbers are refused; below, 5.0 is 5."""
    v = validator_for(int)
    assert accepts(v, b"5.0") == 5 and accepts(v, b"-9007199254740991.0") == -(2**53 - 1)
    assert accepts(v, b"9007199254740993") == 2**53 + 1  # written as an integer: exact
    for inexact in (b"9007199254740993.0", b"9007199254740992.0", b"1.2345678901234567891e18",
                    b"-1e19"):
        assert "beyond 2^53" in refusal(v, inexact), inexact


def test_wide_integers_only_where_the_server_has_them() -> None:
    with pytest.raises(UnsupportedTypeError, match=r"Int128 needs ClickHouse 21\.9"):
        validator_for(Annotated[int, ClickHouseType("Int128")], OLD_SERVER)
    v = validator_for(Annotated[int, ClickHouseType("UInt256")], CURRENT_SERVER)
    assert accepts(v, 2**256 - 1) == 2**256 - 1
    refusal(v, 2**256)


def test_bool_fits_uint8_and_bool() -> None:
    assert accepts(validator_for(bool, OLD_SERVER), True) is True
    assert accepts(validator_for(bool, CURRENT_SERVER), False) is False
    with pytest.raises(UnsupportedTypeError, match="Bool needs"):
        validator_for(Annotated[bool, ClickHouseType("Bool")], OLD_SERVER)


# --- floats ------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [b"NaN", b'"NaN"', b"Infinity", b"-Infinity", b"1e400",
                                  b"-1e400", b'"Infinity"'])
def test_non_finite_floats_are_refused_by_default(text: bytes) -> None:
    assert "Float64" in refusal(validator_for(float), text)
    assert "Nullable(Float64)" in refusal(validator_for(float | None), text)


def test_non_finite_floats_opt_in_and_travel_as_strings() -> None:
    v = validator_for(Annotated[float, AllowNonFinite()])
    assert math.isnan(accepts(v, b"NaN"))
    record = v.validate_json(b'{"v": -Infinity}')
    encoded = v.serializer()(record)
    assert encoded == b'{"v":"-Infinity"}'
    assert v.validate_json(encoded).v == -math.inf  # type: ignore[attr-defined]
    optional = validator_for(Annotated[float | None, AllowNonFinite()])
    assert math.isnan(optional.validate_json(
        optional.serializer()(optional.validate_json(b'{"v": NaN}'))).v)  # type: ignore[attr-defined]


def test_float32_is_stored_as_the_nearest_float32() -> None:
    v = validator_for(Annotated[float, ClickHouseType("Float32")])
    assert accepts(v, 0.1) == 0.10000000149011612
    assert accepts(v, 3.4028234663852886e38) == 3.4028234663852886e38
    assert "Float32" in refusal(v, 3.5e38)
    refusal(v, b"NaN")


def test_int_fields_in_float_columns_must_be_exact() -> None:
    v = validator_for(Annotated[int, ClickHouseType("Float64")])
    assert accepts(v, 2**53) == 2**53
    refusal(v, 2**53 + 1)


# --- decimals ----------------------------------------------------------------------------------


@pytest.mark.parametrize("text", [b"1e30", b"-1e29", b"1e35", b'"1e29"',
                                  b"100000000000000000000000000000"])
def test_decimal_too_large_is_refused(text: bytes) -> None:
    message = refusal(validator_for(Decimal), text)
    assert "Decimal(38, 9)" in message and "10^29" in message


def test_decimal_too_fine_is_refused() -> None:
    assert "9 fractional" in refusal(validator_for(Decimal), b"0.0000000001")


def test_decimal_edges_fit_exactly() -> None:
    v = validator_for(Decimal)
    biggest = "99999999999999999999999999999.999999999"
    assert accepts(v, biggest.encode()) == Decimal(biggest)  # a JSON number, read exactly
    assert accepts(v, biggest) == Decimal(biggest)  # a JSON string
    assert accepts(v, "-" + biggest) == Decimal("-" + biggest)
    assert accepts(v, b"1234567890.123456789") == Decimal("1234567890.123456789")
    assert accepts(v, b"0.000000001") == Decimal("0.000000001")
    assert accepts(v, b"1.10000000000000") == Decimal("1.1")


def test_decimal_types_by_name() -> None:
    for ch, whole in (("Decimal32(2)", 7), ("Decimal64(4)", 14), ("Decimal128(10)", 28)):
        v = validator_for(Annotated[Decimal, ClickHouseType(ch)])
        assert accepts(v, "9" * whole) == Decimal("9" * whole)
        refusal(v, "1" + "0" * whole)
    with pytest.raises(UnsupportedTypeError, match="precision > 38"):
        validator_for(Annotated[Decimal, ClickHouseDecimal(40, 2)], OLD_SERVER)


def test_decimal_rounding_is_opt_in() -> None:
    v = validator_for(Annotated[Decimal, ClickHouseDecimal(10, 2), AllowRounding()])
    assert accepts(v, b"1.005") == Decimal("1.00")  # half to even
    assert accepts(v, b"1.015") == Decimal("1.02")
    assert accepts(v, b"99999999.994") == Decimal("99999999.99")
    assert "10^8" in refusal(v, b"99999999.995")  # rounds up to 10^8: does not fit
    refusal(v, b"1e400")
    refusal(v, b'"NaN"')


def test_nan_decimal_is_refused() -> None:
    refusal(validator_for(Decimal), "NaN")


# --- dates and times ---------------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "last"), [(OLD_SERVER, date(2105, 12, 31)),
                                               (CURRENT_SERVER, date(2149, 6, 6))])
def test_date_range_per_server(profile: ServerProfile, last: date) -> None:
    v = validator_for(date, profile)
    assert accepts(v, "1970-01-01") == date(1970, 1, 1)
    assert accepts(v, last.isoformat()) == last
    for beyond in ("1969-12-31", "1950-01-01", (last + timedelta(days=1)).isoformat(),
                   "2200-01-01"):
        assert "Date" in refusal(v, beyond)


def test_date32_on_current_servers_only() -> None:
    with pytest.raises(UnsupportedTypeError, match="Date32 needs"):
        validator_for(Annotated[date, ClickHouseType("Date32")], OLD_SERVER)
    v = validator_for(Annotated[date, ClickHouseType("Date32")], CURRENT_SERVER)
    assert accepts(v, "1900-01-01") == date(1900, 1, 1)
    assert accepts(v, "2299-12-31") == date(2299, 12, 31)
    refusal(v, "1899-12-31")
    refusal(v, "2300-01-01")


def test_datetime_on_18_16() -> None:
    v = validator_for(datetime, OLD_SERVER)
    assert accepts(v, "1970-01-01T00:00:00Z") == datetime(1970, 1, 1, tzinfo=UTC)
    assert accepts(v, "2105-12-31T23:59:59Z") == datetime(2105, 12, 31, 23, 59, 59, tzinfo=UTC)
    assert accepts(v, "1970-01-01T02:00:00+02:00") == datetime(1970, 1, 1, tzinfo=UTC)
    for beyond in ("1900-01-01T00:00:00Z", "1969-12-31T23:59:59Z", "1969-12-31T23:59:59",
                   "2106-01-01T00:00:00Z", "2300-01-01T00:00:00Z", "1970-01-01T01:00:00+02:00"):
        assert "DateTime('UTC')" in refusal(v, beyond)


def test_datetime_sub_second_digits_are_truncated_when_stored() -> None:
    class Row(BaseModel):
        t: datetime

    value = datetime(2105, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)  # the last second: in range
    for profile, ticks in ((OLD_SERVER, 4291747199), (CURRENT_SERVER, 4291747199999)):
        v = RecordValidator(Row, profile)
        record = v.validate_json(b'{"t": "2105-12-31T23:59:59.999999Z"}')
        assert record.t == value  # type: ignore[attr-defined]
        (column,) = columns_for(Row, profile)
        assert column.convert is not None and column.convert(value) == ticks
    micros = validator_for(Annotated[datetime, DateTimePrecision(6)], CURRENT_SERVER)
    assert accepts(micros, "2024-05-01T12:00:00.123456Z").microsecond == 123456


def test_datetime_ranges_on_current_servers() -> None:
    dt64 = validator_for(datetime, CURRENT_SERVER)
    assert accepts(dt64, "1900-01-01T00:00:00Z") == datetime(1900, 1, 1, tzinfo=UTC)
    assert accepts(dt64, "2299-12-31T23:59:59.999Z").year == 2299
    refusal(dt64, "1899-12-31T23:59:59Z")
    refusal(dt64, "2300-01-01T00:00:00Z")
    plain = validator_for(Annotated[datetime, ClickHouseType("DateTime('UTC')")], CURRENT_SERVER)
    assert accepts(plain, "2106-02-07T06:28:15Z").year == 2106
    refusal(plain, "2106-02-07T06:28:16Z")
    with pytest.raises(UnsupportedTypeError, match="DateTime64 needs"):
        validator_for(Annotated[datetime, ClickHouseType("DateTime64(3)")], OLD_SERVER)
    # Nanoseconds in an Int64 end in 2262: later instants would not fit the column's ticks.
    nanos = validator_for(Annotated[datetime, ClickHouseType("DateTime64(9, 'UTC')")],
                          CURRENT_SERVER)
    assert accepts(nanos, "2262-04-11T23:47:15.999999Z").year == 2262
    refusal(nanos, "2262-04-11T23:47:16Z")
    refusal(nanos, "2263-01-01T00:00:00Z")


# --- strings, enums, ids -----------------------------------------------------------------------


def test_fixed_string_counts_utf8_bytes() -> None:
    v = validator_for(Annotated[str, ClickHouseType("FixedString(3)")])
    assert accepts(v, "abc") == "abc"
    assert accepts(v, "é") == "é"  # 2 bytes
    assert "FixedString(3)" in refusal(v, "abcd")
    assert "4 UTF-8 bytes" in refusal(v, "éé")
    assert "NUL" in refusal(v, "ab\x00")


def test_lone_surrogates_are_not_json() -> None:
    v = validator_for(str)
    with pytest.raises(ValidationError) as info:
        v.validate_json(b'{"v": "\\ud800"}')
    assert info.value.errors()[0]["type"] == "json_invalid"
    assert accepts(v, b'"\\ud83d\\ude00"') == "\U0001f600"  # a proper pair is fine


class Color(enum.Enum):
    red = "red"
    blue = "blue"


def test_enum_members_of_a_raw_enum_type() -> None:
    v = validator_for(Annotated[str, ClickHouseType("Enum8('a' = 1, 'b' = 2)")])
    assert accepts(v, "b") == "b"
    assert "'a', 'b'" in refusal(v, "c")
    with pytest.raises(UnsupportedTypeError, match="lacks"):
        validator_for(Annotated[Color, ClickHouseType("Enum8('red' = 1)")])
    with pytest.raises(UnsupportedTypeError, match="lacks"):
        validator_for(Annotated[Literal["x", "y"], ClickHouseType("Enum8('x' = 1)")])
    assert accepts(validator_for(Color), "blue") is Color.blue


def test_uuid_and_ip_addresses() -> None:
    u = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
    assert accepts(validator_for(UUID), u) == UUID(u)
    refusal(validator_for(UUID), "not-a-uuid")
    v6 = validator_for(IPv6Address, CURRENT_SERVER)
    assert accepts(v6, "::1") == IPv6Address("::1")
    assert "scope" in refusal(v6, "fe80::1%eth0")
    assert accepts(validator_for(IPv4Address, CURRENT_SERVER), "1.2.3.4") == IPv4Address(
        "1.2.3.4")
    # 18.16 has no IP types: they are Strings, which keep a scope too.
    assert accepts(validator_for(IPv6Address, OLD_SERVER), "fe80::1%eth0") == IPv6Address(
        "fe80::1%eth0")


class Inner(BaseModel):
    x: float


def test_nested_json_cannot_hold_nan() -> None:
    nested = validator_for(Inner)
    assert accepts(nested, {"x": 1.5}) == Inner(x=1.5)
    assert "JSON" in refusal(nested, b'{"x": NaN}')
    free = validator_for(dict[str, Any])
    refusal(free, b'{"a": [1, Infinity]}')
    assert accepts(free, {"a": [1, 2.5]}) == {"a": [1, 2.5]}


# --- wrappers and mismatches -------------------------------------------------------------------


def test_array_elements_and_nullable_are_checked() -> None:
    v = validator_for(list[Annotated[int, ClickHouseType("UInt8")]])
    assert accepts(v, [0, 255]) == [0, 255]
    with pytest.raises(ValidationError) as info:
        accepts(v, [1, 256])
    assert info.value.errors()[0]["loc"] == ("v", 1)
    assert accepts(validator_for(date | None), None) is None
    refusal(validator_for(date | None), "1969-12-31")


@pytest.mark.parametrize(("annotation", "match"), [
    (Annotated[str, ClickHouseType("UInt8")], "holds int or bool"),
    (Annotated[int | None, ClickHouseType("Nullable(UInt8)")], "cannot make"),
    (Annotated[str, ClickHouseType("Map(String, String)")], "cannot check"),
    (Annotated[float, ClickHouseType("Decimal(10, 2)")], "holds Decimal"),
    (Annotated[datetime, ClickHouseType("Date")], "holds date"),
])
def test_a_column_that_cannot_hold_the_python_type_is_refused(annotation: Any,
                                                              match: str) -> None:
    with pytest.raises(UnsupportedTypeError, match=match):
        validator_for(annotation)


def test_the_model_keeps_its_validators_aliases_and_defaults() -> None:
    class Order(BaseModel):
        id: Key[str]
        qty: Annotated[int, ClickHouseType("UInt8")] = 1

        @field_validator("id")
        @classmethod
        def upper(cls, value: str) -> str:
            return value.upper()

    v = RecordValidator(Order, OLD_SERVER)
    record = v.validate_json(b'{"id": "a"}')
    assert isinstance(record, Order) and record.id == "A" and record.qty == 1
    assert list(v.record_model.model_fields) == ["id", "qty"]


# --- unknown fields and duplicate keys ---------------------------------------------------------


class Small(BaseModel):
    a: int
    b: str = ""


def test_extra_ignore_drops_unknown_fields_and_keeps_the_last_duplicate() -> None:
    v = RecordValidator(Small, OLD_SERVER, "ignore")
    record = v.validate_json(b'{"a": 1, "zzz": 2, "a": 3}')
    assert v.serializer()(record) == b'{"a":3,"b":""}'


def test_extra_reject_refuses_unknown_fields_and_duplicate_keys() -> None:
    v = RecordValidator(Small, OLD_SERVER, "reject")
    with pytest.raises(ValidationError) as info:
        v.validate_json(b'{"a": 1, "zzz": 2}')
    assert info.value.errors()[0]["type"] == "extra_forbidden"
    with pytest.raises(ValidationError) as info:
        v.validate_json_many(b'[{"a": 1}, {"a": 1, "b": "x", "b": "y"}]')
    (error,) = info.value.errors()
    assert error["loc"] == (1, "b") and error["type"] == "duplicate_key"


# --- what the sync writes: converters exact at the edges --------------------------------------


def _exact_ticks(value: datetime, precision: int) -> int:
    epoch = datetime(1970, 1, 1, tzinfo=UTC)
    micros: int = (value - epoch) // timedelta(microseconds=1)
    scale: int = 10**precision
    return micros * scale // 10**6


@pytest.mark.parametrize("precision", [0, 3, 6, 9])
def test_datetime64_ticks_are_exact_at_the_edges(precision: int) -> None:
    class Row(BaseModel):
        t: Annotated[datetime, ClickHouseType(f"DateTime64({precision}, 'UTC')")]

    (column,) = columns_for(Row, CURRENT_SERVER)
    assert column.convert is not None
    for value in (datetime(1900, 1, 1, tzinfo=UTC), datetime(1969, 12, 31, 23, 59, 59, 999999,
                                                               tzinfo=UTC),
                  datetime(2299, 12, 31, 23, 59, 59, 999999, tzinfo=UTC),
                  datetime(2024, 5, 1, 12, 0, 0, 1, tzinfo=UTC)):
        assert column.convert(value) == _exact_ticks(value, precision), value


def test_raw_datetime_column_gets_seconds_on_current_servers() -> None:
    class Row(BaseModel):
        t: Annotated[datetime, ClickHouseType("DateTime('UTC')")]

    (column,) = columns_for(Row, CURRENT_SERVER)
    assert column.convert is not None
    assert column.convert(datetime(2106, 2, 7, 6, 28, 15, tzinfo=UTC)) == 2**32 - 1


class Everything(BaseModel):
    i: Annotated[int, ClickHouseType("UInt64")] = 0
    f32: Annotated[float, ClickHouseType("Float32")] = 0.0
    nan: Annotated[float | None, AllowNonFinite()] = None
    d: Decimal = Decimal(0)
    r: Annotated[Decimal, ClickHouseDecimal(6, 2), AllowRounding()] = Decimal(0)
    t: datetime = datetime(2000, 1, 1, tzinfo=UTC)
    day: date = date(2000, 1, 1)
    fs: Annotated[str, ClickHouseType("FixedString(4)")] = ""
    u: UUID = UUID(int=0)
    arr: list[Annotated[int, ClickHouseType("UInt8")]] = []


@pytest.mark.parametrize("profile", [OLD_SERVER, CURRENT_SERVER])
@pytest.mark.parametrize("body", [
    b'{"i": 18446744073709551615, "f32": 0.1, "nan": NaN, "d": 1234567890.123456789}',
    b'{"nan": "-Infinity", "r": 1.005, "t": "2024-05-01T14:00:00.123456+02:00"}',
    b'{"d": "-99999999999999999999999999999.999999999", "fs": "\\u00e9\\u00e9", "day": 0}',
    b'{"u": "1b4e28ba-2fa1-11d2-883f-0016d3cca427", "arr": [0, 255], "nan": null}',
])
def test_the_kafka_value_reads_back_to_the_validated_record(profile: ServerProfile,
                                                            body: bytes) -> None:
    v = RecordValidator(Everything, profile)
    record = v.validate_json(body)
    again = v.validate_json(v.serializer()(record))
    for name in Everything.model_fields:
        assert _identical(getattr(again, name), getattr(record, name)), name


def _identical(a: Any, b: Any) -> bool:
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return bool(a == b) and type(a) is type(b)
