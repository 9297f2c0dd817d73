"""Settings of the ingest API, from CHUTE_* environment variables.

Every field specific to this service starts with `ingest_`, so that its variable is
CHUTE_INGEST_<NAME> (e.g. CHUTE_INGEST_PORT, CHUTE_INGEST_MAX_BODY_BYTES,
CHUTE_INGEST_API_KEYS) without clashing with the settings every service shares.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from chute.kafka import ProducerOptions
from chute.settings import CommonSettings
from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

MIB = 1024 * 1024

_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


class IngestSettings(CommonSettings):
    # Where the HTTP server listens. Containers must set CHUTE_INGEST_HOST=0.0.0.0.
    ingest_host: str = "127.0.0.1"
    ingest_port: int = Field(4000, ge=1, le=65535)
    # Largest request body accepted; larger ones get 413 before they are buffered.
    ingest_max_body_bytes: int = Field(10 * MIB, ge=1024)
    # SHA-256 hex digests of the accepted API keys (comma-separated in the environment); only
    # digests are stored and compared. Empty: no authentication.
    ingest_api_keys: Annotated[tuple[str, ...], NoDecode] = ()
    # Kafka must acknowledge every record of a request within this time, else 503.
    ingest_ack_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # Requests (and their body bytes) processed at once; beyond either, answer 503 at once
    # instead of queueing.
    ingest_max_in_flight_requests: int = Field(64, ge=1)
    ingest_max_in_flight_bytes: int = Field(256 * MIB, ge=1024)
    # Retry-After (seconds) sent with 503 answers.
    ingest_retry_after_seconds: int = Field(1, ge=1, le=3600)
    # Threads that decode bodies and hand records to the Kafka producer. The work holds the
    # GIL: one thread is fastest (measured: 60k vs 41k records/s with two). Scale with
    # processes (replicas), not threads.
    ingest_worker_threads: int = Field(1, ge=1, le=64)
    # How long to keep retrying to reach Kafka at start before exiting non-zero.
    ingest_startup_timeout_seconds: float = Field(60.0, gt=0)

    @field_validator("ingest_api_keys", mode="before")
    @classmethod
    def _split_digests(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        if isinstance(value, list | tuple):
            digests = []
            for item in value:
                digest = str(item).strip().lower()
                if not _SHA256_HEX.match(digest):
                    raise ValueError(
                        "each entry must be the SHA-256 hex digest (64 hex characters) of an "
                        "API key, not the key itself; make one with: "
                        "printf %s \"$KEY\" | sha256sum")
                digests.append(digest)
            return tuple(digests)
        return value

    @model_validator(mode="after")
    def _bytes_limits_agree(self) -> IngestSettings:
        if self.ingest_max_in_flight_bytes < self.ingest_max_body_bytes:
            raise ValueError(
                "ingest_max_in_flight_bytes must be at least ingest_max_body_bytes, "
                "else a request of the maximum size could never be accepted")
        return self

    @property
    def api_key_digests(self) -> tuple[bytes, ...]:
        """The configured digests as raw bytes, for constant-time comparison."""
        return tuple(bytes.fromhex(d) for d in self.ingest_api_keys)

    def producer_options(self, bootstrap_timeout_ms: int = 10_000) -> ProducerOptions:
        """Producer settings that keep every wait inside the ack timeout.

        send() blocks at most max_block_ms (metadata, buffer space); a record is failed by the
        producer itself once delivery_timeout_ms passed, so records of a request answered 503
        do not linger in the producer's buffer for the default two minutes.
        """
        ack_ms = int(self.ingest_ack_timeout_seconds * 1000)
        linger_ms = 0  # a request's records are sent together anyway; no wait for more
        request_timeout_ms = max(1000, min(10_000, ack_ms))
        return ProducerOptions(
            client_id="chute-ingest",
            linger_ms=linger_ms,
            request_timeout_ms=request_timeout_ms,
            delivery_timeout_ms=max(ack_ms, request_timeout_ms + linger_ms),
            max_block_ms=max(500, min(5_000, ack_ms // 2)),
            bootstrap_timeout_ms=bootstrap_timeout_ms,
        )
