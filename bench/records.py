"""Records of the `Event` model (schemas/events.py) as the ingest API writes them to Kafka:
compact JSON in field order, `timestamp` as ISO 8601 with `Z`, the `id` as message key."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

# The schema each bench pipeline is defined with: schemas/events.py's Event, one pipeline.
PIPELINE_SCHEMA = '''"""Written by scripts/bench for one run; deleted with it."""
from datetime import datetime

from chute import IngestPipeline, Key
from pydantic import BaseModel


class Event(BaseModel):
    id: Key[str]
    user_id: str
    timestamp: datetime
    event_type: str


pipeline = IngestPipeline[Event]({name!r}, {{"stream": {{"partitions": {partitions}}}}})
'''

EVENT_TYPES = ("click", "view", "purchase", "signup")
BASE_EPOCH = 1_714_564_800  # 2024-05-01T12:00:00Z


class Timestamps:
    """ISO 8601 text of whole seconds, cached (formatting is the slow part of generating)."""

    def __init__(self) -> None:
        self._cache: dict[int, str] = {}

    def __call__(self, epoch: int) -> str:
        text = self._cache.get(epoch)
        if text is None:
            if len(self._cache) > 100_000:
                self._cache.clear()
            text = self._cache[epoch] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))
        return text


def event_line(record_id: str, i: int, timestamp: str) -> str:
    """One record's JSON, byte for byte what the ingest API produces for it."""
    return (f'{{"id":"{record_id}","user_id":"u{i % 9973}","timestamp":"{timestamp}",'
            f'"event_type":"{EVENT_TYPES[i & 3]}"}}')


def keyed_records(count: int, prefix: str) -> Iterator[tuple[str, str]]:
    """(id, JSON) of `count` records, 1,000 per second of event time."""
    stamp = Timestamps()
    for i in range(count):
        record_id = f"{prefix}{i}"
        yield record_id, event_line(record_id, i, stamp(BASE_EPOCH + i // 1000))


def write_keyed_ndjson(path: Path, count: int, prefix: str) -> int:
    """Writes `<id>\\t<json>` lines for `kcat -P -K '\\t'`; returns the bytes of the values."""
    value_bytes = 0
    with path.open("w", encoding="ascii") as out:
        chunk: list[str] = []
        for record_id, value in keyed_records(count, prefix):
            value_bytes += len(value)
            chunk.append(f"{record_id}\t{value}\n")
            if len(chunk) == 10_000:
                out.write("".join(chunk))
                chunk = []
        out.write("".join(chunk))
    return value_bytes


def array_body(prefix: str, start: int, count: int, epoch: int | None = None) -> bytes:
    """A JSON array of `count` records with ids prefix+start.. (one request body)."""
    stamp = Timestamps()
    now = int(time.time()) if epoch is None else epoch
    ts = stamp(now)
    return ("[" + ",".join(event_line(f"{prefix}{i}", i, ts)
                           for i in range(start, start + count)) + "]").encode()


def object_body(prefix: str, i: int, epoch: int | None = None) -> bytes:
    """One record as a JSON object body."""
    now = int(time.time()) if epoch is None else epoch
    return event_line(f"{prefix}{i}", i, Timestamps()(now)).encode()
