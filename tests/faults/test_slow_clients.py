"""Slow clients against the real stack: 200 connections trickling their bodies (and 50
trickling their headers) for 30 s, all holding a valid API key, while an ordinary client
keeps posting records. The ordinary client must get 200 every time within its usual latency,
the tricklers must be cut off, memory must stay bounded, and every acknowledged record must
be in the table."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import httpx
import orjson
import pytest
from ingest_api.keys import digest, new_key

from testkit.stats import percentile
from tests.attackers import Tricklers
from tests.e2e.stack import Stack
from tests.faults.accounting import RssSampler, account
from tests.support import wait_for

pytestmark = pytest.mark.faults

MakeStack = Callable[..., Stack]
ATTACK_SECONDS = 30


def _ordinary_requests(client: httpx.Client, url: str, name: str, start: int, seconds: float,
                       key: str) -> tuple[list[float], list[int], list[str]]:
    """One record per request, one after the other: (latencies of 200s, other statuses,
    acknowledged ids)."""
    latencies: list[float] = []
    others: list[int] = []
    acked: list[str] = []
    deadline = time.monotonic() + seconds
    i = start
    while time.monotonic() < deadline:
        record = {"id": f"{name}-{i}", "user_id": "u", "timestamp": "2024-05-01T12:00:00Z",
                  "event_type": "ordinary"}
        sent = time.monotonic()
        response = client.post(url, content=orjson.dumps(record),
                               headers={"Authorization": f"Bearer {key}",
                                        "Content-Type": "application/json"})
        if response.status_code == 200:
            latencies.append(time.monotonic() - sent)
            acked.append(record["id"])
        else:
            others.append(response.status_code)
        i += 1
        time.sleep(0.05)
    return latencies, others, acked


def _p99(values: list[float]) -> float:
    p99 = percentile(values, 0.99)
    assert p99 is not None, "no latencies measured"
    return p99


def test_trickling_clients_do_not_starve_an_ordinary_client(make_stack: MakeStack) -> None:
    stack = make_stack({"partitions": 2, "max_batch_wait": 0.3})
    stack.start_worker()
    key = new_key()
    ingest = stack.start_ingest(CHUTE_INGEST_API_KEYS=digest(key))
    assert ingest.proc is not None
    path = f"/ingest/{stack.name}"
    with httpx.Client(timeout=10) as client:
        base_latencies, base_others, acked = _ordinary_requests(
            client, stack.url, stack.name, 0, 3, key)
        assert base_latencies and not base_others
        rss_before = RssSampler(ingest.proc.pid).start()
        time.sleep(0.3)
        rss_before_mib = rss_before.stop()
        sampler = RssSampler(ingest.proc.pid).start()
        auth = {"Authorization": f"Bearer {key}"}
        bodies = Tricklers(ingest.port, path, 200, interval=2.0, extra_headers=auth).start()
        headers = Tricklers(ingest.port, path, 50, interval=2.0, headers=True).start()
        try:
            latencies, others, acked_during = _ordinary_requests(
                client, stack.url, stack.name, 100_000, ATTACK_SECONDS, key)
        finally:
            body_stats = bodies.stop()
            header_stats = headers.stop()
        peak_mib = sampler.stop()
    metrics = ingest.metrics()
    print(f"\nordinary client before: {len(base_latencies)} x 200, p99 "
          f"{_p99(base_latencies) * 1000:.0f} ms; during: {len(latencies)} x 200, "
          f"others {others}, p99 {_p99(latencies) * 1000:.0f} ms, "
          f"max {max(latencies) * 1000:.0f} ms")
    print(f"body tricklers: {body_stats.summary()}")
    print(f"header tricklers: {header_stats.summary()}")
    print(f"ingest RSS {rss_before_mib:.0f} MiB before, peak {peak_mib:.0f} MiB during")

    assert others == [], f"the ordinary client got {others}"
    assert len(latencies) > 50
    # Its usual latency: a starved client waits seconds or gets 503; noise on a shared
    # machine is allowed for generously.
    assert _p99(latencies) <= 5 * _p99(base_latencies) + 0.25
    # Every trickler was cut off, with an answer, well before the attack was over.
    assert body_stats.connections > 200 and header_stats.connections > 50
    assert set(body_stats.answers) <= {408, 503} and body_stats.answers[408] > 0
    assert set(header_stats.answers) == {408}
    assert max(body_stats.seconds_held) < 5 + 2 + 2  # grace + sweep + one byte interval
    assert max(header_stats.seconds_held) < 10 + 2 + 2
    assert 'chute_ingest_client_faults_total{kind="body_too_slow"}' in metrics
    assert peak_mib < rss_before_mib + 100, f"RSS grew from {rss_before_mib:.0f} to " \
                                            f"{peak_mib:.0f} MiB"
    all_acked = acked + acked_during
    wait_for(lambda: stack.count() >= len(all_acked), 60, "the ordinary client's records")
    outcome = account(stack.ch, stack.name, all_acked,
                      "8. 200 body + 50 header tricklers, 30 s",
                      f"ordinary client p99 {_p99(latencies) * 1000:.0f} ms "
                      f"(before {_p99(base_latencies) * 1000:.0f} ms), 0 refused; "
                      f"tricklers cut after <= {max(body_stats.seconds_held):.1f} s; "
                      f"peak RSS {peak_mib:.0f} MiB")
    assert outcome.lost == 0


def _metric(text: str, line_start: str) -> float:
    for line in text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_disconnecting_clients_are_info_and_counted(make_stack: MakeStack) -> None:
    import socket

    stack = make_stack({"partitions": 1})
    ingest = stack.start_ingest()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", ingest.port)) as sock:
            sock.sendall(f"POST /ingest/{stack.name} HTTP/1.1\r\nHost: x\r\n"
                         "Content-Length: 1000\r\n\r\n{\"id\"".encode())
            time.sleep(0.05)
    label = 'chute_ingest_client_faults_total{kind="disconnected"}'
    wait_for(lambda: _metric(ingest.metrics(), label) >= 5, 10, "5 disconnects counted")
    log: list[dict[str, Any]] = [orjson.loads(line) for line in ingest.log_text().splitlines()
                                 if line.startswith("{")]
    gone = [entry for entry in log if "disconnected" in entry["event"]]
    assert len(gone) == 5 and {entry["level"] for entry in gone} == {"info"}
    assert not [entry for entry in log if entry["level"] in ("error", "critical")]
    assert 'code="500"' not in ingest.metrics()
