"""What the confluent-kafka producer, consumer and admin share: the backend's name,
librdkafka's log, and the translation of librdkafka's errors and topic-partitions into the
seam's."""

from __future__ import annotations

import logging

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka import TopicPartition as CTopicPartition

from chute.kafka.seam import (
    CommitRebalanced,
    KafkaClientError,
    KafkaTimeout,
    RecordTooLarge,
    TopicExists,
    TopicPartition,
)
from chute.kafka.security import Backend

BACKEND: Backend = "confluent-kafka"

# librdkafka's own log lines (connection refused, ...) go to Python logging, not stderr.
LOG = logging.getLogger("chute.kafka.librdkafka")

_REBALANCED = {
    KafkaError.REBALANCE_IN_PROGRESS, KafkaError.ILLEGAL_GENERATION,
    KafkaError.UNKNOWN_MEMBER_ID, KafkaError._ASSIGNMENT_LOST, KafkaError.FENCED_INSTANCE_ID,
}
_TIMEOUTS = {KafkaError._TIMED_OUT, KafkaError._MSG_TIMED_OUT, KafkaError.REQUEST_TIMED_OUT}


def client_error(err: KafkaError | None, context: str) -> KafkaClientError:
    if err is None:
        return KafkaClientError(f"{context}: unknown error")
    code = err.code()
    message = f"{context}: {err.str()}"
    name = err.name()
    if code in _REBALANCED:
        return CommitRebalanced(message, code=name)
    if code == KafkaError.MSG_SIZE_TOO_LARGE:
        return RecordTooLarge(message, code=name)
    if code == KafkaError.TOPIC_ALREADY_EXISTS:
        return TopicExists(message)
    if code in _TIMEOUTS:
        return KafkaTimeout(message, retriable=True, code=name)
    return KafkaClientError(message, retriable=bool(err.retriable()), code=name)


def from_exception(exc: KafkaException, context: str) -> KafkaClientError:
    arg = exc.args[0] if exc.args else None
    return client_error(arg if isinstance(arg, KafkaError) else None, f"{context}: {exc}"
                        if not isinstance(arg, KafkaError) else context)


def to_client(tp: TopicPartition, offset: int | None = None) -> CTopicPartition:
    if offset is None:
        return CTopicPartition(tp.topic, tp.partition)
    return CTopicPartition(tp.topic, tp.partition, offset)


def to_seam(ctp: CTopicPartition) -> TopicPartition:
    return TopicPartition(ctp.topic, ctp.partition)
