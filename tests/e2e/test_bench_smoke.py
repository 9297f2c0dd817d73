"""scripts/bench at a tiny size, so that it cannot rot: every section runs on the real servers
and real service processes, the JSON holds every figure, the rows arrived, and the run
removed what it created. No timing is asserted: figures on a shared machine are noise."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.support import PYTHON, ROOT

pytestmark = pytest.mark.e2e

RECORDS = 20_000
SMOKE_ARGS = [
    "--records", str(RECORDS), "--stall-timeout", "30",
    "--ingest-seconds", "1", "--ingest-concurrency", "1,8", "--ingest-batch-concurrency", "2",
    "--kcat-records", "20000", "--producer-records", "20000",
    "--latency-rate", "2000", "--latency-seconds", "5",
    "--memory-rows", "20000",
]


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def _measured_or_explained(run: dict[str, Any], *keys: str) -> None:
    if run.get("status") == "n/a":
        assert run.get("reason"), run  # a comparison that could not be made says why
        return
    for key in keys:
        assert _number(run.get(key)), (key, run)


@pytest.mark.timeout(180)
def test_bench_runs_at_a_tiny_size_and_reports_every_figure(
        servers: None, ch: Any, admin: Any, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    done = subprocess.run([PYTHON, "-m", "bench", *SMOKE_ARGS, "--out-dir", str(tmp_path),
                           "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=170, check=False)
    assert done.returncode == 0, f"{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    result = json.loads(out.read_text())
    assert result["failures"] == {}
    assert result["cleanup_problems"] == []
    assert list(tmp_path.glob("result-*.json")), "the timestamped copy of the JSON"
    assert "sync" in done.stdout and "latency" in done.stdout  # the table was printed
    sections = result["sections"]

    sync = sections["sync"]
    assert sync["prefill"]["records"] == RECORDS
    assert set(sync["chute"]) == {"x1", "x2"}
    for run in sync["chute"].values():
        for key in ("rows_per_s", "total_s", "first_row_s", "first_row_after_healthy_s"):
            assert _number(run[key]), (key, run)
        assert "steady_rows_per_s" in run  # null at this size: too few inserts
        # The bench waits for every distinct id; the table then holds each record once plus
        # the duplicates it reports, and the workers' batch logs account for every row.
        assert run["batches"]["rows"] == RECORDS + run["duplicates"], run["batches"]
        assert all(v > 0 for v in run["peak_rss_bytes"].values())
    _measured_or_explained(sync["engine"], "rows_per_s", "total_s")
    _measured_or_explained(sync["ratio"], "rows_per_s")

    ingest = sections["ingest"]
    assert [(r["batch"], r["concurrency"]) for r in ingest["http"]] == [(1, 1), (1, 8),
                                                                        (1000, 2)]
    for run in ingest["http"]:
        assert run["records"] > 0 and set(run["statuses"]) == {"200"}, run
        for key in ("records_per_s", "requests_per_s", "p50_ms", "p99_ms"):
            assert _number(run[key]), (key, run)
    for key in ("kcat", "producer"):
        assert ingest[key]["records"] == 20_000 and _number(ingest[key]["records_per_s"])

    [latency] = sections["latency"]["runs"]
    assert latency["requests"] == latency["measured_requests"] > 0
    assert latency["not_visible_requests"] == 0
    for key in ("p50_s", "p90_s", "p99_s", "max_s", "post_p50_ms", "post_p99_ms"):
        assert _number(latency[key]), (key, latency)
    assert isinstance(latency["goal_met"], bool)

    memory = sections["memory"]
    labels = " ".join(memory["peak_rss_bytes"])
    assert "ingest-api" in labels and "sync-worker" in labels
    assert all(v > 0 for v in memory["peak_rss_bytes"].values())
    assert memory["buffered_row"]["buffer_bytes_per_row"] > 0

    # Nothing of the run is left on the servers.
    run_id = result["run_id"]
    tables = ch.execute("SELECT name FROM system.tables WHERE name LIKE %(p)s",
                        {"p": f"{run_id}%"})
    assert tables == []
    assert not [t for t in admin.topic_partitions() if t.startswith(run_id)]
