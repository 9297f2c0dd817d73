"""Clients that misbehave on purpose, for tests of the ingest API's defences: trickling bodies
and headers, clients that write the whole body before reading the answer."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


def status_of(answer: bytes) -> int | None:
    """The status code of a raw HTTP answer, None when there is none."""
    if answer.startswith(b"HTTP/1.") and len(answer) >= 12:
        return int(answer[9:12])
    return None


def write_first(port: int, head: bytes, body: bytes, timeout: float = 30) -> bytes:
    """Send the whole request (head + body) before reading anything, as Python's urllib does;
    then read the answer. Raises OSError (e.g. ConnectionResetError) when the server resets
    the connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head + body)
        return read_answer(sock)


def read_answer(sock: socket.socket) -> bytes:
    """One HTTP answer (read by its Content-Length), or what came until the server closed."""
    answer = b""
    while True:
        data = sock.recv(65536)
        if not data:
            return answer
        answer += data
        end = answer.find(b"\r\n\r\n")
        if end >= 0:
            length = 0
            for line in answer[:end].split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(answer) >= end + 4 + length:
                return answer


def request_head(path: str, length: int | None, headers: dict[str, str] | None = None,
                 close: bool = False) -> bytes:
    lines = [f"POST {path} HTTP/1.1", "Host: 127.0.0.1", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@dataclass
class TrickleStats:
    connections: int = 0
    answers: Counter[int] = field(default_factory=Counter)  # status codes received
    resets: int = 0  # connections closed or reset without an answer
    seconds_held: list[float] = field(default_factory=list)  # per connection, until cut

    def summary(self) -> str:
        held = sorted(self.seconds_held)
        longest = f"{held[-1]:.1f}" if held else "-"
        return (f"{self.connections} connections, answers {dict(self.answers)}, "
                f"{self.resets} closed without answer, longest held {longest} s")


class Tricklers:
    """`count` clients on one event loop in a thread, each sending one byte every `interval`
    seconds: of a body (after complete headers declaring `length` bytes) or, with
    headers=True, of the header block. Each reconnects when the server cuts it off, until
    stopped."""

    def __init__(self, port: int, path: str, count: int, interval: float = 2.0,
                 headers: bool = False, length: int = 1000,
                 extra_headers: dict[str, str] | None = None) -> None:
        self.port = port
        self.path = path
        self.count = count
        self.interval = interval
        self.headers = headers
        self.length = length
        self.extra_headers = extra_headers or {}
        self.stats = TrickleStats()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    def start(self) -> Tricklers:
        self._thread.start()
        return self

    def stop(self) -> TrickleStats:
        self._stop.set()
        self._thread.join(30)
        return self.stats

    async def _run(self) -> None:
        await asyncio.gather(*(self._client(i) for i in range(self.count)))

    async def _client(self, index: int) -> None:
        await asyncio.sleep(index * self.interval / self.count)  # spread the byte times
        while not self._stop.is_set():
            await self._one_connection()

    async def _one_connection(self) -> None:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            await asyncio.sleep(0.1)
            return
        self.stats.connections += 1
        started = time.monotonic()
        head = request_head(self.path, self.length, self.extra_headers)
        if self.headers:
            prefix, trickled = head[:20], head[20:]
        else:
            prefix, trickled = head, b" " * self.length
        answer = b""
        try:
            writer.write(prefix)
            for byte in trickled:
                if self._stop.is_set():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    answer = await asyncio.wait_for(reader.read(4096), self.interval)
                except TimeoutError:
                    continue
                break  # an answer, or the connection was closed
        except OSError:
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
        if self._stop.is_set() and not answer:
            return
        self.stats.seconds_held.append(time.monotonic() - started)
        status = status_of(answer)
        if status is None:
            self.stats.resets += 1
        else:
            self.stats.answers[status] += 1
