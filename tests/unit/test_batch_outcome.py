"""BatchOutcome: one report for a batch from its per-record reports, never two."""

from __future__ import annotations

import threading

from chute.kafka import BatchOutcome, KafkaClientError


def test_success_is_reported_once_the_last_record_is_acknowledged() -> None:
    reports: list[KafkaClientError | None] = []
    outcome = BatchOutcome(3, reports.append)
    outcome(None)
    outcome(None)
    assert reports == []
    outcome(None)
    assert reports == [None]


def test_the_first_failure_is_reported_at_once_and_nothing_after_it() -> None:
    reports: list[KafkaClientError | None] = []
    outcome = BatchOutcome(3, reports.append)
    outcome(None)
    first = KafkaClientError("first")
    outcome(first)
    outcome(KafkaClientError("second"))
    outcome(None)
    assert reports == [first]


def test_an_empty_batch_is_reported_done_at_once() -> None:
    reports: list[KafkaClientError | None] = []
    BatchOutcome(0, reports.append)
    assert reports == [None]


def test_reports_from_many_threads_make_one_success() -> None:
    reports: list[KafkaClientError | None] = []
    outcome = BatchOutcome(8 * 2_000, reports.append)

    def acknowledge() -> None:
        for _ in range(2_000):
            outcome(None)

    threads = [threading.Thread(target=acknowledge) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert reports == [None]
