"""What every column type's rule is made of: the Rule itself, the context a field's rules are
built in (server profile, opt-in markers, what was found so far), and the error a value the
column cannot hold raises."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from pydantic_core import PydanticCustomError

from chute.annotations import AllowNonFinite, AllowRounding
from chute.server import ServerProfile
from chute.typemap import UnsupportedTypeError


@dataclass(frozen=True)
class Rule:
    """What one (leaf) column type accepts: pydantic metadata and a sentence for messages."""

    holds: str
    metadata: tuple[Any, ...] = ()


@dataclass
class RuleContext:
    """What one field's rules are made in: the server, the field (for messages), the opt-in
    markers met on the way to the leaf, and what the leaves found hold (shared down the walk).
    """

    profile: ServerProfile
    where: str
    allow_non_finite: bool = False
    allow_rounding: bool = False
    holds: list[str] = field(default_factory=list)
    constrained: list[bool] = field(default_factory=list)

    def with_markers(self, extras: Sequence[Any]) -> RuleContext:
        return RuleContext(
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


def value_error(kind: str, message: str, **context: Any) -> PydanticCustomError:
    return PydanticCustomError(kind, message, context or None)


def type_name(tp: Any) -> str:
    return getattr(tp, "__name__", repr(tp))
