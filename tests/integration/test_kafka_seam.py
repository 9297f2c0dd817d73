"""The Kafka seam's contract, held against the real broker by both backends.

Each test runs once per backend (`client` fixture: confluent-kafka, kafka-python) on a fresh
topic and group.
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import pytest
from chute import kafka
from chute.kafka import (
    CLIENTS,
    Consumer,
    ConsumerOptions,
    KafkaClientError,
    ProducerOptions,
    Record,
    TopicConfig,
    TopicPartition,
)
from chute.kafka.kafkapython.consumer import KafkaPythonConsumer

from tests.support import wait_for

pytestmark = pytest.mark.integration

PARTITIONS = 3


@pytest.fixture(params=CLIENTS)
def client(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def seam_admin(kafka_bootstrap: str, client: str) -> Iterator[kafka.Admin]:
    admin = kafka.admin(kafka_bootstrap, client=client)
    yield admin
    admin.close()


@pytest.fixture
def topic(seam_admin: kafka.Admin, unique_name: str) -> Iterator[str]:
    assert seam_admin.create_topic(TopicConfig(unique_name, PARTITIONS, {}))
    yield unique_name
    seam_admin.delete_topic(unique_name)


@pytest.fixture
def producer(kafka_bootstrap: str, client: str) -> Iterator[kafka.Producer]:
    p = kafka.producer(kafka_bootstrap, ProducerOptions(linger_ms=0), client=client)
    yield p
    p.close(timeout=5)


@dataclass
class Recorder:
    """A rebalance listener that notes each callback and the thread it ran on."""

    consumer: Consumer | None = None
    starts: dict[TopicPartition, int] = field(default_factory=dict)
    events: list[tuple[str, list[TopicPartition]]] = field(default_factory=list)
    threads: set[int] = field(default_factory=set)
    owned: set[TopicPartition] = field(default_factory=set)
    commit_on_revoke: dict[TopicPartition, int] = field(default_factory=dict)
    revoke_work_seconds: float = 0.0  # stands for a slow flush inside the callback
    revoke_commit_error: list[BaseException] = field(default_factory=list)

    def on_assigned(self, partitions: Sequence[TopicPartition]) -> Mapping[TopicPartition, int]:
        self.threads.add(threading.get_ident())
        self.events.append(("assigned", list(partitions)))
        self.owned.update(partitions)
        return {tp: o for tp, o in self.starts.items() if tp in partitions}

    def on_revoked(self, partitions: Sequence[TopicPartition]) -> None:
        self.threads.add(threading.get_ident())
        self.events.append(("revoked", list(partitions)))
        time.sleep(self.revoke_work_seconds)
        offsets = {tp: o for tp, o in self.commit_on_revoke.items() if tp in partitions}
        if offsets and self.consumer is not None:
            try:  # still the owner: the commit must be accepted
                self.consumer.commit(offsets)
            except KafkaClientError as exc:
                self.revoke_commit_error.append(exc)
        self.owned.difference_update(partitions)

    def on_lost(self, partitions: Sequence[TopicPartition]) -> None:
        self.threads.add(threading.get_ident())
        self.events.append(("lost", list(partitions)))
        self.owned.difference_update(partitions)


def options(group: str, **changes: int) -> ConsumerOptions:
    return ConsumerOptions(group_id=group, client_id=f"seam-{uuid.uuid4().hex[:6]}",
                           **changes)


def produce(producer: kafka.Producer, topic: str, count: int, start: int = 0) -> None:
    """`count` keyed records with headers, spread over the partitions; waits for every ack."""
    done = threading.Event()
    errors: list[BaseException | None] = []
    lock = threading.Lock()

    def on_delivery(error: KafkaClientError | None) -> None:
        with lock:
            errors.append(error)
            if len(errors) == count:
                done.set()

    for i in range(start, start + count):
        producer.send(topic, f"value-{i}".encode(), key=f"key-{i}".encode(),
                      partition=i % PARTITIONS,
                      headers=(("chute-model", f"fp-{i}".encode()), ("n", b"\x00\xff")),
                      on_delivery=on_delivery)
    assert done.wait(20), f"only {len(errors)} of {count} deliveries reported"
    assert errors == [None] * count


def consume(consumer: Consumer, count: int, timeout: float = 30
            ) -> dict[TopicPartition, list[Record]]:
    got: dict[TopicPartition, list[Record]] = {}
    deadline = time.monotonic() + timeout
    while sum(len(v) for v in got.values()) < count and time.monotonic() < deadline:
        for tp, records in consumer.poll(0.2).items():
            got.setdefault(tp, []).extend(records)
    assert sum(len(v) for v in got.values()) == count, {tp: len(v) for tp, v in got.items()}
    return got


def poll_for(consumer: Consumer, seconds: float) -> dict[TopicPartition, list[Record]]:
    got: dict[TopicPartition, list[Record]] = {}
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for tp, records in consumer.poll(0.1).items():
            got.setdefault(tp, []).extend(records)
    return got


def subscribed(kafka_bootstrap: str, client: str, topic: str, group: str,
               listener: Recorder, **changes: int) -> Consumer:
    consumer = kafka.consumer(kafka_bootstrap, options(group, **changes), client=client)
    listener.consumer = consumer
    consumer.subscribe([topic], listener)
    return consumer


def test_produce_consume_keys_headers_commit(kafka_bootstrap: str, client: str, topic: str,
                                            producer: kafka.Producer) -> None:
    produce(producer, topic, 30)
    group = f"g-{topic}"
    listener = Recorder()
    consumer = subscribed(kafka_bootstrap, client, topic, group, listener)
    try:
        got = consume(consumer, 30)
        assert listener.threads == {threading.get_ident()}
        assert listener.events[0] == ("assigned", [TopicPartition(topic, p)
                                                   for p in range(PARTITIONS)])
        for tp, records in got.items():
            assert [r.offset for r in records] == list(range(len(records)))
            for r in records:
                i = int(r.value.decode().split("-")[1])
                assert (r.topic, r.partition) == tp and i % PARTITIONS == tp.partition
                assert r.key == f"key-{i}".encode()
                assert r.headers == (("chute-model", f"fp-{i}".encode()), ("n", b"\x00\xff"))
                assert abs(r.timestamp_ms - time.time() * 1000) < 120_000
        ends = consumer.end_offsets(list(got))
        assert ends == {tp: 10 for tp in got}
        assert all(consumer.highwater(tp) == 10 for tp in got)
        tp0 = TopicPartition(topic, 0)
        consumer.commit({tp0: 7})
        assert consumer.committed([tp0, TopicPartition(topic, 1)]) == {
            tp0: 7, TopicPartition(topic, 1): None}
    finally:
        consumer.close()
    # The group's next member starts at the commit (and at the earliest without one).
    second = Recorder()
    consumer = subscribed(kafka_bootstrap, client, topic, group, second)
    try:
        got = consume(consumer, 3 + 10 + 10)
        assert got[TopicPartition(topic, 0)][0].offset == 7
    finally:
        consumer.close()


def test_seek_and_start_offsets(kafka_bootstrap: str, client: str, topic: str,
                                producer: kafka.Producer) -> None:
    produce(producer, topic, 30)
    tp1 = TopicPartition(topic, 1)
    listener = Recorder(starts={tp1: 8})  # start partition 1 at offset 8
    consumer = subscribed(kafka_bootstrap, client, topic, f"g-{topic}", listener)
    try:
        got = consume(consumer, 10 + 2 + 10)
        assert [r.offset for r in got[tp1]] == [8, 9]
        consumer.seek(tp1, 3)
        again = consume(consumer, 7)
        assert [r.offset for r in again[tp1]] == [3, 4, 5, 6, 7, 8, 9]
    finally:
        consumer.close()


def test_poll_returns_once_a_record_is_there(kafka_bootstrap: str, client: str, topic: str,
                                             producer: kafka.Producer) -> None:
    """poll() does not wait for max_records or its whole timeout when records are there: the
    sync worker stamps a batch's age when the poll returns (librdkafka's consume() waits
    for both, which made rows half a second late)."""
    consumer = subscribed(kafka_bootstrap, client, topic, f"g-{topic}", Recorder())
    try:
        produce(producer, topic, 3)
        consume(consumer, 3)  # assigned and positioned
        produce(producer, topic, 1, start=3)
        began = time.monotonic()
        got = consumer.poll(20.0)
        waited = time.monotonic() - began
        assert [r.value for records in got.values() for r in records] == [b"value-3"]
        assert waited < 10, f"poll(20) held a waiting record for {waited:.1f} s"
    finally:
        consumer.close()


def test_pause_resume(kafka_bootstrap: str, client: str, topic: str,
                      producer: kafka.Producer) -> None:
    produce(producer, topic, 30)
    consumer = subscribed(kafka_bootstrap, client, topic, f"g-{topic}", Recorder())
    try:
        consume(consumer, 30)
        tp2 = TopicPartition(topic, 2)
        consumer.pause([tp2])
        produce(producer, topic, 30, start=30)
        got = consume(consumer, 20)  # partitions 0 and 1 only
        assert tp2 not in got
        assert tp2 not in poll_for(consumer, 1.0), "a paused partition was fetched"
        consumer.resume([tp2])
        got = consume(consumer, 10)
        assert [r.offset for r in got[tp2]] == list(range(10, 20))
    finally:
        consumer.close()


def test_cooperative_rebalance_on_polling_thread(kafka_bootstrap: str, client: str, topic: str,
                                                 producer: kafka.Producer) -> None:
    """A second member joins: the first gives up only the partitions that move, on its
    polling thread, and may commit them in on_revoked; the second starts at that commit."""
    produce(producer, topic, 30)
    group = f"g-{topic}"
    first = Recorder()
    one = subscribed(kafka_bootstrap, client, topic, group, first)
    second = Recorder()
    two: Consumer | None = None
    try:
        got = consume(one, 30)
        first.commit_on_revoke = {tp: len(records) - 2 for tp, records in got.items()}
        two = subscribed(kafka_bootstrap, client, topic, group, second)
        other = two
        moved: dict[TopicPartition, list[Record]] = {}

        def settled() -> bool:
            one.poll(0.05)
            for tp, records in other.poll(0.05).items():
                moved.setdefault(tp, []).extend(records)
            return bool(second.owned) and first.owned.isdisjoint(second.owned) and (
                len(first.owned | second.owned) == PARTITIONS)

        wait_for(settled, 60, "the partitions to be split between both members")
        assert first.threads == {threading.get_ident()}
        assert second.threads == {threading.get_ident()}
        assert first.revoke_commit_error == []
        revoked = {tp for kind, tps in first.events if kind == "revoked" for tp in tps}
        assert revoked == second.owned, "only the moved partitions are revoked"
        assert ("lost", []) not in first.events
        # The new owner starts where the revoking member committed: two records each.
        while sum(len(v) for v in moved.values()) < 2 * len(revoked):
            for tp, records in two.poll(0.2).items():
                moved.setdefault(tp, []).extend(records)
        for tp in revoked:
            assert [r.offset for r in moved[tp]] == [8, 9]
    finally:
        one.close()
        if two is not None:
            two.close()


def test_slow_revocation_keeps_membership(kafka_bootstrap: str, client: str, topic: str,
                                          producer: kafka.Producer,
                                          seam_admin: kafka.Admin) -> None:
    """on_revoked works longer than the session timeout (9 s > 6 s): the client keeps
    heartbeating meanwhile, so the member is not evicted (no on_lost) and its commit at the
    end of the callback is accepted."""
    produce(producer, topic, 30)
    group = f"g-{topic}"
    first = Recorder(revoke_work_seconds=9.0)
    one = subscribed(kafka_bootstrap, client, topic, group, first, session_timeout_ms=6_000,
                     heartbeat_interval_ms=1_000)
    second = Recorder()
    two: Consumer | None = None
    try:
        got = consume(one, 30)
        first.commit_on_revoke = {tp: len(records) for tp, records in got.items()}
        two = subscribed(kafka_bootstrap, client, topic, group, second,
                         session_timeout_ms=6_000, heartbeat_interval_ms=1_000)
        other = two

        def settled() -> bool:
            one.poll(0.05)
            other.poll(0.05)
            return bool(second.owned) and len(first.owned | second.owned) == PARTITIONS

        wait_for(settled, 90, "the partitions to be split after the slow revocation")
        assert any(kind == "revoked" for kind, _ in first.events)
        assert not any(kind == "lost" for kind, _ in first.events), first.events
        assert first.revoke_commit_error == []
        assert len(seam_admin.group_members(group)) == 2
    finally:
        one.close()
        if two is not None:
            two.close()


def test_close_while_a_rebalance_waits_for_this_member(kafka_bootstrap: str, client: str,
                                                       topic: str, producer: kafka.Producer,
                                                       seam_admin: kafka.Admin) -> None:
    """The caller stopped polling (a long insert, then its shutdown flush) while a second
    member joined, so the rebalance waits for this member's revocation: close() returns well
    within a worker's stop grace, without calling the listener, and the other member then
    owns every partition."""
    produce(producer, topic, 30)
    group = f"g-{topic}"
    first = Recorder()
    one = subscribed(kafka_bootstrap, client, topic, group, first, heartbeat_interval_ms=500)
    consume(one, 30)
    second = Recorder()
    two = subscribed(kafka_bootstrap, client, topic, group, second, heartbeat_interval_ms=500)
    try:
        wait_for(lambda: two.poll(0.1) is not None
                 and len(seam_admin.group_members(group)) == 2, 30, "the second member")
        if isinstance(one, KafkaPythonConsumer):
            # The rebalance reached the idle member: its keep-alive poll waits for the
            # caller to take a group event.
            wait_for(lambda: two.poll(0.1) is not None and not one.results.empty(), 30,
                     "a group event waiting for the idle member")
        seen = list(first.events)
        started = time.monotonic()
        one.close()
        closed_in = time.monotonic() - started
        assert closed_in < 10, f"close() took {closed_in:.1f} s"
        assert first.events == seen, "no listener call while closing"
        wait_for(lambda: two.poll(0.1) is not None and len(second.owned) == PARTITIONS, 60,
                 "every partition at the remaining member")
    finally:
        two.close()


def test_lost_partitions(kafka_bootstrap: str, client: str, topic: str,
                         producer: kafka.Producer, seam_admin: kafka.Admin) -> None:
    """A member that stops polling past max.poll.interval is removed from the group; its next
    poll reports the partitions as lost (not revoked), then it rejoins."""
    produce(producer, topic, 30)
    group = f"g-{topic}"
    listener = Recorder()
    consumer = subscribed(kafka_bootstrap, client, topic, group, listener,
                          session_timeout_ms=6_000, heartbeat_interval_ms=1_000,
                          max_poll_interval_ms=7_000)
    try:
        consume(consumer, 30)
        assert seam_admin.group_members(group)
        wait_for(lambda: not seam_admin.group_members(group), 40,
                 "the silent member to leave the group", interval=0.5)
        wait_for(lambda: consumer.poll(0.2) is not None and any(
            kind == "lost" for kind, _ in listener.events), 60, "on_lost")
        lost = next(tps for kind, tps in listener.events if kind == "lost")
        assert sorted(lost) == [TopicPartition(topic, p) for p in range(PARTITIONS)]
        assert [k for k, _ in listener.events].count("revoked") == 0
        assert listener.threads == {threading.get_ident()}
    finally:
        consumer.close()


def test_admin(kafka_bootstrap: str, client: str, topic: str, producer: kafka.Producer,
               seam_admin: kafka.Admin) -> None:
    assert seam_admin.topic_partitions()[topic] == PARTITIONS
    assert not seam_admin.create_topic(TopicConfig(topic, PARTITIONS, {}))
    produce(producer, topic, 30)
    tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    assert seam_admin.start_offsets(tps) == {tp: 0 for tp in tps}
    assert seam_admin.end_offsets(tps) == {tp: 10 for tp in tps}
    group = f"g-{topic}"
    consumer = subscribed(kafka_bootstrap, client, topic, group, Recorder())
    try:
        consume(consumer, 30)
        consumer.commit({tps[0]: 4, tps[1]: 10})
        assert seam_admin.group_offsets(group, tps) == {tps[0]: 4, tps[1]: 10, tps[2]: None}
    finally:
        consumer.close()
    seam_admin.add_partitions(topic, PARTITIONS + 2)
    wait_for(lambda: seam_admin.topic_partitions()[topic] == PARTITIONS + 2, 10,
             "the new partitions")
    assert seam_admin.create_topic(TopicConfig(f"{topic}_r", 1, {"retention.ms": "60000"}))
    seam_admin.delete_topic(f"{topic}_r")


def test_topic_ids_change_when_a_topic_is_recreated(kafka_bootstrap: str, client: str,
                                                   topic: str, seam_admin: kafka.Admin
                                                   ) -> None:
    """Both backends report the same canonical id; re-creating the name gives a new one."""
    first = seam_admin.topic_ids([topic, f"{topic}_missing"])
    assert list(first) == [topic]
    assert str(uuid.UUID(first[topic])) == first[topic]
    other = "kafka-python" if client == "confluent-kafka" else "confluent-kafka"
    with contextlib.closing(kafka.admin(kafka_bootstrap, client=other)) as a:
        assert a.topic_ids([topic]) == first
    seam_admin.delete_topic(topic)
    wait_for(lambda: topic not in seam_admin.topic_partitions(), 30, "the topic to go")
    assert seam_admin.create_topic(TopicConfig(topic, PARTITIONS, {}))
    second = seam_admin.topic_ids([topic])
    assert second[topic] != first[topic]


def test_max_message_bytes(client: str, topic: str, seam_admin: kafka.Admin,
                           unique_name: str) -> None:
    """A topic's own max.message.bytes, else the broker's default; None for no topic."""
    assert seam_admin.max_message_bytes(topic) == kafka.DEFAULT_MAX_MESSAGE_BYTES
    small = f"{unique_name}_small"
    assert seam_admin.create_topic(TopicConfig(small, 1, {kafka.MAX_MESSAGE_BYTES: "65536"}))
    try:
        assert seam_admin.max_message_bytes(small) == 65536
    finally:
        seam_admin.delete_topic(small)
    assert seam_admin.max_message_bytes(f"{unique_name}_none") is None


def test_describe_group(kafka_bootstrap: str, client: str, topic: str,
                        seam_admin: kafka.Admin) -> None:
    group = f"g-{topic}"
    assert seam_admin.describe_group(group) == []
    listener = Recorder()
    consumer = subscribed(kafka_bootstrap, client, topic, group, listener)
    try:
        wait_for(lambda: consumer.poll(0.1) is not None and len(listener.owned) == PARTITIONS,
                 30, "the assignment")
        members = seam_admin.describe_group(group)
        assert len(members) == 1 and members[0].client_id.startswith("seam-")
        assert members[0].host == "127.0.0.1"
        assert members[0].member_id
        assert set(members[0].partitions) == {TopicPartition(topic, p)
                                              for p in range(PARTITIONS)}
    finally:
        consumer.close()


def test_producer_without_broker_fails_within_bound(client: str) -> None:
    """No broker: deliver() reports a failure within its bound instead of hanging."""
    started = time.monotonic()
    with pytest.raises((KafkaClientError, LookupError)):
        p = kafka.producer("127.0.0.1:1", ProducerOptions(
            max_block_ms=1_000, delivery_timeout_ms=2_000, request_timeout_ms=1_000,
            bootstrap_timeout_ms=1_000), client=client)
        try:
            p.deliver("nowhere", [b"x"], timeout=5)
        finally:
            p.close(timeout=1)
    assert time.monotonic() - started < 15


def test_admin_replication(client: str, topic: str, seam_admin: kafka.Admin) -> None:
    """One broker: every partition is fully in sync, and a topic cannot have two copies."""
    assert seam_admin.broker_count() == 1
    assert topic not in seam_admin.under_replicated()
    assert seam_admin.create_topic(TopicConfig(f"{topic}_one", 1, {}, replication_factor=1))
    seam_admin.delete_topic(f"{topic}_one")
    with pytest.raises(Exception, match=r"(?i)replication"):
        seam_admin.create_topic(TopicConfig(f"{topic}_two", 1, {}, replication_factor=2))
