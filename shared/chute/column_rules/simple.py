"""What UUID, IPv4, IPv6 and Bool columns hold: one Python type each."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv6Address
from typing import Any
from uuid import UUID

from pydantic import AfterValidator

from chute.chtypes import ChType
from chute.column_rules.base import Rule, RuleContext, type_name, value_error


def simple_rule(ch: ChType, tp: Any, ctx: RuleContext) -> Rule:
    expected: dict[str, Any] = {"UUID": UUID, "IPv4": IPv4Address, "IPv6": IPv6Address,
                                "Bool": bool}
    if ch.name == "Bool":
        ctx.require(ctx.profile.has_bool, "Bool", "21.12")
    if ch.name in ("IPv4", "IPv6"):
        ctx.require(ctx.profile.has_ip_types, ch.name, "19.3")
    if tp is not expected[ch.name]:
        raise ctx.refuse(f"a {ch.name} column holds {expected[ch.name].__name__} fields, "
                         f"not {type_name(tp)}")
    if ch.name == "IPv6":
        return Rule("IPv6 addresses without a scope (%zone)", (AfterValidator(_no_scope),))
    return Rule({"UUID": "UUIDs", "IPv4": "IPv4 addresses", "Bool": "true and false"}[ch.name])


def _no_scope(value: IPv6Address) -> IPv6Address:
    if value.scope_id is not None:
        raise value_error("ipv6_scope", "has a scope (%{scope}), which an IPv6 column cannot keep",
                     scope=value.scope_id)
    return value
