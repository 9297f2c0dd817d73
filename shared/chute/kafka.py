"""Kafka adapter: admin operations, producer and consumer factories (kafka-python)."""

from __future__ import annotations

from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.errors import TopicAlreadyExistsError

from chute.registry import TopicSpec


def admin_client(bootstrap: str, timeout_ms: int = 10_000) -> KafkaAdminClient:
    return KafkaAdminClient(
        bootstrap_servers=bootstrap, client_id="chute-admin", request_timeout_ms=timeout_ms)


def topic_partitions(admin: KafkaAdminClient) -> dict[str, int]:
    """{topic: partition count} for every non-internal topic."""
    result = {}
    for topic in admin.describe_topics():
        if topic.get("is_internal") or str(topic["name"]).startswith("__"):
            continue
        result[str(topic["name"])] = len(topic["partitions"])
    return result


def create_topic(admin: KafkaAdminClient, spec: TopicSpec) -> bool:
    """Create the topic; False when it already existed."""
    try:
        admin.create_topics(
            {spec.name: {
                "num_partitions": spec.partitions,
                "replication_factor": -1,  # the broker's default.replication.factor
                "configs": {"retention.ms": str(spec.retention_ms)},
            }},
            wait_for_metadata=True,
        )
    except TopicAlreadyExistsError:
        return False
    return True


def add_partitions(admin: KafkaAdminClient, topic: str, total: int) -> None:
    admin.create_partitions({topic: total})


def producer(bootstrap: str, **overrides: Any) -> KafkaProducer:
    """A producer that only reports success once every in-sync replica has the record."""
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "acks": "all",
        "linger_ms": 5,
        "batch_size": 512 * 1024,
        "max_request_size": 16 * 1024 * 1024,
        "compression_type": None,
        "delivery_timeout_ms": 30_000,
        # kafka-python 3.0.12's idempotent producer never recovers once batches expired
        # while the broker was down (seen in the Kafka-outage fault test), so: no idempotence
        # and no internal retries, which could then reorder or duplicate. A failed send is
        # reported to the caller (ingest answers 503; the sync worker retries the batch).
        "enable_idempotence": False,
        "retries": 0,
        "request_timeout_ms": 10_000,
        "metrics_enabled": False,  # kafka-python's own metrics cost CPU; we export ours
        # Reconnect within ~2 s of a broker coming back (the default backs off up to 30 s).
        "reconnect_backoff_max_ms": 2_000,
        "max_block_ms": 5_000,
        "client_id": "chute",
    }
    config.update(overrides)
    return KafkaProducer(**config)


def consumer(bootstrap: str, group_id: str, **overrides: Any) -> KafkaConsumer:
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap,
        "group_id": group_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "max_poll_records": 20_000,
        # Fetched-but-unpolled data is held by the client too: keep it to a few batches.
        "fetch_max_bytes": 32 * 1024 * 1024,
        "max_partition_fetch_bytes": 8 * 1024 * 1024,
        # A killed worker's partitions move after 6 s (the broker's minimum session).
        "session_timeout_ms": 6_000,
        "heartbeat_interval_ms": 1_500,
        "max_poll_interval_ms": 300_000,
        "client_id": "chute-sync",
        "fetch_max_wait_ms": 100,  # a fetch waiting for data must not delay a due flush
        "metrics_enabled": False,
        "reconnect_backoff_max_ms": 2_000,
    }
    config.update(overrides)
    return KafkaConsumer(**config)
