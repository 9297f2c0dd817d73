"""Pydantic model fields -> ClickHouse columns, for a given server profile.

Pure: no I/O. Each column carries the function that turns the validated Python value into
what clickhouse-driver writes fastest (e.g. datetimes become integer ticks).
"""

from __future__ import annotations

import enum
import math
import re
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import Any, Literal, Union
from uuid import UUID

from pydantic import AliasChoices, BaseModel, TypeAdapter
from pydantic.fields import FieldInfo

from chute.annotations import (
    ClickHouseDecimal,
    ClickHouseDefault,
    ClickHouseType,
    Codec,
    DateTimePrecision,
    KeyMarker,
    LowCardinality,
)
from chute.identifiers import quote_string, validate_identifier
from chute.server import ServerProfile

Converter = Callable[[Any], Any]

DEFAULT_DECIMAL = ClickHouseDecimal(38, 9)
DEFAULT_DATETIME_PRECISION = 3
_RAW_TYPE = re.compile(r"^[A-Za-z0-9_(),' =.\-]+$")


class UnsupportedTypeError(TypeError):
    """A model field chute cannot store; the message names the field."""


@dataclass(frozen=True)
class ColumnSpec:
    name: str
    type: str
    is_key: bool = False
    codec: str | None = None
    default: str | None = None
    convert: Converter | None = None


@dataclass(frozen=True)
class _Markers:
    raw_type: str | None = None
    low_cardinality: bool = False
    decimal: ClickHouseDecimal | None = None
    precision: int | None = None

    def add(self, extras: Sequence[Any]) -> _Markers:
        m = self
        for extra in extras:
            if isinstance(extra, ClickHouseType):
                m = _Markers(extra.type, m.low_cardinality, m.decimal, m.precision)
            elif isinstance(extra, LowCardinality):
                m = _Markers(m.raw_type, True, m.decimal, m.precision)
            elif isinstance(extra, ClickHouseDecimal):
                m = _Markers(m.raw_type, m.low_cardinality, extra, m.precision)
            elif isinstance(extra, DateTimePrecision):
                m = _Markers(m.raw_type, m.low_cardinality, m.decimal, extra.precision)
        return m


def columns_for(model: type[BaseModel], profile: ServerProfile) -> list[ColumnSpec]:
    """The ClickHouse columns of `model`, in field order."""
    columns = []
    for name, info in model.model_fields.items():
        validate_identifier(name, f"column (field of {model.__name__})")
        is_key = any(isinstance(m, KeyMarker) for m in info.metadata)
        codec = next((m.expression for m in info.metadata if isinstance(m, Codec)), None)
        default = next(
            (m.expression for m in info.metadata if isinstance(m, ClickHouseDefault)), None
        )
        markers = _Markers().add(info.metadata)
        where = f"field {model.__name__}.{name}"
        _check_round_trip(model, name, info, where)
        ch_type, convert = _map(info.annotation, markers, profile, where)
        if is_key and ch_type.startswith("Nullable("):
            raise UnsupportedTypeError(f"{where}: a Key field cannot be optional (Nullable)")
        columns.append(ColumnSpec(name, ch_type, is_key, codec, default, convert))
    return columns


def _check_round_trip(model: type[BaseModel], name: str, info: FieldInfo, where: str) -> None:
    """A record goes to Kafka as the model's JSON (by alias) and the sync worker validates
    that JSON again: a field must come back under the name it is written with, or the worker
    would store its default (or dead-letter the record) after the API answered 200."""
    if info.exclude:
        raise UnsupportedTypeError(f"{where}: an excluded field (exclude=True) would not reach "
                                   "Kafka, so its value would not be stored")
    written = info.serialization_alias or info.alias or name
    read = info.validation_alias
    if read is None:
        accepted = {info.alias or name}
    elif isinstance(read, str):
        accepted = {read}
    elif isinstance(read, AliasChoices):
        accepted = {choice for choice in read.choices if isinstance(choice, str)}
    else:  # AliasPath: a value found inside another key
        accepted = set()
    if model.model_config.get("populate_by_name") or model.model_config.get("validate_by_name"):
        accepted.add(name)
    if written not in accepted:
        raise UnsupportedTypeError(
            f"{where}: written to Kafka as {written!r} but read only as "
            f"{' or '.join(sorted(map(repr, accepted))) or 'a path'}, so the sync worker "
            "would not find it; give the field one alias (alias=...) for both")


def _map(
    tp: Any, markers: _Markers, profile: ServerProfile, where: str
) -> tuple[str, Converter | None]:
    origin = typing.get_origin(tp)
    if origin is typing.Annotated:
        inner, *extras = typing.get_args(tp)
        return _map(inner, markers.add(extras), profile, where)
    if origin in (Union, types.UnionType):
        return _map_union(tp, markers, profile, where)
    if origin in (list, tuple, set, frozenset) or origin is Sequence:
        return _map_array(tp, markers, profile, where)
    if origin is Literal and markers.raw_type is None:
        return _map_literal(typing.get_args(tp), markers, where)
    if origin is dict and markers.raw_type is None:
        return "String", _json_text(tp)
    if markers.raw_type is not None:
        if not _RAW_TYPE.match(markers.raw_type):
            raise UnsupportedTypeError(f"{where}: suspicious ClickHouseType {markers.raw_type!r}")
        _, convert = _map(tp, _Markers(), profile, where) if tp is not Any else ("", None)
        if _is_datetime(tp):
            # The ticks depend on the column's precision, not on the default mapping's.
            convert = _datetime_converter(markers.raw_type)
        return markers.raw_type, convert
    ch_type, convert = _map_scalar(tp, markers, profile, where)
    if markers.low_cardinality:
        ch_type = f"LowCardinality({ch_type})"
    return ch_type, convert


def _map_scalar(
    tp: Any, markers: _Markers, profile: ServerProfile, where: str
) -> tuple[str, Converter | None]:
    if not isinstance(tp, type):
        raise UnsupportedTypeError(f"{where}: unsupported type {tp!r}")
    if issubclass(tp, bool):
        return ("Bool" if profile.has_bool else "UInt8"), None
    if issubclass(tp, enum.Enum):
        values = [member.value for member in tp]
        return _enum_type(values, where), _enum_value
    if issubclass(tp, int):
        return "Int64", None
    if issubclass(tp, float):
        return "Float64", None
    if issubclass(tp, str):
        return "String", None
    if issubclass(tp, datetime):
        return _datetime_type(markers, profile)
    if issubclass(tp, date):
        return "Date", None
    if issubclass(tp, UUID):
        return "UUID", None
    if issubclass(tp, Decimal):
        spec = markers.decimal or DEFAULT_DECIMAL
        if not 1 <= spec.precision <= 76 or not 0 <= spec.scale <= spec.precision:
            raise UnsupportedTypeError(f"{where}: bad Decimal({spec.precision}, {spec.scale})")
        return f"Decimal({spec.precision}, {spec.scale})", None
    if issubclass(tp, IPv4Address):
        return ("IPv4", None) if profile.has_ip_types else ("String", str)
    if issubclass(tp, IPv6Address):
        return ("IPv6", None) if profile.has_ip_types else ("String", str)
    if issubclass(tp, BaseModel):
        # Nested models are stored as a JSON String: works on every server and keeps
        # the model free to evolve. Use ClickHouseType for a Tuple instead.
        return "String", _json_text(tp)
    if issubclass(tp, dict):
        return "String", _json_text(tp)
    raise UnsupportedTypeError(f"{where}: unsupported type {tp.__name__}")


def _map_union(
    tp: Any, markers: _Markers, profile: ServerProfile, where: str
) -> tuple[str, Converter | None]:
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    if len(args) != 1 or len(args) == len(typing.get_args(tp)):
        raise UnsupportedTypeError(f"{where}: only `T | None` unions are supported, got {tp!r}")
    inner_markers = _Markers(markers.raw_type, False, markers.decimal, markers.precision)
    inner, convert = _map(args[0], inner_markers, profile, where)
    if inner.startswith(("Array(", "Nullable(", "LowCardinality(")):
        raise UnsupportedTypeError(f"{where}: ClickHouse cannot make {inner} Nullable")
    ch_type = f"Nullable({inner})"
    if markers.low_cardinality:
        ch_type = f"LowCardinality({ch_type})"
    if convert is None:
        return ch_type, None
    inner_convert = convert
    return ch_type, lambda v: None if v is None else inner_convert(v)


def _map_array(
    tp: Any, markers: _Markers, profile: ServerProfile, where: str
) -> tuple[str, Converter | None]:
    args = [a for a in typing.get_args(tp) if a is not Ellipsis]
    if len(args) != 1:
        raise UnsupportedTypeError(f"{where}: arrays need one element type, got {tp!r}")
    inner, convert = _map(args[0], markers, profile, where)
    if convert is None:
        return f"Array({inner})", list if typing.get_origin(tp) is not list else None
    element = convert
    return f"Array({inner})", lambda v: [element(x) for x in v]


def _map_literal(
    values: tuple[Any, ...], markers: _Markers, where: str
) -> tuple[str, Converter | None]:
    if not all(isinstance(v, str) for v in values):
        raise UnsupportedTypeError(f"{where}: only Literal of strings is supported")
    if markers.low_cardinality:
        return "LowCardinality(String)", None
    return _enum_type(list(values), where), None


def _enum_type(values: list[Any], where: str) -> str:
    if not values or not all(isinstance(v, str) for v in values):
        raise UnsupportedTypeError(f"{where}: enums must have string values")
    for value in values:
        if any(ord(c) < 0x20 or c == "\x7f" for c in value):
            # The server spells such a label with an escape (\t) in the column's type, which
            # clickhouse-driver reads back as another label: the insert would fail.
            raise UnsupportedTypeError(
                f"{where}: enum label {value!r} holds a control character, which an Enum "
                "column's type cannot carry to the sync worker's client; use "
                "LowCardinality(String) (ClickHouseType) or another label")
    width = "Enum8" if len(values) <= 127 else "Enum16"
    labels = ", ".join(f"{quote_string(v)} = {i}" for i, v in enumerate(values, start=1))
    return f"{width}({labels})"


def _datetime_type(markers: _Markers, profile: ServerProfile) -> tuple[str, Converter]:
    if not profile.has_datetime64:
        return "DateTime('UTC')", _epoch_seconds
    precision = DEFAULT_DATETIME_PRECISION if markers.precision is None else markers.precision
    if not 0 <= precision <= 6:
        raise UnsupportedTypeError(f"datetime precision must be 0..6, got {precision}")
    return f"DateTime64({precision}, 'UTC')", _epoch_ticks(precision)


def _is_datetime(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, datetime)


def _datetime_converter(raw_type: str) -> Converter:
    from chute.chtypes import TypeSyntaxError, parse_type

    try:
        ch = parse_type(raw_type).unwrapped()
    except TypeSyntaxError as exc:
        raise UnsupportedTypeError(str(exc)) from None
    if ch.name == "Nullable":
        inner = _datetime_converter(str(ch.arg_type()))
        return lambda v: None if v is None else inner(v)
    if ch.name == "DateTime64" and ch.args and isinstance(ch.args[0], int):
        return _epoch_ticks(ch.args[0])
    return _epoch_seconds


def _epoch_seconds(value: datetime) -> int:
    # Naive datetimes are taken as UTC, like the column's timezone. datetime.timestamp() is
    # C code, several times faster than calendar.timegm on the sync's hot path.
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return math.floor(value.timestamp())


def _epoch_ticks(precision: int) -> Converter:
    scale: int = 10**precision
    if precision > 6:  # DateTime64(7..9): finer than Python's microseconds
        factor: int = 10 ** (precision - 6)

        def convert_fine(value: datetime) -> int:
            return _epoch_seconds(value) * scale + value.microsecond * factor

        return convert_fine
    divisor: int = 10 ** (6 - precision)

    def convert(value: datetime) -> int:
        return _epoch_seconds(value) * scale + value.microsecond // divisor

    return convert


def _enum_value(value: enum.Enum) -> Any:
    return value.value


def _json_text(tp: Any) -> Converter:
    """A dict or nested model as the JSON text pydantic makes of it for `tp`, as the record
    went to Kafka (aliases, Decimal as text, sets as lists, any int), not a Python repr."""
    adapter: TypeAdapter[Any] = TypeAdapter(tp)

    def convert(value: Any) -> str:
        return adapter.dump_json(value, by_alias=True, round_trip=True).decode()

    return convert
