"""The fingerprint of a model: which definition validated a record.

The ingest API puts it on every Kafka record (header `FINGERPRINT_HEADER`); a sync worker that
meets a fingerprint it does not know has an older or newer definition than the one that
validated the record, and must not guess which fields it holds. Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson
from pydantic import BaseModel

FINGERPRINT_HEADER = "chute-model"


def model_fingerprint(model: type[BaseModel]) -> str:
    """16 hex digits, stable across processes, that change whenever a field, its type, its
    annotations (ClickHouse types, keys, constraints) or its default change."""
    fields: list[Any] = []
    for name, info in model.model_fields.items():
        fields.append([name, repr(info.annotation), [repr(m) for m in info.metadata],
                       info.is_required(), repr(info.default), info.alias])
    description = {
        "model": model.__name__,
        "fields": fields,
        "schema": model.model_json_schema(mode="validation"),
        "extra": model.model_config.get("extra"),
    }
    digest = hashlib.sha256(orjson.dumps(description, option=orjson.OPT_SORT_KEYS)).hexdigest()
    return digest[:16]
