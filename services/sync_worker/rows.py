"""Pure transforms: Kafka message value -> validated row -> columns; failures -> envelopes."""

from __future__ import annotations

import base64
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from functools import partial
from itertools import repeat
from operator import attrgetter, floordiv, sub
from typing import Any

import orjson
from chute.chtypes import TypeSyntaxError, parse_type
from chute.constraints import Extra
from chute.ddl import EXACTLY_ONCE_COLUMNS
from chute.server import OLD_SERVER, ServerProfile
from chute.typemap import ColumnSpec
from chute.validation import RecordValidator
from pydantic import BaseModel, ValidationError
from pydantic_core import TzInfo

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

    def decode_all(self, values: list[bytes]) -> list[BaseModel] | None:
        """Every value validated, in one pass with no Python frame per record; None when any
        is empty or invalid (then `decode` each to learn which, and why)."""
        if None in values:
            return None
        try:
            return list(map(self._validator.validate_json, values))
        except ValidationError:
            return None

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
        self._getters = [(attrgetter(c.name), _column_converter(c)) for c in columns]
        if exactly_once:
            names += [c.name for c in EXACTLY_ONCE_COLUMNS]
        self.names = names

    def columns_of(self, rows: list[BaseModel]) -> list[list[Any]]:
        """The table's columns (without the exactly-once positions) of `rows`, converted.
        map() over C getters: no Python frame per value, except a converter's."""
        data: list[list[Any]] = []
        for get, convert in self._getters:
            values = list(map(get, rows))
            data.append(values if convert is None else convert(values))
        return data

    def with_positions(self, columns: list[list[Any]], partitions: Sequence[int],
                       offsets: Sequence[int], topic_id: str = "") -> list[list[Any]]:
        """What is inserted: the columns, plus in exactly-once mode the Kafka positions and
        `topic_id`, Kafka's id of the topic the rows were read from."""
        if not self.exactly_once:
            return columns
        if not topic_id:
            raise ValueError("exactly-once rows need the id of their topic")
        return [*columns, list(partitions), list(offsets), [topic_id] * len(offsets)]

    def build(self, rows: list[BaseModel], partitions: list[int],
              offsets: list[int], topic_id: str = "") -> list[list[Any]]:
        return self.with_positions(self.columns_of(rows), partitions, offsets, topic_id)


ColumnConverter = Callable[[list[Any]], list[Any]]

_EPOCH = datetime(1970, 1, 1)
_SECOND = timedelta(seconds=1)
_TZINFO = attrgetter("tzinfo")
# Time zones of a fixed offset: a datetime minus another of the same zone object is plain
# field arithmetic (Python skips utcoffset), which is exact only when the offset is fixed.
_FIXED_OFFSET = (timezone, TzInfo)


def _column_converter(column: ColumnSpec) -> ColumnConverter | None:
    """What turns a column's validated values into what clickhouse-driver inserts: the
    column's own converter applied to each value, or for DateTime the same epoch seconds
    computed a whole column at a time (`epoch_seconds`)."""
    convert = column.convert
    if convert is None:
        return None
    try:
        is_datetime = parse_type(column.type).unwrapped().name == "DateTime"
    except TypeSyntaxError:
        is_datetime = False
    if is_datetime:
        return partial(epoch_seconds, fallback=convert)
    return partial(_each, convert)


def _each(convert: Callable[[Any], Any], values: list[Any]) -> list[Any]:
    return list(map(convert, values))


def epoch_seconds(values: list[datetime], fallback: Callable[[Any], Any]) -> list[Any]:
    """Whole seconds since 1970-01-01 UTC of each datetime (naive ones taken as UTC, like a
    DateTime column), as `fallback` computes one at a time. When every value has the same
    fixed-offset zone (what JSON validation gives), it is computed with map() over C
    operations: `value - start` where `start` is 1970-01-01 in that zone needs no utcoffset
    call per value; the zone's offset is then subtracted once. Otherwise `fallback` each."""
    if not values:
        return []
    zones = list(map(_TZINFO, values))
    zone = zones[0]
    if zones.count(zone) != len(zones) or not (
            zone is None or isinstance(zone, _FIXED_OFFSET)):
        return list(map(fallback, values))
    start = _EPOCH if zone is None else _EPOCH.replace(tzinfo=zone)
    offset = start.utcoffset() or timedelta(0)
    if offset % _SECOND:
        return list(map(fallback, values))
    seconds = list(map(floordiv, map(sub, values, repeat(start)), repeat(_SECOND)))
    shift = offset // _SECOND
    return list(map(sub, seconds, repeat(shift))) if shift else seconds


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
        **payload_fields(payload or b""),
    })


def payload_fields(payload: bytes) -> dict[str, str]:
    """A dead letter's payload: the bytes as text when they are UTF-8, else their base64
    (a JSON string cannot hold other bytes); payload_encoding says which. Text that JSON
    escaping would make more than 3/2 of its bytes (a control character takes 6) goes as
    base64 too (4/3), so a dead letter is at most 3/2 of its record plus the envelope and
    fits DEAD_LETTER_MAX_MESSAGE_BYTES."""
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is not None and (len(orjson.dumps(text)) - 2) * 2 <= len(payload) * 3:
        return {"payload": text, "payload_encoding": "utf-8"}
    return {"payload": base64.b64encode(payload).decode("ascii"), "payload_encoding": "base64"}
