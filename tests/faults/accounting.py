"""Counting what was acknowledged against what is in the table."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Outcome:
    scenario: str
    acknowledged: int
    lost: int
    duplicated: int
    notes: str = ""


SUMMARY: list[Outcome] = []


def account(ch: Any, table: str, acked_ids: list[str], scenario: str,
            notes: str = "") -> Outcome:
    """Compare acknowledged ids with the table, by plain count() per id (no FINAL)."""
    counts = dict(ch.execute(f"SELECT id, count() FROM `{table}` GROUP BY id"))
    acked = set(acked_ids)
    lost = sum(1 for i in acked if i not in counts)
    duplicated = sum(c - 1 for c in counts.values() if c > 1)
    outcome = Outcome(scenario, len(acked), lost, duplicated, notes)
    SUMMARY.append(outcome)
    print(f"\n{scenario}: acknowledged {outcome.acknowledged}, lost {lost}, "
          f"duplicated {duplicated} {notes}")
    return outcome


def format_summary(rows: list[Outcome]) -> str:
    width = max(len("scenario"), *(len(r.scenario) for r in rows))
    header = f"{'scenario':<{width}} {'acknowledged':>12} {'lost':>6} {'duplicated':>10}  notes"
    lines = [header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.scenario:<{width}} {r.acknowledged:>12,} {r.lost:>6} "
                     f"{r.duplicated:>10}  {r.notes}")
    return "\n".join(lines)


@dataclass
class RssSampler:
    """Peak resident memory of a process, sampled in a thread."""

    pid: int
    peak_kib: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._stop.is_set():
            try:
                with open(f"/proc/{self.pid}/status") as fh:
                    for line in fh:
                        if line.startswith("VmRSS:"):
                            self.peak_kib = max(self.peak_kib, int(line.split()[1]))
            except OSError:
                pass
            self._stop.wait(0.2)

    def start(self) -> RssSampler:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> float:
        self._stop.set()
        if self._thread:
            self._thread.join()
        return self.peak_kib / 1024


def committed_offsets(group: str, topic: str) -> dict[int, int]:
    from chute import kafka
    from chute.kafka import TopicPartition

    from tests.support import KAFKA

    admin = kafka.admin(KAFKA)
    try:
        count = admin.topic_partitions().get(topic, 0)
        found = admin.group_offsets(group, [TopicPartition(topic, p) for p in range(count)])
        return {tp.partition: -1 if off is None else off for tp, off in sorted(found.items())}
    finally:
        admin.close()


def pid_of(service: Any) -> int:
    assert service.proc is not None
    return int(service.proc.pid) if os.path.exists(f"/proc/{service.proc.pid}") else -1
