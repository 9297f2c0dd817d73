"""chute's C batch producer (chute.kafka.native) on the real broker: a batch arrives whole and
as sent, is reported once and only after its last record is stored, and every refusal is an
error, never a success.

The ingest API uses this producer by default, so the e2e and fault suites run on it too; this
file holds what only a producer-level test can show (one report per batch, a full queue, a
purge at close).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Iterator

import pytest
from chute import kafka
from chute.kafka import (
    KafkaClientError,
    KafkaTimeout,
    ProducerOptions,
    RecordTooLarge,
    TopicConfig,
)
from chute.kafka.native.producer import NativeProducer

from testkit.reading import read_topic
from tests.support import free_port, wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 3
HEADER = (("chute-model", b"fingerprint-\x00\xff"),)


class Reports:
    """Collects the reports of batches by name; each must come exactly once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.got: dict[str, list[KafkaClientError | None]] = {}
        self._arrived = threading.Condition(self._lock)

    def callback(self, name: str) -> kafka.DeliveryCallback:
        def on_done(error: KafkaClientError | None) -> None:
            with self._lock:
                self.got.setdefault(name, []).append(error)
                self._arrived.notify_all()
        return on_done

    def wait(self, names: set[str], timeout: float) -> None:
        with self._lock:
            assert self._arrived.wait_for(lambda: names <= self.got.keys(), timeout), (
                f"no report for {names - self.got.keys()} within {timeout} s")


@pytest.fixture
def topic(kafka_bootstrap: str, unique_name: str) -> Iterator[str]:
    admin = kafka.admin(kafka_bootstrap)
    assert admin.create_topic(TopicConfig(unique_name, PARTITIONS, {}))
    yield unique_name
    admin.delete_topic(unique_name)
    admin.close()


@pytest.fixture
def producer(kafka_bootstrap: str) -> Iterator[NativeProducer]:
    p = kafka.producer(kafka_bootstrap, ProducerOptions(linger_ms=1), native=True)
    # Not the confluent-kafka fallback: the extension must have been built here.
    assert isinstance(p, NativeProducer)
    yield p
    p.close(timeout=5)


def test_batches_arrive_whole_as_sent_and_are_reported_once(
        kafka_bootstrap: str, topic: str, producer: NativeProducer) -> None:
    reports = Reports()
    sent: dict[tuple[int, bytes], tuple[bytes | None, int]] = {}
    for b in range(5):
        values = [f"batch-{b}-record-{i}-\u00e9".encode() + bytes([i % 256]) for i in range(400)]
        keys: list[bytes | None] = (
            [f"key-{i}".encode() for i in range(400)] if b % 2 else [None] * 400)
        partitions = [(i + b) % PARTITIONS for i in range(400)]
        for value, key, partition in zip(values, keys, partitions, strict=True):
            sent[(partition, value)] = (key, partition)
        producer.send_batch(topic, values, keys, partitions, HEADER,
                            reports.callback(f"batch-{b}"), block=True)
    names = {f"batch-{b}" for b in range(5)}
    reports.wait(names, timeout=20)
    assert reports.got == {name: [None] for name in names}

    got = read_topic(kafka_bootstrap, topic, len(sent))
    assert len(got) == len(sent) == 2_000  # none lost, none twice
    for record in got:
        key, partition = sent[(record.partition, record.value)]
        assert record.key == key
        assert record.headers == HEADER


def test_an_empty_batch_is_reported_done(topic: str, producer: NativeProducer) -> None:
    reports = Reports()
    producer.send_batch(topic, [], [], [], HEADER, reports.callback("empty"))
    assert reports.got == {"empty": [None]}


def test_a_record_too_large_is_refused_and_its_batch_never_reported(
        kafka_bootstrap: str, topic: str) -> None:
    producer = kafka.producer(kafka_bootstrap, ProducerOptions(max_request_bytes=10_000),
                              native=True)
    reports = Reports()
    try:
        with pytest.raises(RecordTooLarge):
            producer.send(topic, b"x" * 20_000, partition=0, headers=HEADER,
                          on_delivery=reports.callback("big"))
        producer.flush(5)
    finally:
        producer.close(timeout=5)
    assert reports.got == {}  # the request is answered from the exception, not a report


def test_an_unknown_partition_is_an_error_never_a_success(
        topic: str, producer: NativeProducer) -> None:
    reports = Reports()
    try:
        producer.send_batch(topic, [b"a", b"b"], [None, None], [0, PARTITIONS + 5], HEADER,
                            reports.callback("bad"))
    except KafkaClientError:
        return  # refused while handing over (metadata known)
    reports.wait({"bad"}, timeout=20)  # or failed when librdkafka learnt the partition count
    [error] = reports.got["bad"]
    assert error is not None


def test_an_unreachable_broker_fails_the_batch_after_the_delivery_timeout() -> None:
    dead = f"127.0.0.1:{free_port()}"
    producer = kafka.producer(dead, ProducerOptions(
        delivery_timeout_ms=1_500, request_timeout_ms=1_000, bootstrap_timeout_ms=0),
        native=True)
    reports = Reports()
    try:
        producer.send(dead_topic := "nowhere", b"v", partition=0, headers=HEADER,
                      on_delivery=reports.callback(dead_topic))
        reports.wait({dead_topic}, timeout=15)
    finally:
        producer.close(timeout=0)
    [error] = reports.got[dead_topic]
    assert isinstance(error, KafkaTimeout)


def test_the_constructor_reports_an_unreachable_broker() -> None:
    with pytest.raises(KafkaClientError):
        kafka.producer(f"127.0.0.1:{free_port()}", ProducerOptions(bootstrap_timeout_ms=1_000),
                       native=True)


def test_a_full_queue_refuses_at_once_or_after_max_block_and_close_fails_the_rest() -> None:
    dead = f"127.0.0.1:{free_port()}"  # nothing drains the queue
    producer = kafka.producer(dead, ProducerOptions(
        max_block_ms=300, delivery_timeout_ms=60_000, bootstrap_timeout_ms=0),
        extra={"queue.buffering.max.messages": 10}, native=True)
    assert isinstance(producer, NativeProducer)
    reports = Reports()
    values = [b"v"] * 6
    nones: list[bytes | None] = [None] * 6
    zeros = [0] * 6
    producer.send_batch("t", values, nones, zeros, HEADER, reports.callback("fits"))
    with pytest.raises(KafkaTimeout, match="buffer full"):
        producer.send_batch("t", values, nones, zeros, HEADER, reports.callback("refused"),
                            block=False)
    with pytest.raises(KafkaTimeout, match=r"buffer full for 0\.3 s"):
        producer.send_batch("t", values, nones, zeros, HEADER, reports.callback("waited"))
    assert reports.got == {}
    producer.close(timeout=0)  # what is queued is failed, and its batch reported failed
    assert set(reports.got) == {"fits"}
    [error] = reports.got["fits"]
    assert error is not None


def test_an_event_loop_can_hand_the_reports_on_itself(
        topic: str, producer: NativeProducer) -> None:
    """After report_on(loop), a batch's report runs on the loop's thread (no thread switch);
    after the detach, on the report thread again."""
    loop = asyncio.new_event_loop()
    threads: list[int] = []
    try:
        async def one_batch() -> KafkaClientError | None:
            done: asyncio.Future[KafkaClientError | None] = loop.create_future()

            def on_done(error: KafkaClientError | None) -> None:
                threads.append(threading.get_ident())
                done.set_result(error)
            producer.send_batch(topic, [b"a", b"b"], [None, None], [0, 1], HEADER, on_done)
            return await asyncio.wait_for(done, 20)

        async def attached() -> None:
            detach = producer.report_on(asyncio.get_running_loop())
            try:
                assert await one_batch() is None
            finally:
                detach()

        loop.run_until_complete(attached())
        assert threads == [threading.get_ident()]
    finally:
        loop.close()
    reports = Reports()
    producer.send_batch(topic, [b"c"], [None], [2], HEADER, reports.callback("after"))
    reports.wait({"after"}, timeout=20)
    assert reports.got == {"after": [None]}


def test_close_while_other_threads_are_inside_the_producer(
        kafka_bootstrap: str, topic: str) -> None:
    """close() while other threads send, flush and ask for metadata (the last two wait
    without the interpreter lock): nothing crashes, and each thread then hears that the
    producer is closed."""
    producer = kafka.producer(kafka_bootstrap, ProducerOptions(linger_ms=20), native=True)
    assert isinstance(producer, NativeProducer)
    calls: dict[str, Callable[[], object]] = {
        "flush": lambda: producer.flush(0.05),
        "metadata": lambda: producer.partitions_for(topic),
        "send": lambda: producer.send_batch(topic, [b"x"] * 100, [None] * 100, [0] * 100,
                                            HEADER, lambda _error: None, block=False),
    }
    made = dict.fromkeys(calls, 0)
    ended: dict[str, str] = {}

    def keep_calling(name: str) -> None:
        while True:
            try:
                calls[name]()
            except RuntimeError as exc:
                ended[name] = str(exc)
                return
            except KafkaTimeout:
                pass  # the queue is full for a moment: go on
            made[name] += 1

    threads = [threading.Thread(target=keep_calling, args=(name,), daemon=True)
               for name in calls]
    for thread in threads:
        thread.start()
    wait_for(lambda: min(made.values()) >= 3, timeout=20, what="three calls of each kind")
    producer.close(timeout=1)
    for thread in threads:
        thread.join(timeout=10)
    assert not any(thread.is_alive() for thread in threads)
    assert ended == dict.fromkeys(calls, "producer is closed")
