"""The test kit's pure parts: the one percentile definition, loopback checks."""

from __future__ import annotations

import pytest

from testkit.endpoints import is_loopback
from testkit.stats import percentile


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]  # 1..100
    assert percentile(values, 0.5) == 50.0
    assert percentile(values, 0.99) == 99.0  # not 100: 0.99 * 100 is exactly rank 99
    assert percentile(values, 1.0) == 100.0
    assert percentile(values, 0.0) == 1.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0  # unsorted input
    assert percentile([5.0], 0.99) == 5.0


def test_percentile_returns_a_measured_value_not_an_interpolation() -> None:
    values = [1.0, 10.0]
    assert percentile(values, 0.5) == 1.0
    assert percentile(values, 0.51) == 10.0


def test_percentile_of_nothing_is_none_and_q_is_checked() -> None:
    assert percentile([], 0.5) is None
    with pytest.raises(ValueError, match="within"):
        percentile([1.0], 99)


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.1.2.3", True), ("::1", True), ("[::1]", True),
    ("localhost", True), ("localhost.example.com", False), ("10.0.0.1", False),
    ("kafka", False)])
def test_loopback_hosts(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


_WINDOW_PEAK_CHECK = """
import os

from testkit.rss import PeakRss, RssSampler, read_memory

block = bytearray(200 * 2**20)  # raises this process's VmHWM by 200 MiB ...
del block  # ... and gives the memory back (a large block is unmapped at once)
memory = read_memory(os.getpid())
assert memory is not None
rss, hwm = memory
assert hwm - rss > 150 * 2**20, (rss, hwm)
window = PeakRss(os.getpid()).start()
assert 0 < window.peak_kib * 1024 < hwm - 150 * 2**20, (window.peak_kib, hwm)
assert window.stop() * 2**20 < hwm - 150 * 2**20
lifetime = RssSampler()  # kernel_peak: the process's whole life
lifetime.track("me", os.getpid())
assert lifetime.untrack("me") >= hwm
lifetime.close()
"""


def test_peak_rss_of_a_window_is_sampled_not_the_kernel_peak_since_start() -> None:
    """In a process of its own: the samplers count a process's children too, and the test
    process may have some (servers a session fixture started)."""
    import subprocess
    import sys

    from tests.support import ROOT

    done = subprocess.run([sys.executable, "-c", _WINDOW_PEAK_CHECK], cwd=ROOT,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr


def test_load_generator_refuses_targets_beyond_loopback() -> None:
    from testkit.loadgen import LoadGenerator

    with pytest.raises(ValueError, match="loopback"):
        LoadGenerator("http://localhost.example.com:4000/ingest/events", rate=1)
    assert LoadGenerator("http://[::1]:4000/ingest/events", rate=1).batch == 100
