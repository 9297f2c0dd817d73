"""End-to-end latency: POST acknowledged -> row visible in ClickHouse, at a steady offered rate.

Requests of `batch` records are offered on a fixed schedule (open loop). Record ids are
`L<request seq:08d>-<index:03d>`, so a thread can ask ClickHouse, through the table's primary
key, which requests are entirely visible: every `poll_interval` s it runs
`SELECT substring(id, 2, 8), count() ... WHERE id >= 'L<lowest pending seq>' GROUP BY 1`.
A request's latency is the end of the first poll that saw all its rows minus the moment its
200 arrived (so figures are upper bounds, by up to one poll interval plus the query's time).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from chute.pipeline import StreamConfig

from bench.context import Context, Pipeline
from bench.infra import Servers
from bench.records import Timestamps, event_line
from testkit.httpload import Sent, encode_request, open_loop
from testkit.processes import ServiceProcess
from testkit.stats import percentile


@dataclass
class LatencyOptions:
    rate: int  # records per second offered
    batch: int  # records per request
    seconds: float
    concurrency: int
    poll_interval: float
    drain_timeout: float


class VisibilityPoller:
    def __init__(self, servers: Servers, table: str, per_request: int, interval: float) -> None:
        self.servers = servers
        self.table = table
        self.per_request = per_request
        self.interval = interval
        self.visible: dict[int, float] = {}
        self.lowest = 0
        self.polls = 0
        self.query_s: list[float] = []
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="visibility", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        client = self.servers.new_ch()
        try:
            while not self._stop.is_set():
                began = time.monotonic()
                try:
                    rows = client.execute(
                        f"SELECT substring(id, 2, 8) AS seq, count() FROM `{self.table}` "
                        f"WHERE id >= 'L{self.lowest:08d}' GROUP BY seq")
                except Exception as exc:  # keep polling; report the last problem
                    self.error = f"{type(exc).__name__}: {exc}"
                    time.sleep(self.interval)
                    continue
                ended = time.monotonic()
                self.polls += 1
                self.query_s.append(ended - began)
                for seq_text, count in rows:
                    seq = int(seq_text)
                    if count >= self.per_request and seq not in self.visible:
                        self.visible[seq] = ended
                while self.lowest in self.visible:
                    self.lowest += 1
                self._stop.wait(max(0.0, self.interval - (ended - began)))
        finally:
            client.disconnect()


def make_request_factory(pipeline: Pipeline, port: int,
                         batch: int) -> Callable[[int], tuple[bytes, int]]:
    path = f"/ingest/{pipeline.name}"
    stamp = Timestamps()

    def make(seq: int) -> tuple[bytes, int]:
        ts = stamp(int(time.time()))
        body = "[" + ",".join(event_line(f"L{seq:08d}-{j:03d}", seq * batch + j, ts)
                              for j in range(batch)) + "]"
        return encode_request("127.0.0.1", port, path, body.encode()), batch

    return make


def run(ctx: Context, options: LatencyOptions, ingest: ServiceProcess,
        pipeline: Pipeline) -> dict[str, Any]:
    max_batch_wait = StreamConfig().max_batch_wait
    goal = max_batch_wait + 0.5
    ctx.progress.step(f"latency: {options.rate:,} records/s offered in {options.batch}-record "
                      f"requests for {options.seconds:g} s (goal p99 <= {goal:g} s)")
    if ctx.servers.count(pipeline.table):  # an earlier rate's rows carry the same ids
        ctx.servers.ch.execute(f"TRUNCATE TABLE `{pipeline.table}`")
    worker = ctx.worker("latency-w1", pipeline, f"{pipeline.name}_sync")
    worker.start(wait_healthy=False)
    ctx.sampler.track(worker.label, worker.pid)
    topics = {pipeline.topic}
    worker.wait_healthy(timeout=120, ready=lambda h: any(
        str(a).rpartition(":")[0] in topics for a in h.get("assigned", [])))
    poller = VisibilityPoller(ctx.servers, pipeline.table, options.batch, options.poll_interval)
    poller.start()
    ledger: list[Sent] = []
    request_rate = options.rate / options.batch

    def tick(sent: list[Sent], elapsed: float) -> None:
        acked = sum(1 for s in sent if s.acked is not None)
        ctx.progress.status(f"latency: {elapsed:4.1f}/{options.seconds:g} s, {len(sent):,} "
                            f"requests offered, {acked:,} acknowledged, "
                            f"{len(poller.visible):,} visible")

    try:
        seconds = asyncio.run(open_loop(
            "127.0.0.1", ingest.port, make_request_factory(pipeline, ingest.port, options.batch),
            request_rate, options.seconds, options.concurrency, ledger, tick))
        acked = [s for s in ledger if s.acked is not None]
        deadline = time.monotonic() + options.drain_timeout
        while time.monotonic() < deadline:
            missing = sum(1 for s in acked if s.seq not in poller.visible)
            ctx.progress.status(f"latency: waiting for the last rows: {missing:,} requests "
                                "not visible yet")
            if not missing:
                break
            time.sleep(0.1)
    finally:
        poller.stop()
        peak = ctx.sampler.untrack(worker.label)
        worker.stop()
        ctx.progress.done()
    latencies = [max(0.0, poller.visible[s.seq] - s.acked) for s in acked
                 if s.seq in poller.visible and s.acked is not None]
    post = [s.acked - s.sent for s in acked if s.acked is not None]
    lag = [s.sent - s.scheduled for s in ledger if s.sent]
    statuses: dict[str, int] = {}
    for s in ledger:
        key = str(s.status)
        statuses[key] = statuses.get(key, 0) + 1

    def r(value: float | None, digits: int = 3) -> float | None:
        return round(value, digits) if value is not None else None

    def ms(value: float | None) -> float | None:
        return round(value * 1000, 3) if value is not None else None

    p99 = percentile(latencies, 0.99)
    result: dict[str, Any] = {
        "pipeline": pipeline.name,
        "offered_records_per_s": options.rate,
        "batch": options.batch,
        "seconds": round(seconds, 3),
        "requests": len(ledger),
        "statuses": statuses,
        "acked_records": sum(s.records for s in acked),
        "acked_records_per_s": round(sum(s.records for s in acked) / seconds) if seconds else 0,
        "measured_requests": len(latencies),
        "not_visible_requests": len(acked) - len(latencies),
        "p50_s": r(percentile(latencies, 0.5)),
        "p90_s": r(percentile(latencies, 0.9)),
        "p99_s": r(p99),
        "max_s": r(max(latencies) if latencies else None),
        "post_p50_ms": ms(percentile(post, 0.5)),
        "post_p99_ms": ms(percentile(post, 0.99)),
        "max_schedule_lag_s": r(max(lag) if lag else None),
        "poll_interval_s": options.poll_interval,
        "polls": poller.polls,
        "poll_query_p50_ms": ms(percentile(poller.query_s, 0.5)),
        "poll_error": poller.error,
        "max_batch_wait_s": max_batch_wait,
        "goal_p99_s": goal,
        "goal_met": bool(p99 is not None and p99 <= goal),
        "worker_peak_rss_bytes": peak,
    }
    ctx.progress.step(f"latency: p50 {result['p50_s']} s, p99 {result['p99_s']} s over "
                      f"{len(latencies):,} requests (goal p99 <= {goal:g} s: "
                      f"{'met' if result['goal_met'] else 'NOT met'})")
    return result
