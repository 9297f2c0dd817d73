"""What String, FixedString and Enum columns hold."""

from __future__ import annotations

import enum
import math
from decimal import Decimal
from ipaddress import IPv4Address, IPv6Address
from typing import Any

from pydantic import AfterValidator, BaseModel

from chute.chtypes import ChType, EnumMember
from chute.column_rules.base import Rule, RuleContext, type_name, value_error


def fixed_string_rule(ch: ChType, tp: Any, ctx: RuleContext) -> Rule:
    if tp is not str:
        raise ctx.refuse(f"a {ch} column holds str fields, not {type_name(tp)}")
    length = ch.int_arg(0)

    def check(value: str) -> str:
        size = len(value.encode())
        if size > length:
            raise value_error(
                "fixed_string_length",
                "is {size} UTF-8 bytes; FixedString({length}) holds at most {length}",
                size=size, length=length)
        if value.endswith("\x00"):
            # The column pads with NUL bytes: a trailing NUL could not be told from padding.
            raise value_error("fixed_string_padding",
                              "ends with a NUL character, which FixedString cannot keep apart "
                              "from its padding")
        return value

    return Rule(f"strings of at most {length} UTF-8 bytes not ending in NUL",
                (AfterValidator(check),))


def enum_rule(ch: ChType, tp: Any, ctx: RuleContext) -> Rule:
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
            raise value_error("enum_label", "is not one of the column's labels")
        return value

    return Rule(holds, (AfterValidator(check),))


def string_rule(ch: ChType, tp: Any, ctx: RuleContext) -> Rule:
    if isinstance(tp, tuple) or tp in (str, IPv4Address, IPv6Address):
        return Rule("any text (UTF-8)")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return Rule("any text (UTF-8)")
    if isinstance(tp, type) and issubclass(tp, BaseModel | dict):
        return Rule("JSON without NaN or Infinity", (AfterValidator(_json_document),))
    raise ctx.refuse(f"a String column holds str fields, not {type_name(tp)}")


def _json_document(value: Any) -> Any:
    """A nested model or dict stored as a JSON String: JSON cannot hold NaN or Infinity (they
    would be written as null), so refuse them. Decimals inside a dict (from reading a record's
    numbers exactly) become the floats the JSON parser makes of them otherwise."""
    if isinstance(value, float):
        if not math.isfinite(value):
            raise value_error("json_non_finite", "holds {value}, which JSON cannot carry",
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
