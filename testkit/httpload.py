"""A lean HTTP/1.1 keep-alive load client on asyncio streams.

The machine is small (2 cores are typical here) and the load runs next to the server it
measures, so the client must cost little: requests are pre-encoded bytes, responses are
read by Content-Length, nothing else is parsed. (httpx costs several times more CPU per
request, which would be taken from the ingest API and lower its figure.)
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any


def encode_request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
            "Content-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("ascii") + body


class Connection:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(self, payload: bytes) -> tuple[int, bytes]:
        """Sends one pre-encoded request; returns (status, body). Reconnects as needed."""
        if self.writer is None or self.reader is None:
            self.reader, self.writer = await asyncio.open_connection(
                self.host, self.port, limit=1 << 20)
        reader, writer = self.reader, self.writer
        try:
            writer.write(payload)
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                lowered = name.strip().lower()
                if lowered == b"content-length":
                    length = int(value)
                elif lowered == b"connection" and value.strip().lower() == b"close":
                    close = True
            body = await reader.readexactly(length) if length else b""
        except BaseException:
            await self.close()
            raise
        if close:
            await self.close()
        return status, body

    async def close(self) -> None:
        writer, self.writer, self.reader = self.writer, None, None
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


@dataclass
class LoadResult:
    seconds: float = 0.0
    requests: int = 0
    records: int = 0  # records of requests answered 200
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: list[float] = field(default_factory=list)  # seconds, 200 answers


async def closed_loop(host: str, port: int, requests: Sequence[tuple[bytes, int]],
                      concurrency: int, seconds: float,
                      on_tick: Callable[[LoadResult, float], None] | None = None) -> LoadResult:
    """`concurrency` connections, each sending its next request as soon as the previous one
    was answered, for `seconds`. requests: (encoded request, records in it), cycled."""
    result = LoadResult()
    counter = itertools.count()
    n = len(requests)
    started = time.perf_counter()
    deadline = started + seconds

    async def run_connection() -> None:
        connection = Connection(host, port)
        try:
            while time.perf_counter() < deadline:
                payload, records = requests[next(counter) % n]
                sent = time.perf_counter()
                try:
                    status, _body = await connection.request(payload)
                except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
                    result.errors[type(exc).__name__] += 1
                    await asyncio.sleep(0.05)
                    continue
                result.requests += 1
                result.statuses[status] += 1
                if status == 200:
                    result.records += records
                    result.latencies.append(time.perf_counter() - sent)
        finally:
            await connection.close()

    await _with_ticker(
        asyncio.gather(*(run_connection() for _ in range(concurrency))),
        None if on_tick is None else lambda: on_tick(result, time.perf_counter() - started))
    result.seconds = time.perf_counter() - started
    return result


@dataclass
class Sent:
    seq: int
    records: int
    scheduled: float  # monotonic time the request was due
    sent: float = 0.0
    acked: float | None = None  # monotonic time the 200 arrived
    status: int | None = None


async def open_loop(host: str, port: int, make_request: Callable[[int], tuple[bytes, int]],
                    request_rate: float, seconds: float, concurrency: int,
                    ledger: list[Sent],
                    on_tick: Callable[[list[Sent], float], None] | None = None) -> float:
    """Offers requests at `request_rate` per second for `seconds` (open loop: the schedule does
    not wait for answers; up to `concurrency` requests are outstanding, later ones queue).
    Every request is appended to `ledger`; returns the seconds it took."""
    queue: asyncio.Queue[Sent | None] = asyncio.Queue()
    started = time.monotonic()
    total = max(1, int(request_rate * seconds))

    async def schedule() -> None:
        for seq in range(total):
            due = started + seq / request_rate
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            item = Sent(seq, 0, due)
            ledger.append(item)
            queue.put_nowait(item)
        for _ in range(concurrency):
            queue.put_nowait(None)

    async def run_connection() -> None:
        connection = Connection(host, port)
        try:
            while True:
                item = await queue.get()
                if item is None:
                    return
                payload, item.records = make_request(item.seq)
                item.sent = time.monotonic()
                try:
                    status, _body = await connection.request(payload)
                except (OSError, asyncio.IncompleteReadError, ValueError):
                    item.status = -1
                    continue
                item.status = status
                if status == 200:
                    item.acked = time.monotonic()
        finally:
            await connection.close()

    await _with_ticker(
        asyncio.gather(schedule(), *(run_connection() for _ in range(concurrency))),
        None if on_tick is None else lambda: on_tick(ledger, time.monotonic() - started))
    return time.monotonic() - started


async def _with_ticker(work: Awaitable[Any], tick: Callable[[], None] | None) -> None:
    """Await `work`, calling `tick` (progress display) every half second meanwhile."""

    async def ticker() -> None:
        while True:
            await asyncio.sleep(0.5)
            if tick is not None:
                tick()

    task = asyncio.create_task(ticker())
    try:
        await work
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
