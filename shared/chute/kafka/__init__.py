"""chute's Kafka seam: plain values, three interfaces, two backends.

`CHUTE_KAFKA_CLIENT` chooses the backend: `confluent-kafka` (librdkafka, the default) or
`kafka-python` (pure Python, for platforms without librdkafka wheels). The factories below
are the only place that picks one; the backend packages are imported only when chosen.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any, Literal, get_args

from chute.kafka.seam import (
    DEFAULT_MAX_MESSAGE_BYTES,
    MAX_MESSAGE_BYTES,
    Admin,
    BatchOutcome,
    CommitRebalanced,
    Consumer,
    ConsumerOptions,
    DeliveryCallback,
    GroupMember,
    Headers,
    KafkaClientError,
    KafkaTimeout,
    Producer,
    ProducerOptions,
    RebalanceListener,
    Record,
    RecordBatch,
    RecordTooLarge,
    TopicConfig,
    TopicExists,
    TopicPartition,
)
from chute.kafka.security import KafkaSecurity

KafkaClient = Literal["confluent-kafka", "kafka-python"]
CLIENTS: tuple[str, ...] = get_args(KafkaClient)
DEFAULT_CLIENT: KafkaClient = "confluent-kafka"

__all__ = [
    "CLIENTS",
    "DEFAULT_CLIENT",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "MAX_MESSAGE_BYTES",
    "Admin",
    "BatchOutcome",
    "CommitRebalanced",
    "Consumer",
    "ConsumerOptions",
    "DeliveryCallback",
    "GroupMember",
    "Headers",
    "KafkaClient",
    "KafkaClientError",
    "KafkaSecurity",
    "KafkaTimeout",
    "Producer",
    "ProducerOptions",
    "RebalanceListener",
    "Record",
    "RecordBatch",
    "RecordTooLarge",
    "TopicConfig",
    "TopicExists",
    "TopicPartition",
    "admin",
    "client_from_env",
    "consumer",
    "producer",
    "security_from_env",
]


def client_from_env() -> KafkaClient:
    """The backend named by CHUTE_KAFKA_CLIENT (default confluent-kafka)."""
    name = os.environ.get("CHUTE_KAFKA_CLIENT", DEFAULT_CLIENT).strip() or DEFAULT_CLIENT
    if name not in CLIENTS:
        raise ValueError(f"CHUTE_KAFKA_CLIENT={name!r}: choose one of {', '.join(CLIENTS)}")
    return name  # type: ignore[return-value]


def security_from_env() -> KafkaSecurity:
    """The TLS/SASL settings of the CHUTE_KAFKA_* variables (and their _FILE forms)."""
    from chute.settings import KafkaConnectionSettings, load_settings

    return load_settings(KafkaConnectionSettings).kafka_security()


def producer(bootstrap: str, options: ProducerOptions | None = None, *,
             client: str | None = None, extra: Mapping[str, Any] | None = None,
             security: KafkaSecurity | None = None, native: bool = False) -> Producer:
    """A producer that reports success only once every in-sync replica has the record.
    `extra`: settings in the backend's own vocabulary (tests, special deployments);
    `security`: TLS/SASL, by default from the environment (security_from_env);
    `native`: on librdkafka, chute's batch producer (chute.kafka.native) where it was built and
    the system's librdkafka takes the configuration; otherwise confluent-kafka's (logged)."""
    options = options or ProducerOptions()
    security = security or security_from_env()
    if (client or client_from_env()) == "kafka-python":
        from chute.kafka.kafkapython.producer import KafkaPythonProducer
        return KafkaPythonProducer(bootstrap, options, extra, security)
    if native:
        try:
            from chute.kafka.native.producer import NativeProducer
            return NativeProducer(bootstrap, options, extra, security)
        except (ImportError, ValueError, TypeError) as exc:
            logging.getLogger(__name__).warning(
                "chute's native batch producer is not available, using confluent-kafka's "
                "(about half the records/s per core): %s: %s", type(exc).__name__, exc)
    from chute.kafka.confluent.producer import ConfluentProducer
    return ConfluentProducer(bootstrap, options, extra, security)


def consumer(bootstrap: str, options: ConsumerOptions, *, client: str | None = None,
             extra: Mapping[str, Any] | None = None,
             security: KafkaSecurity | None = None) -> Consumer:
    """A group consumer with manual commits, starting at the earliest offset of partitions
    that have no commit."""
    security = security or security_from_env()
    if (client or client_from_env()) == "kafka-python":
        from chute.kafka.kafkapython.consumer import KafkaPythonConsumer
        return KafkaPythonConsumer(bootstrap, options, extra, security)
    from chute.kafka.confluent.consumer import ConfluentConsumer
    return ConfluentConsumer(bootstrap, options, extra, security)


def admin(bootstrap: str, timeout: float = 10.0, *, client: str | None = None,
          security: KafkaSecurity | None = None) -> Admin:
    security = security or security_from_env()
    if (client or client_from_env()) == "kafka-python":
        from chute.kafka.kafkapython.admin import KafkaPythonAdmin
        return KafkaPythonAdmin(bootstrap, timeout, security=security)
    from chute.kafka.confluent.admin import ConfluentAdmin
    return ConfluentAdmin(bootstrap, timeout, security=security)
