"""How the worker cuts a partition's fetched records into runs it validates in one pass. Pure.

A run ends where the buffer becomes full (by rows or bytes), so batches keep their limits; a
run is validated in one pass only when all its records carry the same headers naming this
model (or none), else it is taken record by record."""

from __future__ import annotations

from bisect import bisect_left
from itertools import accumulate

from chute.fingerprint import FINGERPRINT_HEADER
from chute.kafka import Headers

from sync_worker.buffer import TableBuffer


def model_header(headers: Headers) -> bytes | None:
    """The fingerprint of the model that validated the record (raw header bytes), if the
    producer set one. Compared as bytes, decoded only to be logged."""
    for key, value in headers:
        if key == FINGERPRINT_HEADER:
            return value
    return None


def one_model(headers: list[Headers], fingerprint: bytes) -> bool:
    """Whether every record of a run was validated by this model or carries no fingerprint:
    true without a Python frame per record when they all carry the same headers."""
    if not any(headers):
        return True
    first = headers[0]
    if headers.count(first) != len(headers):
        return False
    model = model_header(first)
    return model is None or model == fingerprint


def run_end(buf: TableBuffer, values: list[bytes], start: int, n: int) -> int:
    """Where the run of records from `start` ends: at the last one the buffer takes before
    it is full, by rows or by bytes (the bytes of a record are those of its value)."""
    end = min(n, start + max(1, buf.room))
    run = values[start:end]
    sizes = map(len, run) if None not in run else (len(v) if v else 0 for v in run)
    if buf.size + sum(sizes) < buf.limits.max_bytes:
        return end
    sizes = map(len, run) if None not in run else (len(v) if v else 0 for v in run)
    cumulative = list(accumulate(sizes, initial=buf.size))
    return start + max(1, bisect_left(cumulative, buf.limits.max_bytes, 1))
