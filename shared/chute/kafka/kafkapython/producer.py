"""The kafka-python producer: each send's future reports its delivery."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import kafka.errors as kerrors
from kafka import KafkaProducer

from chute.kafka.client_config import backend_config, producer_settings
from chute.kafka.kafkapython.common import BACKEND, client_error
from chute.kafka.seam import DeliveryCallback, Headers, Producer, ProducerOptions
from chute.kafka.security import PLAINTEXT, KafkaSecurity


class KafkaPythonProducer(Producer):
    def __init__(self, bootstrap: str, options: ProducerOptions,
                 extra: Mapping[str, Any] | None = None,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        config = backend_config(BACKEND, producer_settings(bootstrap, options), security)
        config.update({
            "batch_size": 512 * 1024,
            "max_request_size": options.max_request_bytes,
            "compression_type": None,
            "delivery_timeout_ms": options.delivery_timeout_ms,
            # kafka-python 3.0.12's idempotent producer never recovers once batches expired
            # while the broker was down (seen in the Kafka-outage fault test), so: no
            # idempotence and no internal retries, which could then reorder or duplicate. A
            # failed send is reported to the caller.
            "retries": 0,
            "enable_idempotence": False,
            "metrics_enabled": False,  # kafka-python's own metrics cost CPU
            "max_block_ms": options.max_block_ms,
            "bootstrap_timeout_ms": options.bootstrap_timeout_ms,
        })
        config.update(extra or {})
        try:
            self._producer = KafkaProducer(**config)
        except kerrors.KafkaError as exc:
            raise client_error(exc, f"connect to {bootstrap}") from None

    def send(self, topic: str, value: bytes, *, key: bytes | None = None,
             partition: int | None = None, headers: Headers = (),
             on_delivery: DeliveryCallback | None = None) -> None:
        try:
            future = self._producer.send(topic, value=value, key=key, partition=partition,
                                         headers=list(headers) if headers else None)
        except kerrors.KafkaError as exc:
            raise client_error(exc, f"produce to {topic}") from None
        if on_delivery is not None:
            callback = on_delivery
            future.add_callback(lambda _metadata: callback(None))
            future.add_errback(lambda exc: callback(client_error(exc, f"produce to {topic}")))

    def partitions_for(self, topic: str) -> list[int]:
        try:
            found = self._producer.partitions_for(topic)
        except kerrors.KafkaError as exc:
            raise client_error(exc, f"metadata for {topic}") from None
        if not found:
            raise LookupError(f"no partitions known for topic {topic!r}")
        return sorted(found)

    def flush(self, timeout: float) -> None:
        try:
            self._producer.flush(timeout=timeout)
        except kerrors.KafkaError as exc:
            raise client_error(exc, "flush") from None

    def close(self, timeout: float) -> None:
        self._producer.close(timeout=timeout)
