"""The ingest API against a real Kafka broker: what is acknowledged is in the topic, exactly.

Fixtures from tests/conftest.py: `kafka_bootstrap` (a running broker), `admin` (a
KafkaAdminClient on it) and `unique_name` (a fresh topic/pipeline name per test).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import httpx
import orjson
import pytest
from chute import IngestPipeline, StreamConfig, kafka
from chute.fingerprint import FINGERPRINT_HEADER, model_fingerprint
from chute.kafka import CLIENTS, TopicConfig
from chute.registry import Definitions
from fastapi.testclient import TestClient
from ingest_api.app import create_app
from ingest_api.settings import IngestSettings
from kafka import KafkaConsumer, TopicPartition
from pydantic import BaseModel, TypeAdapter

from schemas.events import Event
from tests.support import ROOT, ServiceProcess, free_port, running, service_env

pytestmark = pytest.mark.integration

PARTITIONS = 4


class Reading(BaseModel):  # no Key: the API deals records round-robin
    sensor: str
    value: float


def event(i: int, **changes: object) -> dict[str, object]:
    record: dict[str, object] = {
        "id": f"evt-{i}", "user_id": f"user-{i % 7}",
        "timestamp": f"2024-05-01T12:{i % 60:02d}:00.{i % 1000:03d}Z", "event_type": "click"}
    record.update(changes)
    return record


def pipeline_defs(name: str, model: type[BaseModel] = Event) -> Definitions:
    """A pipeline without a table: ingest API and stream (the topic `name`) only."""
    pipeline: Any = cast(Any, IngestPipeline)[model]
    stream = StreamConfig(partitions=PARTITIONS, dead_letter_queue=False)
    return Definitions.from_resources([pipeline(name, {"table": False, "stream": stream})])


def settings_for(bootstrap: str, **overrides: Any) -> IngestSettings:
    values: dict[str, Any] = {"kafka_bootstrap": bootstrap, "ingest_ack_timeout_seconds": 10}
    values.update(overrides)
    return IngestSettings(**values)


@pytest.fixture
def topic(admin: Any, unique_name: str) -> Iterator[str]:
    admin.create_topic(TopicConfig(unique_name, PARTITIONS, {"retention.ms": "3600000"}))
    yield unique_name
    admin.delete_topic(unique_name)


@pytest.fixture(params=CLIENTS)
def client_name(request: pytest.FixtureRequest) -> str:
    """The Kafka client behind the ingest API's producer (CHUTE_KAFKA_CLIENT)."""
    return str(request.param)


@pytest.fixture
def producer(kafka_bootstrap: str, client_name: str) -> Iterator[kafka.Producer]:
    settings = settings_for(kafka_bootstrap)
    p = kafka.producer(kafka_bootstrap, settings.producer_options(), client=client_name)
    yield p
    p.close(timeout=5)


@pytest.fixture
def consumer(kafka_bootstrap: str) -> Iterator[KafkaConsumer]:
    c = KafkaConsumer(bootstrap_servers=kafka_bootstrap, enable_auto_commit=False,
                      group_id=None, client_id="chute-test-ingest")
    yield c
    c.close()


def end_offsets(consumer: KafkaConsumer, topic: str) -> dict[int, int]:
    parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    return {tp.partition: off for tp, off in consumer.end_offsets(parts).items()}


def read_all(consumer: KafkaConsumer, topic: str, expected: int,
             timeout: float = 20) -> list[Any]:
    """Every message of the topic (at least `expected` of them), from the beginning."""
    parts = [TopicPartition(topic, p) for p in range(PARTITIONS)]
    consumer.assign(parts)
    consumer.seek_to_beginning(*parts)
    messages: list[Any] = []
    deadline = time.monotonic() + timeout
    while len(messages) < expected and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=500).values():
            messages.extend(batch)
    # Nothing beyond what was expected either.
    for batch in consumer.poll(timeout_ms=500).values():
        messages.extend(batch)
    return messages


def test_acknowledged_records_are_in_the_topic_exactly(
        topic: str, producer: kafka.Producer, consumer: KafkaConsumer,
        kafka_bootstrap: str) -> None:
    app = create_app(settings_for(kafka_bootstrap), pipeline_defs(topic), producer)
    array = [event(i) for i in range(300)]
    ndjson = [event(i) for i in range(300, 350)]
    single = event(350, user_id="solo")
    with TestClient(app) as client:
        r1 = client.post(f"/ingest/{topic}", content=orjson.dumps(array))
        r2 = client.post(f"/ingest/{topic}", headers={"content-type": "application/x-ndjson"},
                         content=b"\n".join(orjson.dumps(r) for r in ndjson))
        r3 = client.post(f"/ingest/{topic}", content=orjson.dumps(single))
        metrics = client.get("/metrics").text
    assert (r1.status_code, r2.status_code, r3.status_code) == (200, 200, 200), r1.text
    assert r1.json() == {"accepted": 300}
    assert r2.json() == {"accepted": 50}
    assert r3.json() == {"accepted": 1}
    assert f'chute_ingest_records_total{{pipeline="{topic}",result="accepted"}} 351.0' in metrics

    sent = [*array, *ndjson, single]
    messages = read_all(consumer, topic, len(sent))
    assert len(messages) == len(sent)
    adapter = TypeAdapter(Event)
    stored = sorted((adapter.validate_json(m.value) for m in messages), key=lambda e: e.id)
    assert stored == sorted((Event.model_validate(r) for r in sent), key=lambda e: e.id)
    # The message key is the Key field; records spread over the partitions by key, and a
    # partition holds its records in the order they were posted.
    assert all(m.key == adapter.validate_json(m.value).id.encode() for m in messages)
    used = {m.partition for m in messages}
    assert len(used) > 1
    for partition in used:
        ids = [int(adapter.validate_json(m.value).id.split("-")[1])
               for m in sorted(messages, key=lambda m: m.offset) if m.partition == partition]
        assert ids == sorted(ids)


def test_same_key_same_partition(topic: str, producer: kafka.Producer,
                                 consumer: KafkaConsumer, kafka_bootstrap: str) -> None:
    app = create_app(settings_for(kafka_bootstrap), pipeline_defs(topic), producer)
    with TestClient(app) as client:
        for n in range(3):
            body = orjson.dumps([event(i, event_type=f"v{n}") for i in range(20)])
            assert client.post(f"/ingest/{topic}", content=body).status_code == 200
    messages = read_all(consumer, topic, 60)
    partitions_of: dict[bytes, set[int]] = {}
    for m in messages:
        partitions_of.setdefault(m.key, set()).add(m.partition)
    assert len(partitions_of) == 20
    assert all(len(p) == 1 for p in partitions_of.values())


def test_records_without_key_spread_over_partitions(
        topic: str, producer: kafka.Producer, consumer: KafkaConsumer,
        kafka_bootstrap: str) -> None:
    app = create_app(settings_for(kafka_bootstrap), pipeline_defs(topic, Reading), producer)
    with TestClient(app) as client:
        for i in range(8):  # single-record requests: round-robin continues across them
            body = orjson.dumps({"sensor": f"s{i}", "value": i})
            assert client.post(f"/ingest/{topic}", content=body).status_code == 200
    messages = read_all(consumer, topic, 8)
    assert len(messages) == 8
    assert all(m.key is None for m in messages)
    counts = {p: sum(1 for m in messages if m.partition == p) for p in range(PARTITIONS)}
    assert counts == {p: 2 for p in range(PARTITIONS)}


def test_invalid_request_writes_nothing(topic: str, producer: kafka.Producer,
                                        consumer: KafkaConsumer, kafka_bootstrap: str) -> None:
    app = create_app(settings_for(kafka_bootstrap), pipeline_defs(topic), producer)
    with TestClient(app) as client:
        assert client.post(f"/ingest/{topic}", content=orjson.dumps(event(0))).status_code \
            == 200
        before = end_offsets(consumer, topic)
        bad = [event(1), event(2, timestamp="soon"), event(3)]
        response = client.post(f"/ingest/{topic}", content=orjson.dumps(bad))
        assert response.status_code == 422
        assert [(e["index"], e["path"]) for e in response.json()["errors"]] \
            == [(1, "timestamp")]
        malformed = client.post(f"/ingest/{topic}", content=b'[{"id": "x"')
        assert malformed.status_code == 400
        producer.flush(timeout=5)
        after = end_offsets(consumer, topic)
    assert sum(before.values()) == 1
    assert after == before


def test_unreachable_broker_is_503_within_the_ack_timeout(unique_name: str,
                                                        client_name: str) -> None:
    """A real producer whose broker cannot be reached (nothing listens on 127.0.0.1:1).

    kafka-python's producer is built with api_version given, so that it does not need the
    broker to exist (librdkafka's never does); sends then wait for metadata and the API must
    answer 503 in bounded time.
    """
    settings = settings_for("127.0.0.1:1", ingest_ack_timeout_seconds=2)
    extra = ({"api_version": (3, 9), "reconnect_backoff_max_ms": 200}
             if client_name == "kafka-python" else None)
    producer = kafka.producer("127.0.0.1:1", settings.producer_options(bootstrap_timeout_ms=0),
                              client=client_name, extra=extra)
    try:
        app = create_app(settings, pipeline_defs(unique_name), producer)
        with TestClient(app) as client:
            for _ in range(2):  # also when the first attempt already failed
                started = time.monotonic()
                response = client.post(f"/ingest/{unique_name}",
                                       content=orjson.dumps([event(1), event(2)]))
                elapsed = time.monotonic() - started
                assert response.status_code == 503, response.text
                assert int(response.headers["retry-after"]) >= 1
                assert "error" in response.json()
                assert elapsed < 2 + 1.0
            assert client.get("/health").status_code == 503
    finally:
        producer.close(timeout=1)


def test_broker_without_the_topic_is_503_in_bounded_time(
        producer: kafka.Producer, kafka_bootstrap: str, unique_name: str) -> None:
    """Kafka is up but the pipeline's topic was never created (control plane not run)."""
    settings = settings_for(kafka_bootstrap, ingest_ack_timeout_seconds=2)
    app = create_app(settings, pipeline_defs(f"{unique_name}_missing"), producer)
    with TestClient(app) as client:
        started = time.monotonic()
        response = client.post(f"/ingest/{unique_name}_missing",
                               content=orjson.dumps(event(1)))
        elapsed = time.monotonic() - started
        # Bad input is still answered as bad input, not as a Kafka problem.
        malformed = client.post(f"/ingest/{unique_name}_missing", content=b"[{")
        assert malformed.status_code == 400
    # A broker with auto.create.topics.enable (the native one has it off) acknowledges the
    # record; otherwise 503. Either way the answer comes in bounded time.
    assert response.status_code in (200, 503)
    assert elapsed < 2 + 1.0


# --- the service as a process ------------------------------------------------------------------

def _write_schema(directory: Path, name: str) -> None:
    (directory / f"{name}.py").write_text(
        "from schemas.events import Event\n"
        "from chute import IngestPipeline, StreamConfig\n"
        f"pipeline = IngestPipeline[Event]({name!r}, {{'table': False, 'stream': "
        f"StreamConfig(partitions={PARTITIONS}, dead_letter_queue=False)}})\n")


def test_service_process_ingests_and_refuses_oversized_chunked_bodies(
        topic: str, consumer: KafkaConsumer, kafka_bootstrap: str, schema_dir: Path,
        tmp_path: Path) -> None:
    _write_schema(schema_dir, topic)
    port = free_port()
    env = service_env(str(schema_dir), CHUTE_INGEST_PORT=str(port),
                      CHUTE_INGEST_MAX_BODY_BYTES="65536")
    service = ServiceProcess("ingest_api", env, port, tmp_path / "ingest.log")
    with running(service.start()):
        url = f"http://127.0.0.1:{port}/ingest/{topic}"
        body = orjson.dumps([event(i) for i in range(100)])
        response = httpx.post(url, content=body, timeout=15)
        assert response.status_code == 200, response.text
        assert response.json() == {"accepted": 100}

        def endless() -> Iterator[bytes]:  # chunked: no Content-Length to refuse early
            yield b"["
            for i in range(100_000):  # ~10 MB
                yield orjson.dumps(event(i)) + b","

        # The app stops keeping the body at 64 KiB (unit-tested: it never buffers more),
        # reads and throws away the rest (~10 MB, within the 32 MiB drain bound), then
        # answers 413: a client that sends its whole body first reads it.
        refused = httpx.post(url, content=endless(), timeout=15)
        assert refused.status_code == 413
        assert refused.json()["max_body_bytes"] == 65536
        assert service.healthy()
        assert "chute_ingest_requests_total" in service.metrics()
        # SIGTERM: graceful stop, the producer is closed, the process exits promptly.
        started = time.monotonic()
        service.terminate(timeout=20)
        assert time.monotonic() - started < 10
        assert "ingest API stopped" in service.log_text()
    assert len(read_all(consumer, topic, 100)) == 100


def test_service_exits_when_kafka_stays_unreachable(schema_dir: Path, unique_name: str,
                                                    tmp_path: Path) -> None:
    _write_schema(schema_dir, unique_name)
    env = service_env(str(schema_dir), CHUTE_KAFKA_BOOTSTRAP="127.0.0.1:1",
                      CHUTE_INGEST_PORT=str(free_port()),
                      CHUTE_INGEST_STARTUP_TIMEOUT_SECONDS="3")
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "ingest_api"], cwd=ROOT, env=env,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode != 0
    assert time.monotonic() - started < 30
    stderr = done.stderr.decode(errors="replace")
    assert "unreachable" in stderr and "127.0.0.1:1" in stderr


def test_service_refuses_bad_settings(tmp_path: Path) -> None:
    env = dict(os.environ, CHUTE_INGEST_API_KEYS="not-a-digest")
    done = subprocess.run([sys.executable, "-m", "ingest_api"], cwd=ROOT, env=env,
                          capture_output=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "CHUTE_INGEST_API_KEYS" in done.stderr.decode()


@pytest.mark.parametrize("model", [Event, Reading], ids=["keyed", "unkeyed"])
def test_every_record_carries_its_model_fingerprint(
        model: type[BaseModel], topic: str, producer: kafka.Producer, consumer: KafkaConsumer,
        kafka_bootstrap: str) -> None:
    records = ([event(i) for i in range(40)] if model is Event
               else [{"sensor": f"s{i}", "value": i / 4} for i in range(40)])
    app = create_app(settings_for(kafka_bootstrap), pipeline_defs(topic, model), producer)
    with TestClient(app) as client:
        batch = client.post(f"/ingest/{topic}", content=orjson.dumps(records[:39]))
        single = client.post(f"/ingest/{topic}", content=orjson.dumps(records[39]))
    assert (batch.status_code, single.status_code) == (200, 200), batch.text

    messages = read_all(consumer, topic, len(records))
    assert len(messages) == len(records)
    expected = model_fingerprint(model).encode()
    assert {tuple(m.headers) for m in messages} == {((FINGERPRINT_HEADER, expected),)}
