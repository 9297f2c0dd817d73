"""Reports this worker's pipeline states to `chute.sync_status`'s table, from a daemon thread
with its own ClickHouse connection (the sync loop's connection belongs to the main thread)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog
from chute import sync_status
from chute.sync_status import PipelineReport

from sync_worker.pipeline_state import PipelineState

log = structlog.get_logger()


def reports(worker: str, states: dict[str, PipelineState], now: float
            ) -> list[PipelineReport]:
    """One report per pipeline, from a copy of the states (pure but for the wall clock)."""
    at = sync_status.now_utc()
    return [PipelineReport(worker, name, state.status.value, state.reason,
                           round(state.stopped_for(now), 1), at)
            for name, state in sorted(states.items())]


class StatusReporter(threading.Thread):
    def __init__(self, connect: Callable[[], Any], database: str, worker: str,
                 states: Callable[[], dict[str, PipelineState]], clock: Callable[[], float],
                 interval: float, cluster: str | None = None) -> None:
        super().__init__(name="status-reporter", daemon=True)
        self.connect = connect
        self.database = database
        self.cluster = cluster
        self.worker = worker
        self.states = states
        self.clock = clock
        self.interval = interval
        self.stopped = threading.Event()
        self._client: Any = None
        self._failing = False

    def run(self) -> None:
        while not self.stopped.is_set():
            self.report_once()
            self.stopped.wait(self.interval)

    def report_once(self) -> None:
        try:
            if self._client is None:
                self._client = self.connect()
                sync_status.ensure_status_table(self._client, self.database, self.cluster)
            sync_status.write_reports(self._client, self.database,
                                      reports(self.worker, dict(self.states()), self.clock()))
            if self._failing:
                log.info("pipeline states reported again")
            self._failing = False
        except Exception as exc:
            if not self._failing:  # once per outage: the sync loop logs its own errors
                log.warning("cannot report pipeline states", error=f"{type(exc).__name__}: "
                            f"{exc}")
            self._failing = True
            if self._client is not None:
                self._client.disconnect()
            self._client = None

    def stop(self) -> None:
        self.stopped.set()
