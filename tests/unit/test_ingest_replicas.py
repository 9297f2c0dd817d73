"""How many ingest API processes start by default, and the /proc arithmetic behind the
summed process series of /metrics."""

from __future__ import annotations

import os

import pytest
from chute import runtime
from chute.runtime import quota_cores
from ingest_api import replicas
from ingest_api.replica_metrics import cpu_seconds, rss_bytes


@pytest.mark.parametrize(("text", "cores"), [
    ("max 100000\n", None),  # cgroup v2 without a limit
    ("200000 100000\n", 2),
    ("150000 100000\n", 2),  # 1.5 cores: a second process still gets half a core
    ("50000 100000\n", 1),
    ("-1 100000", None),  # cgroup v1 without a limit
])
def test_a_cgroup_quota_in_whole_cores(text: str, cores: int | None) -> None:
    assert quota_cores(text) == cores


def test_zero_processes_means_one_per_available_core(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(replicas, "available_cores", lambda: 3)
    assert replicas.process_count(0) == 3
    assert replicas.process_count(1) == 1
    assert replicas.process_count(5) == 5  # asked for: not capped
    monkeypatch.setattr(replicas, "available_cores", lambda: 64)
    assert replicas.process_count(0) == replicas.AUTO_MAXIMUM


def test_available_cores_is_at_most_the_affinity() -> None:
    assert 1 <= runtime.available_cores() <= len(os.sched_getaffinity(0))


def test_cpu_seconds_from_a_stat_line_whose_name_holds_spaces_and_parentheses() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt utime stime
    stat = "4242 (a (b) c) S 1 4242 4242 0 -1 4194304 3560 0 10 0 250 50 0 0 20 0 1 0\n"
    assert cpu_seconds(stat, 100) == 3.0


def test_rss_from_statm() -> None:
    assert rss_bytes("29245 5824 1000 1 0 4000 0\n", 4096) == 5824 * 4096
