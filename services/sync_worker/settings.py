from __future__ import annotations

import socket

from chute.settings import CommonSettings
from pydantic import Field


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
    # On rebalance/shutdown, how long a last flush may take before its rows are dropped
    # (they are re-delivered, since their offsets are not committed).
    sync_shutdown_flush_seconds: float = Field(20.0, gt=0)
    # Fault injection for the fault suite: SIGKILL this process right after its N-th insert,
    # before the offsets are committed (the worst moment for duplicates). 0 = off.
    sync_fault_kill_after_inserts: int = Field(0, ge=0)
