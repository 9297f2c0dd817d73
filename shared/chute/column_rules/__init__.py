"""What each leaf column type holds, as a `Rule` (pydantic metadata and a sentence for
messages), per type family: `numeric`, `temporal`, `text` and `simple`; `base` holds the
Rule and the context rules are built in. `leaf_rule` picks the family; `chute.constraints`
applies the rules to a model's fields."""

from __future__ import annotations

from typing import Any

from chute.chtypes import ChType
from chute.column_rules.base import Rule, RuleContext
from chute.column_rules.numeric import (
    DECIMAL_PRECISION,
    INT_BITS,
    decimal_rule,
    float_rule,
    integer_rule,
)
from chute.column_rules.simple import simple_rule
from chute.column_rules.temporal import date_rule, datetime_rule
from chute.column_rules.text import enum_rule, fixed_string_rule, string_rule


def leaf_rule(ch: ChType, tp: Any, ctx: RuleContext) -> Rule:
    name = ch.name
    if name in INT_BITS or (name.startswith("U") and name[1:] in INT_BITS):
        return integer_rule(ch, tp, ctx)
    if name in ("Float32", "Float64"):
        return float_rule(ch, tp, ctx)
    if name == "Decimal" or name in DECIMAL_PRECISION:
        return decimal_rule(ch, tp, ctx)
    if name in ("Date", "Date32"):
        return date_rule(ch, tp, ctx)
    if name in ("DateTime", "DateTime64"):
        return datetime_rule(ch, tp, ctx)
    if name == "FixedString":
        return fixed_string_rule(ch, tp, ctx)
    if name in ("Enum8", "Enum16"):
        return enum_rule(ch, tp, ctx)
    if name == "String":
        return string_rule(ch, tp, ctx)
    if name in ("UUID", "IPv4", "IPv6", "Bool"):
        return simple_rule(ch, tp, ctx)
    raise ctx.refuse(f"chute cannot check the values of a {ch} column; use one of the types "
                     "listed under Types in the README")
