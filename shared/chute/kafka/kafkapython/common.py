"""What the kafka-python producer, consumer and admin share: the backend's name and the
translation of kafka-python's errors and topic-partitions into the seam's."""

from __future__ import annotations

from typing import Any

import kafka.errors as kerrors
from kafka import TopicPartition as KTopicPartition

from chute.kafka.seam import (
    CommitRebalanced,
    KafkaClientError,
    KafkaTimeout,
    RecordTooLarge,
    TopicExists,
    TopicPartition,
)
from chute.kafka.security import Backend

BACKEND: Backend = "kafka-python"

_REBALANCED = (kerrors.CommitFailedError, kerrors.RebalanceInProgressError,
               kerrors.IllegalGenerationError, kerrors.UnknownMemberIdError)
_TOO_LARGE = (kerrors.MessageSizeTooLargeError, kerrors.RecordListTooLargeError)


def client_error(exc: BaseException, context: str) -> KafkaClientError:
    message = f"{context}: {type(exc).__name__}: {exc}"
    name = type(exc).__name__
    if isinstance(exc, KafkaClientError):
        return exc
    if isinstance(exc, _REBALANCED):
        return CommitRebalanced(message, code=name)
    if isinstance(exc, _TOO_LARGE):
        return RecordTooLarge(message, code=name)
    if isinstance(exc, kerrors.TopicAlreadyExistsError):
        return TopicExists(message)
    if isinstance(exc, kerrors.KafkaTimeoutError):
        return KafkaTimeout(message, retriable=True, code=name)
    retriable = isinstance(exc, kerrors.KafkaError) and bool(getattr(exc, "retriable", False))
    return KafkaClientError(message, retriable=retriable or isinstance(exc, OSError), code=name)


def to_client(tp: TopicPartition) -> KTopicPartition:
    return KTopicPartition(tp.topic, tp.partition)


def to_seam(ktp: Any) -> TopicPartition:
    return TopicPartition(ktp.topic, ktp.partition)
