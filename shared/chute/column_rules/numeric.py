"""What integer, float and decimal columns hold."""

from __future__ import annotations

import math
import struct
from collections.abc import Callable
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

from pydantic import AfterValidator, BeforeValidator, Field, GetCoreSchemaHandler
from pydantic_core import core_schema

from chute.chtypes import ChType
from chute.column_rules.base import Rule, RuleContext, type_name, value_error

# The error a Decimal field raises for a JSON number pydantic parsed as a float.
DECIMAL_FROM_FLOAT = "decimal_from_json_float"

FLOAT32_MAX = 3.4028234663852886e38
# Integers a float column holds exactly: every integer up to 2^mantissa bits.
_EXACT_FLOAT_INT = {"Float32": 2**24, "Float64": 2**53}

INT_BITS = {"Int8": 8, "Int16": 16, "Int32": 32, "Int64": 64, "Int128": 128, "Int256": 256}
_WIDE = frozenset({"Int128", "Int256", "UInt128", "UInt256"})
DECIMAL_PRECISION = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}


def int_range(ch_name: str) -> tuple[int, int]:
    if ch_name.startswith("U"):
        return 0, 2 ** INT_BITS[ch_name[1:]] - 1
    bits = INT_BITS[ch_name]
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


def decimal_shape(ch: ChType) -> tuple[int, int]:
    """(precision, scale) of Decimal(P, S) / Decimal32(S) / ... / Decimal256(S)."""
    if ch.name == "Decimal":
        return ch.int_arg(0), ch.int_arg(1)
    return DECIMAL_PRECISION[ch.name], ch.int_arg(0)


def integer_rule(ch: ChType, tp: Any, ctx: RuleContext) -> Rule:
    if ch.name in _WIDE:
        ctx.require(ctx.profile.has_wide_numbers, ch.name, "21.9")
    if tp is bool:
        return Rule("true and false")
    if tp is not int:
        raise ctx.refuse(f"a {ch.name} column holds int or bool fields, not {type_name(tp)}")
    low, high = int_range(ch.name)
    return Rule(f"integers {low} .. {high}", (BeforeValidator(_exact_int), Field(ge=low, le=high)))


# Below 2^53 in magnitude every integer is a float of its own; from there on, a number written
# with a fraction or an exponent (9007199254740993.0) may have been rounded by the JSON parser
# before the int field saw it (to 2^53 itself, too), so the int stored would not be the number
# sent.
_EXACT_FLOAT_LIMIT = 2 ** 53


def _exact_int(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and abs(value) >= _EXACT_FLOAT_LIMIT:
        raise value_error("int_from_inexact_float",
                          "is a number written with a fraction or an exponent beyond 2^53, "
                          "which cannot be read exactly; send it as an integer")
    return value


def float_rule(ch: ChType, tp: Any, ctx: RuleContext) -> Rule:
    if tp is int:
        limit = _EXACT_FLOAT_INT[ch.name]
        return Rule(f"integers -{limit} .. {limit} exactly",
                    (Field(ge=-limit, le=limit),))
    if tp is not float:
        raise ctx.refuse(f"a {ch.name} column holds float or int fields, not {type_name(tp)}")
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
        raise value_error("float32_range",
                          "a Float32 column holds at most ±3.4028235e38, got {value}",
                          value=value)
    result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    return result


def decimal_rule(ch: ChType, tp: Any, ctx: RuleContext) -> Rule:
    if tp is not Decimal:
        raise ctx.refuse(f"a {ch} column holds Decimal fields, not {type_name(tp)}")
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
        raise value_error("decimal_range", "does not fit: |x| must be below 10^{whole}",
                          whole=whole)

    return fit
