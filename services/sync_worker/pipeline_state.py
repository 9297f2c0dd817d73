"""Each pipeline's own health: flowing, retrying, paused or failed. Pure: the clock is passed in.

A pipeline whose insert fails stops flushing and fetching (its partitions are paused) and is
retried on its own schedule while the other pipelines keep flowing:

- transient errors: retried with capped, jittered backoff for as long as it takes;
- schema errors: paused, retried at the same backoff; resumes by itself once the table is fixed;
- unknown errors: retried `unknown_budget` times, then the pipeline is failed;
- `fail`: no more attempts (the dead-letter guard tripped, the budget ran out);
- `hold`: paused without retries (records of a model definition this worker does not have:
  only a worker reload helps).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sync_worker.errors import SCHEMA, UNKNOWN
from sync_worker.policy import Backoff

_MAX_REASON = 500


class Status(StrEnum):
    FLOWING = "flowing"
    RETRYING = "retrying"
    PAUSED = "paused"
    FAILED = "failed"


@dataclass
class PipelineState:
    backoff: Backoff
    unknown_budget: int
    status: Status = Status.FLOWING
    reason: str = ""
    since: float | None = None  # when it stopped flowing
    next_attempt: float | None = None  # None: no automatic retry
    attempts: int = 0
    unknown_failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

    @property
    def flowing(self) -> bool:
        return self.status is Status.FLOWING

    def failed_attempt(self, kind: str, error: str, now: float) -> float | None:
        """Record a failed attempt; returns the delay until the next one, or None when the
        pipeline is failed for good."""
        self.attempts += 1
        if self.since is None:
            self.since = now
        if kind == UNKNOWN:
            self.unknown_failures += 1
            if self.unknown_failures > self.unknown_budget:
                self.fail(f"gave up after {self.unknown_failures} attempts: {error}", now)
                return None
        self.status = Status.PAUSED if kind == SCHEMA else Status.RETRYING
        self.reason = f"{kind} error: {error}"[:_MAX_REASON]
        delay = self.backoff.next_delay(self.rng)
        self.next_attempt = now + delay
        return delay

    def succeeded(self) -> bool:
        """The pending work went through; True if the pipeline was not flowing before."""
        was_stopped = not self.flowing
        self.status = Status.FLOWING
        self.reason = ""
        self.since = self.next_attempt = None
        self.attempts = self.unknown_failures = 0
        self.backoff.reset()
        return was_stopped

    def fail(self, reason: str, now: float) -> None:
        self._stop(Status.FAILED, reason, now)

    def hold(self, reason: str, now: float) -> None:
        self._stop(Status.PAUSED, reason, now)

    def _stop(self, status: Status, reason: str, now: float) -> None:
        self.status = status
        self.reason = reason[:_MAX_REASON]
        self.next_attempt = None
        if self.since is None:
            self.since = now

    def due(self, now: float) -> bool:
        """Whether the next automatic attempt is due."""
        return (not self.flowing and self.next_attempt is not None
                and now >= self.next_attempt)

    def stopped_for(self, now: float) -> float:
        return 0.0 if self.since is None else max(0.0, now - self.since)

    def describe(self, now: float) -> dict[str, Any]:
        report: dict[str, Any] = {"state": self.status.value}
        if not self.flowing:
            report.update(reason=self.reason, stopped_seconds=round(self.stopped_for(now), 1),
                          attempts=self.attempts, retrying=self.next_attempt is not None)
        return report


def health(states: dict[str, PipelineState], now: float,
           paused_threshold: float) -> tuple[bool, dict[str, Any]]:
    """(healthy, details). Unhealthy when a pipeline failed or has not flowed for
    `paused_threshold` seconds; `problems` names each such pipeline with its reason."""
    pipelines = {name: state.describe(now) for name, state in sorted(states.items())}
    problems = [
        f"{name}: {state.status.value} for {state.stopped_for(now):.0f}s: {state.reason}"
        for name, state in sorted(states.items())
        if state.status is Status.FAILED
        or (not state.flowing and state.stopped_for(now) >= paused_threshold)]
    return not problems, {"pipelines": pipelines, "problems": problems}
