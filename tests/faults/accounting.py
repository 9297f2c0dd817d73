"""Counting what was acknowledged against what is in the table."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from testkit import offsets
from testkit.rss import PeakRss as RssSampler
from tests.support import KAFKA

__all__ = ["SUMMARY", "Outcome", "RssSampler", "account", "committed_offsets", "format_summary"]


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


def committed_offsets(group: str, topic: str) -> dict[int, int]:
    """{partition: committed offset} of `group` on `topic` (-1: nothing committed)."""
    return offsets.committed_offsets(KAFKA, group, topic)
