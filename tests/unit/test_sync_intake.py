"""Cutting fetched records into runs: at the buffer's row and byte limits, and only runs of one
model definition validated in one pass."""

from __future__ import annotations

from chute.fingerprint import FINGERPRINT_HEADER
from sync_worker.buffer import TableBuffer
from sync_worker.intake import model_header, one_model, run_end
from sync_worker.policy import BatchLimits

MINE, OTHER = b"fp-mine", b"fp-other"


def _buffer(max_rows: int, max_bytes: int, rows: int = 0, size: int = 0) -> TableBuffer:
    buf = TableBuffer("t", "t", BatchLimits(max_rows, max_bytes, 1.0), width=1)
    if rows:
        values = [b"x" * (size // rows)] * rows
        buf.extend([[0] * rows], values, 0, list(range(rows)), [0] * rows, 0.0)
    return buf


def test_a_run_ends_at_the_row_limit() -> None:
    values = [b"v"] * 50
    assert run_end(_buffer(10, 1 << 20), values, 0, 50) == 10
    assert run_end(_buffer(10, 1 << 20, rows=7, size=7), values, 0, 50) == 3
    assert run_end(_buffer(100, 1 << 20), values, 45, 50) == 50
    # A full buffer (a held batch meanwhile) still moves one record at a time.
    assert run_end(_buffer(10, 1 << 20, rows=10, size=10), values, 0, 50) == 1


def test_a_run_ends_at_the_record_that_reaches_the_byte_limit() -> None:
    values = [b"x" * 10] * 20
    assert run_end(_buffer(1000, 100), values, 0, 20) == 10  # 10 records make 100 bytes
    assert run_end(_buffer(1000, 95), values, 0, 20) == 10
    assert run_end(_buffer(1000, 100, rows=5, size=50), values, 0, 20) == 5
    assert run_end(_buffer(1000, 1000), values, 0, 20) == 20
    with_empty = [b"x" * 10, None, b"x" * 10]
    assert run_end(_buffer(1000, 20), with_empty, 0, 3) == 3  # type: ignore[arg-type]


def test_only_runs_of_this_model_or_no_fingerprint_are_taken_in_one_pass() -> None:
    mine = ((FINGERPRINT_HEADER, MINE),)
    other = ((FINGERPRINT_HEADER, OTHER),)
    assert one_model([(), (), ()], MINE)
    assert one_model([mine, mine], MINE)
    assert not one_model([mine, other], MINE)
    assert not one_model([other, other], MINE)
    assert not one_model([mine, ()], MINE)  # mixed: record by record
    assert one_model([(("trace", b"1"),)] * 2, MINE)
    assert model_header((("trace", b"1"), (FINGERPRINT_HEADER, OTHER))) == OTHER
    assert model_header(()) is None
