"""The confluent-kafka producer: sends from the caller's thread, delivery reports from one
daemon thread that polls librdkafka."""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException, Message

from chute.kafka.client_config import backend_config, producer_settings
from chute.kafka.confluent.common import BACKEND, LOG, client_error, from_exception
from chute.kafka.seam import (
    BatchOutcome,
    DeliveryCallback,
    Headers,
    KafkaTimeout,
    Producer,
    ProducerOptions,
)
from chute.kafka.security import PLAINTEXT, KafkaSecurity


def librdkafka_producer_config(bootstrap: str, options: ProducerOptions,
                               extra: Mapping[str, Any] | None = None,
                               security: KafkaSecurity = PLAINTEXT) -> dict[str, Any]:
    """The librdkafka configuration of every chute producer on librdkafka (this one and
    chute.kafka.native's)."""
    config = backend_config(BACKEND, producer_settings(bootstrap, options), security)
    config.update({
        "message.timeout.ms": options.delivery_timeout_ms,
        "message.max.bytes": options.max_request_bytes,
        "compression.type": "none",
        # The broker drops what librdkafka's internal retries send twice (a leader lost
        # after it stored a batch but before it answered), so one send is one record in
        # the log; librdkafka recovers from expired batches by bumping its epoch.
        "enable.idempotence": True,
        # Internal retries never outlive message.timeout.ms.
        "socket.connection.setup.timeout.ms": max(1_000, options.request_timeout_ms),
    })
    config.update(extra or {})
    return config


class ConfluentProducer(Producer):
    def __init__(self, bootstrap: str, options: ProducerOptions,
                 extra: Mapping[str, Any] | None = None,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        config = librdkafka_producer_config(bootstrap, options, extra, security)
        config["logger"] = LOG
        self._max_block = options.max_block_ms / 1000
        self._producer = confluent_kafka.Producer(config)
        if options.bootstrap_timeout_ms > 0:
            # librdkafka connects lazily: ask for metadata so that a broker nobody can reach
            # is reported now, as kafka-python does.
            try:
                self._producer.list_topics(timeout=options.bootstrap_timeout_ms / 1000)
            except KafkaException as exc:
                raise from_exception(exc, f"connect to {bootstrap}") from None
        self._closed = threading.Event()
        self._poller = threading.Thread(target=self._serve_callbacks,
                                        name="kafka-delivery", daemon=True)
        self._poller.start()

    def _serve_callbacks(self) -> None:
        while not self._closed.is_set():
            self._producer.poll(0.05)

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             partition: int | None = None, headers: Headers = (),
             on_delivery: DeliveryCallback | None = None) -> None:
        kwargs: dict[str, Any] = {}
        if partition is not None:
            kwargs["partition"] = partition
        if headers:
            kwargs["headers"] = list(headers)
        if on_delivery is not None:
            def report(err: KafkaError | None, _msg: Message,
                       callback: DeliveryCallback = on_delivery) -> None:
                callback(None if err is None else client_error(err, f"produce to {topic}"))
            kwargs["on_delivery"] = report
        deadline: float | None = None
        while True:
            try:
                self._producer.produce(topic, value, key, **kwargs)
                return
            except BufferError:
                # The local queue is full: wait for deliveries to free space, up to max_block.
                now = time.monotonic()
                if deadline is None:
                    deadline = now + self._max_block
                if now >= deadline:
                    raise KafkaTimeout(
                        f"producer buffer full for {self._max_block:g} s (topic {topic})"
                    ) from None
                time.sleep(0.005)
            except KafkaException as exc:
                raise from_exception(exc, f"produce to {topic}") from None

    def send_batch(self, topic: str, values: Sequence[bytes],
                   keys: Sequence[bytes | None], partitions: Sequence[int],
                   headers: Headers, on_done: DeliveryCallback,
                   block: bool = True) -> None:
        """send() for many records with one header list, reported once (BatchOutcome): no
        per-record closure or keyword dict (a third of the per-record cost of send()).

        `block` False: a full local queue raises KafkaTimeout at once instead of waiting up
        to max_block for space (for callers on an event loop). Records handed over before an
        exception may still be delivered; `on_done` is then never called with success.
        """
        header_list: list[tuple[str, str | bytes | None]] = list(headers)
        outcome = BatchOutcome(len(values), on_done)

        def report(err: KafkaError | None, _msg: Message) -> None:
            outcome(None if err is None else client_error(err, f"produce to {topic}"))

        produce = self._producer.produce
        for value, key, partition in zip(values, keys, partitions, strict=True):
            try:
                produce(topic, value, key, partition, report, headers=header_list)
            except BufferError:
                if not block:
                    raise KafkaTimeout(f"producer buffer full (topic {topic})") from None
                self.send(topic, value, key=key, partition=partition, headers=headers,
                          on_delivery=outcome)  # waits for space up to max_block
            except KafkaException as exc:
                raise from_exception(exc, f"produce to {topic}") from None

    def partitions_for(self, topic: str) -> list[int]:
        try:
            metadata = self._producer.list_topics(topic, timeout=self._max_block)
        except KafkaException as exc:
            raise from_exception(exc, f"metadata for {topic}") from None
        found = metadata.topics.get(topic)
        if found is None or found.error is not None or not found.partitions:
            raise LookupError(f"no partitions known for topic {topic!r}")
        return sorted(found.partitions)

    def flush(self, timeout: float) -> None:
        self._producer.flush(timeout)

    def close(self, timeout: float) -> None:
        self._producer.flush(timeout)
        self._closed.set()
        self._poller.join(timeout=1)
