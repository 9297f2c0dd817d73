"""Waiting on readiness instead of sleeping."""

from __future__ import annotations

import socket
import time
from collections.abc import Callable
from typing import TypeVar

from dev_runner.processes import port_open

__all__ = ["free_port", "port_open", "wait_for"]

T = TypeVar("T")


def wait_for(check: Callable[[], T | None], timeout: float, what: str,
             interval: float = 0.1) -> T:
    """Polls `check` until it returns something truthy; fails naming `what` on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
