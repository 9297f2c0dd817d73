"""Settings of the ingest API, from CHUTE_* environment variables.

Every field specific to this service starts with `ingest_`, so that its variable is
CHUTE_INGEST_<NAME> (e.g. CHUTE_INGEST_PORT, CHUTE_INGEST_MAX_BODY_BYTES,
CHUTE_INGEST_API_KEYS) without clashing with the settings every service shares.
"""

from __future__ import annotations

from typing import Annotated, Any

from chute.kafka import ProducerOptions
from chute.settings import SECRET, CommonSettings
from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from ingest_api.keys import KeyEntry, parse_entry
from ingest_api.receive import ReceiveLimits

KIB = 1024
MIB = 1024 * KIB


class IngestSettings(CommonSettings):
    # Where the HTTP server listens. Containers must set CHUTE_INGEST_HOST=0.0.0.0.
    ingest_host: str = "127.0.0.1"
    ingest_port: int = Field(4000, ge=1, le=65535)
    # Largest request body accepted, after decompression; larger ones get 413 before they are
    # buffered.
    ingest_max_body_bytes: int = Field(10 * MIB, ge=1024)
    # A body over the limit is still read (and thrown away) up to this many bytes before the
    # 413 is sent, so that clients which write the whole body before reading can read it.
    # Beyond it the 413 is sent at once and the connection closed.
    ingest_max_drain_bytes: int = Field(32 * MIB, ge=1024)
    # The request line and headers must arrive within this time (from the connection's
    # opening or the request's first byte), and be at most ingest_max_header_bytes long.
    ingest_header_timeout_seconds: float = Field(10.0, gt=0, le=3600)
    ingest_max_header_bytes: int = Field(64 * KIB, ge=4 * KIB)
    # A body must arrive at ingest_body_min_rate_bytes per second on average, counted from
    # ingest_body_grace_seconds after the headers: a client that falls behind gets 408.
    ingest_body_grace_seconds: float = Field(5.0, gt=0, le=3600)
    ingest_body_min_rate_bytes: int = Field(32 * KIB, ge=1)
    # Requests whose body was not complete when first read and is still arriving. Beyond it,
    # such a request gets 503 at once. Separate from ingest_max_in_flight_requests, which
    # counts requests whose body is complete.
    ingest_max_receiving_requests: int = Field(256, ge=1)
    # Accepted API keys (comma-separated in the environment): each the SHA-256 hex digest of
    # a key, optionally ':<requests per second>' for a rate limit (429 beyond it). Only
    # digests are stored and compared; `chute keys new` makes a key and its digest. Empty: no
    # authentication.
    ingest_api_keys: Annotated[tuple[str, ...], NoDecode] = Field(
        (), json_schema_extra=SECRET, repr=False)
    # /docs, /redoc and /openapi.json served to anyone. Unset: only when no API keys are
    # configured.
    ingest_public_docs: bool | None = None
    # Kafka must acknowledge every record of a request within this time, else 503.
    ingest_ack_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # Requests with a complete body being processed at once, and body bytes held (received,
    # decompressed) by all requests; beyond either, answer 503 at once instead of queueing.
    ingest_max_in_flight_requests: int = Field(64, ge=1)
    ingest_max_in_flight_bytes: int = Field(256 * MIB, ge=1024)
    # How long the producer waits for more records before it sends a batch to Kafka. A few
    # milliseconds let the records of concurrent requests share one produce request (fewer,
    # larger requests for the client and the broker: measured, half the broker's CPU and
    # 1.5x the requests/s at 32 connections); a client that sends one request at a time
    # waits about this much longer for each answer (0: lowest latency for such a client).
    ingest_linger_ms: int = Field(2, ge=0, le=1000)
    # Retry-After (seconds) sent with 503 answers.
    ingest_retry_after_seconds: int = Field(1, ge=1, le=3600)
    # Threads that decode bodies and hand records to the Kafka producer. The work holds the
    # GIL: one thread is fastest (measured: 60k vs 41k records/s with two). Scale with
    # processes (replicas), not threads.
    ingest_worker_threads: int = Field(1, ge=1, le=64)
    # Processes serving the port together (SO_REUSEPORT; ingest_api.replicas): each uses one
    # core at most. 0: one per core available to the service (its CPU affinity and cgroup
    # quota), at most 8; 1: this process serves alone. /metrics reports all of them together.
    ingest_processes: int = Field(0, ge=0, le=64)
    # Records go to Kafka through chute's own librdkafka batch producer (chute.kafka.native,
    # a C extension): a request's records in one call, one report per request instead of one
    # per record (measured with 1,000-record requests: 4.8 -> 3.8 CPU-us per record, 315,000
    # -> 386,000 records/s with two processes on two cores). Same settings and guarantees.
    # Where the extension was not built, or the system's librdkafka cannot take the
    # configuration, confluent-kafka's producer is used (logged at start).
    ingest_native_producer: bool = True
    # How often the pipelines' tables are checked for a column per field of their model
    # (ingest_api.gate: records are refused with 503 until they are).
    ingest_column_check_seconds: float = Field(5.0, gt=0, le=3600)
    # How long to keep retrying to reach Kafka at start before exiting non-zero.
    ingest_startup_timeout_seconds: float = Field(60.0, gt=0)

    @field_validator("ingest_api_keys", mode="before")
    @classmethod
    def _split_entries(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [part for part in (p.strip() for p in value.split(",")) if part]
        if isinstance(value, list | tuple):
            for item in value:
                parse_entry(str(item))  # KeyEntryError never repeats the value
            return tuple(str(item).strip().lower() for item in value)
        return value

    @model_validator(mode="after")
    def _bytes_limits_agree(self) -> IngestSettings:
        if self.ingest_max_in_flight_bytes < self.ingest_max_body_bytes:
            raise ValueError(
                "ingest_max_in_flight_bytes must be at least ingest_max_body_bytes, "
                "else a request of the maximum size could never be accepted")
        if self.ingest_max_drain_bytes < self.ingest_max_body_bytes:
            raise ValueError("ingest_max_drain_bytes must be at least ingest_max_body_bytes")
        return self

    @property
    def api_key_entries(self) -> tuple[KeyEntry, ...]:
        return tuple(parse_entry(entry) for entry in self.ingest_api_keys)

    @property
    def docs_public(self) -> bool:
        if self.ingest_public_docs is None:
            return not self.ingest_api_keys
        return self.ingest_public_docs

    def receive_limits(self) -> ReceiveLimits:
        """The bounds on receiving request bodies (ingest_api.receive)."""
        return ReceiveLimits(
            max_body_bytes=self.ingest_max_body_bytes,
            max_drain_bytes=self.ingest_max_drain_bytes,
            grace_seconds=self.ingest_body_grace_seconds,
            min_rate_bytes=self.ingest_body_min_rate_bytes,
            max_receiving=self.ingest_max_receiving_requests,
            max_in_flight_bytes=self.ingest_max_in_flight_bytes)

    def producer_options(self, bootstrap_timeout_ms: int = 10_000) -> ProducerOptions:
        """Producer settings that keep every wait inside the ack timeout.

        send() blocks at most max_block_ms (metadata, buffer space); a record is failed by the
        producer itself once delivery_timeout_ms passed, so records of a request answered 503
        do not linger in the producer's buffer for the default two minutes.
        """
        ack_ms = int(self.ingest_ack_timeout_seconds * 1000)
        linger_ms = self.ingest_linger_ms
        request_timeout_ms = max(1000, min(10_000, ack_ms))
        return ProducerOptions(
            client_id="chute-ingest",
            linger_ms=linger_ms,
            request_timeout_ms=request_timeout_ms,
            delivery_timeout_ms=max(ack_ms, request_timeout_ms + linger_ms),
            max_block_ms=max(500, min(5_000, ack_ms // 2)),
            bootstrap_timeout_ms=bootstrap_timeout_ms,
        )
