"""Helpers for tests that cross process boundaries: real servers, real service processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
KAFKA = os.environ.get("CHUTE_KAFKA_BOOTSTRAP", "127.0.0.1:9092")
CH_HOST = os.environ.get("CHUTE_CLICKHOUSE_HOST", "127.0.0.1")
CH_PORT = int(os.environ.get("CHUTE_CLICKHOUSE_PORT", "9000"))

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.1) -> T:
    """Poll `check` until it returns something truthy; fail naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    """One of chute's services run as a real process, as scripts/dev runs it."""

    module: str
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)

    def start(self, wait_healthy: bool = True) -> ServiceProcess:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", self.module, *self.extra_args], cwd=ROOT, env=self.env,
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        if wait_healthy:
            wait_for(self.healthy, 60, f"{self.module} on port {self.port} to be healthy\n"
                     f"{self.log_tail()}", interval=0.2)
        return self

    def healthy(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"{self.module} exited with {self.proc.returncode}:\n"
                                 f"{self.log_tail()}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5).text

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout)


def service_env(schemas: str, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update({
        "CHUTE_KAFKA_BOOTSTRAP": KAFKA,
        "CHUTE_CLICKHOUSE_HOST": CH_HOST,
        "CHUTE_CLICKHOUSE_PORT": str(CH_PORT),
        "CHUTE_SCHEMAS": schemas,
        "CHUTE_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


@contextmanager
def running(*services: ServiceProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for service in services:
            service.kill()


def count_rows(ch: Any, table: str, where: str = "") -> int:
    return int(ch.execute(f"SELECT count() FROM `{table}` {where}")[0][0])
