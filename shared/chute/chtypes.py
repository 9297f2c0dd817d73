"""ClickHouse type names parsed into trees: "Nullable(Decimal(18, 4))" -> ChType. Pure.

Parsing (rather than matching prefixes) lets chute read the parameters a column type carries
(widths, precision and scale, FixedString length, Enum members, time zones) and refuse a type
string it does not understand instead of trusting it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


class TypeSyntaxError(ValueError):
    """A ClickHouse type string chute cannot parse."""


@dataclass(frozen=True)
class EnumMember:
    label: str
    value: int


@dataclass(frozen=True)
class ChType:
    name: str
    args: tuple[ChType | int | str | EnumMember, ...] = ()

    def arg_type(self, index: int = 0) -> ChType:
        arg = self.args[index] if index < len(self.args) else None
        if not isinstance(arg, ChType):
            raise TypeSyntaxError(f"{self.name} needs a type argument")
        return arg

    def int_arg(self, index: int) -> int:
        arg = self.args[index] if index < len(self.args) else None
        if not isinstance(arg, int):
            raise TypeSyntaxError(f"{self.name} needs an integer argument {index + 1}")
        return arg

    def str_args(self) -> tuple[str, ...]:
        return tuple(a for a in self.args if isinstance(a, str))

    def unwrapped(self) -> ChType:
        """Without LowCardinality(...), which changes storage, not the values a column holds."""
        return self.arg_type().unwrapped() if self.name == "LowCardinality" else self

    def __str__(self) -> str:
        if not self.args:
            return self.name
        return f"{self.name}({', '.join(_render(a) for a in self.args)})"


def _render(arg: ChType | int | str | EnumMember) -> str:
    if isinstance(arg, EnumMember):
        return f"{_quote(arg.label)} = {arg.value}"
    if isinstance(arg, str):
        return _quote(arg)
    return str(arg)


def _quote(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


_TOKEN = re.compile(r"""\s*(?:
    (?P<name>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<number>-?[0-9]+)
  | (?P<string>'(?:[^'\\]|\\.)*')
  | (?P<punct>[(),=])
)""", re.VERBOSE)


def _tokens(text: str) -> list[tuple[str, str]]:
    tokens = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.end() == pos:
            raise TypeSyntaxError(f"cannot parse ClickHouse type {text!r} at character {pos}")
        kind = match.lastgroup
        assert kind is not None
        tokens.append((kind, match.group(kind)))
        pos = match.end()
    return tokens


def _unquote(token: str) -> str:
    body = token[1:-1]
    return re.sub(r"\\(.)", r"\1", body)


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokens(text)
        self.pos = 0

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, kind: str, value: str | None = None) -> str:
        token = self.peek()
        if token is None or token[0] != kind or (value is not None and token[1] != value):
            found = "the end" if token is None else repr(token[1])
            raise TypeSyntaxError(
                f"cannot parse ClickHouse type {self.text!r}: expected {value or kind}, "
                f"found {found}")
        self.pos += 1
        return token[1]

    def parse_type(self) -> ChType:
        name = self.take("name")
        if self.peek() != ("punct", "("):
            return ChType(name)
        self.take("punct", "(")
        args: list[ChType | int | str | EnumMember] = []
        while self.peek() != ("punct", ")"):
            args.append(self.parse_arg())
            if self.peek() == ("punct", ","):
                self.take("punct", ",")
            elif self.peek() != ("punct", ")"):
                self.take("punct", ")")
        self.take("punct", ")")
        return ChType(name, tuple(args))

    def parse_arg(self) -> ChType | int | str | EnumMember:
        token = self.peek()
        if token is None:
            raise TypeSyntaxError(f"cannot parse ClickHouse type {self.text!r}: unclosed (")
        kind, value = token
        if kind == "number":
            self.pos += 1
            return int(value)
        if kind == "string":
            self.pos += 1
            label = _unquote(value)
            if self.peek() == ("punct", "="):
                self.take("punct", "=")
                return EnumMember(label, int(self.take("number")))
            return label
        if kind == "name":
            # Tuple(a UInt8, b String): a named element; keep its type.
            if (self.pos + 1 < len(self.tokens) and self.tokens[self.pos + 1][0] == "name"):
                self.pos += 1
            return self.parse_type()
        raise TypeSyntaxError(f"cannot parse ClickHouse type {self.text!r}: unexpected {value!r}")


def parse_type(text: str) -> ChType:
    """The tree of a ClickHouse type string; raises TypeSyntaxError for anything else."""
    parser = _Parser(text)
    result = parser.parse_type()
    if parser.peek() is not None:
        raise TypeSyntaxError(
            f"cannot parse ClickHouse type {text!r}: unexpected {parser.peek()[1]!r}")  # type: ignore[index]
    return result
