"""The one validator of a pipeline's records, used by the ingest API and the sync worker.

`RecordValidator(model, profile, extra)` validates JSON records against the model constrained
by its columns (`chute.constraints`): a record it accepts can be stored exactly; anything else
raises pydantic's ValidationError, whose messages `explain` extends with the column type and
the range it holds.

Two things pydantic's JSON parser cannot do are done here, only for the records that need them:
- A record whose Decimal field got a fractional JSON number is read again with exact numbers
  (jiter's decimal mode, then `validate_python`): pydantic alone parses `1234567890.123456789`
  as a float first and silently keeps only 17 significant digits.
- `extra="reject"` also refuses duplicate keys in a JSON object (parsers keep the last one).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

import jiter
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails, InitErrorDetails, PydanticCustomError

from chute.column_rules.numeric import DECIMAL_FROM_FLOAT
from chute.constraints import ConstrainedModel, Extra, constrained_model
from chute.server import ServerProfile
from chute.typemap import ColumnSpec, columns_for

# Errors that are about the record's shape, not about a value a column must hold.
_NOT_ABOUT_RANGE = frozenset({"missing", "extra_forbidden", "duplicate_key", "model_type",
                              "model_attributes_type", "dict_type", "json_invalid"})


class RecordValidator:
    def __init__(self, model: type[BaseModel], profile: ServerProfile, extra: Extra = "ignore",
                 columns: Sequence[ColumnSpec] | None = None) -> None:
        self.model = model
        self.profile = profile
        self.extra = extra
        derived: ConstrainedModel = constrained_model(
            model, columns if columns is not None else columns_for(model, profile),
            profile, extra)
        self.constrained = derived
        self.record_model: type[BaseModel] = derived.model
        self._one: TypeAdapter[Any] = TypeAdapter(derived.model)
        self._many: TypeAdapter[list[Any]] = TypeAdapter(list[derived.model])  # type: ignore[name-defined]
        self._exact_numbers = derived.decimals
        self._reject_duplicates = extra == "reject"
        # validate_json(data) -> record; validate_json_many(data) -> records, whose error
        # locations start with the record's index. Without Decimal columns and duplicate-key
        # checks these are pydantic's own methods: no Python frame per record.
        # pydantic-core's validators themselves (TypeAdapter.validator): TypeAdapter's own
        # validate_json adds a Python frame per call, which the sync worker pays per record.
        self.validate_json: Callable[[bytes], BaseModel] = self._one.validator.validate_json
        self.validate_json_many: Callable[[bytes], list[BaseModel]] = (
            self._many.validator.validate_json)
        if self._exact_numbers or self._reject_duplicates:
            self.validate_json = self._validate_one
            self.validate_json_many = self._validate_many

    # --- validation -------------------------------------------------------------------------

    def _validate_one(self, data: bytes) -> BaseModel:
        record: BaseModel = self._validate(self._one, data)
        if self._reject_duplicates:
            _raise_duplicates(data, self.model.__name__)
        return record

    def _validate_many(self, data: bytes) -> list[BaseModel]:
        records: list[BaseModel] = self._validate(self._many, data)
        if self._reject_duplicates:
            _raise_duplicates(data, self.model.__name__)
        return records

    def _validate(self, adapter: TypeAdapter[Any], data: bytes) -> Any:
        try:
            return adapter.validate_json(data)
        except ValidationError as exc:
            if not self._exact_numbers or not any(
                    e["type"] == DECIMAL_FROM_FLOAT for e in exc.errors()):
                raise
            error = exc
        # A Decimal field got a fractional JSON number: read the numbers exactly and validate
        # again (Decimal values sent as JSON strings, and Kafka's, never come this way).
        try:
            value = jiter.from_json(data, float_mode="decimal")
        except ValueError:
            raise error from None
        return adapter.validate_python(value)

    # --- messages ---------------------------------------------------------------------------

    def explain(self, error: ErrorDetails) -> str:
        """pydantic's message, plus the column type and what it holds for a value error."""
        message = error["msg"]
        loc = error["loc"]
        if error["type"] in _NOT_ABOUT_RANGE or not loc:
            return message
        rule = self.constrained.rules.get(str(loc[0]))
        if rule is None or not rule.constrained:
            return message
        return f"{message} ({rule.explain()})"

    def serializer(self) -> Callable[[BaseModel], bytes]:
        """Compact JSON of a validated record, which this validator reads back unchanged."""
        to_json = self.record_model.__pydantic_serializer__.to_json

        def serialize(record: BaseModel) -> bytes:
            return to_json(record, by_alias=True, round_trip=True)

        return serialize


class _Duplicates(dict[str, Any]):
    """A parsed JSON object that had a key twice (only built when one does)."""

    keys_twice: list[str]


def _pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) == len(pairs):
        return result
    seen: set[str] = set()
    twice = [k for k, _ in pairs if k in seen or seen.add(k)]  # type: ignore[func-returns-value]
    flagged = _Duplicates(result)
    flagged.keys_twice = twice
    return flagged


def _find(value: Any, path: tuple[int | str, ...]) -> list[tuple[tuple[int | str, ...], str]]:
    found: list[tuple[tuple[int | str, ...], str]] = []
    if isinstance(value, _Duplicates):
        found += [((*path, key), key) for key in dict.fromkeys(value.keys_twice)]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _find(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _find(item, (*path, index))
    return found


def _raise_duplicates(data: bytes, title: str) -> None:
    try:
        value = json.loads(data, object_pairs_hook=_pairs)
    except ValueError:
        return  # already validated by pydantic's parser; nothing more to say
    duplicates = _find(value, ())
    if not duplicates:
        return
    errors: list[InitErrorDetails] = [
        {"type": PydanticCustomError("duplicate_key",
                                     "key '{key}' appears more than once in the object",
                                     {"key": key}),
         "loc": loc, "input": key}
        for loc, key in duplicates]
    raise ValidationError.from_exception_data(title, errors)
