from __future__ import annotations

import socket

from chute.settings import CommonSettings
from pydantic import Field, model_validator

# What SyncWorker.shutdown gives the dead-letter producer after the last flush.
SHUTDOWN_PRODUCER_FLUSH_SECONDS = 5.0


class SyncSettings(CommonSettings):
    sync_host: str = "127.0.0.1"
    sync_port: int = 4100
    sync_group: str = "chute-sync"
    sync_worker_id: str = Field(default_factory=socket.gethostname)
    # Dead-letter ratio guard, per pipeline: stop that pipeline when more than this share of
    # its last `window` records went to the dead-letter queue (a misconfiguration, not a few
    # bad records).
    sync_dlq_ratio_limit: float = Field(0.5, gt=0, le=1)
    sync_dlq_ratio_window: int = Field(1000, ge=10)
    sync_dlq_ratio_min_records: int = Field(200, ge=1)
    # Retries of a pipeline's failed insert: capped exponential backoff with jitter. Transient
    # and schema errors are retried without end; an unclassified error this many times, then
    # the pipeline is failed (until a restart).
    sync_retry_initial_seconds: float = Field(0.5, gt=0)
    sync_retry_max_seconds: float = Field(10.0, gt=0)
    sync_retry_budget: int = Field(5, ge=0)
    # /health answers 503 when a pipeline failed or has not flowed for this many seconds.
    sync_health_paused_seconds: float = Field(30.0, gt=0)
    # How often each pipeline's state is written for `chute status` (chute.sync_status).
    sync_status_interval_seconds: float = Field(5.0, gt=0)
    # On shutdown, how long a last flush may take before its rows are dropped
    # (they are re-delivered, since their offsets are not committed).
    sync_shutdown_flush_seconds: float = Field(20.0, gt=0)
    # How long the supervisor waits after SIGTERM before SIGKILL (compose's stop_grace_period
    # and the dev runner's grace are 30 s): the shutdown flush, the dead-letter producer's
    # flush and leaving the group must fit in it.
    sync_stop_grace_seconds: float = Field(30.0, gt=0)
    # On revocation, how long the flush of the buffered rows may keep retrying before they
    # are dropped (the next owner re-reads them). An insert under way finishes first. The
    # rebalance waits for it, inside poll(), while the client keeps heartbeating.
    sync_rebalance_flush_seconds: float = Field(5.0, gt=0)
    # Consumer group timing. The session bounds how long a killed worker's partitions stay
    # unread; the poll interval bounds a poll loop that hangs (and is the time the other
    # members wait at most for this one to finish a revocation).
    sync_session_timeout_ms: int = Field(6_000, ge=6_000)
    sync_max_poll_interval_ms: int = Field(900_000, ge=10_000)
    # What the consumer fetches ahead of the worker, in bytes (also bounds librdkafka's queue
    # of fetched records, which costs several hundred bytes of RSS per small record). Measured
    # with 91-byte records, 2,000,000 pre-filled, one worker (scripts/bench --only sync
    # --no-engine): 4 MiB 250,887 rows/s, peak RSS 175 MiB; 8 MiB 250,371, 209 MiB; 16 MiB
    # 253,959, 243 MiB (librdkafka's fetch.queue.backoff.ms at 10 ms: with its default, 1 s,
    # 16 MiB gave 137,360 and smaller prefetches less).
    sync_prefetch_bytes: int = Field(4 * 1024 * 1024, ge=1024 * 1024, le=1024 * 1024 * 1024)
    # Fault injection for the fault suite: SIGKILL this process right after its N-th insert,
    # before the offsets are committed (the worst moment for duplicates). 0 = off.
    sync_fault_kill_after_inserts: int = Field(0, ge=0)

    @model_validator(mode="after")
    def _timeouts_agree(self) -> SyncSettings:
        if self.sync_retry_initial_seconds > self.sync_retry_max_seconds:
            raise ValueError(
                f"sync_retry_initial_seconds ({self.sync_retry_initial_seconds:g}) is above "
                f"sync_retry_max_seconds ({self.sync_retry_max_seconds:g})")
        needed = self.sync_shutdown_flush_seconds + SHUTDOWN_PRODUCER_FLUSH_SECONDS
        if needed >= self.sync_stop_grace_seconds:
            raise ValueError(
                f"sync_shutdown_flush_seconds ({self.sync_shutdown_flush_seconds:g}) plus the "
                f"dead-letter producer's flush ({SHUTDOWN_PRODUCER_FLUSH_SECONDS:g} s) must end "
                f"before sync_stop_grace_seconds ({self.sync_stop_grace_seconds:g}), when the "
                "supervisor sends SIGKILL: lower the flush, or raise the grace (and compose's "
                "stop_grace_period with it)")
        return self

    @model_validator(mode="after")
    def _rebalance_budget_fits(self) -> SyncSettings:
        # The revocation flush runs inside poll(): with its retries and one insert that was
        # under way (up to the retry cap), it must end well before the poll interval does,
        # or the member is removed while it still inserts.
        needed = (self.sync_rebalance_flush_seconds + self.sync_retry_max_seconds) * 1000
        if needed * 4 > self.sync_max_poll_interval_ms:
            raise ValueError(
                "sync_rebalance_flush_seconds + sync_retry_max_seconds must stay below a "
                f"quarter of sync_max_poll_interval_ms ({self.sync_max_poll_interval_ms} ms)")
        if self.sync_session_timeout_ms * 1.5 > self.sync_max_poll_interval_ms:
            raise ValueError("sync_max_poll_interval_ms must be well above "
                             "sync_session_timeout_ms")
        return self
