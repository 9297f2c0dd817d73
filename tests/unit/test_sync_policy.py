from __future__ import annotations

import random
import struct

import pytest
from chute.kafka import TopicPartition
from clickhouse_driver import errors as ch_errors
from sync_worker.buffer import TableBuffer
from sync_worker.errors import DATA, SCHEMA, TRANSIENT, UNKNOWN, classify
from sync_worker.policy import Backoff, BatchLimits, DeadLetterGuard, flush_reason
from sync_worker.rows import Position
from sync_worker.writer import Isolator, first_missing

LIMITS = BatchLimits(max_rows=3, max_bytes=100, max_wait=1.0)


def test_flush_by_rows_bytes_and_age() -> None:
    assert flush_reason(LIMITS, 2, 10, 0.0, 0.5) is None
    assert flush_reason(LIMITS, 3, 10, 0.0, 0.5) == "rows"
    assert flush_reason(LIMITS, 1, 100, 0.0, 0.5) == "bytes"
    assert flush_reason(LIMITS, 1, 10, 0.0, 1.0) == "wait"
    assert flush_reason(LIMITS, 0, 0, None, 99.0) is None


def test_buffer_tracks_offsets_ranges_and_dead_letters() -> None:
    buf = TableBuffer("t", "t", LIMITS, width=1)
    assert buf.due(10.0) is None
    t0, t1 = TopicPartition("t", 0), TopicPartition("t", 1)
    buf.note_offset(t0, 5, now=1.0)
    buf.extend([[1]], [b'{"a": 1}'], 0, [5], [111], now=1.0)
    buf.note_offset(t1, 7, now=1.2)
    buf.extend([[2]], [b'{"a": 2}'], 1, [7], [222], now=1.2)
    buf.add_dead_letter(b"{}", t0, 6, now=1.3)
    assert buf.last_offsets == {t0: 6, t1: 7}
    assert buf.describe_offsets() == "0:5-5,1:7-7"
    assert buf.position(1) == Position("t", 1, 7, 222)
    assert buf.size == 16 and buf.room == 1
    assert not buf.full
    buf.extend([[3]], [b'{"a": 3}'], 1, [8], [333], now=1.4)
    assert buf.full
    buf.remove({0})
    assert list(buf.offsets) == [7, 8] and list(buf.partitions) == [1, 1] and buf.count == 2
    assert buf.columns == [[2, 3]]
    assert [buf.values[0], buf.values[1]] == [b'{"a": 2}', b'{"a": 3}']  # bytes follow rows
    assert buf.due(1.5) is None
    assert buf.due(2.0) == "wait"
    batch = buf.detach()
    assert batch.count == 2 and buf.count == 0 and buf.columns == [[]] and not buf.pending


def test_buffer_is_full_by_bytes() -> None:
    buf = TableBuffer("t", "t", LIMITS, width=1)
    buf.extend([[1, 2]], [b"x" * 60, b"y" * 40], 0, [0, 1], [0, 0], now=0.0)
    assert buf.count == 2 and buf.size == 100 and buf.full
    assert buf.values[1] == b"y" * 40


def test_backoff_is_capped_and_jittered() -> None:
    b = Backoff(0.5, 4.0)
    rng = random.Random(1)
    delays = [b.next_delay(rng) for _ in range(8)]
    assert 0.25 <= delays[0] <= 0.5
    assert all(d <= 4.0 for d in delays)
    assert delays[-1] >= 2.0
    b.reset()
    assert b.next_delay(rng) <= 0.5


def test_dead_letter_guard_trips_on_ratio_over_window() -> None:
    guard = DeadLetterGuard(limit=0.5, window=100, min_records=5)
    for _ in range(4):
        guard.record(True)
    assert not guard.tripped  # too few records to judge
    guard.record(True)
    assert guard.tripped
    guard2 = DeadLetterGuard(limit=0.5, window=100, min_records=5)
    for _ in range(100):
        guard2.record(False, 4)
        guard2.record(True)  # 20 % bad
    assert not guard2.tripped and guard2.ratio == pytest.approx(0.2, abs=0.02)
    # Old good records age out of the window: a run of bad ones trips it.
    guard2.record(True, 100)
    assert guard2.tripped


def test_isolator_finds_each_bad_row_and_inserts_the_rest_in_order() -> None:
    bad = {3, 4, 17}
    inserted: list[int] = []

    def insert(lo: int, hi: int) -> None:
        if any(i in bad for i in range(lo, hi)):
            raise struct.error("ubyte format requires 0 <= number <= 255")
        inserted.extend(range(lo, hi))

    iso = Isolator(20)
    iso.run(insert, classify)
    assert [i for i, _ in iso.rejected] == [3, 4, 17]
    assert inserted == [i for i in range(20) if i not in bad]  # in order, each once


def test_a_bad_row_in_a_later_block_of_a_multi_block_insert_is_reconciled_first() -> None:
    """An insert larger than one block (`atomic_rows`) is sent as blocks that land one by one:
    a bad row in the third block leaves the first two in the table. With `reconcile` (exactly
    once) the isolator continues after them instead of sending them again when it halves."""
    bad = 9
    table: list[int] = []

    def insert(lo: int, hi: int) -> None:
        for block in range(lo, hi, 4):
            rows = range(block, min(block + 4, hi))
            if bad in rows:
                raise struct.error("ubyte format requires 0 <= number <= 255")
            table.extend(rows)

    def reconcile(lo: int, hi: int) -> int:
        return next((i for i in range(lo, hi) if i not in table), hi)

    iso = Isolator(12, atomic_rows=4)
    iso.run(insert, classify, reconcile)
    assert [i for i, _ in iso.rejected] == [bad]
    assert table == [i for i in range(12) if i != bad]  # each once, in order


def test_isolator_resumes_after_transient_error_without_reinserting() -> None:
    inserted: list[int] = []
    fail_once = {"armed": True}

    def insert(lo: int, hi: int) -> None:
        if 5 in range(lo, hi):
            raise struct.error("bad")
        if lo >= 6 and fail_once["armed"]:
            fail_once["armed"] = False
            raise ch_errors.NetworkError("connection reset")
        inserted.extend(range(lo, hi))

    iso = Isolator(12)
    with pytest.raises(ch_errors.NetworkError):
        iso.run(insert, classify)
    iso.run(insert, classify)
    assert inserted == [i for i in range(12) if i != 5]


@pytest.mark.parametrize(("exc", "kind"), [
    (ch_errors.ServerException("Too many parts", code=252), TRANSIENT),
    (ch_errors.ServerException("Memory limit", code=241), TRANSIENT),
    (ch_errors.ServerException("Unknown table", code=60), SCHEMA),
    (ch_errors.ServerException("No such column x in table", code=16), SCHEMA),
    (ch_errors.ServerException("Unknown status of insert", code=319), TRANSIENT),
    (ch_errors.ServerException("Something new", code=48), UNKNOWN),
    (RuntimeError("who knows"), UNKNOWN),
    (ch_errors.ServerException("Cannot parse", code=6), DATA),
    (ch_errors.ServerException("Type mismatch", code=53), DATA),
    (ch_errors.NetworkError("down"), TRANSIENT),
    (ch_errors.SocketTimeoutError("slow"), TRANSIENT),
    (ConnectionRefusedError(), TRANSIENT),
    (EOFError(), TRANSIENT),
    (struct.error("out of range"), DATA),
    (OverflowError(), DATA),
])
def test_error_classification(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_isolator_reconciles_an_insert_applied_before_its_answer_was_lost() -> None:
    """The fake table applies the insert, then the connection 'breaks': the retry must
    resume after what the table holds, so every row is in exactly once."""
    table: list[int] = []
    partitions = [0, 1] * 6
    offsets = [i // 2 for i in range(12)]
    cut = {4}  # the insert covering row 4 is applied, then fails

    def insert(lo: int, hi: int) -> None:
        table.extend(range(lo, hi))
        if cut & set(range(lo, hi)):
            cut.clear()
            raise ch_errors.NetworkError("connection reset after the server answered")

    def reconcile(lo: int, hi: int) -> int:
        marks: dict[int, int] = {}
        for i in table:
            marks[partitions[i]] = max(marks.get(partitions[i], -1), offsets[i])
        return first_missing(partitions, offsets, lo, hi, marks)

    iso = Isolator(12)
    iso.piece = 3  # several pieces, so the cut lands in the middle of the batch
    with pytest.raises(ch_errors.NetworkError):
        iso.run(insert, classify, reconcile)
    assert iso.in_doubt == (3, 6)
    iso.run(insert, classify, reconcile)
    assert sorted(table) == list(range(12))  # nothing sent twice


def test_isolator_without_reconcile_resends_the_piece_in_doubt() -> None:
    table: list[int] = []
    armed = [True]

    def insert(lo: int, hi: int) -> None:
        table.extend(range(lo, hi))
        if armed[0]:
            armed[0] = False
            raise ch_errors.SocketTimeoutError("timed out")

    iso = Isolator(4)
    with pytest.raises(ch_errors.SocketTimeoutError):
        iso.run(insert, classify)
    iso.run(insert, classify)
    assert table == [0, 1, 2, 3, 0, 1, 2, 3]  # at-least-once: resent whole, nothing lost


def test_isolator_reports_rejected_rows_before_the_next_insert() -> None:
    events: list[str] = []

    def insert(lo: int, hi: int) -> None:
        if lo <= 2 < hi:
            raise struct.error("bad")
        events.append(f"insert {lo}-{hi}")

    def report(rejected: list[tuple[int, BaseException]]) -> None:
        events.append("report " + ",".join(str(i) for i, _ in rejected))

    iso = Isolator(4)
    iso.run(insert, classify, None, report)
    assert events == ["insert 0-2", "report 2", "insert 3-4"]


def test_isolator_reports_again_when_reporting_failed() -> None:
    inserted: list[int] = []
    failures = [ConnectionError("dead-letter topic unreachable")]

    def insert(lo: int, hi: int) -> None:
        if lo <= 0 < hi:
            raise struct.error("bad")
        inserted.extend(range(lo, hi))

    def report(rejected: list[tuple[int, BaseException]]) -> None:
        if failures:
            raise failures.pop()

    iso = Isolator(3)
    with pytest.raises(ConnectionError):
        iso.run(insert, classify, None, report)
    assert inserted == []  # nothing went in past the row whose dead letter is not durable
    iso.run(insert, classify, None, report)
    assert inserted == [1, 2] and [i for i, _ in iso.rejected] == [0]


def test_first_missing_finds_the_unapplied_suffix() -> None:
    partitions = [0, 1, 0, 1]
    offsets = [10, 20, 11, 21]
    assert first_missing(partitions, offsets, 0, 4, {}) == 0
    assert first_missing(partitions, offsets, 0, 4, {0: 10, 1: 20}) == 2
    assert first_missing(partitions, offsets, 0, 4, {0: 11, 1: 21}) == 4
    assert first_missing(partitions, offsets, 2, 4, {0: 11, 1: 9}) == 3


class _LibrdkafkaError:
    """Stands for confluent_kafka.KafkaError: what a KafkaException carries in args[0]."""

    def __init__(self, retriable: bool) -> None:
        self._retriable = retriable

    def retriable(self) -> bool:
        return self._retriable


def test_kafka_errors_are_classified_by_their_retriable_flag() -> None:
    from chute.kafka import CommitRebalanced, KafkaClientError, KafkaTimeout

    assert classify(KafkaClientError("broker down")) == TRANSIENT
    assert classify(KafkaTimeout("no ack in time")) == TRANSIENT
    assert classify(KafkaClientError("not authorised", retriable=False)) == UNKNOWN
    assert classify(CommitRebalanced("group rebalanced")) == UNKNOWN
    # A client exception that carries librdkafka's error object, not wrapped by the seam.
    assert classify(Exception(_LibrdkafkaError(True))) == TRANSIENT
    assert classify(Exception(_LibrdkafkaError(False))) == UNKNOWN
