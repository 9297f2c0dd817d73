"""chute's services as real processes (`python -m <module>`), each in its own session, started
the way the dev runner starts them (`dev_runner.processes.spawn`)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from dev_runner.processes import signal_group, spawn

from testkit.endpoints import PYTHON, ROOT


class ServiceFailed(AssertionError):
    """A service exited or did not become ready; the message has its log's last lines."""


@dataclass
class ServiceProcess:
    module: str
    env: dict[str, str]
    port: int  # where its /health and /metrics answer
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    extra_args: list[str] = field(default_factory=list)
    label: str = ""  # for messages and reports; the module by default
    started_at: float = 0.0  # time.monotonic() of the start

    def __post_init__(self) -> None:
        self.label = self.label or self.module

    def start(self, wait_healthy: bool = True, timeout: float = 60) -> ServiceProcess:
        self.started_at = time.monotonic()
        self.proc = spawn([PYTHON, "-m", self.module, *self.extra_args], self.env, ROOT,
                          self.log_path, self.label)
        if wait_healthy:
            self.wait_healthy(timeout)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.label} was not started"
        return self.proc.pid

    def health(self) -> dict[str, Any] | None:
        """The body of a 200 from /health; None while it does not answer 200. Fails when the
        process has exited."""
        if self.proc is not None and self.proc.poll() is not None:
            raise ServiceFailed(f"{self.label} exited with {self.proc.returncode}:\n"
                                f"{self.log_tail()}")
        try:
            response = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2,
                                 trust_env=False)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        with contextlib.suppress(ValueError):
            body = response.json()
            return body if isinstance(body, dict) else {}
        return {}

    def healthy(self) -> bool:
        return self.health() is not None

    def wait_healthy(self, timeout: float = 60,
                     ready: Callable[[dict[str, Any]], bool] = lambda _h: True) -> dict[str, Any]:
        """Polls /health until it answers 200 and `ready` accepts the body."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if health is not None and ready(health):
                return health
            time.sleep(0.1)
        raise ServiceFailed(f"{self.label} on port {self.port} not ready within {timeout:.0f} s:"
                            f"\n{self.log_tail()}")

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.port}/metrics", timeout=5,
                         trust_env=False).text

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_entries(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines whose event is `event`."""
        needle = json.dumps(event)
        entries = []
        for line in self.log_text().splitlines():
            if needle in line:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict) and entry.get("event") == event:
                        entries.append(entry)
        return entries

    def kill(self) -> None:
        """SIGKILL to the whole process group."""
        if self.proc is not None and self.proc.poll() is None:
            signal_group(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def terminate(self, timeout: float = 30) -> int:
        """SIGTERM (the service drains, flushes and leaves its group); its exit code. Raises
        subprocess.TimeoutExpired when it is still running after `timeout`."""
        assert self.proc is not None, f"{self.label} was not started"
        if self.proc.poll() is None:
            signal_group(self.proc.pid, signal.SIGTERM)
        return self.proc.wait(timeout)

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM, SIGKILL after `timeout`; the exit code (None when never started)."""
        if self.proc is None:
            return None
        try:
            return self.terminate(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.proc.returncode

    def wait_exit(self, timeout: float) -> int:
        assert self.proc is not None, f"{self.label} was not started"
        return self.proc.wait(timeout)


@contextlib.contextmanager
def running(*services: ServiceProcess) -> Iterator[None]:
    """Kills the services when the block ends, however it ends."""
    try:
        yield
    finally:
        for service in services:
            service.kill()

