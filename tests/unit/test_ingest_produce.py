"""KafkaSink: partitions looked up once per refresh interval, not once per request."""

from __future__ import annotations

import asyncio

from chute.kafka import DeliveryCallback, Headers
from ingest_api.body import EncodedBatch
from ingest_api.produce import PARTITIONS_REFRESH_SECONDS, AckWaiter, KafkaSink

from schemas.events import Event


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
