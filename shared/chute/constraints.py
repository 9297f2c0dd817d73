"""The values a ClickHouse column holds on a given server, as pydantic constraints. Pure.

The column type is the contract: each field's column type (from `chute.typemap.columns_for`,
including raw `ClickHouseType(...)` strings, which are parsed here, not trusted) decides which
values the field accepts. `constrained_model` derives from the user's model a subclass whose
fields carry those constraints; the ingest API and the sync worker validate with it, so both
sides refuse exactly the same values. Most checks are pydantic-core's own (ge/le,
max_digits/decimal_places, allow_inf_nan), so they cost next to nothing; the few that pydantic
cannot express (FixedString byte length, sub-second digits, Enum labels) are small functions.
"""

from __future__ import annotations

import enum
import math
import struct
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, Literal, Union
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetCoreSchemaHandler
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError, core_schema

from chute.annotations import AllowNonFinite, AllowRounding
from chute.chtypes import ChType, EnumMember, TypeSyntaxError, parse_type
from chute.server import ServerProfile
from chute.typemap import ColumnSpec, UnsupportedTypeError

Extra = Literal["ignore", "reject"]

# The error a Decimal field raises for a JSON number pydantic parsed as a float.
DECIMAL_FROM_FLOAT = "decimal_from_json_float"

FLOAT32_MAX = 3.4028234663852886e38
# Integers a float column holds exactly: every integer up to 2^mantissa bits.
_EXACT_FLOAT_INT = {"Float32": 2**24, "Float64": 2**53}

_INT_BITS = {"Int8": 8, "Int16": 16, "Int32": 32, "Int64": 64, "Int128": 128, "Int256": 256}
_WIDE = frozenset({"Int128", "Int256", "UInt128", "UInt256"})
_DECIMAL_PRECISION = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}


@dataclass(frozen=True)
class DateRange:
    first: date
    last: date


@dataclass(frozen=True)
class DateTimeRange:
    first: datetime
    last: datetime  # the last whole second the column holds


def date_range(ch_name: str, profile: ServerProfile) -> DateRange:
    """Days a Date/Date32 column holds. 18.16 prints and parses Date only up to 2105-12-31
    (measured), although its UInt16 day number would reach 2149-06-06 as on current servers."""
    if ch_name == "Date32":
        return DateRange(date(1900, 1, 1), date(2299, 12, 31))
    if profile.has_date32:
        return DateRange(date(1970, 1, 1), date(2149, 6, 6))
    return DateRange(date(1970, 1, 1), date(2105, 12, 31))


def datetime_range(ch_name: str, profile: ServerProfile) -> DateTimeRange:
    """Instants a DateTime/DateTime64 column holds (UTC). 18.16: measured; current: documented."""
    if ch_name == "DateTime64":
        return DateTimeRange(datetime(1900, 1, 1, tzinfo=UTC),
                             datetime(2299, 12, 31, 23, 59, 59, tzinfo=UTC))
    if profile.has_datetime64:
        return DateTimeRange(datetime(1970, 1, 1, tzinfo=UTC),
                             datetime(2106, 2, 7, 6, 28, 15, tzinfo=UTC))
    return DateTimeRange(datetime(1970, 1, 1, tzinfo=UTC),
                         datetime(2105, 12, 31, 23, 59, 59, tzinfo=UTC))


def int_range(ch_name: str) -> tuple[int, int]:
    if ch_name.startswith("U"):
        return 0, 2 ** _INT_BITS[ch_name[1:]] - 1
    bits = _INT_BITS[ch_name]
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def decimal_shape(ch: ChType) -> tuple[int, int]:
    """(precision, scale) of Decimal(P, S) / Decimal32(S) / ... / Decimal256(S)."""
    if ch.name == "Decimal":
        return ch.int_arg(0), ch.int_arg(1)
    return _DECIMAL_PRECISION[ch.name], ch.int_arg(0)


def datetime_precision(ch: ChType) -> int:
    """Sub-second digits a DateTime/DateTime64 column keeps."""
    return ch.int_arg(0) if ch.name == "DateTime64" else 0


@dataclass(frozen=True)
class Rule:
    """What one (leaf) column type accepts: pydantic metadata and a sentence for messages."""

    holds: str
    metadata: tuple[Any, ...] = ()


@dataclass(frozen=True)
class FieldRule:
    column: str
    column_type: str
    holds: str  # what the innermost type accepts, e.g. "integers 0 .. 255"
    constrained: bool  # the column holds fewer values than the field's Python type

    def explain(self) -> str:
        return f"column {self.column} is {self.column_type}, which holds {self.holds}"


@dataclass
class _Context:
    profile: ServerProfile
    where: str
    allow_non_finite: bool = False
    allow_rounding: bool = False
    holds: list[str] = field(default_factory=list)
    constrained: list[bool] = field(default_factory=list)

    def with_markers(self, extras: Sequence[Any]) -> _Context:
        return _Context(
            self.profile, self.where,
            self.allow_non_finite or any(isinstance(e, AllowNonFinite) for e in extras),
            self.allow_rounding or any(isinstance(e, AllowRounding) for e in extras),
            self.holds, self.constrained)

    def refuse(self, message: str) -> UnsupportedTypeError:
        return UnsupportedTypeError(f"{self.where}: {message}")

    def require(self, available: bool, what: str, version: str) -> None:
        """Refuse a column type the connected server does not have."""
        if not available:
            raise self.refuse(f"{what} needs ClickHouse {version} or later "
                              f"(server is {self.profile.version_text})")


def _error(kind: str, message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, message, context or None)


# --- rules per leaf type -----------------------------------------------------------------------


def _integer_rule(ch: ChType, tp: Any, ctx: _Context) -> Rule:
    if ch.name in _WIDE:
        ctx.require(ctx.profile.has_wide_numbers, ch.name, "21.9")
    if tp is bool:
        return Rule("true and false")
    if tp is not int:
        raise ctx.refuse(f"a {ch.name} column holds int or bool fields, not {_name(tp)}")
    low, high = int_range(ch.name)
    return Rule(f"integers {low} .. {high}", (Field(ge=low, le=high),))


def _float_rule(ch: ChType, tp: Any, ctx: _Context) -> Rule:
    if tp is int:
        limit = _EXACT_FLOAT_INT[ch.name]
        return Rule(f"integers -{limit} .. {limit} exactly",
                    (Field(ge=-limit, le=limit),))
    if tp is not float:
        raise ctx.refuse(f"a {ch.name} column holds float or int fields, not {_name(tp)}")
    if ch.name == "Float64":
        if ctx.allow_non_finite:
            return Rule("any float64, NaN and ±Infinity", (Field(allow_inf_nan=True),))
        return Rule("finite float64 numbers (no NaN or Infinity)",
                    (Field(allow_inf_nan=False),))
    holds = "float32 numbers up to ±3.4028235e38, stored as the nearest float32"
    if ctx.allow_non_finite:
        return Rule(holds + ", NaN and ±Infinity",
                    (Field(allow_inf_nan=True), AfterValidator(_to_float32)))
    return Rule(holds, (Field(allow_inf_nan=False, ge=-FLOAT32_MAX, le=FLOAT32_MAX),
                        AfterValidator(_to_float32)))


def _to_float32(value: float) -> float:
    """The float32 nearest to value: what a Float32 column stores (so Kafka holds it too)."""
    if math.isfinite(value) and abs(value) > FLOAT32_MAX:
        raise _error("float32_range", "a Float32 column holds at most ±3.4028235e38, got {value}",
                     value=value)
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def _decimal_rule(ch: ChType, tp: Any, ctx: _Context) -> Rule:
    if tp is not Decimal:
        raise ctx.refuse(f"a {ch} column holds Decimal fields, not {_name(tp)}")
    precision, scale = decimal_shape(ch)
    if not 1 <= precision <= 76 or not 0 <= scale <= precision:
        raise ctx.refuse(f"bad decimal type {ch}")
    if precision > 38:
        ctx.require(ctx.profile.has_wide_numbers, f"{ch} (precision > 38)", "21.9")
    whole = precision - scale
    holds = (f"|x| < 10^{whole} with at most {scale} fractional digit(s)")
    if ctx.allow_rounding:
        return Rule(holds + f" (more digits are rounded half-to-even to {scale})",
                    (Field(allow_inf_nan=False), AfterValidator(_decimal_rounder(whole, scale)),
                     NoFloatInput()))
    return Rule(holds, (Field(max_digits=precision, decimal_places=scale, allow_inf_nan=False),
                        NoFloatInput()))


class NoFloatInput:
    """A Decimal field's input must be a string, an int or a Decimal, never a float.

    pydantic's JSON parser hands a fractional JSON number to a Decimal field as a float, which
    kept only ~17 significant digits. This refuses it natively (a pydantic-core union, no
    Python call) with DECIMAL_FROM_FLOAT; chute.validation then reads the record again with
    exact numbers. Must come after the field's constraints: it wraps them.
    """

    def __get_pydantic_core_schema__(self, source: Any,
                                     handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        raw = core_schema.union_schema(
            [core_schema.str_schema(strict=True), core_schema.int_schema(strict=True),
             core_schema.is_instance_schema(Decimal)],
            custom_error_type=DECIMAL_FROM_FLOAT,
            custom_error_message="Input should be a decimal number or a string of one")
        return core_schema.chain_schema([raw, handler(source)])


def _decimal_rounder(whole: int, scale: int) -> Callable[[Decimal], Decimal]:
    quantum = Decimal(1).scaleb(-scale)
    limit = Decimal(10) ** whole

    def fit(value: Decimal) -> Decimal:
        if value.is_zero():
            return Decimal(0)
        if value.adjusted() < whole:
            with localcontext() as exact:
                exact.prec = 100  # more than any column's digits: quantize never fails
                value = value.quantize(quantum, rounding=ROUND_HALF_EVEN)
            if abs(value) < limit:
                return value
        raise _error("decimal_range", "does not fit: |x| must be below 10^{whole}",
                     whole=whole)

    return fit


def _date_rule(ch: ChType, tp: Any, ctx: _Context) -> Rule:
    if ch.name == "Date32":
        ctx.require(ctx.profile.has_date32, "Date32", "21.9")
    if tp is not date:
        raise ctx.refuse(f"a {ch.name} column holds date fields, not {_name(tp)}")
    span = date_range(ch.name, ctx.profile)
    return Rule(f"dates {span.first} .. {span.last}", (Field(ge=span.first, le=span.last),))


def _datetime_rule(ch: ChType, tp: Any, ctx: _Context) -> Rule:
    if ch.name == "DateTime64":
        ctx.require(ctx.profile.has_datetime64, "DateTime64", "20.1")
    if tp is not datetime:
        raise ctx.refuse(f"a {ch.name} column holds datetime fields, not {_name(tp)}")
    precision = datetime_precision(ch)
    if not 0 <= precision <= 9:
        raise ctx.refuse(f"bad precision in {ch}")
    span = datetime_range(ch.name, ctx.profile)
    digits = "whole seconds" if precision == 0 else f"{precision} sub-second digit(s)"
    holds = (f"instants {_iso(span.first)} .. {_iso(span.last)}"
             f"{'.' + '9' * precision if precision else ''} (UTC), {digits}")
    if precision < 6:
        # The column's declared precision is a normalisation, like time zones to UTC: the
        # sync's converter (chute.typemap) drops finer digits toward the past, as ClickHouse
        # does, so the last second's fractions are in range too.
        holds += "; finer digits are dropped"
    return Rule(holds, (Field(ge=span.first, le=span.last.replace(microsecond=999_999)),))


def _fixed_string_rule(ch: ChType, tp: Any, ctx: _Context) -> Rule:
    if tp is not str:
        raise ctx.refuse(f"a {ch} column holds str fields, not {_name(tp)}")
    length = ch.int_arg(0)

    def check(value: str) -> str:
        size = len(value.encode())
        if size > length:
            raise _error("fixed_string_length",
                         "is {size} UTF-8 bytes; FixedString({length}) holds at most {length}",
                         size=size, length=length)
        if value.endswith("\x00"):
            # The column pads with NUL bytes: a trailing NUL could not be told from padding.
            raise _error("fixed_string_padding",
                         "ends with a NUL character, which FixedString cannot keep apart from "
                         "its padding")
        return value

    return Rule(f"strings of at most {length} UTF-8 bytes not ending in NUL",
                (AfterValidator(check),))


def _enum_rule(ch: ChType, tp: Any, ctx: _Context) -> Rule:
    members = [a for a in ch.args if isinstance(a, EnumMember)]
    labels = [m.label for m in members]
    if not labels or len(labels) != len(ch.args):
        raise ctx.refuse(f"cannot read the members of {ch}")
    bits = 8 if ch.name == "Enum8" else 16
    if any(not -(2 ** (bits - 1)) <= m.value < 2 ** (bits - 1) for m in members):
        raise ctx.refuse(f"{ch} has a member value outside Int{bits}")
    holds = "one of " + ", ".join(repr(label) for label in labels)
    allowed = frozenset(labels)
    if isinstance(tp, tuple):  # Literal values
        missing = [v for v in tp if v not in allowed]
        if missing:
            raise ctx.refuse(f"{ch} lacks the value(s) {missing}")
        return Rule(holds)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        missing = [m.value for m in tp if m.value not in allowed]
        if missing:
            raise ctx.refuse(f"{ch} lacks the value(s) {missing} of {tp.__name__}")
        return Rule(holds)
    if tp is not str:
        raise ctx.refuse(f"a {ch.name} column holds str, Enum or Literal fields")

    def check(value: str) -> str:
        if value not in allowed:
            raise _error("enum_label", "is not one of the column's labels")
        return value

    return Rule(holds, (AfterValidator(check),))


def _string_rule(ch: ChType, tp: Any, ctx: _Context) -> Rule:
    if isinstance(tp, tuple) or tp in (str, IPv4Address, IPv6Address):
        return Rule("any text (UTF-8)")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return Rule("any text (UTF-8)")
    if isinstance(tp, type) and issubclass(tp, BaseModel | dict):
        return Rule("JSON without NaN or Infinity", (AfterValidator(_json_document),))
    raise ctx.refuse(f"a String column holds str fields, not {_name(tp)}")


def _json_document(value: Any) -> Any:
    """A nested model or dict stored as a JSON String: JSON cannot hold NaN or Infinity (they
    would be written as null), so refuse them. Decimals inside a dict (from reading a record's
    numbers exactly) become the floats the JSON parser makes of them otherwise."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _error("json_non_finite", "holds {value}, which JSON cannot carry",
                         value=str(value))
        return value
    if isinstance(value, Decimal):
        return _json_document(float(value))
    if isinstance(value, dict):
        return {key: _json_document(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_document(item) for item in value]
    if isinstance(value, BaseModel):
        for item in value.__dict__.values():
            _json_document(item)
    return value


def _simple_rule(ch: ChType, tp: Any, ctx: _Context) -> Rule:
    expected: dict[str, Any] = {"UUID": UUID, "IPv4": IPv4Address, "IPv6": IPv6Address,
                                "Bool": bool}
    if ch.name == "Bool":
        ctx.require(ctx.profile.has_bool, "Bool", "21.12")
    if ch.name in ("IPv4", "IPv6"):
        ctx.require(ctx.profile.has_ip_types, ch.name, "19.3")
    if tp is not expected[ch.name]:
        raise ctx.refuse(f"a {ch.name} column holds {expected[ch.name].__name__} fields, "
                         f"not {_name(tp)}")
    if ch.name == "IPv6":
        return Rule("IPv6 addresses without a scope (%zone)", (AfterValidator(_no_scope),))
    return Rule({"UUID": "UUIDs", "IPv4": "IPv4 addresses", "Bool": "true and false"}[ch.name])


def _no_scope(value: IPv6Address) -> IPv6Address:
    if value.scope_id is not None:
        raise _error("ipv6_scope", "has a scope (%{scope}), which an IPv6 column cannot keep",
                     scope=value.scope_id)
    return value


def _leaf_rule(ch: ChType, tp: Any, ctx: _Context) -> Rule:
    name = ch.name
    if name in _INT_BITS or (name.startswith("U") and name[1:] in _INT_BITS):
        return _integer_rule(ch, tp, ctx)
    if name in ("Float32", "Float64"):
        return _float_rule(ch, tp, ctx)
    if name == "Decimal" or name in _DECIMAL_PRECISION:
        return _decimal_rule(ch, tp, ctx)
    if name in ("Date", "Date32"):
        return _date_rule(ch, tp, ctx)
    if name in ("DateTime", "DateTime64"):
        return _datetime_rule(ch, tp, ctx)
    if name == "FixedString":
        return _fixed_string_rule(ch, tp, ctx)
    if name in ("Enum8", "Enum16"):
        return _enum_rule(ch, tp, ctx)
    if name == "String":
        return _string_rule(ch, tp, ctx)
    if name in ("UUID", "IPv4", "IPv6", "Bool"):
        return _simple_rule(ch, tp, ctx)
    raise ctx.refuse(f"chute cannot check the values of a {ch} column; use one of the types "
                     "listed under Types in the README")


# --- walking the annotation and the column type together --------------------------------------


def _constrain(tp: Any, ch: ChType, ctx: _Context) -> Any:
    """tp with the constraints of column type ch added at every leaf."""
    origin = typing.get_origin(tp)
    if origin is Annotated:
        inner, *extras = typing.get_args(tp)
        return Annotated[(_constrain(inner, ch, ctx.with_markers(extras)), *extras)]
    ch = ch.unwrapped()
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise ctx.refuse(f"only `T | None` unions are supported, got {tp!r}")
        if ch.name != "Nullable":
            raise ctx.refuse(f"the field is optional but its column {ch} is not Nullable: "
                             "None would be stored as a default value")
        return typing.Optional[_constrain(args[0], ch.arg_type(), ctx)]  # noqa: UP045
    if ch.name == "Nullable":
        return _constrain(tp, ch.arg_type(), ctx)
    if origin in (list, tuple, set, frozenset) or origin is Sequence:
        if ch.name != "Array":
            raise ctx.refuse(f"a sequence field needs an Array column, not {ch}")
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        if len(args) != 1:
            raise ctx.refuse(f"arrays need one element type, got {tp!r}")
        element = _constrain(args[0], ch.arg_type(), ctx)
        if origin is tuple:
            return tuple[element, ...]  # type: ignore[valid-type]
        return origin[element]
    if origin is Literal:
        leaf: Any = typing.get_args(tp)
    elif origin is dict:
        leaf = dict
    else:
        leaf = tp
    rule = _leaf_rule(ch, leaf, ctx)
    ctx.holds.append(rule.holds)
    ctx.constrained.append(bool(rule.metadata))
    if not rule.metadata:
        return tp
    return Annotated[(tp, *rule.metadata)]


def _name(tp: Any) -> str:
    return getattr(tp, "__name__", repr(tp))


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")


@dataclass(frozen=True)
class ConstrainedModel:
    """The derived model and, per field (by name and alias), what its column holds."""

    model: type[BaseModel]
    rules: dict[str, FieldRule]
    non_finite_floats: bool  # some field opted into NaN/Infinity
    decimals: bool  # some column is a Decimal: JSON numbers must be read exactly


def field_rule(model: type[BaseModel], column: ColumnSpec, profile: ServerProfile,
               ) -> tuple[Any, FieldRule, _Context]:
    info = model.model_fields[column.name]
    ctx = _Context(profile, f"field {model.__name__}.{column.name}").with_markers(info.metadata)
    try:
        ch = parse_type(column.type)
    except TypeSyntaxError as exc:
        raise ctx.refuse(str(exc)) from None
    annotation = _constrain(info.annotation, ch, ctx)
    holds = "; ".join(dict.fromkeys(ctx.holds))
    return annotation, FieldRule(column.name, column.type, holds, any(ctx.constrained)), ctx


def constrained_model(model: type[BaseModel], columns: Sequence[ColumnSpec],
                      profile: ServerProfile, extra: Extra = "ignore") -> ConstrainedModel:
    """A subclass of `model` whose fields accept only what their columns hold on `profile`.

    Validators, aliases and defaults of `model` are kept (it is a subclass). `extra`:
    "ignore" drops unknown fields (unless the model itself forbids them), "reject" refuses them.
    Raises UnsupportedTypeError for a field whose column cannot hold its Python type exactly.
    """
    annotations: dict[str, Any] = {}
    namespace: dict[str, Any] = {}
    rules: dict[str, FieldRule] = {}
    non_finite = decimals = False
    for column in columns:
        annotation, rule, ctx = field_rule(model, column, profile)
        info = model.model_fields[column.name]
        annotations[column.name] = (Annotated[(annotation, *info.metadata)] if info.metadata
                                    else annotation)
        namespace[column.name] = _copy_field(info)
        rules[column.name] = rule
        if info.alias:
            rules[info.alias] = rule
        non_finite = non_finite or _mentions(info, AllowNonFinite) or ctx.allow_non_finite
        decimals = decimals or "Decimal" in column.type
    config = ConfigDict(**model.model_config)
    forbids = model.model_config.get("extra") == "forbid"
    config["extra"] = "forbid" if extra == "reject" or forbids else "ignore"
    if non_finite:
        # Kafka carries NaN/Infinity as the JSON strings "NaN"/"Infinity"/"-Infinity".
        config["ser_json_inf_nan"] = "strings"
    namespace.update({"__annotations__": annotations, "model_config": config,
                      "__module__": model.__module__, "__qualname__": model.__qualname__,
                      "__doc__": model.__doc__})
    derived = types.new_class(model.__name__, (model,), {},
                              lambda ns: ns.update(namespace))
    return ConstrainedModel(derived, rules, non_finite, decimals)


def _copy_field(info: FieldInfo) -> FieldInfo:
    """The field's settings (default, alias, description...) without its annotation's metadata,
    which the new annotation carries."""
    attributes = {name: getattr(info, name) for name in (
        "alias", "validation_alias", "serialization_alias", "title", "description",
        "examples", "exclude", "json_schema_extra", "frozen", "repr")
        if getattr(info, name, None) is not None}
    copy: FieldInfo
    if info.default_factory is not None:
        copy = Field(default_factory=info.default_factory, **attributes)
    else:
        copy = Field(info.default, **attributes)
    return copy


def _mentions(info: FieldInfo, marker: type[Any]) -> bool:
    if any(isinstance(m, marker) for m in info.metadata):
        return True
    stack = [info.annotation]
    while stack:
        tp = stack.pop()
        if typing.get_origin(tp) is Annotated and any(
                isinstance(m, marker) for m in typing.get_args(tp)[1:]):
            return True
        stack.extend(a for a in typing.get_args(tp) if not isinstance(a, str | int))
    return False
