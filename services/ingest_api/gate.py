"""The column gate: a pipeline's records are refused (503 + Retry-After) until its table has a
column for every field of its model, so that records of a new model never reach Kafka before
`chute apply` made room for them.

`ColumnGate` is pure: fed the table columns ClickHouse reported (`chute.clickhouse.
existing_columns`, one `system.columns` query), it answers per pipeline. `GateRefresher` runs
that query at start and then every few seconds in a thread; requests only read the answer.
A failed query keeps the last answer: a ClickHouse outage does not refuse pipelines already
known good. A pipeline never checked (ClickHouse unreachable since start) is refused.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import structlog
from chute.registry import Definitions
from chute.server import ServerProfile

log = structlog.get_logger()


@dataclass(frozen=True)
class TableNeeds:
    table: str
    columns: tuple[str, ...]


def table_needs(definitions: Definitions, profile: ServerProfile) -> dict[str, TableNeeds]:
    """{ingest pipeline: the table its records end in and the columns they need}."""
    needs: dict[str, TableNeeds] = {}
    for name, api in definitions.ingest_apis.items():
        table = api.destination.destination
        if table is not None:
            columns = tuple(c.name for c in table.definition(profile).columns)
            needs[name] = TableNeeds(table.name, columns)
    return needs


class ColumnGate:
    def __init__(self, needs: Mapping[str, TableNeeds]) -> None:
        self.needs = dict(needs)
        self._refusals: dict[str, str] | None = None  # None: never checked

    @property
    def checked(self) -> bool:
        return self._refusals is not None

    def update(self, existing: Mapping[str, Mapping[str, str]]) -> dict[str, str]:
        """Takes {table: {column: type}} as ClickHouse reported it; returns the refusals."""
        refusals: dict[str, str] = {}
        for pipeline, need in self.needs.items():
            have = existing.get(need.table)
            if have is None:
                refusals[pipeline] = (f"table {need.table!r} does not exist yet; run "
                                      "`chute apply` to create it")
                continue
            missing = [c for c in need.columns if c not in have]
            if missing:
                refusals[pipeline] = (
                    f"table {need.table!r} has no column for field(s) "
                    f"{', '.join(missing)} of this pipeline's model yet; `chute apply` "
                    "creates them")
        self._refusals = refusals
        return refusals

    def refusal(self, pipeline: str) -> str | None:
        """Why `pipeline`'s records are refused now, or None when they are accepted."""
        if pipeline not in self.needs:
            return None
        if self._refusals is None:
            return "the pipeline's table has not been checked yet (ClickHouse unreachable)"
        return self._refusals.get(pipeline)


class GateRefresher:
    """Re-checks the gate every `interval` seconds with `read_columns` (the query)."""

    def __init__(self, gate: ColumnGate, read_columns: Callable[[], Mapping[str, Mapping[
            str, str]]], interval: float) -> None:
        self.gate = gate
        self.read_columns = read_columns
        self.interval = interval
        self.stopped = threading.Event()
        self._last: dict[str, str] | None = None

    def refresh(self) -> bool:
        """One check; False when ClickHouse did not answer (the last answer stays)."""
        try:
            existing = self.read_columns()
        except Exception as exc:  # connection refused, timeout...
            log.warning("cannot check the pipelines' table columns; keeping the last answer",
                        error=f"{type(exc).__name__}: {exc}", checked=self.gate.checked)
            return False
        refusals = self.gate.update(existing)
        if refusals != self._last:
            if refusals:
                log.warning("pipelines refused until their tables have their columns",
                            refused=refusals)
            elif self._last is not None:
                log.info("every pipeline's table has its columns: accepting records")
            self._last = refusals
        return True

    def start(self) -> GateRefresher:
        threading.Thread(target=self._run, name="column-gate", daemon=True).start()
        return self

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            self.refresh()
