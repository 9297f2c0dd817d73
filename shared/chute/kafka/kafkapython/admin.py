"""The kafka-python admin client: topics, partitions, offsets and consumer groups."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import kafka.errors as kerrors
from kafka import KafkaAdminClient
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic, OffsetSpec

from chute.kafka.client_config import backend_config
from chute.kafka.kafkapython.common import BACKEND, client_error, to_client, to_seam
from chute.kafka.seam import MAX_MESSAGE_BYTES, GroupMember, TopicConfig, TopicPartition
from chute.kafka.security import PLAINTEXT, KafkaSecurity


class KafkaPythonAdmin:
    def __init__(self, bootstrap: str, timeout: float = 10.0,
                 extra: Mapping[str, Any] | None = None,
                 security: KafkaSecurity = PLAINTEXT) -> None:
        config = backend_config(BACKEND, {
            "bootstrap": bootstrap, "client_id": "chute-admin",
            "request_timeout_ms": int(timeout * 1000)}, security)
        config["bootstrap_timeout_ms"] = int(timeout * 1000)
        config.update(extra or {})
        try:
            self._admin = KafkaAdminClient(**config)
        except kerrors.KafkaError as exc:
            raise client_error(exc, f"connect to {bootstrap}") from None

    def topic_partitions(self) -> dict[str, int]:
        try:
            topics = self._admin.describe_topics()
        except kerrors.KafkaError as exc:
            raise client_error(exc, "list topics") from None
        return {str(t["name"]): len(t["partitions"]) for t in topics
                if not t.get("is_internal") and not str(t["name"]).startswith("__")}

    def create_topic(self, topic: TopicConfig) -> bool:
        try:
            self._admin.create_topics(
                [NewTopic(topic.name, topic.partitions, topic.replication_factor,
                          topic_configs=dict(topic.configs))],
                wait_for_metadata=True)
        except kerrors.TopicAlreadyExistsError:
            return False
        except kerrors.KafkaError as exc:
            raise client_error(exc, f"create topic {topic.name}") from None
        return True

    def broker_count(self) -> int:
        try:
            return len(self._admin.describe_cluster()["brokers"])
        except kerrors.KafkaError as exc:
            raise client_error(exc, "describe cluster") from None

    def under_replicated(self) -> dict[str, list[int]]:
        try:
            topics = self._admin.describe_topics()
        except kerrors.KafkaError as exc:
            raise client_error(exc, "describe topics") from None
        result: dict[str, list[int]] = {}
        for t in topics:
            name = str(t["name"])
            if t.get("is_internal") or name.startswith("__"):
                continue
            short = sorted(int(p["partition_index"]) for p in t["partitions"]
                           if len(p["isr_nodes"]) < len(p["replica_nodes"]))
            if short:
                result[name] = short
        return result

    def add_partitions(self, topic: str, total: int) -> None:
        try:
            self._admin.create_partitions({topic: NewPartitions(total)})
        except kerrors.KafkaError as exc:
            raise client_error(exc, f"add partitions to {topic}") from None

    def delete_topic(self, topic: str) -> None:
        try:
            self._admin.delete_topics([topic])
        except kerrors.KafkaError as exc:
            raise client_error(exc, f"delete topic {topic}") from None

    def group_offsets(self, group: str, partitions: Sequence[TopicPartition]
                      ) -> dict[TopicPartition, int | None]:
        try:
            found = self._admin.list_group_offsets(
                {group: [to_client(tp) for tp in partitions]}).get(group, {})
        except kerrors.KafkaError as exc:
            raise client_error(exc, f"offsets of group {group}") from None
        result: dict[TopicPartition, int | None] = {}
        for tp in partitions:
            mark = found.get(to_client(tp))
            result[tp] = mark.offset if mark is not None and mark.offset >= 0 else None
        return result

    def _offsets(self, partitions: Sequence[TopicPartition], spec: Any
                 ) -> dict[TopicPartition, int]:
        if not partitions:
            return {}
        try:
            found = self._admin.list_partition_offsets({to_client(tp): spec for tp in partitions})
        except kerrors.KafkaError as exc:
            raise client_error(exc, "list offsets") from None
        return {to_seam(k): int(v.offset) for k, v in found.items()}

    def start_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return self._offsets(partitions, OffsetSpec.EARLIEST)

    def end_offsets(self, partitions: Sequence[TopicPartition]) -> dict[TopicPartition, int]:
        return self._offsets(partitions, OffsetSpec.LATEST)

    def group_members(self, group: str) -> list[str]:
        try:
            groups = self._admin.describe_groups([group])
        except kerrors.KafkaError as exc:
            raise client_error(exc, f"describe group {group}") from None
        members: list[str] = []
        for description in (groups.values() if isinstance(groups, dict) else groups):
            for member in _field(description, "members") or ():
                members.append(str(_field(member, "client_id")))
        return sorted(members)

    def describe_group(self, group: str) -> list[GroupMember]:
        try:
            groups = self._admin.describe_groups([group])
        except kerrors.KafkaError as exc:
            raise client_error(exc, f"describe group {group}") from None
        members: list[GroupMember] = []
        for description in (groups.values() if isinstance(groups, dict) else groups):
            for member in _field(description, "members") or ():
                assignment = _field(member, "member_assignment")
                members.append(GroupMember(
                    member_id=str(_field(member, "member_id")),
                    client_id=str(_field(member, "client_id")),
                    host=str(_field(member, "client_host")).lstrip("/"),
                    partitions=_assigned(assignment)))
        return sorted(members, key=lambda m: (m.client_id, m.member_id))

    def topic_ids(self, topics: Sequence[str]) -> dict[str, str]:
        if not topics:
            return {}
        try:
            described = self._admin.describe_topics(list(topics))
        except kerrors.UnknownTopicOrPartitionError:
            described = []
        except kerrors.KafkaError as exc:
            raise client_error(exc, "describe topics") from None
        return {str(t["name"]): str(uuid.UUID(str(t["topic_id"]))) for t in described
                if not t.get("error_code") and t.get("topic_id")}

    def max_message_bytes(self, topic: str) -> int | None:
        resource = ConfigResource(ConfigResourceType.TOPIC, topic, {MAX_MESSAGE_BYTES: None})
        try:
            found = self._admin.describe_configs([resource], config_filter="all")
        except kerrors.UnknownTopicOrPartitionError:
            return None
        except kerrors.KafkaError as exc:
            raise client_error(exc, f"describe configs of topic {topic}") from None
        entry = found.get("topic", {}).get(topic, {}).get(MAX_MESSAGE_BYTES)
        return None if not entry or entry.get("value") is None else int(entry["value"])

    def close(self) -> None:
        self._admin.close()


def _assigned(assignment: Any) -> tuple[TopicPartition, ...]:
    """A member's parsed assignment: {"assigned_partitions": [{"topic", "partitions"}]}."""
    found = [TopicPartition(str(_field(entry, "topic")), int(p))
             for entry in (_field(assignment, "assigned_partitions") or ()) if assignment
             for p in _field(entry, "partitions") or ()]
    return tuple(sorted(found))


def _field(value: Any, name: str) -> Any:
    """describe_groups answers dicts or named tuples, by kafka-python version."""
    if isinstance(value, dict):
        return value.get(name)
    return getattr(value, name, None)
