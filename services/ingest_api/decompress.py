"""Streaming decompression of request bodies with a bound on the output. Pure: no I/O.

`Content-Encoding: gzip` (or `x-gzip`) and `zstd` are decoded as the body arrives; each piece
of output is limited to what the size limit still allows, so a small body that would inflate
to gigabytes (a zip bomb) is refused as soon as its output passes the limit, having produced
at most limit + 1 bytes. Concatenated gzip members and zstd frames are decoded one after the
other, as both formats allow.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Protocol

try:  # Python 3.14 has it in the standard library
    from compression import zstd as zstd  # type: ignore[import-not-found,unused-ignore]
except ImportError:  # older Pythons: the backport, a dependency of chute there
    from backports import zstd as zstd  # type: ignore[import-not-found,no-redef,unused-ignore]

SUPPORTED_ENCODINGS = ("gzip", "zstd")


class UnsupportedEncodingError(ValueError):
    """A Content-Encoding this API does not decode (415)."""


class CorruptBodyError(ValueError):
    """The body is not valid data of its Content-Encoding (400)."""


class TooLargeError(ValueError):
    """The decoded body grew past the limit (413)."""


class _Inflater(Protocol):
    """One gzip member or zstd frame being decoded."""

    def feed(self, data: bytes, max_length: int) -> bytes: ...
    @property
    def finished(self) -> bool: ...  # the member/frame ended
    @property
    def wants_input(self) -> bool: ...  # all input given so far is consumed
    @property
    def unused(self) -> bytes: ...  # input past the end of the member/frame


class _Gzip:
    def __init__(self) -> None:
        self._d = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # gzip header required
        self._tail = b""

    def feed(self, data: bytes, max_length: int) -> bytes:
        data = self._tail + data if self._tail else data
        out = self._d.decompress(data, max_length)
        self._tail = self._d.unconsumed_tail
        return out

    @property
    def finished(self) -> bool:
        return self._d.eof

    @property
    def wants_input(self) -> bool:
        return not self._tail

    @property
    def unused(self) -> bytes:
        return self._d.unused_data


# Largest zstd window accepted (2^23 = 8 MiB, what `zstd -19` uses): a frame may ask the
# decoder for a window of up to 2 GiB (`--long`), memory spent per request before any output.
# Frames that need more are refused as corrupt (400).
ZSTD_WINDOW_LOG_MAX = 23


class _Zstd:
    def __init__(self) -> None:
        self._d = zstd.ZstdDecompressor(
            options={zstd.DecompressionParameter.window_log_max: ZSTD_WINDOW_LOG_MAX})

    def feed(self, data: bytes, max_length: int) -> bytes:
        return bytes(self._d.decompress(data, max_length))

    @property
    def finished(self) -> bool:
        return bool(self._d.eof)

    @property
    def wants_input(self) -> bool:
        return bool(self._d.needs_input)

    @property
    def unused(self) -> bytes:
        return bytes(self._d.unused_data)


_INFLATERS: dict[str, Callable[[], _Inflater]] = {"gzip": _Gzip, "x-gzip": _Gzip, "zstd": _Zstd}
_ERRORS: tuple[type[Exception], ...] = (zlib.error, zstd.ZstdError, EOFError)


def encoding_of(header: str | None) -> str | None:
    """The one encoding to undo for a Content-Encoding header (None: the body is as it is).

    Raises UnsupportedEncodingError for anything but gzip, x-gzip, zstd and identity, and for
    several encodings stacked."""
    if header is None:
        return None
    codings = [c.strip().lower() for c in header.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if len(codings) > 1 or codings[0] not in _INFLATERS:
        raise UnsupportedEncodingError(
            f"unsupported Content-Encoding {header!r}: send the body as it is, or compressed "
            f"with one of {', '.join(SUPPORTED_ENCODINGS)}")
    return codings[0]


class Decoder:
    """Decodes one body of `encoding`, piece by piece, refusing output beyond `limit` bytes."""

    def __init__(self, encoding: str, limit: int) -> None:
        self.encoding = encoding
        self.limit = limit
        self.size = 0  # decoded bytes so far
        self._new = _INFLATERS[encoding]
        self._current: _Inflater = self._new()
        self._started = False  # the current member/frame got input

    def feed(self, data: bytes) -> bytes:
        """The decoded bytes data yields. Raises TooLargeError, CorruptBodyError."""
        pieces: list[bytes] = []
        try:
            while True:
                current = self._current
                if current.finished:  # the next member/frame starts with what is left
                    data = current.unused + data
                    self._current = current = self._new()
                    self._started = False
                    if not data.strip(b"\0"):  # zero padding after the last one
                        data = b""
                if not data and current.wants_input:
                    break
                if data:
                    self._started = True
                out = current.feed(data, self.limit - self.size + 1)
                data = b""
                self.size += len(out)
                if self.size > self.limit:
                    raise TooLargeError(f"decoded body larger than {self.limit} bytes")
                pieces.append(out)
        except _ERRORS as exc:
            raise CorruptBodyError(f"body is not valid {self.encoding} data ({exc})") from None
        return b"".join(pieces)

    def finish(self) -> None:
        """Raises CorruptBodyError when the body ended inside a member/frame."""
        if self._started and not self._current.finished:
            raise CorruptBodyError(f"body is not valid {self.encoding} data (truncated)")
