"""Which column type changes keep every stored value, as a pure rule over ClickHouse type text.

`ALTER TABLE ... MODIFY COLUMN` converts stored values with ClickHouse's casts; chute plans one
only when the cast is lossless for every value the old type can hold:

- wider integers (same sign and more bits, or unsigned to signed with more bits), small
  integers to floats that hold them exactly (<= 16 bits to Float32, <= 32 bits to Float64),
  Float32 to Float64;
- `Nullable(...)` added around a type (removing it would turn NULLs into defaults);
- `LowCardinality(...)` added or removed (a storage choice; the values are the same);
- `Decimal(P, S)` to a Decimal with at least as many integer digits (P - S) and fractional
  digits (S); `Decimal32/64/128(S)` count as `Decimal(9/18/38, S)`;
- `Enum8`/`Enum16` with members appended (every old name keeps its number), and an Enum to
  `String` (the names are stored);
- `DateTime(tz)` to `DateTime64(p, tz)`, `DateTime64(p, tz)` to a higher precision, `Date` to
  `Date32`, always with the same time zone;
- `Array(T)` / `Nullable(T)` / `LowCardinality(T)` to the same wrapper of a type T converts to.

Everything else is refused with the reason: narrower or sign-changing integers (values would
wrap), floats to integers, String to any other type (values might not parse), FixedString
changes (padding would change values), time-zone changes, removed or renumbered Enum members,
Tuple changes, and types this module cannot read.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_TOKEN = re.compile(r"\s*(?:(?P<str>'(?:[^'\\]|\\.)*')|(?P<num>-?\d+)|(?P<name>[A-Za-z_]\w*)"
                    r"|(?P<punct>[(),=]))")

_INTEGERS = {f"{sign}Int{bits}": (bits, sign == "")
             for sign in ("", "U") for bits in (8, 16, 32, 64, 128, 256)}
_FLOAT_EXACT_BITS = {"Float32": 24, "Float64": 53}  # mantissa bits: integers held exactly
_DECIMAL_PRECISION = {"Decimal32": 9, "Decimal64": 18, "Decimal128": 38, "Decimal256": 76}


@dataclass(frozen=True)
class ChType:
    """A parsed ClickHouse type: `Nullable(Int64)` is ChType('Nullable', (ChType('Int64'),))."""

    name: str
    args: tuple[ChType | str | int | tuple[str, int], ...] = ()

    def inner(self) -> ChType:
        arg = self.args[0] if self.args else None
        if not isinstance(arg, ChType):
            raise ValueError(f"{self.name} needs a type argument")
        return arg


class TypeSyntaxError(ValueError):
    pass


def parse_type(text: str) -> ChType:
    """Parse ClickHouse type text as `system.columns` or chute's type mapping writes it."""
    tokens = _tokens(text)
    parsed, pos = _parse(tokens, 0)
    if pos != len(tokens):
        raise TypeSyntaxError(f"unexpected {tokens[pos][1]!r} in type {text!r}")
    return parsed


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens: list[tuple[str, str]] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise TypeSyntaxError(f"cannot read type {text!r} at position {pos}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _parse(tokens: list[tuple[str, str]], pos: int) -> tuple[ChType, int]:
    kind, value = tokens[pos] if pos < len(tokens) else ("end", "")
    if kind != "name":
        raise TypeSyntaxError(f"expected a type name, got {value!r}")
    pos += 1
    if pos >= len(tokens) or tokens[pos][1] != "(":
        return ChType(value), pos
    pos += 1
    args: list[ChType | str | int | tuple[str, int]] = []
    while True:
        kind, text = tokens[pos] if pos < len(tokens) else ("end", "")
        if kind == "str":
            literal = _unquote(text)
            pos += 1
            if pos < len(tokens) and tokens[pos][1] == "=":
                args.append((literal, int(tokens[pos + 1][1])))
                pos += 2
            else:
                args.append(literal)
        elif kind == "num":
            args.append(int(text))
            pos += 1
        elif kind == "name" and pos + 1 < len(tokens) and tokens[pos + 1][0] == "name":
            # a named Tuple element, `Tuple(a Int64, b String)`: kept with its name
            element, pos = _parse(tokens, pos + 1)
            args.append(ChType(f"{text} {element.name}", element.args))
        else:
            element, pos = _parse(tokens, pos)
            args.append(element)
        kind, text = tokens[pos] if pos < len(tokens) else ("end", "")
        pos += 1
        if text == ")":
            return ChType(value, tuple(args)), pos
        if text != ",":
            raise TypeSyntaxError(f"expected ',' or ')', got {text!r}")


def _unquote(literal: str) -> str:
    return re.sub(r"\\(.)", r"\1", literal[1:-1])


def same_type(old: str, new: str) -> bool:
    """True when both texts spell the same type (spacing and quoting aside)."""
    try:
        return parse_type(old) == parse_type(new)
    except TypeSyntaxError:
        return old.replace(" ", "") == new.replace(" ", "")


def unsafe_change(old: str, new: str) -> str | None:
    """None when MODIFY COLUMN from `old` to `new` keeps every stored value, else why not."""
    try:
        return _why_unsafe(parse_type(old), parse_type(new))
    except (TypeSyntaxError, ValueError, IndexError) as exc:
        return f"chute cannot read these types ({exc}), so it cannot tell that no value changes"


def metadata_only_change(old: str, new: str) -> bool:
    """True when the change rewrites no data (an Enum with members appended, same width):
    the only kind ClickHouse allows on a column of the sorting or partition key."""
    try:
        a, b = parse_type(old), parse_type(new)
    except TypeSyntaxError:
        return False
    return (a.name == b.name and a.name in ("Enum8", "Enum16")
            and _why_unsafe(a, b) is None)


def _why_unsafe(old: ChType, new: ChType) -> str | None:
    if old == new:
        return None
    if old.name == "LowCardinality":
        return _why_unsafe(old.inner(), new)
    if new.name == "LowCardinality":
        return _why_unsafe(old, new.inner())
    if new.name == "Nullable":
        return _why_unsafe(old.inner() if old.name == "Nullable" else old, new.inner())
    if old.name == "Nullable":
        return "removing Nullable would turn every stored NULL into a default value"
    if old.name == new.name == "Array":
        return _why_unsafe(old.inner(), new.inner())
    if old.name in _INTEGERS:
        return _from_integer(old.name, new)
    if old.name == "Float32" and new.name == "Float64":
        return None
    if _decimal(old) is not None and _decimal(new) is not None:
        return _decimal_change(old, new)
    if old.name in ("Enum8", "Enum16"):
        return _from_enum(old, new)
    if old.name in ("DateTime", "DateTime64", "Date", "Date32"):
        return _from_time(old, new)
    if old.name == "FixedString" or new.name == "FixedString":
        return "FixedString values are padded with zero bytes; changing the length or " \
               "converting to or from String would change stored values"
    if old.name == "String":
        return f"stored strings might not convert to {_text(new)}"
    if old.name == "Tuple" or new.name == "Tuple":
        return "chute does not change the elements of a Tuple column"
    return f"ClickHouse would convert {_text(old)} to {_text(new)}, which can fail or alter " \
           "stored values"


def _from_integer(old_name: str, new: ChType) -> str | None:
    bits, signed = _INTEGERS[old_name]
    if new.name in _INTEGERS:
        new_bits, new_signed = _INTEGERS[new.name]
        if (signed == new_signed and new_bits >= bits) or (new_signed and new_bits > bits):
            return None
        return f"{new.name} cannot hold every {old_name} value; stored values would wrap"
    if new.name in _FLOAT_EXACT_BITS:
        if bits - (1 if signed else 0) <= _FLOAT_EXACT_BITS[new.name]:
            return None
        return f"{new.name} cannot hold every {old_name} value exactly; values would be rounded"
    return f"chute changes an integer column only to a wider integer or a float that holds " \
           f"it exactly, not to {_text(new)}"


def _decimal(t: ChType) -> tuple[int, int] | None:
    """(precision, scale) of a Decimal type, else None."""
    if t.name == "Decimal" and len(t.args) == 2:
        precision, scale = t.args
        if isinstance(precision, int) and isinstance(scale, int):
            return precision, scale
    if t.name in _DECIMAL_PRECISION and len(t.args) == 1 and isinstance(t.args[0], int):
        return _DECIMAL_PRECISION[t.name], t.args[0]
    return None


def _decimal_change(old: ChType, new: ChType) -> str | None:
    old_decimal, new_decimal = _decimal(old), _decimal(new)
    assert old_decimal is not None and new_decimal is not None
    (p, s), (p2, s2) = old_decimal, new_decimal
    if s2 < s:
        return f"Decimal scale {s} -> {s2} would round stored values"
    if p2 - s2 < p - s:
        return f"{_text(new)} holds {p2 - s2} integer digits, fewer than the {p - s} of " \
               f"{_text(old)}; large stored values would not fit"
    return None


def _enum_members(t: ChType) -> dict[str, int]:
    return {a[0]: a[1] for a in t.args if isinstance(a, tuple)}


def _from_enum(old: ChType, new: ChType) -> str | None:
    if new.name == "String":
        return None
    if new.name not in ("Enum8", "Enum16"):
        return f"chute changes an Enum column only to an Enum or String, not to {_text(new)}"
    have, want = _enum_members(old), _enum_members(new)
    lost = sorted(name for name, number in have.items() if want.get(name) != number)
    if lost:
        return "Enum members removed, renamed or renumbered: " + ", ".join(
            repr(name) for name in lost) + "; members may only be appended"
    return None


def _time_zone(t: ChType) -> str | None:
    zones = [a for a in t.args if isinstance(a, str)]
    return zones[0] if zones else None


def _from_time(old: ChType, new: ChType) -> str | None:
    if old.name == "Date":
        return None if new.name == "Date32" else f"chute does not convert Date to {_text(new)}"
    if old.name == "Date32":
        return f"chute does not convert Date32 to {_text(new)}"
    if new.name not in ("DateTime", "DateTime64"):
        return f"chute does not convert {old.name} to {_text(new)}"
    if _time_zone(old) != _time_zone(new):
        return f"the time zone would change ({_time_zone(old)} -> {_time_zone(new)}), which " \
               "changes how every stored time reads"
    old_precision, new_precision = _precision(old), _precision(new)
    if new_precision < old_precision:
        return f"precision {old_precision} -> {new_precision} would truncate stored times"
    return None


def _precision(t: ChType) -> int:
    """Fractional digits of a DateTime64 (3 when not given), 0 for DateTime."""
    if t.name != "DateTime64":
        return 0
    return next((a for a in t.args if isinstance(a, int)), 3)


def _text(t: ChType) -> str:
    if not t.args:
        return t.name
    parts = []
    for a in t.args:
        if isinstance(a, ChType):
            parts.append(_text(a))
        elif isinstance(a, tuple):
            parts.append(f"'{a[0]}' = {a[1]}")
        elif isinstance(a, str):
            parts.append(f"'{a}'")
        else:
            parts.append(str(a))
    return f"{t.name}({', '.join(parts)})"
