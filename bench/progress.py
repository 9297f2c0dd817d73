"""Progress on stderr: one status line rewritten in place on a terminal, a line every few
seconds otherwise (CI logs), and a permanent line per finished step."""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, stream: TextIO | None = None, interval: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self.interval = interval
        self.started = time.monotonic()
        self._last_plain = 0.0
        self._status = False

    def _stamp(self) -> str:
        seconds = int(time.monotonic() - self.started)
        return f"[bench {seconds // 60:02d}:{seconds % 60:02d}]"

    def _clear(self) -> None:
        if self._status:
            self.stream.write("\r\033[2K")
            self._status = False

    def step(self, message: str) -> None:
        """A line that stays."""
        self._clear()
        self.stream.write(f"{self._stamp()} {message}\n")
        self.stream.flush()

    def status(self, message: str) -> None:
        """Transient state of the running step (rate-limited when not a terminal)."""
        if self.tty:
            self.stream.write(f"\r\033[2K{self._stamp()}   {message}")
            self._status = True
            self.stream.flush()
            return
        now = time.monotonic()
        if now - self._last_plain >= self.interval:
            self._last_plain = now
            self.stream.write(f"{self._stamp()}   {message}\n")
            self.stream.flush()

    def done(self) -> None:
        self._clear()
        self.stream.flush()


def bar(done: float, total: float, width: int = 24) -> str:
    share = 0.0 if total <= 0 else min(1.0, max(0.0, done / total))
    filled = int(share * width)
    return "[" + "#" * filled + "." * (width - filled) + f"] {share:4.0%}"
