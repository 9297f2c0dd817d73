"""The confluent-kafka admin client: topics, partitions, offsets and consumer groups."""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import confluent_kafka
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    NewPartitions,
    NewTopic,
    OffsetSpec,
    ResourceType,
)

from chute.kafka.client_config import backend_config
from chute.kafka.confluent.common import BACKEND, LOG, from_exception, to_client, to_seam
from chute.kafka.seam import (
    MAX_MESSAGE_BYTES,
    GroupMember,
    KafkaClientError,
    KafkaTimeout,
    TopicConfig,
    TopicExists,
    TopicPartition,
)
from chute.kafka.security import PLAINTEXT, KafkaSecurity


class ConfluentAdmin:
    def __init__(self, bootstrap: str, timeout: float = 10.0,
                 extra: Mapping[str, Any] | None = None,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        config = backend_config(BACKEND, {"bootstrap": bootstrap, "client_id": "chute-admin"},
                                security)
        config.update({"socket.connection.setup.timeout.ms": int(timeout * 1000),
                       "logger": LOG})
        config.update(extra or {})
        self._admin = AdminClient(config)
        self._timeout = timeout

    def _result(self, future: Any, context: str) -> Any:
        try:
            return future.result(timeout=self._timeout)
        except KafkaException as exc:
            raise from_exception(exc, context) from None
        except TimeoutError:
            raise KafkaTimeout(f"{context}: no answer within {self._timeout:g} s") from None

    def topic_partitions(self) -> dict[str, int]:
        try:
            metadata = self._admin.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            raise from_exception(exc, "list topics") from None
        return {name: len(t.partitions) for name, t in metadata.topics.items()
                if not name.startswith("__") and t.error is None}

    def create_topic(self, topic: TopicConfig) -> bool:
        new = NewTopic(topic.name, num_partitions=topic.partitions,
                       replication_factor=topic.replication_factor, config=dict(topic.configs))
        futures = self._admin.create_topics([new], operation_timeout=self._timeout)
        try:
            self._result(futures[topic.name], f"create topic {topic.name}")
        except TopicExists:
            return False
        self._wait_for_metadata(topic.name, topic.partitions)
        return True

    def _metadata(self) -> Any:
        try:
            return self._admin.list_topics(timeout=self._timeout)
        except KafkaException as exc:
            raise from_exception(exc, "read cluster metadata") from None

    def broker_count(self) -> int:
        return len(self._metadata().brokers)

    def under_replicated(self) -> dict[str, list[int]]:
        result: dict[str, list[int]] = {}
        for name, t in self._metadata().topics.items():
            if name.startswith("__") or t.error is not None:
                continue
            short = sorted(p.id for p in t.partitions.values() if len(p.isrs) < len(p.replicas))
            if short:
                result[name] = short
        return result

    def _wait_for_metadata(self, topic: str, partitions: int) -> None:
        deadline = time.monotonic() + self._timeout
        while time.monotonic() < deadline:
            found = self._admin.list_topics(topic, timeout=self._timeout).topics.get(topic)
            if found is not None and found.error is None and len(found.partitions) >= partitions:
                return
            time.sleep(0.05)

    def add_partitions(self, topic: str, total: int) -> None:
        futures = self._admin.create_partitions([NewPartitions(topic, total)],
                                                operation_timeout=self._timeout)
        self._result(futures[topic], f"add partitions to {topic}")
        self._wait_for_metadata(topic, total)

    def delete_topic(self, topic: str) -> None:
        futures = self._admin.delete_topics([topic], operation_timeout=self._timeout)
        self._result(futures[topic], f"delete topic {topic}")

    def group_offsets(self, group: str, partitions: Sequence[TopicPartition]
                      ) -> dict[TopicPartition, int | None]:
        from confluent_kafka import ConsumerGroupTopicPartitions

        request = ConsumerGroupTopicPartitions(group, [to_client(tp) for tp in partitions])
        futures = self._admin.list_consumer_group_offsets([request],
                                                          request_timeout=self._timeout)
        answer = self._result(futures[group], f"offsets of group {group}")
        result: dict[TopicPartition, int | None] = {}
        for p in answer.topic_partitions:
            result[to_seam(p)] = p.offset if p.error is None and p.offset >= 0 else None
        return result

    def _offsets(self, partitions: Sequence[TopicPartition], spec: Any
                 ) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        futures = self._admin.list_offsets({to_client(tp): spec for tp in partitions},
                                           request_timeout=self._timeout)
        return {to_seam(ctp): int(self._result(f, "list offsets").offset)
                for ctp, f in futures.items()}

    def start_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return self._offsets(partitions, OffsetSpec.earliest())  # type: ignore[no-untyped-call]

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return self._offsets(partitions, OffsetSpec.latest())  # type: ignore[no-untyped-call]

    def group_members(self, group: str) -> list[str]:
        futures = self._admin.describe_consumer_groups([group],
                                                       request_timeout=self._timeout)
        description = self._result(futures[group], f"describe group {group}")
        return sorted(m.client_id for m in description.members)

    def describe_group(self, group: str) -> list[GroupMember]:
        futures = self._admin.describe_consumer_groups([group],
                                                       request_timeout=self._timeout)
        description = self._result(futures[group], f"describe group {group}")
        members = [GroupMember(
            member_id=m.member_id, client_id=m.client_id, host=m.host.lstrip("/"),
            partitions=tuple(sorted(to_seam(p) for p in (
                m.assignment.topic_partitions if m.assignment else ()))))
            for m in description.members]
        return sorted(members, key=lambda m: (m.client_id, m.member_id))

    def topic_ids(self, topics: Sequence[str]) -> dict[str, str]:
        if not topics:
            return {}
        futures = self._admin.describe_topics(
            confluent_kafka.TopicCollection(list(topics)), request_timeout=self._timeout)
        ids: dict[str, str] = {}
        for name, future in futures.items():
            try:
                description = future.result(timeout=self._timeout)
            except KafkaException as exc:
                if exc.args and exc.args[0].code() == KafkaError.UNKNOWN_TOPIC_OR_PART:
                    continue
                raise from_exception(exc, f"describe topic {name}") from None
            ids[name] = _uuid_text(description.topic_id)
        return ids

    def max_message_bytes(self, topic: str) -> int | None:
        resource = ConfigResource(ResourceType.TOPIC, topic)
        futures = self._admin.describe_configs([resource],
                                               request_timeout=self._timeout)
        try:
            entries = self._result(futures[resource], f"describe configs of topic {topic}")
        except KafkaClientError as exc:
            if exc.code == "UNKNOWN_TOPIC_OR_PART":
                return None
            raise
        entry = entries.get(MAX_MESSAGE_BYTES)
        return None if entry is None or entry.value is None else int(entry.value)

    def close(self) -> None:
        """AdminClient has no close; its threads end when it is collected."""


def _uuid_text(value: confluent_kafka.Uuid) -> str:
    """librdkafka prints a Uuid as the unpadded base64 of its 16 bytes; the canonical form is what
    kafka-python reports too."""
    return str(uuid.UUID(bytes=base64.b64decode(str(value) + "==")))
