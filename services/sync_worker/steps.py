"""The sync as a chain of steps, each with one interface (as getsentry/arroyo's processing
strategies): decode -> batch -> insert -> commit.

Every step takes work with `submit`, does what has come due with `poll(now)`, finishes what
it holds before a deadline with `join`, and forgets what it holds with `close` (nothing of it
was committed; the worker rewinds the consumer so that it is read again). Decoding and
batching are one step (`decoding.DecodeStep`): a run of records is validated in one pass up
to where the batch is full, so where a run ends depends on the batch. Then
`inserting.InsertStep` and `committing.CommitStep`. The loop around them is
`worker.SyncWorker`.
"""

from __future__ import annotations

from typing import Protocol, TypeVar

from chute.kafka import TopicPartition

T_contra = TypeVar("T_contra", contravariant=True)


class Step(Protocol[T_contra]):
    def submit(self, item: T_contra) -> None:
        """Take one piece of work (it may be acted on at once)."""

    def poll(self, now: float) -> None:
        """Do what has come due by `now` (a batch old enough, a retry whose time came)."""

    def join(self, reason: str) -> dict[TopicPartition, int]:
        """Finish everything held, retrying until the stop deadline; returns the offsets it
        covered. Raises FlushAbandoned for what could not finish in time."""

    def close(self) -> None:
        """Forget what is held (nothing of it was committed); the caller rewinds the consumer
        (AssignmentManager.rewind) so that it is read again."""


class FlushAbandoned(RuntimeError):
    """A flush could not finish before its deadline; its offsets stay uncommitted. `done`: the
    offsets of what other pipelines did flush meanwhile."""

    def __init__(self, message: str, done: dict[TopicPartition, int] | None = None) -> None:
        super().__init__(message)
        self.done = done or {}


class DeadLetterRatioExceeded(RuntimeError):
    """Too many of a pipeline's records are going to the dead-letter queue: probably a
    misconfiguration. Stops that pipeline."""
