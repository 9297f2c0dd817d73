"""A per-test chute stack: a schema folder with a uniquely named pipeline, the control plane's
apply, and real ingest-api and sync-worker processes on free ports."""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import orjson

from testkit import offsets
from testkit.clickhouse import count_rows
from testkit.processes import ServiceProcess
from testkit.waits import free_port, wait_for
from tests.support import KAFKA, PYTHON, ROOT, service_env

EVENT_SCHEMA = '''
from datetime import date, datetime
from decimal import Decimal
from ipaddress import IPv4Address
from typing import Annotated, Literal
from uuid import UUID
from pydantic import BaseModel
from chute import (AllowNonFinite, AllowRounding, ClickHouseDecimal, ClickHouseType,
                   IngestPipeline, Key)

class Event(BaseModel):
    id: Key[str]
    user_id: str
    timestamp: datetime
    event_type: str
{extra_fields}

pipeline = IngestPipeline[Event]({name!r}, {{"stream": {stream!r}}})
'''


@dataclass
class Stack:
    name: str
    schema_dir: Path
    log_dir: Path
    ch: Any
    stream: dict[str, Any]
    extra_fields: str = ""
    group: str = ""
    workers: list[ServiceProcess] = field(default_factory=list)
    ingest: ServiceProcess | None = None

    def __post_init__(self) -> None:
        self.group = self.group or f"g_{self.name}"
        (self.schema_dir / "pipeline.py").write_text(EVENT_SCHEMA.format(
            name=self.name, stream=self.stream, extra_fields=self.extra_fields))

    def env(self, **extra: str) -> dict[str, str]:
        return service_env(str(self.schema_dir), CHUTE_SYNC_GROUP=self.group, **extra)

    def apply(self) -> str:
        done = subprocess.run([PYTHON, "-m", "control_plane", "apply"], cwd=ROOT,
                              env=self.env(), capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout

    def start_worker(self, wait: bool = True, **env: str) -> ServiceProcess:
        index = len(self.workers) + 1
        port = free_port()
        worker = ServiceProcess(
            "sync_worker", self.env(CHUTE_SYNC_PORT=str(port),
                                    CHUTE_SYNC_WORKER_ID=f"w{index}", **env),
            port, self.log_dir / f"worker-{index}.log", label=f"sync-worker w{index}")
        self.workers.append(worker)
        return worker.start(wait_healthy=wait)

    def start_ingest(self, **env: str) -> ServiceProcess:
        port = free_port()
        self.ingest = ServiceProcess(
            "ingest_api", self.env(CHUTE_INGEST_PORT=str(port), **env), port,
            self.log_dir / "ingest.log").start()
        return self.ingest

    @property
    def url(self) -> str:
        assert self.ingest is not None
        return f"http://127.0.0.1:{self.ingest.port}/ingest/{self.name}"

    def post(self, body: bytes | list[dict[str, Any]] | dict[str, Any],
             headers: dict[str, str] | None = None) -> httpx.Response:
        content = body if isinstance(body, bytes) else orjson.dumps(body)
        return httpx.post(self.url, content=content, timeout=30,
                          headers={"Content-Type": "application/json", **(headers or {})})

    def count(self, table: str | None = None, where: str = "") -> int:
        return count_rows(self.ch, table or self.name, where)

    def wait_count(self, expected: int, timeout: float = 30, table: str | None = None) -> int:
        wait_for(lambda: self.count(table) >= expected, timeout,
                 f"{expected} rows in {table or self.name} (have {self.count(table)})")
        return self.count(table)

    def batch_logs(self) -> list[dict[str, Any]]:
        return [entry for worker in self.workers for entry in worker.log_entries("batch inserted")
                if entry.get("table") == self.name]

    def stop_all(self) -> None:
        for service in [*self.workers, *([self.ingest] if self.ingest else [])]:
            service.kill()


def end_offsets(topic: str) -> dict[int, int]:
    """The end offset of each partition of `topic`: how many records it ever held."""
    return offsets.end_offsets(KAFKA, topic)


def event(i: int, **overrides: Any) -> dict[str, Any]:
    record = {"id": f"e{i}", "user_id": f"u{i % 97}", "timestamp": "2024-05-01T12:00:00Z",
              "event_type": "click"}
    record.update(overrides)
    return record


def elapsed_since(start: float) -> float:
    return time.monotonic() - start


S = TypeVar("S", bound=Stack)


class Stacks:
    """The stacks one test makes: each gets the next name and its own schema folder under
    the test's tmp_path, is applied when added, and every one is stopped at the end."""

    def __init__(self, tmp_path: Path, unique_name: str) -> None:
        self.tmp_path = tmp_path
        self.unique_name = unique_name
        self.made: list[Stack] = []

    def next_place(self) -> tuple[str, Path]:
        """(the next stack's name, its new schema folder)."""
        schema_dir = self.tmp_path / f"schemas{len(self.made)}"
        schema_dir.mkdir()
        return f"{self.unique_name}{len(self.made) or ''}", schema_dir

    def add(self, stack: S, apply: bool = True) -> S:
        if apply:
            stack.apply()
        self.made.append(stack)
        return stack

    def stop_all(self) -> None:
        for stack in self.made:
            stack.stop_all()
