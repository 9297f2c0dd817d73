"""Process-wide tuning shared by the services."""

from __future__ import annotations

import contextlib
import gc
import math
import os
from pathlib import Path


def tune_garbage_collector() -> None:
    """Call once the definitions are loaded. Buffered rows and request bodies are freed by
    reference counting, not by the cycle collector; with the default thresholds it re-scans
    the growing batch over and over (measured: ~25 % of the sync worker's decode time).
    Freezing moves what start-up allocated out of its sight for good."""
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)


def available_cores() -> int:
    """Cores this process may use: its CPU affinity, lowered by a cgroup CPU quota (what a
    container's `cpus:` limit sets; v2 `cpu.max` or v1 `cpu.cfs_quota_us`)."""
    cores = len(os.sched_getaffinity(0))
    quota = None
    with contextlib.suppress(OSError, ValueError):
        quota = quota_cores(Path("/sys/fs/cgroup/cpu.max").read_text())
    if quota is None:
        with contextlib.suppress(OSError, ValueError):
            quota = quota_cores(
                Path("/sys/fs/cgroup/cpu/cpu.cfs_quota_us").read_text() + " "
                + Path("/sys/fs/cgroup/cpu/cpu.cfs_period_us").read_text())
    return max(1, min(cores, quota)) if quota is not None else max(1, cores)


def quota_cores(text: str) -> int | None:
    """Whole cores of a cgroup quota, `<quota> <period>` in microseconds (rounded up); None
    without a quota (`max`, or -1 in cgroup v1)."""
    quota, period = text.split()[:2]
    if quota == "max" or int(quota) < 0:
        return None
    return max(1, math.ceil(int(quota) / int(period)))
