"""Request bodies -> validated, encoded Kafka records. Pure: no I/O, no clock.

A body is one JSON object, a JSON array of objects, or NDJSON (one object per line; chosen by
the Content-Type `application/x-ndjson`, or sniffed: a first line that is a complete JSON value
followed by more lines). Every record is validated with the pipeline's pydantic model, with
`validate_json` as the sync worker does, so that both sides agree on what a valid record is.
Either every record is valid and all are returned encoded, or an error says what is wrong with
every bad record and nothing is produced.

Each record is re-serialised from the validated model (compact JSON, by alias, round-trip
mode), so the Kafka message holds exactly what the model accepted: coerced values, ISO 8601
datetimes, no unknown fields. The sync worker reads it back with
`TypeAdapter(Model).validate_json`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from chute.annotations import KeyMarker
from pydantic import BaseModel, TypeAdapter, ValidationError
from pydantic_core import ErrorDetails, to_jsonable_python

NDJSON_CONTENT_TYPES = frozenset({
    "application/x-ndjson", "application/ndjson", "application/jsonl",
    "application/x-jsonlines", "application/jsonlines",
})
KEY_SEPARATOR = b"\x1f"  # ASCII unit separator, between the values of several Key fields
MAX_REPORTED_ERRORS = 100  # a 422 lists at most this many errors (and says how many there were)

_WHITESPACE = b" \t\r\n"


class BodyError(ValueError):
    """A request body that cannot be ingested; `status` is the HTTP status to answer."""

    status = 400

    def detail(self) -> dict[str, Any]:
        return {"error": str(self)}


class EmptyBodyError(BodyError):
    def __init__(self) -> None:
        super().__init__(
            "empty body: send a JSON object, a JSON array of objects or NDJSON")


class MalformedJSONError(BodyError):
    """Not JSON. line and column are 1-based; position is the 0-based character offset."""

    def __init__(self, message: str, line: int | None, column: int | None,
                 position: int | None) -> None:
        super().__init__(message)
        self.line = line
        self.column = column
        self.position = position

    def detail(self) -> dict[str, Any]:
        where = ""
        if self.line is not None:
            where = f" at line {self.line} column {self.column}"
        return {"error": f"malformed JSON{where}: {self}", "line": self.line,
                "column": self.column, "position": self.position}


@dataclass(frozen=True)
class RecordError:
    index: int  # 0-based record index in the body (array element or NDJSON record)
    path: str  # field path inside the record, e.g. "timestamp" or "items.0.name"; "" = record
    message: str

    def as_dict(self) -> dict[str, Any]:
        return {"index": self.index, "path": self.path, "message": self.message}


class SchemaError(BodyError):
    """Records that do not match the model (422): every error of every bad record."""

    status = 422

    def __init__(self, errors: Sequence[RecordError], records: int | None) -> None:
        super().__init__(f"{len(errors)} schema violation(s)")
        self.errors = list(errors)
        self.records = records

    @property
    def invalid_records(self) -> int:
        return len({e.index for e in self.errors})

    def detail(self) -> dict[str, Any]:
        shown = self.errors[:MAX_REPORTED_ERRORS]
        return {
            "error": "records do not match the schema; nothing was accepted",
            "records": self.records,
            "invalid_records": self.invalid_records,
            "error_count": len(self.errors),
            "errors": [e.as_dict() for e in shown],
            "truncated": len(shown) < len(self.errors),
        }


@dataclass
class EncodedBatch:
    """Validated records ready for Kafka: values[i] with keys[i] (keys is None: no Key)."""

    values: list[bytes]
    keys: list[bytes] | None = field(default=None)

    def __len__(self) -> int:
        return len(self.values)


def is_ndjson_content_type(content_type: str | None) -> bool:
    if not content_type:
        return False
    return content_type.split(";", 1)[0].strip().lower() in NDJSON_CONTENT_TYPES


def _first_byte(body: bytes) -> int | None:
    """The first non-whitespace byte of body, or None when there is none."""
    stripped = body.lstrip(_WHITESPACE)
    return stripped[0] if stripped else None


def _malformed(exc: orjson.JSONDecodeError, text: bytes, line_offset: int = 0,
               char_offset: int = 0) -> MalformedJSONError:
    """The error for text (which orjson refused), placed at the first byte that is not UTF-8
    where that is the reason (orjson then reports position 0)."""
    bad = _invalid_utf8_at(text) if "UTF-8" in exc.msg else None
    if bad is None:
        return MalformedJSONError(exc.msg, exc.lineno + line_offset, exc.colno,
                                  exc.pos + char_offset)
    line_start = text.rfind(b"\n", 0, bad) + 1
    column = len(text[line_start:bad].decode()) + 1
    position = len(text[:bad].decode())
    return MalformedJSONError(f"invalid UTF-8 (byte 0x{text[bad]:02x})",
                              text.count(b"\n", 0, bad) + 1 + line_offset, column,
                              position + char_offset)


def _invalid_utf8_at(text: bytes) -> int | None:
    """Byte offset of the first byte of text that is not part of valid UTF-8."""
    try:
        text.decode()
    except UnicodeDecodeError as exc:
        return exc.start
    return None


def _locate_malformed(body: bytes, fallback: str) -> MalformedJSONError:
    """A malformed-JSON error with orjson's position for body (which pydantic refused)."""
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _malformed(exc, body)
    # orjson accepts what pydantic's parser refused (rare): report pydantic's message.
    return MalformedJSONError(fallback, None, None, None)


def _looks_like_ndjson(body: bytes) -> bool:
    """Several top-level values on separate lines: the first line is a whole JSON value."""
    stripped = body.lstrip(_WHITESPACE)
    newline = stripped.find(b"\n")
    if newline < 0 or not stripped[newline:].strip(_WHITESPACE):
        return False
    try:
        orjson.loads(stripped[:newline])
    except orjson.JSONDecodeError:
        return False
    return True


def split_ndjson(body: bytes) -> list[tuple[int, int, bytes]]:
    """Non-blank lines of body as (0-based line number, byte offset, line)."""
    lines = []
    offset = 0
    for number, line in enumerate(body.split(b"\n")):
        content = line.rstrip(b"\r")
        if content.strip(_WHITESPACE):
            lines.append((number, offset, content))
        offset += len(line) + 1
    return lines


def parse_records(body: bytes, content_type: str | None = None) -> list[Any]:
    """The raw records of a body (no schema involved): a list of JSON values, one per record.

    Raises EmptyBodyError / MalformedJSONError (400). Values that are not objects are
    returned as they are; validation reports them (422) with their index.
    """
    first = _first_byte(body)
    if first is None:
        raise EmptyBodyError()
    if not is_ndjson_content_type(content_type):
        try:
            value = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            if not _looks_like_ndjson(body):
                raise _malformed(exc, body) from None
        else:
            return value if isinstance(value, list) else [value]
    records = []
    for number, offset, line in split_ndjson(body):
        try:
            records.append(orjson.loads(line))
        except orjson.JSONDecodeError as exc:
            chars = len(body[:offset].decode("utf-8", errors="replace"))
            raise _malformed(exc, line, line_offset=number, char_offset=chars) from None
    return records


def _path(loc: Sequence[int | str]) -> str:
    return ".".join(str(p) for p in loc)


def _message(err: ErrorDetails) -> str:
    if err["type"] in ("model_type", "model_attributes_type", "dict_type") and not err["loc"]:
        return f"record must be a JSON object, got {_json_kind(err.get('input'))}"
    return err["msg"]


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    return type(value).__name__


class RecordCodec:
    """Validates bodies against one model and encodes the records for Kafka."""

    def __init__(self, model: type[BaseModel]) -> None:
        self.model = model
        self._one: TypeAdapter[Any] = TypeAdapter(model)
        self._many: TypeAdapter[list[Any]] = TypeAdapter(list[model])  # type: ignore[valid-type]
        self._serializer = model.__pydantic_serializer__
        self.key_fields: tuple[str, ...] = tuple(
            name for name, info in model.model_fields.items()
            if any(isinstance(m, KeyMarker) for m in info.metadata))

    # --- decoding ----------------------------------------------------------------------------

    def decode(self, body: bytes, content_type: str | None = None) -> EncodedBatch:
        """Validate every record of body and encode them, or raise a BodyError."""
        return self.encode(self.validate(body, content_type))

    def validate(self, body: bytes, content_type: str | None = None) -> list[BaseModel]:
        first = _first_byte(body)
        if first is None:
            raise EmptyBodyError()
        if is_ndjson_content_type(content_type):
            return self._validate_ndjson(body)
        if first == ord("["):
            return self._validate_array(body)
        try:
            return [self._one.validate_json(body)]
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=True)
            if any(e["type"] == "json_invalid" for e in errors):
                if _looks_like_ndjson(body):
                    return self._validate_ndjson(body)
                raise _locate_malformed(body, errors[0]["msg"]) from None
            raise self._schema_error([(0, errors)], records=1) from None

    def _validate_array(self, body: bytes) -> list[BaseModel]:
        try:
            return self._many.validate_json(body)
        except ValidationError as exc:
            errors = exc.errors(include_url=False, include_input=True)
            if any(e["type"] == "json_invalid" for e in errors):
                raise _locate_malformed(body, errors[0]["msg"]) from None
            if any(not e["loc"] for e in errors):  # valid JSON, but not a list of anything
                raise self._schema_error([(0, errors)], records=1) from None
            per_record: dict[int, list[ErrorDetails]] = {}
            for err in errors:
                index, *rest = err["loc"]
                err["loc"] = tuple(rest)
                per_record.setdefault(int(index), []).append(err)
            raise self._schema_error(sorted(per_record.items()),
                                     records=_count_array(body)) from None

    def _validate_ndjson(self, body: bytes) -> list[BaseModel]:
        lines = split_ndjson(body)
        if not lines:
            raise EmptyBodyError()
        validate = self._one.validate_json
        models: list[BaseModel] = []
        failed: list[tuple[int, list[ErrorDetails]]] = []
        for index, (number, offset, line) in enumerate(lines):
            try:
                models.append(validate(line))
            except ValidationError as exc:
                errors = exc.errors(include_url=False, include_input=True)
                if any(e["type"] == "json_invalid" for e in errors):
                    try:
                        orjson.loads(line)
                    except orjson.JSONDecodeError as jexc:
                        chars = len(body[:offset].decode("utf-8", errors="replace"))
                        raise _malformed(jexc, line, line_offset=number,
                                         char_offset=chars) from None
                    raise MalformedJSONError(errors[0]["msg"], number + 1, None,
                                             None) from None
                failed.append((index, errors))
        if failed:
            raise self._schema_error(failed, records=len(lines))
        return models

    @staticmethod
    def _schema_error(failed: Sequence[tuple[int, list[ErrorDetails]]],
                      records: int | None) -> SchemaError:
        return SchemaError(
            [RecordError(index, _path(err["loc"]), _message(err))
             for index, errors in failed for err in errors],
            records=records)

    # --- encoding ----------------------------------------------------------------------------

    def encode(self, models: list[BaseModel]) -> EncodedBatch:
        to_json = self._serializer.to_json
        values = [to_json(m, by_alias=True, round_trip=True) for m in models]
        if not self.key_fields:
            return EncodedBatch(values, None)
        return EncodedBatch(values, [self.key_of(m) for m in models])

    def key_of(self, record: BaseModel) -> bytes:
        """The Kafka message key: the Key field values, joined by KEY_SEPARATOR."""
        fields = self.key_fields
        if len(fields) == 1:
            return _key_part(getattr(record, fields[0]))
        return KEY_SEPARATOR.join(_key_part(getattr(record, f)) for f in fields)


def _key_part(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if value is None:
        return b""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value).encode()
    jsonable = to_jsonable_python(value)
    if isinstance(jsonable, str):
        return jsonable.encode()
    return orjson.dumps(jsonable, option=orjson.OPT_SORT_KEYS)


def _count_array(body: bytes) -> int | None:
    """Elements of a JSON array body (error path only), None when it is not one."""
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return len(value) if isinstance(value, list) else None
