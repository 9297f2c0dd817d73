"""HTTP mapping of the ingest API with an in-process stand-in for the Kafka producer.

The fake only decides when and how each record's future resolves, so that every answer of the
API can be checked without a broker. What Kafka really does with the records (acks=all,
partitions, nothing written on 422, unreachable broker) is tested against a real broker in
tests/integration/test_ingest_api.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import threading
import time
from collections.abc import Iterator, MutableMapping
from typing import Any, cast

import orjson
import pytest
from chute import IngestPipeline, Key
from chute.registry import Definitions
from fastapi import FastAPI
from fastapi.testclient import TestClient
from ingest_api.app import create_app
from ingest_api.produce import RoundRobin, key_partitions
from ingest_api.settings import IngestSettings
from kafka.errors import KafkaTimeoutError, NotEnoughReplicasError
from kafka.future import Future
from pydantic import BaseModel

from schemas.events import Event

URL = "/ingest/events"


class Reading(BaseModel):  # no Key: records are spread round-robin
    sensor: str
    value: float


class FakeProducer:
    """Records what is sent; resolves each future according to `mode`.

    ack: success at once; fail: NotEnoughReplicas; hang: never; raise: send() raises;
    delayed: success from another thread after `delay` seconds.
    """

    def __init__(self, mode: str = "ack", partitions: int = 3, delay: float = 0.2) -> None:
        self.mode = mode
        self.partitions = partitions
        self.delay = delay
        self.missing_topics: set[str] = set()  # metadata never arrives (like max_block_ms)
        self.sent: list[tuple[str, bytes, bytes | None, int]] = []
        self.acked = 0
        self.lock = threading.Lock()

    def partitions_for(self, topic: str) -> set[int]:
        if topic in self.missing_topics:
            time.sleep(self.delay)
            raise KafkaTimeoutError(f"Failed to update metadata after {self.delay} secs.")
        return set(range(self.partitions))

    def send(self, topic: str, value: Any = None, key: Any = None, headers: Any = None,
             partition: Any = None, timestamp_ms: Any = None) -> Future:
        if self.mode == "raise":
            raise KafkaTimeoutError("Failed to update metadata after 5.0 secs.")
        with self.lock:
            self.sent.append((topic, value, key, partition))
        future = Future()
        if self.mode == "ack":
            self._ack(future)
        elif self.mode == "fail":
            future.failure(NotEnoughReplicasError("not enough in-sync replicas"))
        elif self.mode == "delayed":
            threading.Timer(self.delay, self._ack, (future,)).start()
        return future

    def _ack(self, future: Future) -> None:
        with self.lock:
            self.acked += 1
        future.success(object())


def make_settings(**overrides: Any) -> IngestSettings:
    values: dict[str, Any] = {"ingest_ack_timeout_seconds": 0.5, "ingest_max_body_bytes": 4096,
                              "ingest_max_in_flight_bytes": 1 << 20}
    values.update(overrides)
    return IngestSettings(**values)


def make_app(producer: FakeProducer, **settings: Any) -> FastAPI:
    readings = IngestPipeline[Reading]("readings", {"table": False})
    defs = Definitions.from_resources([
        IngestPipeline[Event]("events", {"table": False}), readings])
    return create_app(make_settings(**settings), defs, producer)


@pytest.fixture
def producer() -> FakeProducer:
    return FakeProducer()


@pytest.fixture
def client(producer: FakeProducer) -> Iterator[TestClient]:
    with TestClient(make_app(producer)) as c:
        yield c


def event(i: int = 0, **changes: object) -> dict[str, object]:
    record: dict[str, object] = {
        "id": f"e{i}", "user_id": f"u{i}", "timestamp": "2024-05-01T12:00:00Z",
        "event_type": "click"}
    record.update(changes)
    return record


def metric(client: TestClient, line_start: str, missing: float | None = None) -> float:
    """The value of one series; a missing series fails unless the caller says what it means
    (`missing=0.0` for a counter read before its first increment)."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    assert missing is not None, f"no series {line_start} in /metrics"
    return missing


# --- success -----------------------------------------------------------------------------------

def test_accepted_after_every_ack(client: TestClient, producer: FakeProducer) -> None:
    records = [event(i) for i in range(10)]
    response = client.post(URL, content=orjson.dumps(records))
    assert response.status_code == 200, response.text
    assert response.json() == {"accepted": 10}
    assert producer.acked == 10
    assert [orjson.loads(v)["id"] for _, v, _, _ in producer.sent] == [r["id"] for r in records]
    assert {t for t, _, _, _ in producer.sent} == {"events"}
    assert [k for _, _, k, _ in producer.sent] == [f"e{i}".encode() for i in range(10)]
    keys = [f"e{i}".encode() for i in range(10)]
    assert [p for _, _, _, p in producer.sent] == key_partitions(keys, [0, 1, 2])


def test_answer_waits_for_the_acks() -> None:
    producer = FakeProducer("delayed", delay=0.3)
    with TestClient(make_app(producer, ingest_ack_timeout_seconds=5)) as client:
        started = time.monotonic()
        response = client.post(URL, content=orjson.dumps([event(1), event(2)]))
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert response.json() == {"accepted": 2}
    assert producer.acked == 2
    assert elapsed >= 0.3


def test_ndjson_body(client: TestClient, producer: FakeProducer) -> None:
    body = b"\n".join(orjson.dumps(event(i)) for i in range(3))
    response = client.post(URL, content=body, headers={"content-type": "application/x-ndjson"})
    assert response.json() == {"accepted": 3}
    assert len(producer.sent) == 3


def test_empty_array_sends_nothing(client: TestClient, producer: FakeProducer) -> None:
    response = client.post(URL, content=b"[]")
    assert response.status_code == 200
    assert response.json() == {"accepted": 0}
    assert producer.sent == []


def test_records_without_key_are_dealt_round_robin(client: TestClient,
                                                   producer: FakeProducer) -> None:
    for i in range(4):
        body = orjson.dumps({"sensor": f"s{i}", "value": i})
        assert client.post("/ingest/readings", content=body).status_code == 200
    assert [k for _, _, k, _ in producer.sent] == [None] * 4
    assert [p for _, _, _, p in producer.sent] == [0, 1, 2, 0]


def test_round_robin_continues_across_requests() -> None:
    rr = RoundRobin()
    assert rr.take("t", 2, [0, 1, 2]) == [0, 1]
    assert rr.take("t", 4, [0, 1, 2]) == [2, 0, 1, 2]
    assert rr.take("other", 1, [5, 6]) == [5]


# --- bad input ---------------------------------------------------------------------------------

def test_unknown_pipeline_lists_known_ones(client: TestClient) -> None:
    response = client.post("/ingest/nope", content=orjson.dumps(event()))
    assert response.status_code == 404
    body = response.json()
    assert body["pipelines"] == ["events", "readings"]
    assert "nope" in body["error"]


def test_malformed_json_is_400_with_position(client: TestClient,
                                             producer: FakeProducer) -> None:
    response = client.post(URL, content=b'[{"id": "a",]')
    assert response.status_code == 400
    body = response.json()
    assert body["error"].startswith("malformed JSON")
    assert (body["line"], body["column"], body["position"]) == (1, 13, 12)
    assert producer.sent == []


def test_empty_body_is_400(client: TestClient) -> None:
    response = client.post(URL, content=b"")
    assert response.status_code == 400
    assert "empty" in response.json()["error"]


def test_schema_violation_is_422_and_nothing_is_sent(client: TestClient,
                                                     producer: FakeProducer) -> None:
    records = [event(0), event(1, timestamp="not a time"), 7]
    response = client.post(URL, content=orjson.dumps(records))
    assert response.status_code == 422
    body = response.json()
    assert [(e["index"], e["path"]) for e in body["errors"]] == [(1, "timestamp"), (2, "")]
    assert all(e["message"] for e in body["errors"])
    assert body["records"] == 3 and body["invalid_records"] == 2
    assert producer.sent == []


def test_body_over_the_limit_by_content_length(client: TestClient,
                                               producer: FakeProducer) -> None:
    big = orjson.dumps([event(i) for i in range(100)])
    assert len(big) > 4096
    response = client.post(URL, content=big)
    assert response.status_code == 413
    assert response.json()["max_body_bytes"] == 4096
    assert producer.sent == []


def run_asgi(app: FastAPI, chunks: list[bytes],
             headers: list[tuple[bytes, bytes]]) -> tuple[list[dict[str, Any]], int]:
    """One POST to URL through the ASGI interface, its body given as chunks: (messages the app
    sent, chunks it pulled)."""
    pulled = 0
    messages: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        nonlocal pulled
        pulled += 1
        return {"type": "http.request", "body": chunks[pulled - 1],
                "more_body": pulled < len(chunks)}

    async def send(message: MutableMapping[str, Any]) -> None:
        messages.append(dict(message))

    asyncio.run(app(asgi_scope(headers), receive, send))
    return messages, pulled


def asgi_scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    """The ASGI scope of a POST to URL with headers."""
    return {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": URL, "raw_path": URL.encode(),
            "root_path": "", "query_string": b"", "server": ("test", 80),
            "client": ("test", 1234), "headers": [(b"host", b"test"), *headers]}


def test_chunked_body_over_the_limit_is_drained_up_to_the_bound() -> None:
    """No Content-Length: the app stops keeping the body at the limit, reads and throws away
    the rest up to the drain bound, then answers 413 and closes the connection."""
    app = make_app(FakeProducer(), ingest_max_drain_bytes=8192)
    chunked = [(b"transfer-encoding", b"chunked")]
    messages, pulled = run_asgi(app, [b" " * 1024] * 10_000, chunked)
    assert messages[0]["status"] == 413
    assert pulled == 9  # 8 KiB drain bound: the ninth KiB is over it, nothing more is read
    assert (b"connection", b"close") in messages[0]["headers"]
    # within the bound: the whole body is read, the connection may stay open
    messages, pulled = run_asgi(app, [b" " * 1024] * 6, chunked)
    assert messages[0]["status"] == 413 and pulled == 6
    assert (b"connection", b"close") not in messages[0]["headers"]


def test_invalid_content_length(client: TestClient) -> None:
    response = client.post(URL, content=b"{}", headers={"content-length": "x"})
    assert response.status_code == 400


# --- authentication ----------------------------------------------------------------------------

def test_api_keys(producer: FakeProducer) -> None:
    keys = ["s3cret-one", "s3cret-two"]
    digests = ",".join(hashlib.sha256(k.encode()).hexdigest() for k in keys)
    settings = {"ingest_api_keys": digests}
    with TestClient(make_app(producer, **settings)) as client:
        body = orjson.dumps(event())
        missing = client.post(URL, content=body)
        assert missing.status_code == 401
        assert missing.headers["www-authenticate"].startswith("Bearer")
        assert "error" in missing.json()
        wrong = client.post(URL, content=body, headers={"authorization": "Bearer nope"})
        assert wrong.status_code == 401
        raw_digest = client.post(URL, content=body, headers={
            "authorization": f"Bearer {hashlib.sha256(b's3cret-one').hexdigest()}"})
        assert raw_digest.status_code == 401
        # unknown pipelines are not listed to unauthenticated clients
        assert client.post("/ingest/nope", content=body).status_code == 401
        assert producer.sent == []
        for key in keys:
            ok = client.post(URL, content=body, headers={"authorization": f"Bearer {key}"})
            assert ok.status_code == 200
        assert len(producer.sent) == 2


def test_api_keys_setting_takes_only_digests() -> None:
    with pytest.raises(ValueError, match="SHA-256 hex digest"):
        make_settings(ingest_api_keys="plain-key")
    digest = hashlib.sha256(b"k").hexdigest()
    settings = make_settings(ingest_api_keys=f" {digest.upper()} ,, ")
    assert settings.ingest_api_keys == (digest,)
    assert make_settings().ingest_api_keys == ()


def test_api_keys_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    digests = [hashlib.sha256(k).hexdigest() for k in (b"a", b"b")]
    monkeypatch.setenv("CHUTE_INGEST_API_KEYS", ",".join(digests))
    monkeypatch.setenv("CHUTE_INGEST_MAX_BODY_BYTES", "2048")
    monkeypatch.setenv("CHUTE_INGEST_PORT", "4999")
    settings = IngestSettings()
    assert settings.ingest_api_keys == tuple(digests)
    assert settings.ingest_max_body_bytes == 2048
    assert settings.ingest_port == 4999


# --- Kafka trouble and overload ----------------------------------------------------------------

def test_failed_ack_is_503_with_retry_after() -> None:
    with TestClient(make_app(FakeProducer("fail"))) as client:
        response = client.post(URL, content=orjson.dumps([event(1), event(2)]))
        assert response.status_code == 503
        assert response.headers["retry-after"] == "1"
        assert "NotEnoughReplicas" in response.json()["error"]
        assert metric(client, 'chute_ingest_records_total{pipeline="events",'
                              'result="failed"}') == 2


def test_no_ack_in_time_is_503_within_the_bound() -> None:
    with TestClient(make_app(FakeProducer("hang"), ingest_ack_timeout_seconds=0.4)) as client:
        started = time.monotonic()
        response = client.post(URL, content=orjson.dumps(event()))
        elapsed = time.monotonic() - started
    assert response.status_code == 503
    assert response.headers["retry-after"]
    assert "did not acknowledge" in response.json()["error"]
    assert 0.4 <= elapsed < 1.5


def test_send_raising_is_503() -> None:
    with TestClient(make_app(FakeProducer("raise"))) as client:
        response = client.post(URL, content=orjson.dumps(event()))
    assert response.status_code == 503
    assert "KafkaTimeoutError" in response.json()["error"]
    assert response.headers["retry-after"]


def test_missing_topic_metadata_holds_up_only_its_pipeline() -> None:
    producer = FakeProducer("ack", delay=1.0)
    producer.missing_topics.add("events")
    with TestClient(make_app(producer, ingest_ack_timeout_seconds=3)) as client:
        first: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: first.update(
            r=client.post(URL, content=orjson.dumps(event(1)))))
        thread.start()
        time.sleep(0.1)
        started = time.monotonic()
        other = client.post("/ingest/readings", content=b'{"sensor": "s", "value": 1}')
        assert time.monotonic() - started < 0.5
        assert other.status_code == 200
        # bad input is answered as such, whatever the state of the topic
        assert client.post(URL, content=b"[{").status_code == 400
        thread.join()
    assert first["r"].status_code == 503
    assert "KafkaTimeoutError" in first["r"].json()["error"]


def test_over_max_in_flight_is_503_at_once() -> None:
    producer = FakeProducer("hang")
    app = make_app(producer, ingest_ack_timeout_seconds=1.0, ingest_max_in_flight_requests=1)
    with TestClient(app) as client:
        first: dict[str, Any] = {}
        thread = threading.Thread(target=lambda: first.update(
            r=client.post(URL, content=orjson.dumps(event(1)))))
        thread.start()
        deadline = time.monotonic() + 2
        while not producer.sent and time.monotonic() < deadline:
            time.sleep(0.01)
        started = time.monotonic()
        second = client.post(URL, content=orjson.dumps(event(2)))
        assert time.monotonic() - started < 0.5
        thread.join()
    assert second.status_code == 503
    assert "overloaded" in second.json()["error"]
    assert second.headers["retry-after"]
    assert first["r"].status_code == 503  # the hanging one timed out
    assert len(producer.sent) == 1


def test_over_max_in_flight_bytes_is_503() -> None:
    producer = FakeProducer("hang")
    app = make_app(producer, ingest_ack_timeout_seconds=1.0, ingest_max_body_bytes=2048,
                   ingest_max_in_flight_bytes=2048)
    body = orjson.dumps([event(i) for i in range(15)])
    assert 1024 < len(body) <= 2048
    with TestClient(app) as client:
        thread = threading.Thread(target=lambda: client.post(URL, content=body))
        thread.start()
        deadline = time.monotonic() + 2
        while not producer.sent and time.monotonic() < deadline:
            time.sleep(0.01)
        second = client.post(URL, content=body)
        thread.join()
        assert second.status_code == 503
        assert "bytes" in second.json()["error"]
        # once the first request is over, its bytes are released
        producer.mode = "ack"
        assert client.post(URL, content=body).status_code == 200


# --- the other routes --------------------------------------------------------------------------

def test_metrics_per_pipeline_and_code(client: TestClient) -> None:
    label = 'chute_ingest_requests_total{code="200",pipeline="events"}'
    before = metric(client, label, missing=0.0)
    accepted = 'chute_ingest_records_total{pipeline="events",result="accepted"}'
    before_accepted = metric(client, accepted, missing=0.0)
    client.post(URL, content=orjson.dumps([event(1), event(2)]))
    client.post(URL, content=b"{")
    assert metric(client, label) == before + 1
    assert metric(client, accepted) == before_accepted + 2
    assert metric(client, 'chute_ingest_requests_total{code="400",pipeline="events"}') >= 1
    client.post("/ingest/whatever", content=b"{}")
    text = client.get("/metrics").text
    assert 'pipeline="_unknown"' in text and 'pipeline="whatever"' not in text
    assert "chute_ingest_request_seconds_bucket" in text
    assert "chute_ingest_in_flight_requests 0.0" in text


def test_openapi_shows_each_pipeline_model(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/ingest/events"]["post"]["requestBody"]
    ref = body["content"]["application/json"]["schema"]["oneOf"][0]["$ref"]
    name = ref.rsplit("/", 1)[1]
    schema = spec["components"]["schemas"][name]
    assert set(schema["properties"]) == {"id", "user_id", "timestamp", "event_type"}
    assert "/ingest/readings" in spec["paths"]
    assert "application/x-ndjson" in body["content"]
    assert client.get("/docs").status_code == 200


def test_health_follows_the_bootstrap_address(producer: FakeProducer) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        app = make_app(producer, kafka_bootstrap=f"127.0.0.1:1,127.0.0.1:{port}")
        with TestClient(app) as client:
            response = client.get("/health")
            assert response.status_code == 200
            assert response.json()["status"] == "ok"
    with TestClient(make_app(producer, kafka_bootstrap="127.0.0.1:1")) as client:
        response = client.get("/health")
        assert response.status_code == 503
        assert "unreachable" in response.json()["error"]


def test_other_errors_are_json_too(client: TestClient) -> None:
    response = client.get(URL)
    assert response.status_code == 405
    assert "error" in response.json()
    assert client.get("/nothing").json() == {"error": "Not Found"}


def test_duplicate_model_names_get_distinct_schemas(producer: FakeProducer) -> None:
    class A(BaseModel):
        id: Key[str]

    first = A

    class A(BaseModel):  # type: ignore[no-redef]  # another model with the same name
        n: int

    pipeline = cast(Any, IngestPipeline)
    defs = Definitions.from_resources([pipeline[first]("one", {"table": False}),
                                       pipeline[A]("two", {"table": False})])
    with TestClient(create_app(make_settings(), defs, producer)) as client:
        spec = client.get("/openapi.json").json()
    refs = {p: spec["paths"][f"/ingest/{p}"]["post"]["requestBody"]["content"]
            ["application/x-ndjson"]["schema"]["$ref"] for p in ("one", "two")}
    assert refs["one"] != refs["two"]
    assert "n" in spec["components"]["schemas"][refs["two"].rsplit("/", 1)[1]]["properties"]
