"""The model fingerprint changes with every change that alters what a record holds."""

from __future__ import annotations

from typing import Annotated

from chute import ClickHouseType, Key
from chute.fingerprint import model_fingerprint
from pydantic import BaseModel


class Base(BaseModel):
    id: Key[str]
    n: int


def test_same_definition_same_fingerprint() -> None:
    class Again(BaseModel):
        id: Key[str]
        n: int

    Again.__name__ = "Base"
    assert model_fingerprint(Base) == model_fingerprint(Again)
    assert len(model_fingerprint(Base)) == 16


def test_added_field_changes_it() -> None:
    class Added(BaseModel):
        id: Key[str]
        n: int
        duration_ms: int = 0

    Added.__name__ = "Base"
    assert model_fingerprint(Added) != model_fingerprint(Base)


def test_column_type_annotation_changes_it() -> None:
    class Narrow(BaseModel):
        id: Key[str]
        n: Annotated[int, ClickHouseType("UInt8")]

    Narrow.__name__ = "Base"
    assert model_fingerprint(Narrow) != model_fingerprint(Base)


def test_default_changes_it() -> None:
    class A(BaseModel):
        id: Key[str]
        n: int = 1

    class B(BaseModel):
        id: Key[str]
        n: int = 2

    B.__name__ = "A"
    assert model_fingerprint(A) != model_fingerprint(B)
