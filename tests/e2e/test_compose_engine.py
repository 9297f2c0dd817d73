"""The compose stack on a real Docker engine: build, start, ingest one event, see it in ClickHouse.

Skips where no Docker engine answers (every development and CI machine of this project so far);
the structure of compose.yaml is covered without an engine by tests/unit/test_compose.py.
Uses the fixed host ports of compose.yaml (4000, 8123, 9092...): do not run it beside a native
stack started by `scripts/dev up`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
COMPOSE_FILE = REPO / "compose.yaml"
PIPELINE = "events"  # the example pipeline in schemas/ (DESIGN.md section 2)
INGEST_URL = "http://127.0.0.1:4000"
CLICKHOUSE_URL = "http://127.0.0.1:8123"


def _run(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)


def _why_no_engine() -> str | None:
    if shutil.which("docker") is None:
        return "no Docker client on PATH"
    try:
        if _run("docker", "info", timeout=30).returncode != 0:
            return "no Docker engine: `docker info` failed"
        if _run("docker", "compose", "version", timeout=30).returncode != 0:
            return "no Compose plugin: `docker compose version` failed"
    except subprocess.TimeoutExpired:
        return "no Docker engine: `docker info` timed out"
    return None


@pytest.fixture(scope="module")
def stack() -> Iterator[list[str]]:
    reason = _why_no_engine()
    if reason:
        pytest.skip(reason)
    compose = ["docker", "compose", "-f", str(COMPOSE_FILE), "-p", f"chute-e2e-{os.getpid()}"]
    config = _run(*compose, "config", "--quiet")
    assert config.returncode == 0, config.stderr
    try:
        up = _run(
            *compose, "up", "--build", "--detach", "--wait", "--wait-timeout", "600", timeout=1200
        )
        if up.returncode != 0:
            logs = _run(*compose, "logs", "--no-color", "--tail", "100").stdout
            pytest.fail(f"`docker compose up --wait` failed:\n{up.stderr}\n{logs}")
        yield compose
    finally:
        _run(*compose, "down", "--volumes", "--remove-orphans", timeout=300)


def _clickhouse(query: str, **params: str) -> str:
    args = {"query": query, **{f"param_{k}": v for k, v in params.items()}}
    request = urllib.request.Request(
        f"{CLICKHOUSE_URL}/?{urllib.parse.urlencode(args)}",
        headers={
            "X-ClickHouse-User": "default",
            "X-ClickHouse-Key": os.environ.get("CHUTE_CLICKHOUSE_PASSWORD") or "chute",
        },
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode()).strip()


@pytest.mark.e2e
def test_compose_stack_ingests_an_event(stack: list[str]) -> None:
    event_id = str(uuid.uuid4())
    body = json.dumps(
        {
            "id": event_id,
            "user_id": "u-1",
            "timestamp": datetime.now(UTC).isoformat(),
            "event_type": "compose-e2e",
        }
    ).encode()
    request = urllib.request.Request(
        f"{INGEST_URL}/ingest/{PIPELINE}",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert response.status == 200

    deadline = time.monotonic() + 60
    count = ""
    while time.monotonic() < deadline:
        count = _clickhouse(f"SELECT count() FROM {PIPELINE} WHERE id = {{id:String}}", id=event_id)
        if count == "1":
            break
        time.sleep(1)
    assert count == "1", f"event {event_id} not in ClickHouse table {PIPELINE!r} after 60 s"
