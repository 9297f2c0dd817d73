"""The rule for which column type changes keep every stored value."""

from __future__ import annotations

import pytest
from chute.type_changes import (
    ChType,
    metadata_only_change,
    parse_type,
    same_type,
    unsafe_change,
)

SAFE = [
    ("Int32", "Int64"),
    ("Int8", "Int16"),
    ("UInt8", "UInt16"),
    ("UInt32", "UInt64"),
    ("UInt32", "Int64"),
    ("UInt8", "Int16"),
    ("Int16", "Float32"),
    ("UInt16", "Float32"),
    ("Int32", "Float64"),
    ("UInt32", "Float64"),
    ("Float32", "Float64"),
    ("String", "Nullable(String)"),
    ("Int32", "Nullable(Int64)"),
    ("Nullable(Int32)", "Nullable(Int64)"),
    ("String", "LowCardinality(String)"),
    ("LowCardinality(String)", "String"),
    ("LowCardinality(String)", "LowCardinality(Nullable(String))"),
    ("String", "LowCardinality(Nullable(String))"),
    ("Decimal(18, 4)", "Decimal(38, 9)"),
    ("Decimal(18, 4)", "Decimal(19, 5)"),
    ("Decimal(9, 2)", "Decimal(18, 2)"),
    ("Decimal64(4)", "Decimal(18, 4)"),
    ("Decimal(9, 2)", "Decimal64(2)"),
    ("Enum8('a' = 1, 'b' = 2)", "Enum8('a' = 1, 'b' = 2, 'c' = 3)"),
    ("Enum8('a' = 1)", "Enum16('a' = 1, 'b' = 2)"),
    ("Enum8('a' = 1, 'b' = 2)", "Enum8('b' = 2, 'a' = 1)"),
    ("Enum8('a' = 1, 'b' = 2)", "String"),
    ("Enum8('a' = 1)", "LowCardinality(String)"),
    ("DateTime('UTC')", "DateTime64(3, 'UTC')"),
    ("DateTime64(3, 'UTC')", "DateTime64(6, 'UTC')"),
    ("Date", "Date32"),
    ("Array(Int32)", "Array(Int64)"),
    ("Array(String)", "Array(Nullable(String))"),
]

UNSAFE = [
    ("Int64", "Int32", "wrap"),
    ("UInt64", "Int64", "wrap"),
    ("Int32", "UInt32", "wrap"),
    ("UInt8", "Int8", "wrap"),
    ("Int64", "Float64", "rounded"),
    ("UInt32", "Float32", "rounded"),
    ("Int64", "String", "wider integer"),
    ("Float64", "Float32", "convert"),
    ("Float64", "Int64", "convert"),
    ("Nullable(String)", "String", "NULL"),
    ("LowCardinality(Nullable(String))", "String", "NULL"),
    ("String", "Int64", "might not convert"),
    ("String", "Enum8('a' = 1)", "might not convert"),
    ("String", "FixedString(3)", "FixedString"),
    ("FixedString(3)", "FixedString(4)", "FixedString"),
    ("FixedString(3)", "String", "FixedString"),
    ("Decimal(38, 9)", "Decimal(18, 4)", "round"),
    ("Decimal(18, 4)", "Decimal(18, 6)", "integer digits"),
    ("Decimal(18, 4)", "Decimal(38, 2)", "round"),
    ("Enum8('a' = 1, 'b' = 2)", "Enum8('a' = 1)", "'b'"),
    ("Enum8('a' = 1, 'b' = 2)", "Enum8('a' = 1, 'b' = 3)", "'b'"),
    ("Enum8('a' = 1)", "Enum8('A' = 1)", "'a'"),
    ("Enum8('a' = 1)", "Int8", "Enum"),
    ("DateTime('UTC')", "DateTime('Europe/Amsterdam')", "time zone"),
    ("DateTime64(6, 'UTC')", "DateTime64(3, 'UTC')", "truncate"),
    ("DateTime('UTC')", "Date", "convert"),
    ("Date", "DateTime('UTC')", "Date"),
    ("Array(Int64)", "Array(Int32)", "wrap"),
    ("Tuple(Int64, String)", "Tuple(Int64, String, String)", "Tuple"),
    ("UUID", "String", "convert"),
]


@pytest.mark.parametrize(("old", "new"), SAFE, ids=[f"{o}->{n}" for o, n in SAFE])
def test_lossless_changes_are_safe(old: str, new: str) -> None:
    assert unsafe_change(old, new) is None


@pytest.mark.parametrize(("old", "new", "reason"), UNSAFE,
                         ids=[f"{o}->{n}" for o, n, _ in UNSAFE])
def test_lossy_changes_are_refused_with_a_reason(old: str, new: str, reason: str) -> None:
    why = unsafe_change(old, new)
    assert why is not None
    assert reason in why


def test_parse_reads_what_system_columns_prints() -> None:
    assert parse_type("LowCardinality(Nullable(String))") == ChType(
        "LowCardinality", (ChType("Nullable", (ChType("String"),)),))
    assert parse_type("Enum8('b\\'c' = -2)").args == (("b'c", -2),)
    assert parse_type("DateTime64(3, 'UTC')").args == (3, "UTC")
    assert parse_type("Tuple(a Int64, b String)").args == (ChType("a Int64"), ChType("b String"))


def test_same_type_ignores_spacing_only() -> None:
    assert same_type("Enum8('a' = 1, 'b' = 2)", "Enum8('a'=1,'b'=2)")
    assert same_type("Decimal(18, 4)", "Decimal(18,4)")
    assert not same_type("Enum8('a b' = 1)", "Enum8('ab' = 1)")
    assert not same_type("Int32", "Int64")


def test_unreadable_types_are_refused_not_guessed() -> None:
    why = unsafe_change("Int32", "Int64)(")
    assert why is not None and "cannot read" in why


def test_only_enum_appends_rewrite_no_data() -> None:
    assert metadata_only_change("Enum8('a' = 1)", "Enum8('a' = 1, 'b' = 2)")
    assert not metadata_only_change("Enum8('a' = 1)", "Enum16('a' = 1, 'b' = 2)")
    assert not metadata_only_change("Int32", "Int64")
    assert not metadata_only_change("String", "LowCardinality(String)")
