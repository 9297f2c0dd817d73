"""The size check that refuses a request holding a record its topic cannot take."""

from __future__ import annotations

import pytest
from ingest_api.record_limits import BATCH_OVERHEAD_BYTES, RecordTooLargeForTopic, check_sizes

HEADERS = (("chute-model", b"f" * 16),)
HEADERS_BYTES = len("chute-model") + 16 + 10


def test_records_that_fit_pass_and_the_first_that_does_not_is_named() -> None:
    limit = 1000
    room = limit - BATCH_OVERHEAD_BYTES - HEADERS_BYTES
    check_sizes("t", [b"x" * room, b"y"], None, HEADERS, limit)  # exactly at the limit
    with pytest.raises(RecordTooLargeForTopic) as caught:
        check_sizes("t", [b"y", b"x" * (room + 1), b"z" * 5000], None, HEADERS, limit)
    assert (caught.value.index, caught.value.size, caught.value.limit) == (1, limit + 1, limit)
    assert "record 1 " in str(caught.value) and "topic t" in str(caught.value)


def test_the_key_counts() -> None:
    limit = 1000
    room = limit - BATCH_OVERHEAD_BYTES - HEADERS_BYTES
    check_sizes("t", [b"x" * (room - 3), b"x"], [b"abc", b"a" * 10], HEADERS, limit)
    with pytest.raises(RecordTooLargeForTopic) as caught:
        check_sizes("t", [b"x" * (room - 3), b"x"], [b"abcd", b"a"], HEADERS, limit)
    assert caught.value.index == 0


def test_no_records_nothing_to_check() -> None:
    check_sizes("t", [], None, HEADERS, 1)
