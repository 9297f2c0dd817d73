"""What date and datetime columns hold, per server."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, date, datetime
from typing import Any

from pydantic import Field

from chute.chtypes import ChType
from chute.column_rules.base import Rule, RuleContext, type_name
from chute.server import ServerProfile


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


def datetime_range(ch_name: str, profile: ServerProfile, precision: int = 0
                   ) -> DateTimeRange:
    """Instants a DateTime/DateTime64 column holds (UTC). 18.16: measured; current: documented.
    DateTime64(9) counts nanoseconds in an Int64, which ends at 2262-04-11 23:47:16.854775807
    (its last whole second is taken, as ClickHouse documents)."""
    if ch_name == "DateTime64":
        last = (datetime(2262, 4, 11, 23, 47, 15, tzinfo=UTC) if precision == 9
                else datetime(2299, 12, 31, 23, 59, 59, tzinfo=UTC))
        return DateTimeRange(datetime(1900, 1, 1, tzinfo=UTC), last)
    if profile.has_datetime64:
        return DateTimeRange(datetime(1970, 1, 1, tzinfo=UTC),
                             datetime(2106, 2, 7, 6, 28, 15, tzinfo=UTC))
    return DateTimeRange(datetime(1970, 1, 1, tzinfo=UTC),
                         datetime(2105, 12, 31, 23, 59, 59, tzinfo=UTC))


def datetime_precision(ch: ChType) -> int:
    """Sub-second digits a DateTime/DateTime64 column keeps."""
    return ch.int_arg(0) if ch.name == "DateTime64" else 0


def date_rule(ch: ChType, tp: Any, ctx: RuleContext) -> Rule:
    if ch.name == "Date32":
        ctx.require(ctx.profile.has_date32, "Date32", "21.9")
    if tp is not date:
        raise ctx.refuse(f"a {ch.name} column holds date fields, not {type_name(tp)}")
    span = date_range(ch.name, ctx.profile)
    return Rule(f"dates {span.first} .. {span.last}", (Field(ge=span.first, le=span.last),))


def datetime_rule(ch: ChType, tp: Any, ctx: RuleContext) -> Rule:
    if ch.name == "DateTime64":
        ctx.require(ctx.profile.has_datetime64, "DateTime64", "20.1")
    if tp is not datetime:
        raise ctx.refuse(f"a {ch.name} column holds datetime fields, not {type_name(tp)}")
    precision = datetime_precision(ch)
    if not 0 <= precision <= 9:
        raise ctx.refuse(f"bad precision in {ch}")
    span = datetime_range(ch.name, ctx.profile, precision)
    digits = "whole seconds" if precision == 0 else f"{precision} sub-second digit(s)"
    holds = (f"instants {_iso(span.first)} .. {_iso(span.last)}"
             f"{'.' + '9' * precision if precision else ''} (UTC), {digits}")
    if precision < 6:
        # The column's declared precision is a normalisation, like time zones to UTC: the
        # sync's converter (chute.typemap) drops finer digits toward the past, as ClickHouse
        # does, so the last second's fractions are in range too.
        holds += "; finer digits are dropped"
    return Rule(holds, (Field(ge=span.first, le=span.last.replace(microsecond=999_999)),))


def _iso(value: datetime) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S")
