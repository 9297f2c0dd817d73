"""Which configurations the linked librdkafka is trusted with (chute.kafka.native.producer):
the ingest API falls back to confluent-kafka's producer for the others."""

from __future__ import annotations

from chute.kafka.native.producer import unsupported, version_tuple


def test_versions_compare_by_their_numbers() -> None:
    assert version_tuple("2.0.2") == (2, 0, 2)
    assert version_tuple("2.6.1-RC1") == (2, 6, 1)
    assert version_tuple("2.10.0") > version_tuple("2.6.1")


def test_scram_needs_a_librdkafka_that_kafka_4_accepts() -> None:
    scram = {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512"}
    reason = unsupported(scram, "2.0.2")
    assert reason is not None and "2.6.1" in reason and "SCRAM-SHA-512" in reason
    assert unsupported({**scram, "sasl.mechanism": "scram-sha-256"}, "2.6.0") is not None
    assert unsupported(scram, "2.6.1") is None
    assert unsupported(scram, "2.8.0") is None


def test_other_settings_are_left_to_librdkafka_itself() -> None:
    assert unsupported({"bootstrap.servers": "127.0.0.1:9092"}, "2.0.2") is None
    assert unsupported({"sasl.mechanism": "PLAIN"}, "2.0.2") is None
