"""Ingest throughput: records/s the ingest API acknowledges (HTTP 200: Kafka acknowledged every
record with acks=all) for 1-record and 1,000-record requests at a few concurrencies, each for
a fixed time with every connection sending its next request as soon as it has an answer
(with wrk where it is installed, else with the Python generator in testkit.httpload; the
generator and its own CPU time are in each result); next to the same records produced straight
to Kafka by kcat (librdkafka, acks=all: the broker's limit here) and by the configured Python
client in-process with the ingest API's producer settings (the client's limit, which bounds
the API)."""

from __future__ import annotations

import asyncio
import contextlib
import time
import zlib
from dataclasses import dataclass
from typing import Any

import psutil
from chute.fingerprint import FINGERPRINT_HEADER
from chute.kafka import KafkaClientError, ProducerOptions, client_from_env
from chute.kafka import producer as kafka_producer
from ingest_api.produce import BatchProducer

from bench import wrk
from bench.context import Context, Pipeline
from bench.infra import BenchError, kcat_produce
from bench.records import array_body, keyed_records, object_body, write_keyed_ndjson
from bench.sync import cpu_seconds, server_pid
from testkit.httpload import Connection, LoadResult, closed_loop, encode_request
from testkit.processes import ServiceProcess
from testkit.rss import descendants
from testkit.stats import percentile

KCAT_RUNS = 3
KCAT_GOAL = 0.25  # chute's best rate of 1,000-record requests against kcat's


@dataclass
class IngestOptions:
    seconds: float
    single_concurrency: tuple[int, ...]
    batch_concurrency: tuple[int, ...]
    batch_size: int
    kcat_records: int
    producer_records: int


def _requests(pipeline: Pipeline, port: int, batch: int, count: int,
              prefix: str) -> list[tuple[bytes, int]]:
    path = f"/ingest/{pipeline.name}"
    out = []
    for n in range(count):
        body = object_body(prefix, n) if batch == 1 else array_body(prefix, n * batch, batch)
        out.append((encode_request("127.0.0.1", port, path, body), batch))
    return out


async def _warm_up(port: int, requests: list[tuple[bytes, int]]) -> None:
    connection = Connection("127.0.0.1", port)
    try:
        for payload, _records in requests:
            status, body = await connection.request(payload)
            if status != 200:
                raise BenchError(f"ingest API answered {status} to the warm-up request: "
                                 f"{body[:500]!r}")
    finally:
        await connection.close()


def summarize(result: LoadResult, batch: int, concurrency: int) -> dict[str, Any]:
    def ms(value: float | None) -> float | None:
        return round(value * 1000, 2) if value is not None else None

    return {
        "batch": batch,
        "concurrency": concurrency,
        "seconds": round(result.seconds, 3),
        "requests": result.requests,
        "records": result.records,
        "records_per_s": round(result.records / result.seconds) if result.seconds else 0,
        "requests_per_s": round(result.requests / result.seconds) if result.seconds else 0,
        "p50_ms": ms(percentile(result.latencies, 0.5)),
        "p99_ms": ms(percentile(result.latencies, 0.99)),
        "statuses": {str(k): v for k, v in sorted(result.statuses.items())},
        "errors": dict(result.errors),
    }


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds of a process and its descendants (an API started with several processes)."""
    total = 0.0
    for member in [pid, *descendants(pid)]:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(member).cpu_times()
            total += times.user + times.system
    return total


class CpuMeter:
    """CPU seconds of the API (with its children) and of the broker over one measurement."""

    def __init__(self, api_pid: int) -> None:
        self.api_pid = api_pid
        self.kafka_pid = server_pid("kafka")
        self.used: dict[str, float] = {}
        self._start: dict[str, float | None] = {}

    def _read(self) -> dict[str, float | None]:
        kafka = cpu_seconds(self.kafka_pid) if self.kafka_pid is not None else None
        return {"ingest-api": tree_cpu_seconds(self.api_pid), "kafka": kafka}

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> None:
        end = self._read()
        for label, value in end.items():
            first = self._start.get(label)
            if value is not None and first is not None:
                self.used[label] = round(value - first, 2)


def summarize_wrk(result: wrk.WrkResult, batch: int, concurrency: int) -> dict[str, Any]:
    seconds = result.seconds
    ok = result.ok
    return {
        "batch": batch,
        "concurrency": concurrency,
        "seconds": round(seconds, 3),
        "requests": result.requests,
        "records": ok * batch,
        "records_per_s": round(ok * batch / seconds) if seconds else 0,
        "requests_per_s": round(ok / seconds) if seconds else 0,
        "p50_ms": round(result.p50_ms, 2),
        "p99_ms": round(result.p99_ms, 2),
        "statuses": dict(sorted(result.statuses.items())),
        "errors": result.errors,
        "generator": f"wrk -t{result.threads}",
        "generator_cpu_s": round(result.cpu_seconds, 2),
    }


def run_http(ctx: Context, ingest: ServiceProcess, pipeline: Pipeline, options: IngestOptions,
             batch: int, concurrency: int, requests: list[tuple[bytes, int]],
             profile_label: str | None, bodies: list[bytes] | None = None,
             prefix: str = "") -> dict[str, Any]:
    """One measurement; with wrk when `bodies` are given and wrk is installed."""
    kind = "1-record" if batch == 1 else f"{batch:,}-record"
    label = f"{prefix}ingest-api {kind} requests, {concurrency} connection{'s' * (concurrency > 1)}"
    cpu = CpuMeter(ingest.pid)
    if bodies is not None and wrk.available():
        ctx.progress.status(f"{label}: wrk for {options.seconds:g} s")
        profile = ctx.profiler.start(profile_label, ingest.pid) if profile_label else None
        cpu.start()
        try:
            measured = wrk.run("127.0.0.1", ingest.port, f"/ingest/{pipeline.name}", bodies,
                               concurrency, options.seconds, ctx.run_dir)
        finally:
            cpu.stop()
            ctx.profiler.stop(profile)
        ctx.progress.done()
        summary = summarize_wrk(measured, batch, concurrency)
        summary["label"] = label
        _add_cpu(summary, cpu.used)
        _report(ctx, summary)
        return summary
    cpu.start()

    def tick(result: LoadResult, elapsed: float) -> None:
        rate = result.records / elapsed if elapsed else 0
        ctx.progress.status(f"{label}: {elapsed:4.1f}/{options.seconds:.0f} s, "
                            f"{rate:,.0f} records/s, {result.requests:,} requests")

    profile = ctx.profiler.start(profile_label, ingest.pid) if profile_label else None
    try:
        result = asyncio.run(closed_loop("127.0.0.1", ingest.port, requests, concurrency,
                                         options.seconds, tick))
    finally:
        cpu.stop()
        ctx.profiler.stop(profile)
    ctx.progress.done()
    summary = summarize(result, batch, concurrency)
    summary["label"] = label
    summary["generator"] = "python (testkit.httpload, in the bench process)"
    _add_cpu(summary, cpu.used)
    _report(ctx, summary)
    return summary


def _add_cpu(summary: dict[str, Any], used: dict[str, float]) -> None:
    """CPU seconds of the API and the broker during the measurement, and the API's CPU
    microseconds per acknowledged record: comparable across runs on a busy machine, where
    records/s depend on what else runs."""
    summary["cpu_s"] = used
    api = used.get("ingest-api")
    records = summary["records"]
    summary["api_cpu_us_per_record"] = round(api * 1e6 / records, 1) if api and records else None


def _report(ctx: Context, summary: dict[str, Any]) -> None:
    bad = {k: v for k, v in summary["statuses"].items() if k != "200"}
    cpu = summary.get("generator_cpu_s")
    per_record = summary.get("api_cpu_us_per_record")
    ctx.progress.step(f"ingest: {summary['label']}: {summary['records_per_s']:,} records/s, "
                      f"p50 {summary['p50_ms']} ms, p99 {summary['p99_ms']} ms"
                      + (f", generator CPU {cpu} s" if cpu is not None else "")
                      + (f", API {per_record} CPU-us/record" if per_record else "")
                      + (f", non-200: {bad}" if bad else ""))


def run_kcat(ctx: Context, pipeline: Pipeline, records: int) -> dict[str, Any]:
    """The best of KCAT_RUNS runs (one run of a second or two varied by 2x between bench
    runs; the best is the broker's limit, the figure chute is held against)."""
    path = ctx.run_dir / "kcat.ndjson"
    write_keyed_ndjson(path, records, "k")
    times: list[float] = []
    command = ""
    try:
        for run in range(KCAT_RUNS):
            ctx.progress.status(f"kcat -P: {records:,} records, run {run + 1} of {KCAT_RUNS}")
            seconds, command = kcat_produce(ctx.endpoints.kafka, pipeline.topic, path,
                                            keep=True)
            times.append(seconds)
    finally:
        path.unlink(missing_ok=True)
    best = min(times)
    result = {"label": f"kcat -P, acks=all (librdkafka, C), best of {KCAT_RUNS}",
              "records": records, "seconds": round(best, 3),
              "records_per_s": round(records / best),
              "runs_records_per_s": [round(records / t) for t in times], "command": command}
    ctx.progress.step(f"ingest: {result['label']}: {result['records_per_s']:,} records/s")
    return result


def kcat_ratio(http_runs: list[dict[str, Any]], kcat: dict[str, Any],
               batch: int) -> dict[str, Any]:
    """The best rate of `batch`-record requests against kcat's (goal >= KCAT_GOAL)."""
    rates = [r["records_per_s"] for r in http_runs
             if r["batch"] == batch and not r["label"].startswith("baseline")]
    best = max(rates, default=0)
    ratio = best / kcat["records_per_s"] if kcat["records_per_s"] else 0.0
    return {"batch": batch, "best_records_per_s": best, "ratio": round(ratio, 3),
            "goal": KCAT_GOAL, "goal_met": ratio >= KCAT_GOAL}


def run_producer(ctx: Context, pipeline: Pipeline, records: int) -> dict[str, Any]:
    """The ingest API's own producer without HTTP and validation (chute.kafka.producer as the
    API makes it): keyed records with the chute-model header, crc32 partitions, acks=all,
    linger 5 ms; in 1,000-record batches where the producer takes batches (as KafkaSink
    sends them), else one send per record with a callback; then flush."""
    pairs = [(k.encode(), v.encode()) for k, v in keyed_records(records, "p")]
    client = kafka_producer(ctx.endpoints.kafka,
                            ProducerOptions(linger_ms=5, client_id="chute-bench"), native=True)
    headers = ((FINGERPRINT_HEADER, b"bench"),)
    try:
        partitions = sorted(client.partitions_for(pipeline.topic))
        n = len(partitions)
        acked = [0]

        def on_ack(error: KafkaClientError | None) -> None:
            if error is None:
                acked[0] += 1

        ctx.progress.status(f"{type(client).__name__}: {records:,} records")
        started = time.monotonic()
        topic = pipeline.topic
        if isinstance(client, BatchProducer):
            for start in range(0, records, 1_000):
                chunk = pairs[start:start + 1_000]
                keys = [key for key, _ in chunk]

                def on_batch(error: KafkaClientError | None, count: int = len(chunk)) -> None:
                    if error is None:
                        acked[0] += count

                client.send_batch(topic, [value for _, value in chunk], keys,
                                  [partitions[zlib.crc32(key) % n] for key in keys], headers,
                                  on_batch)
        else:
            for key, value in pairs:
                client.send(topic, value, key=key, partition=partitions[zlib.crc32(key) % n],
                            headers=headers, on_delivery=on_ack)
        client.flush(timeout=300)
        seconds = time.monotonic() - started
    finally:
        client.close(timeout=10)
    if acked[0] != records:
        raise BenchError(f"{type(client).__name__}: {acked[0]} of {records} records "
                         "acknowledged")
    result = {"label": f"chute's producer ({type(client).__name__}, {client_from_env()}), "
                       "acks=all (in-process, no HTTP)",
              "records": records, "seconds": round(seconds, 3),
              "records_per_s": round(records / seconds)}
    ctx.progress.step(f"ingest: {result['label']}: {result['records_per_s']:,} records/s")
    return result


def run(ctx: Context, options: IngestOptions, ingest: ServiceProcess,
        pipeline: Pipeline, baseline: ServiceProcess | None = None) -> dict[str, Any]:
    """`baseline`: another ingest API on the same pipeline, measured right before `ingest`
    in each measurement (labels start with "baseline")."""
    ctx.progress.step(f"ingest: {options.seconds:g} s per measurement against "
                      f"{ingest.label} (pid {ingest.pid})")
    singles = _requests(pipeline, ingest.port, 1, 20_000, "s")
    batches = _requests(pipeline, ingest.port, options.batch_size, 32, "b")
    single_bodies = [object_body("s", n) for n in range(20_000)]
    batch_bodies = [array_body("b", n * options.batch_size, options.batch_size)
                    for n in range(32)]
    asyncio.run(_warm_up(ingest.port, [singles[0], batches[0]]))
    if baseline is not None:
        asyncio.run(_warm_up(baseline.port, [singles[0], batches[0]]))
    runs = []
    plan = [(1, c) for c in options.single_concurrency]
    plan += [(options.batch_size, c) for c in options.batch_concurrency]
    for batch, concurrency in plan:
        same_kind = [c for b, c in plan if b == batch]
        profile = (f"ingest-api-batch{batch}-c{concurrency}"
                   if concurrency == max(same_kind) else None)
        bodies = single_bodies if batch == 1 else batch_bodies
        if baseline is not None:
            base = run_http(ctx, baseline, pipeline, options, batch, concurrency,
                            singles if batch == 1 else batches, None, bodies, "baseline ")
            runs.append(base)
        runs.append(run_http(ctx, ingest, pipeline, options, batch, concurrency,
                             singles if batch == 1 else batches, profile, bodies))
    result: dict[str, Any] = {"pipeline": pipeline.name, "seconds_each": options.seconds,
                              "api_processes": len(descendants(ingest.pid)) or 1, "http": runs}
    result["kcat"] = run_kcat(ctx, pipeline, options.kcat_records)
    result["kcat_ratio"] = kcat_ratio(runs, result["kcat"], options.batch_size)
    result["producer"] = run_producer(ctx, pipeline, options.producer_records)
    return result
