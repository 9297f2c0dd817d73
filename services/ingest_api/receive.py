"""Receiving request bodies from clients that may be slow, careless or hostile.

- A body must keep up a minimum average rate once a grace period after the headers is over
  (`body_too_slow`): a watchdog on the event loop looks at every body still arriving four
  times a second and cancels the read of one that fell behind, which is then answered 408.
- A request whose body was not complete at its first read takes a receiving slot; when all
  are taken it is answered 503 at once. Complete bodies (the common case: the body came with
  the headers) never need one, so trickling clients cannot hold up ordinary ones.
- Bytes are charged to the in-flight byte budget as they arrive (after decompression), not
  as declared by Content-Length.
- The limit applies to the body as sent and as decompressed. A body over it is still read
  and thrown away up to `max_drain_bytes`, so that a client that writes its whole body before
  reading the answer reads the 413 instead of a connection reset.

Every error says whether the body was read to its end (`complete`); when not, the answer must
close the connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

from ingest_api.decompress import Decoder, TooLargeError

Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]

SWEEP_SECONDS = 0.25  # how often the watchdog looks at the bodies still arriving


class ReceiveError(Exception):
    def __init__(self, message: str, complete: bool = False) -> None:
        super().__init__(message)
        self.complete = complete  # the body was read to its end: the connection may be kept


class ClientDisconnectedError(ReceiveError):
    """The client went away before its body arrived."""


class BodyTooSlowError(ReceiveError):
    """The body fell behind the minimum rate (408)."""


class TooManyReceivingError(ReceiveError):
    """Every receiving slot is taken (503)."""


class BodyTooLargeError(ReceiveError):
    """Over the limit (413); complete says whether the rest was drained."""


class BytesOverloadedError(ReceiveError):
    """The in-flight byte budget is used up (503)."""


@dataclass(frozen=True)
class ReceiveLimits:
    max_body_bytes: int
    max_drain_bytes: int
    grace_seconds: float
    min_rate_bytes: int  # per second
    max_receiving: int
    max_in_flight_bytes: int


def behind(elapsed: float, received: int, grace: float, min_rate: float) -> bool:
    """True when a body that has been arriving for `elapsed` seconds with `received` bytes is
    behind the minimum average rate counted from the end of the grace period."""
    return elapsed > grace and received < (elapsed - grace) * min_rate


class _Upload:
    """One body being read: what the watchdog needs to judge it."""

    __slots__ = ("received", "slotted", "started", "task", "too_slow")

    def __init__(self, task: asyncio.Task[Any] | None, started: float) -> None:
        self.task = task
        self.started = started
        self.received = 0  # bytes as sent on the wire
        self.slotted = False
        self.too_slow = False


class Reservation:
    """Bytes of one request counted against the in-flight byte budget."""

    __slots__ = ("size",)

    def __init__(self) -> None:
        self.size = 0


class BodyReceiver:
    """Reads bodies for all requests; holds the receiving slots, the byte budget and the
    watchdog. Used on the event loop only: no locks."""

    def __init__(self, limits: ReceiveLimits,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.clock = clock
        self.receiving = 0  # uploads holding a receiving slot
        self.in_flight_bytes = 0
        self._uploads: set[_Upload] = set()
        self._sweep: asyncio.TimerHandle | None = None
        self.on_too_slow: Callable[[], None] = lambda: None  # counts 408s (metrics)
        self.on_receiving: Callable[[int], None] = lambda n: None  # slot count changed

    # --- budget ------------------------------------------------------------------------------

    def release(self, reservation: Reservation) -> None:
        self.in_flight_bytes -= reservation.size
        reservation.size = 0

    def _charge(self, reservation: Reservation, size: int, complete: bool) -> None:
        if self.in_flight_bytes + size > self.limits.max_in_flight_bytes:
            raise BytesOverloadedError("overloaded: too many bytes in flight, retry later",
                                       complete)
        self.in_flight_bytes += size
        reservation.size += size

    # --- reading -----------------------------------------------------------------------------

    async def read(self, receive: Receive, encoding: str | None,
                   reservation: Reservation) -> bytes:
        """The whole body, decoded. Raises a ReceiveError (or CorruptBodyError from the
        decoder, with the body not read to its end)."""
        limit = self.limits.max_body_bytes
        decoder = Decoder(encoding, limit) if encoding is not None else None
        upload = self._watch()
        try:
            chunks: list[bytes] = []
            held = 0
            more = True
            while more:
                message = await self._next(receive, upload)
                chunk: bytes = message.get("body", b"")
                more = message.get("more_body", False)
                upload.received += len(chunk)
                if upload.received > limit:
                    raise await self._too_large(receive, upload, more)
                if decoder is not None and chunk:
                    try:
                        chunk = decoder.feed(chunk)
                    except TooLargeError:
                        raise await self._too_large(receive, upload, more) from None
                if chunk:
                    held += len(chunk)
                    if held > limit:
                        raise await self._too_large(receive, upload, more)
                    self._charge(reservation, len(chunk), not more)
                    chunks.append(chunk)
                if more and not upload.slotted:
                    self._take_slot(upload)
            if decoder is not None:
                decoder.finish()
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)
        finally:
            self._unwatch(upload)

    async def refuse(self, receive: Receive, declared: int | None,
                     slots: int | None = None) -> BodyTooLargeError:
        """For a request refused before its body was read (declared: its Content-Length, None
        when chunked): drain the body when it is within the drain bound; the error's
        `complete` says whether it was. `slots`: how many receiving slots such drains may
        hold at most (all of them when None)."""
        if declared is not None and declared > self.limits.max_drain_bytes:
            return self._too_large_error(False)
        upload = self._watch()
        try:
            return await self._too_large(receive, upload, True, slots)
        finally:
            self._unwatch(upload)

    async def _too_large(self, receive: Receive, upload: _Upload, more: bool,
                         slots: int | None = None) -> BodyTooLargeError:
        """Read and discard the rest of the body, up to the drain bound."""
        bound = self.limits.max_drain_bytes
        while more and upload.received <= bound:
            message = await self._next(receive, upload)
            upload.received += len(message.get("body", b""))
            more = message.get("more_body", False)
            if more and not upload.slotted:
                self._take_slot(upload, slots)
        return self._too_large_error(not more and upload.received <= bound)

    def _too_large_error(self, complete: bool) -> BodyTooLargeError:
        return BodyTooLargeError(
            f"body larger than {self.limits.max_body_bytes} bytes; split it into several "
            "requests", complete)

    async def _next(self, receive: Receive, upload: _Upload) -> MutableMapping[str, Any]:
        try:
            message = await receive()
        except asyncio.CancelledError:
            if not upload.too_slow:
                raise
            if upload.task is not None:
                upload.task.uncancel()
            raise BodyTooSlowError(
                f"body arrived too slowly: at least {self.limits.min_rate_bytes} bytes/s are "
                f"needed after the first {self.limits.grace_seconds:g} s") from None
        if message["type"] == "http.disconnect":
            raise ClientDisconnectedError("client disconnected while sending the body", True)
        return message

    # --- slots and the watchdog --------------------------------------------------------------

    def _take_slot(self, upload: _Upload, limit: int | None = None) -> None:
        if self.receiving >= min(self.limits.max_receiving, limit or self.limits.max_receiving):
            raise TooManyReceivingError(
                "overloaded: too many request bodies still arriving, retry later")
        upload.slotted = True
        self.receiving += 1
        self.on_receiving(self.receiving)

    def _watch(self) -> _Upload:
        upload = _Upload(asyncio.current_task(), self.clock())
        self._uploads.add(upload)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self.sweep)
        return upload

    def _unwatch(self, upload: _Upload) -> None:
        self._uploads.discard(upload)
        if upload.slotted:
            upload.slotted = False
            self.receiving -= 1
            self.on_receiving(self.receiving)

    def sweep(self) -> None:
        """Cancel the reads of bodies that fell behind; runs while any body is arriving."""
        now = self.clock()
        grace = self.limits.grace_seconds
        rate = self.limits.min_rate_bytes
        for upload in self._uploads:
            if (not upload.too_slow and upload.task is not None
                    and behind(now - upload.started, upload.received, grace, rate)):
                upload.too_slow = True
                upload.task.cancel()
                self.on_too_slow()
        self._sweep = None
        if self._uploads:
            self._sweep = asyncio.get_running_loop().call_later(SWEEP_SECONDS, self.sweep)
