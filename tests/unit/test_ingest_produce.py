"""KafkaSink: partitions looked up once per refresh interval, not once per request; records
of small bodies handed over without blocking, a full producer queue answered at once."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import orjson
from chute.kafka import BatchOutcome, DeliveryCallback, Headers, KafkaTimeout
from fastapi.testclient import TestClient
from ingest_api.body import EncodedBatch
from ingest_api.produce import PARTITIONS_REFRESH_SECONDS, AckWaiter, KafkaSink
from ingest_api.service import INLINE_BODY_BYTES

from schemas.events import Event
from tests.unit.test_ingest_app import URL, FakeProducer, event, make_app


class CountingProducer:
    def __init__(self, partitions: int) -> None:
        self.partitions = partitions
        self.lookups = 0
        self.sent: list[int] = []

    def partitions_for(self, topic: str) -> list[int]:
        self.lookups += 1
        return list(range(self.partitions))

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             partition: int | None = None, headers: Headers = (),
             on_delivery: DeliveryCallback | None = None) -> None:
        assert partition is not None and on_delivery is not None
        self.sent.append(partition)
        on_delivery(None)


def test_partitions_are_cached_until_the_refresh_interval_passed() -> None:
    now = [100.0]
    producer = CountingProducer(partitions=2)
    sink = KafkaSink(producer, {"t": Event}, clock=lambda: now[0])
    loop = asyncio.new_event_loop()
    try:
        assert not sink.knows("t")
        assert sink.partitions("t") == [0, 1]
        for _ in range(50):
            sink.send("t", EncodedBatch([b"{}"]), AckWaiter(loop))
        assert producer.lookups == 1
        assert sink.knows("t")
        now[0] += PARTITIONS_REFRESH_SECONDS + 0.1
        assert not sink.knows("t")  # the app looks them up again, off the hot path
        producer.partitions = 3
        assert sink.partitions("t") == [0, 1, 2]
        for _ in range(3):
            sink.send("t", EncodedBatch([b"{}"]), AckWaiter(loop))
        assert producer.lookups == 2
        assert sorted(producer.sent[-3:]) == [0, 1, 2]  # the added partition is used
    finally:
        loop.close()


class BatchFakeProducer(FakeProducer):
    """A producer that takes whole batches and can refuse instead of blocking, like the
    confluent-kafka one; `full`: its local queue is full."""

    def __init__(self) -> None:
        super().__init__()
        self.full = False
        self.blocking: list[bool] = []

    def send_batch(self, topic: str, values: Sequence[bytes],
                   keys: Sequence[bytes | None], partitions: Sequence[int],
                   headers: Headers, on_done: DeliveryCallback,
                   block: bool = True) -> None:
        self.blocking.append(block)
        if self.full and not block:
            raise KafkaTimeout(f"producer buffer full (topic {topic})")
        outcome = BatchOutcome(len(values), on_done)
        for value, key, partition in zip(values, keys, partitions, strict=True):
            self.send(topic, value, key=key, partition=partition, headers=headers,
                      on_delivery=outcome)


def test_small_bodies_are_sent_without_blocking_and_large_ones_from_the_pool() -> None:
    producer = BatchFakeProducer()
    with TestClient(make_app(producer, ingest_max_body_bytes=1 << 20)) as client:
        assert client.post(URL, json=event(0)).json() == {"accepted": 1}  # metadata: pool
        assert client.post(URL, json=event(1)).json() == {"accepted": 1}
        many = [event(i) for i in range(200)]  # over INLINE_BODY_BYTES
        assert len(orjson.dumps(many)) > INLINE_BODY_BYTES
        assert client.post(URL, json=many).json() == {"accepted": 200}
    assert producer.blocking == [True, False, True]
    assert producer.acked == 202


def test_a_full_producer_queue_is_answered_503_at_once_for_a_small_body() -> None:
    producer = BatchFakeProducer()
    with TestClient(make_app(producer)) as client:
        assert client.post(URL, json=event(0)).status_code == 200  # the topic's metadata
        producer.full = True
        response = client.post(URL, json=event(1))
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1"
    # refused by the producer, not answered after the ack timeout ("did not acknowledge")
    assert "producer buffer full" in response.json()["error"]
    assert len(producer.sent) == 1  # only the first request's record
