"""Validation and quoting of names that end up in SQL or as Kafka topic names.

Nothing user-supplied is pasted into SQL unquoted: names are validated against a strict
pattern first, then back-quoted.
"""

from __future__ import annotations

import re

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


class InvalidIdentifierError(ValueError):
    """A pipeline, table, topic or column name that chute refuses to use."""


def validate_identifier(name: str, what: str) -> str:
    """Return `name` when it is a safe identifier, else raise naming `what` it was for."""
    if not isinstance(name, str) or not _IDENTIFIER.match(name):
        raise InvalidIdentifierError(
            f"invalid {what} name {name!r}: use letters, digits and underscores, "
            "starting with a letter or underscore, at most 128 characters"
        )
    return name


def quote_identifier(name: str) -> str:
    """Back-quote a validated identifier for ClickHouse SQL."""
    validate_identifier(name, "identifier")
    return f"`{name}`"


def quote_string(value: str) -> str:
    """A ClickHouse single-quoted string literal."""
    escaped = value.replace("\\", "\\\\").replace("'", "\\'")
    return f"'{escaped}'"
