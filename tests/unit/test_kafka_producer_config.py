"""What every producer on librdkafka (confluent-kafka's and chute.kafka.native's) is told:
the settings the delivery guarantees in README rest on."""

from __future__ import annotations

from chute.kafka import ProducerOptions
from chute.kafka.confluent.producer import librdkafka_producer_config


def test_acknowledged_means_every_in_sync_replica_has_it_once() -> None:
    options = ProducerOptions()
    config = librdkafka_producer_config("127.0.0.1:9092", options)
    # acks=all: an acknowledgement waits for every in-sync replica (min.insync.replicas).
    assert config["acks"] == "all"
    # Idempotence: a batch librdkafka sends again after a lost answer is stored once.
    assert config["enable.idempotence"] is True
    # Internal retries end with the delivery timeout, which the caller is told about.
    assert config["message.timeout.ms"] == options.delivery_timeout_ms
    # Settings a caller passes in `extra` are applied last.
    assert librdkafka_producer_config("b:1", options, {"linger.ms": 7})["linger.ms"] == 7
