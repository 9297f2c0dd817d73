"""`scripts/dev up / status / down` on a private state folder and private ports, so the shared
servers of the rest of the suite are not disturbed."""

from __future__ import annotations

import os
import socket
import subprocess
import uuid
from pathlib import Path

import httpx
import pytest
from clickhouse_driver import Client

from tests.support import ROOT, free_port

pytestmark = pytest.mark.e2e

SCHEMA = '''
from datetime import datetime
from pydantic import BaseModel
from chute import IngestPipeline, Key

class Visit(BaseModel):
    id: Key[str]
    at: datetime

visits = IngestPipeline[Visit]({name!r})
'''


def _listening(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_dev_up_status_down_with_custom_schemas(tmp_path: Path) -> None:
    name = f"runner_{uuid.uuid4().hex[:8]}"
    schemas = tmp_path / "defs"
    schemas.mkdir()
    (schemas / "visits.py").write_text(SCHEMA.format(name=name))
    ports = {key: free_port() for key in (
        "CHUTE_KAFKA_PORT", "CHUTE_KAFKA_CONTROLLER_PORT", "CHUTE_CLICKHOUSE_PORT",
        "CHUTE_CLICKHOUSE_HTTP_PORT", "CHUTE_CONTROL_PORT", "CHUTE_INGEST_PORT")}
    env = {k: v for k, v in os.environ.items()
           if k not in ("CHUTE_KAFKA_BOOTSTRAP", "CHUTE_CLICKHOUSE_HOST")}
    env.update({k: str(v) for k, v in ports.items()})
    env.update({"CHUTE_STATE": str(tmp_path / "state"), "CHUTE_SCHEMAS": str(schemas),
                "CHUTE_SYNC_PORT_BASE": str(free_port() + 100)})

    def dev(*args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(ROOT / "scripts" / "dev"), *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)

    try:
        up = dev("up", "--workers", "2")
        assert up.returncode == 0, up.stdout + up.stderr
        status = dev("status")
        assert status.returncode == 0, status.stdout + status.stderr
        for service in ("kafka", "clickhouse", "control-plane", "ingest-api",
                        "sync-worker-1", "sync-worker-2"):
            line = next(li for li in status.stdout.splitlines() if li.startswith(service + " "))
            assert "running" in line and "healthy" in line and "unhealthy" not in line, line
        ch = Client(host="127.0.0.1", port=ports["CHUTE_CLICKHOUSE_PORT"])
        tables = {r[0] for r in ch.execute("SHOW TABLES")}
        ch.disconnect()
        assert {name, f"{name}_dlq"} <= tables

        control = f"http://127.0.0.1:{ports['CHUTE_CONTROL_PORT']}"
        pipelines = {p["name"]: p for p in httpx.get(f"{control}/pipelines", timeout=10).json()}
        assert pipelines[name]["topic"] == name and pipelines[name]["partitions"] == 4
        assert pipelines[name]["table"] == name and pipelines[name]["rows"] == 0
        assert pipelines[name]["dead_letter_topic"] == f"{name}_dlq"
        assert "chute_control_actions_total" in httpx.get(f"{control}/metrics").text

        stopped = dev("stop", "sync-worker-2")
        assert stopped.returncode == 0
        assert dev("status").returncode != 0  # an expected service is down
    finally:
        down = dev("down")
    assert down.returncode == 0, down.stdout + down.stderr
    for port in ports.values():
        assert not _listening(port), f"something still listens on {port}"
