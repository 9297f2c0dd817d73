"""The HTTP server: uvicorn with httptools, plus a deadline and a size bound for headers.

uvicorn has no timeout for reading a request's headers (its keep-alive timeout only runs
between requests and restarts on every byte), so a client that sends a header line now and
then holds its connection for ever. The protocol here is uvicorn's httptools protocol, which
it extends only through the interfaces it implements (asyncio.Protocol and the httptools
parser callbacks): a connection must deliver the request line and headers within
`header_timeout` of opening or of the request's first byte, in at most `max_header_bytes`.
Otherwise it gets 408 or 431 (on its first request; later ones are just closed, as a response
may be on its way) and is closed. One timer sweeps all connections a few times a second, so
the hot path only stores a timestamp.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import structlog
from chute.metrics import INGEST_CLIENT_FAULTS
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = structlog.get_logger()

SWEEP_SECONDS = 0.5


def _answer(status: int, reason: str, message: str) -> bytes:
    body = orjson.dumps({"error": message})
    return (f"HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\n"
            f"content-length: {len(body)}\r\nconnection: close\r\n\r\n").encode() + body


class _Deadlines:
    """The connections still waiting for a request's headers, and the timer that checks them."""

    def __init__(self, timeout: float, max_bytes: int) -> None:
        self.timeout = timeout
        self.max_bytes = max_bytes
        self.open: set[BoundedHeadersProtocol] = set()
        self._timer: asyncio.TimerHandle | None = None

    def add(self, protocol: BoundedHeadersProtocol) -> None:
        self.open.add(protocol)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self.sweep)

    def sweep(self) -> None:
        now = time.monotonic()
        for protocol in [p for p in self.open
                         if p.headers_since is not None and now - p.headers_since > self.timeout]:
            protocol.refuse(408, "Request Timeout", "request headers did not arrive within "
                            f"{self.timeout:g} s", "header_timeout")
        self._timer = None
        if self.open:
            self._timer = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self.sweep)


class BoundedHeadersProtocol(HttpToolsProtocol):
    deadlines: _Deadlines  # set on the subclass made by bounded_headers_protocol()

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.headers_since: float | None = None  # waiting for headers since (monotonic)
        self.header_bytes = 0
        self.requests = 0
        self._own_transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._own_transport = transport
        self.headers_since = time.monotonic()
        self.deadlines.add(self)
        super().connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.deadlines.open.discard(self)
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.headers_since is not None:
            self.header_bytes += len(data)
            if self.header_bytes > self.deadlines.max_bytes:
                # Counted before parsing: a body that came in the same read may count too,
                # so only refuse when the headers themselves did not end within the bound.
                head_end = data.find(b"\r\n\r\n")
                if head_end < 0 or self.header_bytes - len(data) + head_end > \
                        self.deadlines.max_bytes:
                    self.refuse(431, "Request Header Fields Too Large",
                                f"request line and headers over {self.deadlines.max_bytes} "
                                "bytes", "header_too_large")
                    return
        super().data_received(data)

    def on_message_begin(self) -> None:
        if self.headers_since is None:
            self.headers_since = time.monotonic()
            self.header_bytes = 0
        super().on_message_begin()

    def on_headers_complete(self) -> None:
        self.headers_since = None
        self.requests += 1
        super().on_headers_complete()

    def refuse(self, status: int, reason: str, message: str, kind: str) -> None:
        transport = self._own_transport
        self.deadlines.open.discard(self)
        self.headers_since = None
        if transport is None or transport.is_closing():
            return
        INGEST_CLIENT_FAULTS.labels(kind).inc()
        log.info("client refused", reason=kind, status=status)
        if self.requests == 0:
            transport.write(_answer(status, reason, message))
        transport.close()


def bounded_headers_protocol(timeout: float, max_bytes: int) -> type[asyncio.Protocol]:
    """A protocol class for uvicorn's `http` setting, with its own deadlines."""
    return type("BoundedHeaders", (BoundedHeadersProtocol,),
                {"deadlines": _Deadlines(timeout, max_bytes)})
