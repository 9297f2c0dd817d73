"""The worker's per-pipeline state machine, driven through poll_once with an in-memory
consumer, producer and table and an injected clock: no servers, no sleeping."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
import pytest
from chute import IngestPipeline, Key
from chute.fingerprint import FINGERPRINT_HEADER, model_fingerprint
from chute.kafka import KafkaClientError, Record, TopicPartition
from chute.registry import Definitions
from chute.server import OLD_SERVER
from clickhouse_driver import errors as ch_errors
from prometheus_client import REGISTRY
from pydantic import BaseModel
from sync_worker.pipeline_state import Status, health
from sync_worker.routes import MODEL_MISMATCH, build_routes
from sync_worker.settings import SyncSettings
from sync_worker.steps import FlushAbandoned
from sync_worker.worker import SyncWorker

from testkit.memory import ManualClock, MemoryConsumer, MemoryProducer, MemoryWriter


class Event(BaseModel):
    id: Key[str]
    n: int
    timestamp: datetime


def Message(offset: int, value: bytes, topic: str = "b", partition: int = 0,
            headers: tuple[tuple[str, bytes], ...] = ()) -> Record:
    return Record(topic, partition, offset, 1_714_564_800_000, None, value, headers)


@dataclass
class Harness:
    worker: SyncWorker
    consumer: MemoryConsumer
    writer: MemoryWriter
    producer: MemoryProducer
    clock: ManualClock
    topic_ids: dict[str, str]  # Kafka's id of each topic, as the fake admin reports it

    def feed(self, topic: str, first: int, count: int, partition: int = 0,
             headers: dict[str, bytes] | None = None) -> None:
        self.consumer.feed(TopicPartition(topic, partition), [
            Message(o, record(o), topic, partition, tuple((headers or {}).items()))
            for o in range(first, first + count)])

    def step(self, seconds: float = 0.0) -> None:
        self.clock.now += seconds
        self.worker.poll_once()

    def rows(self, table: str) -> list[dict[str, Any]]:
        return self.writer.tables.get(table, [])

    def committed(self, topic: str, partition: int = 0) -> int | None:
        return self.consumer.commits.get(TopicPartition(topic, partition))


def record(i: int) -> bytes:
    return orjson.dumps({"id": f"e{i}", "n": i, "timestamp": "2024-05-01T12:00:00Z"})


def make(delivery: str = "at_least_once", assign: bool = True, **settings: Any) -> Harness:
    pipelines = [IngestPipeline[Event](name, {"stream": {
        "max_batch_rows": 10, "max_batch_wait": 1.0, "delivery": delivery}})
        for name in ("a", "b")]
    defaults: dict[str, Any] = {"sync_retry_initial_seconds": 1.0,
                                "sync_retry_max_seconds": 8.0, "sync_retry_budget": 2,
                                "sync_dlq_ratio_min_records": 20,
                                "sync_dlq_ratio_window": 100}
    cfg = SyncSettings(**{**defaults, **settings})
    routes = build_routes(Definitions.from_resources(pipelines), OLD_SERVER, cfg)
    clock = ManualClock()
    consumer = MemoryConsumer([TopicPartition(t, 0) for t in ("a", "b")])
    writer = MemoryWriter()
    producer = MemoryProducer(writer.log)
    # The fakes implement what the worker calls, not the whole seam.
    topic_ids = {"a": "id-a-1", "b": "id-b-1"}
    worker = SyncWorker(cfg, consumer, producer, writer, routes,  # type: ignore[arg-type]
                        clock=clock, sleep=clock.sleep,
                        topic_ids=lambda topics: {t: topic_ids[t] for t in topics})
    if assign:
        worker.on_assigned(sorted(consumer.partitions))
    return Harness(worker, consumer, writer, producer, clock, topic_ids)


def missing_column() -> ch_errors.ServerException:
    return ch_errors.ServerException("No such column extra in table default.b", code=16)


def test_a_schema_error_pauses_one_pipeline_while_the_other_flows() -> None:
    h = make()
    h.writer.failures["b"] = [missing_column() for _ in range(6)]
    h.feed("a", 0, 10)
    h.feed("b", 0, 10)
    h.step()
    b = h.worker.routes["b"]
    assert b.state.status is Status.PAUSED and "No such column" in b.state.reason
    assert REGISTRY.get_sample_value(
        "chute_sync_pipeline_state", {"pipeline": "b", "state": "paused"}) == 1
    assert REGISTRY.get_sample_value(
        "chute_sync_pipeline_state", {"pipeline": "b", "state": "flowing"}) == 0
    assert REGISTRY.get_sample_value(
        "chute_sync_pipeline_state", {"pipeline": "a", "state": "flowing"}) == 1
    assert TopicPartition("b", 0) in h.consumer.paused
    assert TopicPartition("a", 0) not in h.consumer.paused
    assert h.committed("a") == 10 and h.committed("b") is None
    # a keeps flowing while b waits; b's records are not fetched meanwhile.
    for i in range(1, 4):
        h.feed("a", i * 10, 10)
        h.feed("b", i * 10, 10)
        h.step(0.1)
    assert h.committed("a") == 40 and len(h.rows("a")) == 40
    assert h.consumer.pending[TopicPartition("b", 0)], "b was fetched while paused"
    ok, details = health(h.worker.pipeline_states(), h.clock(), paused_threshold=30)
    assert ok and details["pipelines"]["b"]["state"] == "paused"
    h.clock.now += 31
    ok, details = health(h.worker.pipeline_states(), h.clock(), paused_threshold=30)
    assert not ok and details["problems"][0].startswith("b: paused")
    assert "No such column" in details["problems"][0]
    # `chute apply` added the column: the next retry goes through and b resumes by itself.
    h.writer.failures["b"] = []
    for _ in range(5):
        h.step(10)
    assert b.state.flowing
    assert REGISTRY.get_sample_value(
        "chute_sync_pipeline_state", {"pipeline": "b", "state": "flowing"}) == 1
    assert TopicPartition("b", 0) not in h.consumer.paused
    assert h.committed("b") == 40
    assert sorted(r["n"] for r in h.rows("b")) == list(range(40))


def test_retries_back_off_with_a_cap() -> None:
    h = make()
    h.writer.failures["b"] = [ch_errors.NetworkError("down") for _ in range(8)]
    h.feed("b", 0, 10)
    h.step()
    delays = []
    state = h.worker.routes["b"].state
    for _ in range(7):
        assert state.next_attempt is not None
        delays.append(state.next_attempt - h.clock())
        h.step(state.next_attempt - h.clock())
    assert all(0.5 <= d <= 8.0 for d in delays)
    assert delays[-1] >= 4.0  # grew to the cap
    assert h.writer.attempts["b"] == 8
    assert state.status is Status.RETRYING  # transient: never given up
    h.writer.failures["b"] = []
    assert state.next_attempt is not None
    h.step(state.next_attempt - h.clock())
    assert state.flowing and h.committed("b") == 10


def test_an_unclassified_error_fails_the_pipeline_after_its_budget() -> None:
    h = make()
    h.writer.failures["b"] = [RuntimeError("something new") for _ in range(10)]
    h.feed("a", 0, 10)
    h.feed("b", 0, 10)
    h.step()
    for _ in range(5):
        h.step(10)
    state = h.worker.routes["b"].state
    assert state.status is Status.FAILED and "something new" in state.reason
    assert h.writer.attempts["b"] == 3  # the first attempt + a budget of 2 retries
    h.step(100)
    assert h.writer.attempts["b"] == 3  # not retried any more
    assert h.committed("b") is None
    ok, details = health(h.worker.pipeline_states(), h.clock(), paused_threshold=1_000)
    assert not ok and details["problems"][0].startswith("b: failed")
    h.feed("a", 10, 10)
    h.step(0.1)
    assert h.committed("a") == 20


def test_the_dead_letter_guard_stops_one_pipeline_and_commits_nothing_past_an_insert() -> None:
    h = make()
    h.feed("b", 0, 10)
    h.step()
    assert h.committed("b") == 10  # ten good records inserted
    tp = TopicPartition("b", 0)
    h.consumer.feed(tp, [Message(o, b'{"order_id": 1}') for o in range(10, 60)])
    h.feed("a", 0, 10)
    h.step(2)
    state = h.worker.routes["b"].state
    assert state.status is Status.FAILED and "dead-letter queue" in state.reason
    assert h.committed("b") == 10  # nothing past the last insert
    assert h.worker.routes["b"].buffer.pending is False  # discarded, to be re-delivered
    # Every envelope produced is for a record below the one that tripped the guard.
    tripped_at = 10 + len(h.producer.sent)
    assert all(env["offset"] < tripped_at for _, env in h.producer.sent)
    assert h.committed("a") == 10  # the other pipeline is untouched
    h.feed("a", 10, 10)
    h.step(2)
    assert h.committed("a") == 20


def test_records_of_another_model_pause_the_pipeline_before_they_are_inserted() -> None:
    h = make()
    own = model_fingerprint(Event).encode()
    other = {FINGERPRINT_HEADER: b"0123456789abcdef"}
    h.feed("b", 0, 5, headers={FINGERPRINT_HEADER: own})
    h.feed("b", 5, 3)  # no header: validated as always
    # Another model's records that carry only this model's fields lose nothing here (an
    # older definition, before a field was added): inserted.
    h.feed("b", 8, 2, headers=other)
    # One with a field this model lacks (a newer definition): held, not stripped.
    newer = orjson.dumps({"id": "e10", "n": 10, "timestamp": "2024-05-01T12:00:00Z",
                          "duration_ms": 7})
    h.consumer.feed(TopicPartition("b", 0), [Message(10, newer, "b", 0, tuple(other.items()))])
    h.feed("b", 11, 2, headers=other)
    h.step()
    state = h.worker.routes["b"].state
    assert state.status is Status.PAUSED and state.reason == MODEL_MISMATCH
    assert sorted(r["n"] for r in h.rows("b")) == list(range(10))
    assert h.committed("b") == 10  # up to, not past, the record the worker cannot hold
    h.step(100)
    assert len(h.rows("b")) == 10  # held until the worker is reloaded


def test_another_models_record_invalid_for_this_one_is_held_not_dead_lettered() -> None:
    h = make()
    h.consumer.feed(TopicPartition("b", 0), [Message(
        0, orjson.dumps({"id": "e0", "timestamp": "2024-05-01T12:00:00Z"}), "b", 0,
        ((FINGERPRINT_HEADER, b"0123456789abcdef"),))])  # lacks n, which has no default
    h.step()
    assert h.worker.routes["b"].state.reason == MODEL_MISMATCH
    assert h.rows("b") == [] and h.producer.sent == [] and h.committed("b") in (None, 0)


def test_exactly_once_reconciles_an_insert_whose_answer_was_lost() -> None:
    h = make("exactly_once")
    h.writer.apply_then_fail.add("b")
    h.writer.failures["b"] = [ch_errors.NetworkError("connection cut after the answer")]
    h.feed("b", 0, 10)
    h.step()
    assert h.worker.routes["b"].state.status is Status.RETRYING
    h.step(10)
    assert [r["n"] for r in h.rows("b")] == list(range(10))  # once each
    assert h.committed("b") == 10


def test_exactly_once_waits_until_the_lost_insert_has_finished_on_the_server() -> None:
    h = make("exactly_once")
    h.writer.apply_then_fail.add("b")
    h.writer.failures["b"] = [ch_errors.SocketTimeoutError("timed out waiting for the answer")]
    h.writer.still_running = 2
    h.feed("b", 0, 10)
    h.step()
    for _ in range(2):
        h.step(10)
        assert h.committed("b") is None  # outcome unknown yet: nothing resent, nothing committed
    assert h.writer.attempts["b"] == 1
    h.step(10)
    assert [r["n"] for r in h.rows("b")] == list(range(10))
    assert h.committed("b") == 10 and h.worker.routes["b"].state.flowing


def test_at_least_once_resends_an_insert_whose_answer_was_lost() -> None:
    h = make()
    h.writer.apply_then_fail.add("b")
    h.writer.failures["b"] = [ch_errors.NetworkError("connection cut after the answer")]
    h.feed("b", 0, 10)
    h.step()
    h.step(10)
    assert sorted(r["n"] for r in h.rows("b")) == sorted([*range(10), *range(10)])
    assert h.committed("b") == 10


def test_dead_letters_are_durable_before_the_insert_that_passes_them() -> None:
    h = make("exactly_once")
    tp = TopicPartition("b", 0)
    h.consumer.feed(tp, [Message(0, record(0)), Message(1, b"not json"),
                         Message(2, record(2))])
    h.step()
    h.step(2)
    assert h.writer.log == ["dead letter b_dlq", "insert b 2"]
    assert h.producer.sent[0][1]["payload"] == "not json"


def test_no_row_goes_in_before_its_batch_s_dead_letters_are_acknowledged() -> None:
    """Kafka refuses the dead letters: the insert waits; the retry delivers them, then
    inserts, once each."""
    h = make("exactly_once")
    tp = TopicPartition("b", 0)
    h.producer.failures = [KafkaClientError("broker down", retriable=True)]
    h.consumer.feed(tp, [Message(0, record(0)), Message(1, b"not json"),
                         Message(2, record(2))])
    h.step()
    h.step(2)
    assert h.writer.log == [] and h.committed("b") is None
    assert not h.worker.routes["b"].state.flowing
    h.step(10)
    assert h.writer.log == ["dead letter b_dlq", "insert b 2"]
    assert h.committed("b") == 3


def test_a_row_clickhouse_rejects_is_dead_lettered_with_its_original_bytes() -> None:
    h = make("exactly_once")
    h.writer.failures["b"] = [ch_errors.ServerException("Cannot parse", code=6)]
    tp = TopicPartition("b", 0)
    original = b'{"n": 7,   "id": "e7", "timestamp": "2024-05-01T12:00:00Z"}'
    h.consumer.feed(tp, [Message(0, original)])
    h.step()
    h.step(2)
    assert h.producer.sent[0][1]["payload"] == original.decode()
    assert h.committed("b") == 1


@pytest.mark.parametrize("lag_update_seconds", [0.0, 0.15, 3.0, 30.0])
def test_waiting_for_a_retry_never_sleeps_a_negative_time(lag_update_seconds: float) -> None:
    """The lag report inside the wait may take longer than what is left of the delay."""
    h = make()
    worker = h.worker

    def slow_lag_update(ask_broker: bool = False) -> None:
        h.clock.now += lag_update_seconds

    worker.assignment.update_lag = slow_lag_update  # type: ignore[method-assign]
    end = h.clock() + 0.25
    worker.retrier.wait_until(end)
    assert h.clock() >= end


def test_a_watermark_beyond_the_topic_end_fails_the_pipeline_instead_of_skipping() -> None:
    h = make("exactly_once", assign=False)
    tp_a, tp_b = TopicPartition("a", 0), TopicPartition("b", 0)
    # Table b holds offsets up to 499 under topic b's current id, but the topic ends at 20.
    h.writer.tables["b"] = [{"_chute_partition": 0, "_chute_offset": 499,
                             "_chute_topic_id": "id-b-1"}]
    h.writer.tables["a"] = [{"_chute_partition": 0, "_chute_offset": 9,
                             "_chute_topic_id": "id-a-1"}]
    h.consumer.ends = {tp_a: 30, tp_b: 20}
    starts = h.worker.on_assigned([tp_a, tp_b])
    state = h.worker.routes["b"].state
    assert state.status is Status.FAILED and "did not come from this topic" in state.reason
    assert tp_b not in h.consumer.commits  # not committed up to the old watermark
    assert starts == {tp_a: 10}  # a resumes past its own watermark; b is not started
    assert h.consumer.commits[tp_a] == 10


def test_shutdown_flushes_the_healthy_pipeline_when_another_cannot() -> None:
    h = make()
    h.writer.failures["b"] = [ch_errors.NetworkError("down") for _ in range(100)]
    h.feed("a", 0, 5)
    h.feed("b", 0, 5)
    h.step()
    h.worker.request_stop()
    with pytest.raises(FlushAbandoned, match=r"^b: ") as abandoned:
        h.worker.decode.join("shutdown")
    assert abandoned.value.done == {TopicPartition("a", 0): 5}
    assert h.committed("a") == 5 and len(h.rows("a")) == 5
    assert h.committed("b") is None  # given up at the deadline: re-delivered later
    assert h.clock() <= 1000 + h.worker.settings.sync_shutdown_flush_seconds + 1


def test_a_commit_failing_with_an_unclassified_error_is_not_retried_for_ever() -> None:
    h = make(sync_retry_budget=3)
    calls: list[Mapping[TopicPartition, int]] = []

    def commit(offsets: Mapping[TopicPartition, int]) -> None:
        calls.append(offsets)
        raise RuntimeError("unexpected")

    h.consumer.commit = commit  # type: ignore[method-assign]
    with pytest.raises(RuntimeError):
        h.worker.commits.submit({TopicPartition("a", 0): 1})
    assert len(calls) == 4


def test_the_guard_weighs_the_good_records_before_a_bad_one_in_the_same_poll() -> None:
    h = make(sync_dlq_ratio_limit=0.7, sync_dlq_ratio_min_records=5)
    tp = TopicPartition("b", 0)
    # 9 good records (less than a batch, so no flush counts them) then 6 bad: 40 % bad.
    h.consumer.feed(tp, [Message(o, record(o)) for o in range(9)]
                    + [Message(o, b"not json") for o in range(9, 15)])
    h.step()
    h.step(2)
    assert h.worker.routes["b"].state.flowing
    assert h.committed("b") == 15 and len(h.producer.sent) == 6


def test_rows_of_an_earlier_topic_of_that_name_are_no_watermark() -> None:
    """Topic b was deleted and re-created (new id) with more records than the old watermark:
    every record of the new topic is inserted, none is skipped."""
    h = make("exactly_once", assign=False)
    h.writer.tables["b"] = [{"_chute_partition": 0, "_chute_offset": o, "_chute_topic_id": "id-b-0",
                             "n": -1} for o in range(5)]
    tp_b = TopicPartition("b", 0)
    h.consumer.ends = {tp_b: 10}
    assert h.worker.on_assigned([tp_b]) == {}  # no commit, no watermark: from the earliest
    h.feed("b", 0, 10)
    h.step()
    new = [r for r in h.rows("b") if r["_chute_topic_id"] == "id-b-1"]
    assert [r["_chute_offset"] for r in new] == list(range(10))
    assert h.committed("b") == 10
    assert h.worker.routes["b"].state.flowing


def test_rows_from_before_a_table_became_exactly_once_are_no_watermark() -> None:
    """Old rows read partition 0 offset 0 and topic id '' (the added columns' defaults):
    offset 0 of the topic is still inserted."""
    h = make("exactly_once", assign=False)
    h.writer.tables["b"] = [{"_chute_partition": 0, "_chute_offset": 0, "_chute_topic_id": "",
                             "n": -1} for _ in range(3)]
    tp_b = TopicPartition("b", 0)
    h.consumer.ends = {tp_b: 10}
    assert h.worker.on_assigned([tp_b]) == {}
    h.feed("b", 0, 10)
    h.step()
    assert [r["n"] for r in h.rows("b")] == [-1] * 3 + list(range(10))


def test_the_topic_id_is_read_again_on_every_assignment() -> None:
    h = make("exactly_once")
    tp_b = TopicPartition("b", 0)
    h.feed("b", 0, 10)
    h.step()
    h.worker.flush_for_revocation([tp_b])
    h.topic_ids["b"] = "id-b-2"
    h.consumer.commits.pop(tp_b)  # Kafka drops a deleted topic's commits, and its records
    h.consumer.log.pop(tp_b)
    h.consumer.position.pop(tp_b)
    h.consumer.ends = {tp_b: 10}
    assert h.worker.on_assigned([tp_b]) == {}
    h.feed("b", 0, 10)
    h.step()
    assert [(r["_chute_topic_id"], r["_chute_offset"]) for r in h.rows("b")] == [
        ("id-b-1", o) for o in range(10)] + [("id-b-2", o) for o in range(10)]
