"""Pure transforms: Kafka message value -> validated row -> columns; failures -> envelopes."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from chute.constraints import Extra
from chute.ddl import EXACTLY_ONCE_COLUMNS
from chute.server import OLD_SERVER, ServerProfile
from chute.typemap import ColumnSpec
from chute.validation import RecordValidator
from pydantic import BaseModel, ValidationError

_MAX_ERROR_MESSAGE = 2000


@dataclass(frozen=True)
class Position:
    topic: str
    partition: int
    offset: int
    timestamp_ms: int  # Kafka record timestamp


@dataclass
class DecodeFailure:
    error_type: str
    error_message: str


class RowDecoder:
    """Validates message values with the validator the ingest API uses (the stream's model,
    constrained by what its columns hold on `profile`): records produced straight to the topic
    meet the same rules as those that came through the API."""

    def __init__(self, model: type[BaseModel], profile: ServerProfile = OLD_SERVER,
                 extra: Extra = "ignore") -> None:
        self._validator = RecordValidator(model, profile, extra)

    def decode(self, value: bytes | None) -> BaseModel | DecodeFailure:
        if value is None:
            return DecodeFailure("EmptyRecord", "the Kafka record has no value")
        try:
            return self._validator.validate_json(value)
        except ValidationError as exc:
            kind = "InvalidJSON" if _is_json_error(exc) else "ValidationError"
            return DecodeFailure(kind, _summarise(exc, self._validator))


def _is_json_error(exc: ValidationError) -> bool:
    return any(e["type"] == "json_invalid" for e in exc.errors())


def _summarise(exc: ValidationError, validator: RecordValidator) -> str:
    parts = []
    for err in exc.errors(include_url=False):
        path = ".".join(str(p) for p in err["loc"]) or "<record>"
        parts.append(f"{path}: {validator.explain(err)}")
    return "; ".join(parts)[:_MAX_ERROR_MESSAGE]


def field_names(model: type[BaseModel]) -> frozenset[str]:
    """The keys a record of `model` may carry: field names and their string aliases."""
    names = set(model.model_fields)
    names.update(info.alias for info in model.model_fields.values() if info.alias)
    return frozenset(names)


def fits_model(row: object, value: bytes | None, names: frozenset[str]) -> bool:
    """Whether a record validated by another definition of the model can be inserted by this
    one without losing anything: it is valid for this model and every field it carries is
    one of this model's (an older record lacking a field added since gets that field's
    default, as it would have had it been sent to the new model)."""
    if isinstance(row, DecodeFailure) or value is None:
        return False
    try:
        record = orjson.loads(value)
    except orjson.JSONDecodeError:
        return False
    return isinstance(record, dict) and record.keys() <= names


class ColumnBuilder:
    """Turns validated rows into the columnar lists clickhouse-driver inserts."""

    def __init__(self, columns: list[ColumnSpec], exactly_once: bool) -> None:
        self.columns = columns
        self.exactly_once = exactly_once
        names = [c.name for c in columns]
        if exactly_once:
            names += [c.name for c in EXACTLY_ONCE_COLUMNS]
        self.names = names

    def build(self, rows: list[BaseModel], partitions: list[int],
              offsets: list[int], topic_id: str = "") -> list[list[Any]]:
        """`topic_id` (exactly-once): Kafka's id of the topic the rows were read from."""
        data: list[list[Any]] = []
        for column in self.columns:
            name = column.name
            values = [getattr(row, name) for row in rows]
            if column.convert is not None:
                convert = column.convert
                values = [convert(v) for v in values]
            data.append(values)
        if self.exactly_once:
            if not topic_id:
                raise ValueError("exactly-once rows need the id of their topic")
            data.append(partitions)
            data.append(offsets)
            data.append([topic_id] * len(rows))
        return data


def dead_letter_envelope(*, pipeline: str, position: Position, payload: bytes | None,
                         error_type: str, error_message: str,
                         now: datetime | None = None) -> bytes:
    """The JSON value written to the dead-letter topic (see chute.DeadLetterRecord)."""
    failed_at = now or datetime.now(UTC)
    return orjson.dumps({
        "failed_at": failed_at.isoformat(),
        "source": "sync",
        "pipeline": pipeline,
        "topic": position.topic,
        "partition": position.partition,
        "offset": position.offset,
        "error_type": error_type,
        "error_message": error_message[:_MAX_ERROR_MESSAGE],
        "payload": (payload or b"").decode("utf-8", errors="backslashreplace"),
    })
