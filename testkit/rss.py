"""Resident memory of processes, from /proc/<pid>/status."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path

import psutil


def read_memory(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of a process in bytes; None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    if len(values) < 2:
        return None
    return values["VmRSS"], values["VmHWM"]


def descendants(pid: int) -> list[int]:
    """The pids of a process's children, of theirs and so on (an ingest API that runs several
    processes under a supervisor); [] when it is gone."""
    try:
        return [child.pid for child in psutil.Process(pid).children(recursive=True)]
    except psutil.Error:
        return []


def read_tree_memory(pid: int) -> tuple[int, int] | None:
    """read_memory summed over a process and its descendants; the VmHWM sum is an upper bound
    of their joint peak."""
    own = read_memory(pid)
    if own is None:
        return None
    rss, hwm = own
    for child in descendants(pid):
        memory = read_memory(child)
        if memory is not None:
            rss += memory[0]
            hwm += memory[1]
    return rss, hwm


@dataclass
class _Track:
    pid: int
    peak: int = 0
    first: int | None = None  # RSS at the first sample


class RssSampler:
    """Samples the RSS of tracked processes (each with its children) every `interval` s in
    a daemon thread; a label's figure is the largest sample seen while tracked, and with
    `kernel_peak` also VmHWM (the kernel's own peak since the process started: right for a
    process started for the measurement, wrong for growth within a window of a process that
    ran before)."""

    def __init__(self, interval: float = 0.2, kernel_peak: bool = True) -> None:
        self.interval = interval
        self.kernel_peak = kernel_peak
        self._tracks: dict[str, _Track] = {}
        self.peaks: dict[str, int] = {}
        self.baselines: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def track(self, label: str, pid: int) -> None:
        with self._lock:
            self._tracks[label] = _Track(pid)
        self._sample(label)

    def untrack(self, label: str) -> int:
        """Ends tracking (take it before the process exits); returns the peak in bytes."""
        self._sample(label)
        with self._lock:
            track = self._tracks.pop(label, None)
            if track is None:
                return self.peaks.get(label, 0)
            self.peaks[label] = max(self.peaks.get(label, 0), track.peak)
            if track.first is not None:
                self.baselines.setdefault(label, track.first)
            return self.peaks[label]

    def _sample(self, label: str) -> None:
        with self._lock:
            track = self._tracks.get(label)
            if track is None:
                return
            memory = read_tree_memory(track.pid)
            if memory is not None:
                rss, hwm = memory
                if track.first is None:
                    track.first = rss
                track.peak = max(track.peak, rss, hwm if self.kernel_peak else 0)

    def peak(self, label: str) -> int:
        """The largest figure so far of a tracked label, bytes (0 before any sample)."""
        with self._lock:
            track = self._tracks.get(label)
            return track.peak if track is not None else self.peaks.get(label, 0)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                labels = list(self._tracks)
            for label in labels:
                self._sample(label)

    def close(self) -> None:
        self._stop.set()


class PeakRss:
    """The peak RSS of one process within a window, for a test that watches a running service:
    `PeakRss(pid).start()` ... `.stop()` returns the largest sample in MiB."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self._sampler = RssSampler(interval, kernel_peak=False)
        self._sampler.track("process", pid)

    @property
    def peak_kib(self) -> int:
        """The largest sample so far, KiB."""
        return self._sampler.peak("process") // 1024

    def start(self) -> PeakRss:
        return self

    def stop(self) -> float:
        peak = self._sampler.untrack("process")
        self._sampler.close()
        return peak / 2**20
