"""API keys: making them, checking them in constant time, and per-key rate limits. Pure.

Only SHA-256 digests of keys are configured (`CHUTE_INGEST_API_KEYS`), so a leaked setting
does not leak a key. An entry is `<digest>` or `<digest>:<requests per second>`; a key with a
rate gets a token bucket holding one second of requests (at least one), and a request that
finds it empty is answered 429 with the seconds until the next token as Retry-After.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

KEY_PREFIX = "chute_"
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


def new_key() -> str:
    """A fresh random key: 256 bits from the OS's CSPRNG, URL-safe."""
    return KEY_PREFIX + secrets.token_urlsafe(32)


def digest(key: str) -> str:
    """The SHA-256 hex digest of key, as configured in CHUTE_INGEST_API_KEYS."""
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class KeyEntry:
    digest: bytes  # raw SHA-256 of the key
    rate: float | None = None  # requests per second; None: unlimited


class KeyEntryError(ValueError):
    """A configured entry is not `<digest>[:<rate>]`. The message never repeats the entry:
    it may be a key pasted where its digest belongs."""


def parse_entry(text: str) -> KeyEntry:
    value, sep, rate_text = text.strip().lower().partition(":")
    if not _SHA256_HEX.match(value):
        raise KeyEntryError(
            "each entry must be the SHA-256 hex digest (64 hex characters) of an API key, "
            "optionally followed by ':<requests per second>', not the key itself; "
            "`chute keys new` makes a key and its digest, `chute keys digest` digests a key "
            "read from standard input (the value is not shown here: it may be a secret)")
    rate = None
    if sep:
        try:
            rate = float(rate_text)
        except ValueError:
            rate = math.nan
        if not (math.isfinite(rate) and rate > 0):
            raise KeyEntryError("the rate after ':' must be a number of requests per "
                                "second above 0")
    return KeyEntry(bytes.fromhex(value), rate)


@dataclass
class _Bucket:
    rate: float
    capacity: float
    tokens: float
    updated: float


@dataclass
class Verdict:
    allowed: bool
    retry_after: int = 0  # whole seconds until a request would be allowed (when refused)


ALLOWED = Verdict(True)
UNKNOWN_KEY = Verdict(False)


@dataclass
class KeyRing:
    """The configured keys; `check` says whether a request's key may go ahead now."""

    entries: tuple[KeyEntry, ...]
    clock: Callable[[], float]
    _buckets: dict[bytes, _Bucket] = field(default_factory=dict)

    @classmethod
    def from_entries(cls, entries: Iterable[KeyEntry], clock: Callable[[], float]) -> KeyRing:
        ring = cls(tuple(entries), clock)
        now = clock()
        for entry in ring.entries:
            if entry.rate is not None:
                capacity = max(1.0, entry.rate)
                ring._buckets[entry.digest] = _Bucket(entry.rate, capacity, capacity, now)
        return ring

    def __bool__(self) -> bool:
        return bool(self.entries)

    def match(self, token: str) -> KeyEntry | None:
        """The entry whose digest is token's, comparing with every entry (no early exit)."""
        presented = hashlib.sha256(token.encode()).digest()
        found = None
        for entry in self.entries:
            if hmac.compare_digest(presented, entry.digest):
                found = entry
        return found

    def check(self, authorization: str) -> Verdict:
        """For an `Authorization` header value: ALLOWED, UNKNOWN_KEY, or rate-limited."""
        scheme, _, token = authorization.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            return UNKNOWN_KEY
        entry = self.match(token)
        if entry is None:
            return UNKNOWN_KEY
        bucket = self._buckets.get(entry.digest)
        return ALLOWED if bucket is None else self._take(bucket)

    def _take(self, bucket: _Bucket) -> Verdict:
        now = self.clock()
        bucket.tokens = min(bucket.capacity,
                            bucket.tokens + (now - bucket.updated) * bucket.rate)
        bucket.updated = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return ALLOWED
        return Verdict(False, max(1, math.ceil((1.0 - bucket.tokens) / bucket.rate)))
