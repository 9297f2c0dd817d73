"""/metrics of an ingest API that runs as several processes (ingest_api.replicas).

Every copy keeps its series in files of one directory (prometheus_client's multiprocess mode:
the supervisor makes the directory and names it in PROMETHEUS_MULTIPROC_DIR), and whichever
copy answers a scrape reports them all: counters and histograms summed over the copies, the
in-flight gauges summed over the live ones (`multiprocess_mode="livesum"` in chute.metrics).
process_resident_memory_bytes and process_cpu_seconds_total are sums over the supervisor and
every copy (read from /proc), so that the service reads as one process on the dashboards.
With one process, /metrics is prometheus_client's default registry, as in the other services.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
PIDS_FILE = "service-pids"  # in that directory: the supervisor's pid and its copies', one a line


def metrics_text() -> bytes:
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return generate_latest()
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    registry.register(ServiceProcessCollector(Path(directory) / PIDS_FILE))
    return generate_latest(registry)


def write_pids(directory: Path, pids: Sequence[int]) -> None:
    """Written once by the supervisor, after starting its copies (replaced atomically)."""
    staged = directory / f".{PIDS_FILE}"
    staged.write_text("".join(f"{pid}\n" for pid in pids))
    staged.replace(directory / PIDS_FILE)


class ServiceProcessCollector(Collector):
    """Resident memory and CPU time of every process of the service, summed."""

    def __init__(self, pids_file: Path) -> None:
        self.pids_file = pids_file
        self.ticks = os.sysconf("SC_CLK_TCK")
        self.page = os.sysconf("SC_PAGE_SIZE")

    def collect(self) -> Iterator[Metric]:
        try:
            pids = [int(line) for line in self.pids_file.read_text().split()]
        except (OSError, ValueError):
            return  # not written yet (the copies are starting)
        rss = cpu = 0.0
        for pid in pids:
            try:
                cpu += cpu_seconds(Path(f"/proc/{pid}/stat").read_text(), self.ticks)
                rss += rss_bytes(Path(f"/proc/{pid}/statm").read_text(), self.page)
            except (OSError, ValueError, IndexError):
                continue  # exited: its share is gone from the sums
        yield GaugeMetricFamily("process_resident_memory_bytes",
                                "Resident memory size in bytes (all processes of the service)",
                                value=rss)
        yield CounterMetricFamily("process_cpu_seconds",
                                  "User and system CPU time in seconds (all processes of the "
                                  "service)", value=cpu)


def cpu_seconds(stat: str, ticks_per_second: int) -> float:
    """utime + stime of a /proc/<pid>/stat line (after the command name, which may hold
    spaces and parentheses: fields 14 and 15 counted from the start)."""
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / ticks_per_second


def rss_bytes(statm: str, page_size: int) -> float:
    return int(statm.split()[1]) * page_size
