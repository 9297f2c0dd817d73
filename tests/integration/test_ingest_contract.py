"""The ingest API's request contract, tested on a real service process and a real broker:
413 that clients which write first can read, compressed bodies (and bombs), header limits,
API keys (rate limits, docs, no secret in any output)."""

from __future__ import annotations

import contextlib
import gzip
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from chute import kafka
from chute.kafka import TopicConfig
from ingest_api.decompress import zstd
from kafka import KafkaConsumer

from tests.attackers import read_answer, request_head, status_of, write_first
from tests.faults.accounting import RssSampler
from tests.integration.test_ingest_api import PARTITIONS, _write_schema, event, read_all
from tests.support import KAFKA, PYTHON, ROOT, ServiceProcess, free_port, service_env

pytestmark = pytest.mark.integration

MAX_BODY = 65536
MAX_DRAIN = 1 << 20


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory, servers: None) -> Iterator[
        tuple[ServiceProcess, str]]:
    """One ingest-api process for this module's tests: 64 KiB bodies, 1 MiB drain bound,
    1 s header timeout, on a fresh topic."""
    import uuid

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = kafka.admin(KAFKA)
    admin.create_topic(TopicConfig(name, PARTITIONS, {"retention.ms": "3600000"}))
    schema_dir = tmp_path_factory.mktemp("schemas")
    _write_schema(schema_dir, name)
    port = free_port()
    env = service_env(str(schema_dir), CHUTE_INGEST_PORT=str(port),
                      CHUTE_INGEST_MAX_BODY_BYTES=str(MAX_BODY),
                      CHUTE_INGEST_MAX_DRAIN_BYTES=str(MAX_DRAIN),
                      CHUTE_INGEST_HEADER_TIMEOUT_SECONDS="1")
    process = ServiceProcess("ingest_api", env, port,
                             tmp_path_factory.mktemp("logs") / "ingest.log").start()
    try:
        yield process, name
    finally:
        process.kill()
        admin.delete_topic(name)
        admin.close()


@pytest.fixture
def module_consumer() -> Iterator[KafkaConsumer]:
    c = KafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False, group_id=None)
    yield c
    c.close()


def _urllib_post(url: str, body: bytes, headers: dict[str, str] | None = None) -> int:
    """POST with Python's urllib, which writes the whole body before reading the answer."""
    request = urllib.request.Request(url, data=body, headers={
        "Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        assert orjson.loads(exc.read())["error"]
        return exc.code


def test_clients_that_write_first_read_the_413(service: tuple[ServiceProcess, str]) -> None:
    process, name = service
    url = f"http://127.0.0.1:{process.port}/ingest/{name}"
    path = f"/ingest/{name}"
    for size in (MAX_BODY + 1, 4 * MAX_BODY, MAX_DRAIN):  # just over, well over, the bound
        body = b" " * size
        for _ in range(3):
            assert _urllib_post(url, body) == 413  # urllib sends Connection: close
            answer = write_first(process.port, request_head(path, size), body)
            assert status_of(answer) == 413, answer[:200]
            assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1])["max_body_bytes"] == MAX_BODY
        # chunked, without Content-Length: refused while streaming, then drained
        chunks = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 8192]), body[i:i + 8192])
                          for i in range(0, size, 8192)) + b"0\r\n\r\n"
        head = request_head(path, None, {"Transfer-Encoding": "chunked"})
        assert status_of(write_first(process.port, head, chunks)) == 413
    # After a drained 413 the connection stays usable for the next request.
    with socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock:
        big = b" " * (2 * MAX_BODY)
        ok = orjson.dumps(event(1))
        sock.sendall(request_head(path, len(big)) + big + request_head(path, len(ok)) + ok)
        answers = b""
        while answers.count(b"HTTP/1.1 ") < 2 or not answers.endswith(b"}"):
            data = sock.recv(65536)
            assert data, answers
            answers += data
        assert answers.startswith(b"HTTP/1.1 413") and b"HTTP/1.1 200" in answers
    # With Expect: 100-continue nothing is sent before the answer: 413 without draining.
    expect = request_head(path, 10 * MAX_DRAIN, {"Expect": "100-continue"})
    assert status_of(write_first(process.port, expect, b"")) == 413
    assert process.healthy()


def test_compressed_bodies(service: tuple[ServiceProcess, str],
                           module_consumer: KafkaConsumer) -> None:
    process, name = service
    url = f"http://127.0.0.1:{process.port}/ingest/{name}"
    records = [event(i) for i in range(2_000, 2_300)]
    plain = orjson.dumps(records)
    gz = gzip.compress(orjson.dumps(records[:150]))
    zs = zstd.compress(b"\n".join(orjson.dumps(r) for r in records[150:]))
    r1 = httpx.post(url, content=gz, headers={"Content-Encoding": "gzip"}, timeout=15)
    r2 = httpx.post(url, content=zs, timeout=15, headers={
        "Content-Encoding": "zstd", "Content-Type": "application/x-ndjson"})
    assert (r1.status_code, r2.status_code) == (200, 200), (r1.text, r2.text)
    assert r1.json() == {"accepted": 150} and r2.json() == {"accepted": 150}
    wanted = {str(r["id"]) for r in records}

    def stored_ids() -> list[str]:  # the topic is shared with this module's other tests
        stored = read_all(module_consumer, name, 300)
        return sorted(i for i in (orjson.loads(m.value)["id"] for m in stored) if i in wanted)

    assert stored_ids() == sorted(wanted)  # each exactly once

    # Bombs: ~1 GB of zeros in ~1 MB (concatenated gzip members) or ~30 KB of zstd. Refused
    # with 413, having decoded no more than the limit: memory does not move.
    member = gzip.compress(b"\0" * 10_000_000)
    bombs = {"gzip": member * 100, "zstd": zstd.compress(b"\0" * 1_000_000_000)}
    assert process.proc is not None
    sampler = RssSampler(process.proc.pid).start()
    time.sleep(0.3)
    before = sampler.peak_kib
    for encoding, bomb in bombs.items():
        assert len(bomb) < MAX_DRAIN
        refused = httpx.post(url, content=bomb, headers={"Content-Encoding": encoding},
                             timeout=30)
        assert refused.status_code == 413, refused.text
        assert refused.json()["max_body_bytes"] == MAX_BODY
    grown_mib = (sampler.stop() * 1024 - before) / 1024
    print(f"\nRSS growth while refusing the bombs: {grown_mib:.1f} MiB")
    assert grown_mib < 30

    unsupported = httpx.post(url, content=plain, headers={"Content-Encoding": "br"})
    assert unsupported.status_code == 415 and "gzip" in unsupported.json()["error"]
    corrupt = httpx.post(url, content=b"not gzip at all", headers={"Content-Encoding": "gzip"})
    assert corrupt.status_code == 400 and "gzip" in corrupt.json()["error"]
    truncated = httpx.post(url, content=gz[: len(gz) // 2], headers={"Content-Encoding": "gzip"})
    assert truncated.status_code == 400 and "truncated" in truncated.json()["error"]
    assert stored_ids() == sorted(wanted)  # nothing more was written


def test_header_deadline_and_size(service: tuple[ServiceProcess, str]) -> None:
    process, name = service
    # A connection that sends nothing, and one that trickles its headers: 408 after ~1 s.
    for first in (b"", b"POST /ingest/" + name.encode() + b" HTTP/1.1\r\nX-A: 1\r\n"):
        with socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock:
            started = time.monotonic()
            sock.sendall(first)
            answer = sock.recv(4096)
            assert status_of(answer) == 408, answer
            assert time.monotonic() - started < 5
    # Headers over the bound (64 KiB by default): 431.
    with socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(b"POST /ingest/x HTTP/1.1\r\nX-Big: " + b"a" * 200_000 + b"\r\n\r\n")
        assert status_of(sock.recv(4096)) == 431
    # The ordinary request is untouched, also with a trailing slash (no 307).
    ok = httpx.post(f"http://127.0.0.1:{process.port}/ingest/{name}/",
                    content=orjson.dumps(event(9_999)), timeout=10)
    assert ok.status_code == 200, ok.text


def test_header_deadline_of_a_later_request_on_the_connection(
        service: tuple[ServiceProcess, str]) -> None:
    """After a first request was answered on a keep-alive connection, the next request's
    headers also have the header deadline (1 s here) from their first byte: trickled a byte
    every 0.2 s, they are cut off by closing the connection, without an answer (the first
    request's answer may still be on its way, so no 408 is written after it)."""
    process, name = service
    body = orjson.dumps(event(9_998))
    with socket.create_connection(("127.0.0.1", process.port), timeout=10) as sock:
        sock.sendall(request_head(f"/ingest/{name}", len(body)) + body)
        assert status_of(read_answer(sock)) == 200
        head = f"POST /ingest/{name} HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ".encode()
        sock.settimeout(0.2)
        received = b""
        closed = False
        deadline = time.monotonic() + 10  # the trickle alone would last for ever
        for byte in (head + b"a" * 1000)[:200]:
            if time.monotonic() > deadline:
                break
            try:
                sock.sendall(bytes([byte]))
                chunk = sock.recv(4096)
            except TimeoutError:
                continue
            except OSError:  # reset: cut off
                closed = True
                break
            if not chunk:
                closed = True
                break
            received += chunk
        assert closed, "the trickled headers of a later request were not cut off"
        assert received == b"", received


def _keys_new() -> tuple[str, str]:
    done = subprocess.run([PYTHON, "-m", "control_plane", "keys", "new"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=True)
    fields = dict(line.split(":", 1) for line in done.stdout.splitlines()[:2])
    return fields["key"].strip(), fields["digest"].strip()


def test_keys_rate_limits_docs_and_no_secret_in_any_output(
        schema_dir: Path, unique_name: str, tmp_path: Path, admin: Any) -> None:
    admin.create_topic(TopicConfig(unique_name, PARTITIONS, {"retention.ms": "3600000"}))
    _write_schema(schema_dir, unique_name)
    key, digest = _keys_new()
    limited_key, limited_digest = _keys_new()
    assert key.startswith("chute_") and len(digest) == 64 and key != limited_key
    password = "pw-that-must-not-appear-9c1e"

    # A plain key where a digest belongs: refused at start, naming the variable, not the key.
    env = service_env(str(schema_dir), CHUTE_INGEST_PORT=str(free_port()),
                      CHUTE_INGEST_API_KEYS=f"{digest},{key}",
                      CHUTE_CLICKHOUSE_PASSWORD=password)
    done = subprocess.run([sys.executable, "-m", "ingest_api"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert "CHUTE_INGEST_API_KEYS" in done.stderr and "chute keys" in done.stderr
    for secret in (key, key[6:20], digest, password):
        assert secret not in done.stdout + done.stderr

    port = free_port()
    # The password is not the server's, so the server's version is given rather than asked.
    env.update(CHUTE_INGEST_PORT=str(port), CHUTE_INGEST_API_KEYS=f"{digest},{limited_digest}:2",
               CHUTE_LOG_LEVEL="debug", CHUTE_CLICKHOUSE_VERSION="18.16.1")
    process = ServiceProcess("ingest_api", env, port, tmp_path / "ingest.log").start()
    try:
        base = f"http://127.0.0.1:{port}"
        url = f"{base}/ingest/{unique_name}"
        body = orjson.dumps(event(1))
        good = httpx.post(url, content=body, headers={"Authorization": f"Bearer {key}"})
        assert good.status_code == 200, good.text
        wrong = httpx.post(url, content=body, headers={"Authorization": f"Bearer {key}x"})
        assert wrong.status_code == 401
        assert _urllib_post(url, b" " * 100_000) == 401  # written first, answer still read
        limited = [httpx.post(url, content=body,
                              headers={"Authorization": f"Bearer {limited_key}"})
                   for _ in range(6)]
        codes = [r.status_code for r in limited]
        assert codes[:2] == [200, 200] and 429 in codes, codes
        assert all(int(r.headers["retry-after"]) >= 1 for r in limited if r.status_code == 429)
        # the unlimited key is not held up by the other's limit
        assert httpx.post(url, content=body,
                          headers={"Authorization": f"Bearer {key}"}).status_code == 200
        for doc in ("/docs", "/redoc", "/openapi.json"):
            assert httpx.get(base + doc).status_code == 404
        output = process.log_text()
    finally:
        process.kill()
        admin.delete_topic(unique_name)
    assert "ingest API listening" in output
    for secret in (key, limited_key, digest, limited_digest, password):
        assert secret not in output


def test_a_slow_but_steady_body_is_accepted(service: tuple[ServiceProcess, str],
                                            module_consumer: KafkaConsumer) -> None:
    """Longer than the grace period, above the minimum rate on average: no 408."""
    process, name = service
    records = [event(i) for i in range(5_000, 5_500)]
    body = orjson.dumps(records)
    assert 40_000 < len(body) < MAX_BODY
    first = len(body) * 3 // 4
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", process.port), timeout=30) as sock:
        sock.sendall(request_head(f"/ingest/{name}", len(body)) + body[:first])
        # 5.5 s: past the 5 s grace, when 0.5 s x 32 KiB/s = 16 KiB must have come; ~38 KB
        # have, enough until ~6.2 s (a margin against a loaded machine).
        time.sleep(5.5)
        sock.sendall(body[first:])
        answer = read_answer(sock)
    assert time.monotonic() - started > 5  # it did outlast the grace period
    assert status_of(answer) == 200, answer
    assert orjson.loads(answer.split(b"\r\n\r\n", 1)[1]) == {"accepted": 500}
    wanted = {str(r["id"]) for r in records}
    stored = read_all(module_consumer, name, 500)
    assert sorted(i for i in (orjson.loads(m.value)["id"] for m in stored) if i in wanted) \
        == sorted(wanted)


@pytest.mark.parametrize("native", ["true", "false"])
def test_a_record_larger_than_its_topic_takes_is_refused_with_nothing_written(
        tmp_path: Path, servers: None, native: str) -> None:
    """The topic takes batches of at most 16 KiB (max.message.bytes). A request whose third
    record is 20 KiB is answered 413 naming that record and the limit, and none of its
    records reaches the topic (before, the broker refused that record alone and stored the
    others under the 413); the request without it is stored. On both librdkafka producers
    the API can use (chute's native one and confluent-kafka's)."""
    import uuid

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = kafka.admin(KAFKA)
    admin.create_topic(TopicConfig(name, PARTITIONS, {kafka.MAX_MESSAGE_BYTES: "16384"}))
    _write_schema(tmp_path, name)
    port = free_port()
    env = service_env(str(tmp_path), CHUTE_INGEST_PORT=str(port),
                      CHUTE_INGEST_MAX_BODY_BYTES=str(MAX_BODY),
                      CHUTE_INGEST_NATIVE_PRODUCER=native)
    process = ServiceProcess("ingest_api", env, port, tmp_path / "ingest.log").start()
    partitions = [kafka.TopicPartition(name, p) for p in range(PARTITIONS)]
    try:
        records = [event(i) for i in range(5)]
        records[2]["event_type"] = "x" * 20_000
        url = f"http://127.0.0.1:{port}/ingest/{name}"
        answer = httpx.post(url, content=orjson.dumps(records), timeout=30)
        assert answer.status_code == 413, answer.text
        assert sum(admin.end_offsets(partitions).values()) == 0
        body = answer.json()
        assert body["index"] == 2 and body["max_message_bytes"] == 16384, body
        assert "nothing of the request was stored" in body["error"]
        del records[2]
        answer = httpx.post(url, content=orjson.dumps(records), timeout=30)
        assert answer.status_code == 200, answer.text
        assert sum(admin.end_offsets(partitions).values()) == len(records)
    finally:
        process.kill()
        admin.delete_topic(name)
        admin.close()
