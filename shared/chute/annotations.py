"""Markers used inside `typing.Annotated` to steer the ClickHouse column of a field.

    class Event(BaseModel):
        id: Key[str]
        count: Annotated[int, ClickHouseType("UInt32")]
        country: Annotated[str, LowCardinality()]
        price: Annotated[Decimal, ClickHouseDecimal(18, 4)]
        body: Annotated[str, Codec("ZSTD(3)")]
        seen_at: Annotated[datetime, ClickHouseDefault("now()")]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class KeyMarker:
    """Marks a field as part of the table's ORDER BY and the Kafka message key."""


KEY = KeyMarker()

# `Key[str]` is `Annotated[str, KeyMarker()]`: a plain str to pydantic, a key to chute.
Key = Annotated[T, KEY]


@dataclass(frozen=True)
class ClickHouseType:
    """Use this exact ClickHouse type for the column (e.g. "UInt32", "FixedString(8)")."""

    type: str


@dataclass(frozen=True)
class LowCardinality:
    """Wrap the column type in LowCardinality(...)."""


@dataclass(frozen=True)
class ClickHouseDecimal:
    """Precision and scale of a Decimal column."""

    precision: int
    scale: int


@dataclass(frozen=True)
class DateTimePrecision:
    """Sub-second digits of a datetime column (DateTime64(precision)) where the server has it."""

    precision: int


@dataclass(frozen=True)
class Codec:
    """A column compression codec expression, e.g. "ZSTD(3)" or "Delta, LZ4"."""

    expression: str


@dataclass(frozen=True)
class ClickHouseDefault:
    """A DEFAULT expression for the column, e.g. "now()"."""

    expression: str


@dataclass(frozen=True)
class AllowNonFinite:
    """Accept NaN, Infinity and -Infinity for this float field and store them as such.

    JSON has no literal for them: send the strings "NaN", "Infinity", "-Infinity" (the
    non-standard literals NaN and Infinity are read too). chute carries them through Kafka as
    those strings. Without this marker such values are refused (422).
    """


@dataclass(frozen=True)
class AllowRounding:
    """Round Decimal values with more fractional digits than the column's scale (half to even)
    instead of refusing them (422). The rounded value is what Kafka and the table hold; a value
    whose integer part does not fit is still refused."""
