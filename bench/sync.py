"""Sync throughput: a topic pre-filled with N records, read into ClickHouse by chute's sync
worker (1 and 2 processes, default batching) and by ClickHouse's own Kafka table engine with a
materialized view, each into an empty table of the same structure, one after the other.

Figures per run: `rows_per_s` = N / (time from launch to count() == N), startup included;
`steady_rows_per_s` = rows per second between the first count() >= 10% and >= 90% of N
(startup and tail excluded; null with fewer than three inserts in between: N is too small);
`first_row_s` = launch to the first row visible (and `first_row_after_healthy_s`, from the
moment every worker answered /health, polled every 0.1 s). CPU seconds of the worker processes, of
ClickHouse and of Kafka during the run are taken from /proc where their pids are known
(scripts/dev's pid files), and `rows_per_cpu_s` = N / their sum.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from chute.pipeline import StreamConfig
from clickhouse_driver import Client
from dev_runner.processes import running_pid
from dev_runner.services import service_spec
from dev_runner.settings import Settings

from bench.context import Context, Pipeline
from bench.infra import BenchError, kcat_produce, short_error
from bench.progress import bar
from bench.records import write_keyed_ndjson
from testkit.rss import read_memory

KAFKA_ENGINE_DATETIME = "parseDateTimeBestEffort"


@dataclass
class SyncOptions:
    records: int
    partitions: int
    chute_workers: tuple[int, ...]
    engine: bool
    engine_consumers: int
    engine_max_block_size: int  # 0: the server's max_block_size
    stall_timeout: float
    poll_interval: float = 0.1


# --- measuring -------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process, seconds (None when it is gone)."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return float(times.user + times.system)


def server_pid(name: str) -> int | None:
    """The pid of scripts/dev's kafka or clickhouse, when it runs."""
    return running_pid(service_spec(name, Settings.from_env()))


class CpuMeter:
    """CPU seconds used by a set of processes between start() and stop()."""

    def __init__(self, pids: dict[str, int | None]) -> None:
        self.pids = {k: v for k, v in pids.items() if v is not None}
        self.start_values: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def add(self, label: str, pid: int) -> None:
        self.pids[label] = pid
        value = cpu_seconds(pid)
        if value is not None:
            self.start_values[label] = value

    def start(self) -> None:
        for label, pid in self.pids.items():
            value = cpu_seconds(pid)
            if value is not None:
                self.start_values[label] = value

    def stop(self) -> dict[str, float]:
        for label, pid in self.pids.items():
            value = cpu_seconds(pid)
            if value is not None and label in self.start_values:
                self.used[label] = round(value - self.start_values[label], 2)
        return self.used


def watch_count(ctx: Context, table: str, target: int, started: float, label: str,
                stall_timeout: float, poll: float,
                client: Client | None = None) -> tuple[list[tuple[float, int]], str | None]:
    """Polls count() until it reaches target and that many distinct ids are there; samples
    are (seconds since started, count). Returns an error text instead when the count did not
    move for stall_timeout seconds."""
    samples: list[tuple[float, int]] = []
    last_change = time.monotonic()
    last = -1
    while True:
        count = ctx.servers.count(table, client)
        now = time.monotonic()
        samples.append((now - started, count))
        if count != last:
            last, last_change = count, now
        elapsed = now - started
        rate = count / elapsed if elapsed > 0 else 0
        ctx.progress.status(f"{label}: {bar(count, target)} {count:,}/{target:,} rows, "
                            f"{rate:,.0f} rows/s, {elapsed:.1f} s")
        if count >= target:
            # At-least-once may deliver a record twice (a rebalance): done means every id.
            distinct = int((client or ctx.servers.ch).execute(
                f"SELECT uniqExact(id) FROM `{table}`")[0][0])
            if distinct >= target:
                return samples, None
        if now - last_change > stall_timeout:
            return samples, (f"stalled at {count:,} of {target:,} rows: no new row for "
                             f"{stall_timeout:.0f} s")
        time.sleep(poll)


def rates(samples: list[tuple[float, int]], target: int) -> dict[str, Any]:
    """Total and steady-state rates from count samples (see the module's docstring)."""
    done = next((t for t, c in samples if c >= target), None)
    first = next((t for t, c in samples if c > 0), None)
    low = next(((t, c) for t, c in samples if c >= 0.1 * target), None)
    high = next(((t, c) for t, c in samples if c >= 0.9 * target), None)
    steady = None
    if low is not None and high is not None and high[0] > low[0]:
        # At least three inserts between the two samples, else it is no steady state.
        steps = len({c for t, c in samples if low[0] <= t <= high[0]})
        if steps >= 4:
            steady = (high[1] - low[1]) / (high[0] - low[0])
    return {
        "total_s": round(done, 3) if done is not None else None,
        "rows_per_s": round(target / done) if done else None,
        "first_row_s": round(first, 3) if first is not None else None,
        "steady_rows_per_s": round(steady) if steady is not None else None,
    }


def per_cpu_second(rows: int, cpu: dict[str, float]) -> int | None:
    """Rows per CPU-second of everything that worked for them (the worker processes, and
    ClickHouse and Kafka when their pids are known): a figure less sensitive than wall time
    to other load on the machine and to idle waits."""
    total = sum(cpu.values())
    return round(rows / total) if total > 0 else None


def downsample(samples: list[tuple[float, int]], keep: int = 120) -> list[list[float]]:
    step = max(1, len(samples) // keep)
    picked = samples[::step]
    if samples and picked[-1] != samples[-1]:
        picked.append(samples[-1])
    return [[round(t, 3), c] for t, c in picked]


# --- pre-filling -----------------------------------------------------------------------------


def prefill(ctx: Context, pipeline: Pipeline, records: int) -> dict[str, Any]:
    """Writes N keyed records to the topic with kcat (librdkafka, acks=all)."""
    path = ctx.run_dir / "prefill.ndjson"
    ctx.progress.status(f"generating {records:,} records")
    generated = time.monotonic()
    value_bytes = write_keyed_ndjson(path, records, "e")
    generate_s = time.monotonic() - generated
    ctx.progress.status(f"producing {records:,} records to {pipeline.topic} with kcat")
    seconds, command = kcat_produce(
        ctx.endpoints.kafka, pipeline.topic, path, "linger.ms=20", "batch.num.messages=10000",
        "queue.buffering.max.messages=1000000")
    ends = ctx.servers.end_offsets(pipeline.topic)
    if sum(ends.values()) != records:
        raise BenchError(f"topic {pipeline.topic} holds {sum(ends.values())} records after "
                         f"the pre-fill, not {records}")
    return {
        "records": records,
        "partitions": len(ends),
        "records_per_partition": {str(p): o for p, o in sorted(ends.items())},
        "value_bytes": value_bytes,
        "avg_record_bytes": round(value_bytes / records, 1),
        "generate_s": round(generate_s, 3),
        "seconds": round(seconds, 3),
        "records_per_s": round(records / seconds),
        "command": command,
    }


# --- chute -----------------------------------------------------------------------------------


def run_chute(ctx: Context, pipeline: Pipeline, options: SyncOptions,
              workers: int) -> dict[str, Any]:
    label = f"chute sync-worker x{workers}"
    ctx.progress.step(f"sync: {label} on {options.records:,} pre-filled records")
    if ctx.servers.count(pipeline.table):
        ctx.servers.ch.execute(f"TRUNCATE TABLE `{pipeline.table}`")
    group = f"{pipeline.name}_x{workers}_{len(ctx.groups)}"  # a fresh group: from offset 0
    services = [ctx.worker(f"sync-x{workers}-w{i + 1}", pipeline, group)
                for i in range(workers)]
    cpu = CpuMeter({"clickhouse": server_pid("clickhouse"),
                    "kafka": server_pid("kafka")})
    cpu.start()
    started = time.monotonic()
    for service in services:
        service.start(wait_healthy=False)
        ctx.sampler.track(service.label, service.pid)
        cpu.add(service.label, service.pid)
    baselines = {}
    for service in services:
        service.wait_healthy(timeout=120)
        memory = read_memory(service.pid)
        baselines[service.label] = memory[0] if memory else None
    healthy_s = time.monotonic() - started
    profile = ctx.profiler.start(f"sync-worker-x{workers}", services[0].pid)
    try:
        samples, error = watch_count(ctx, pipeline.table, options.records, started, label,
                                     options.stall_timeout, options.poll_interval)
    finally:
        ctx.profiler.stop(profile)
        cpu_used = cpu.stop()
        peaks = {s.label: ctx.sampler.untrack(s.label) for s in services}
    ctx.progress.status(f"{label}: stopping")
    for service in services:
        service.stop()
    ctx.progress.done()
    result: dict[str, Any] = {"label": label, "workers": workers, "group": group,
                              "healthy_s": round(healthy_s, 3)}
    if error is not None:
        tails = "\n".join(s.log_tail(10) for s in services)
        raise BenchError(f"{label}: {error}\n{tails}")
    result.update(rates(samples, options.records))
    if result["first_row_s"] is not None:
        # Goal: the first row within max_batch_wait + 0.5 s of the workers being healthy.
        goal = StreamConfig().max_batch_wait + 0.5
        after = max(0.0, result["first_row_s"] - healthy_s)
        result["first_row_after_healthy_s"] = round(after, 3)
        result["first_row_goal_s"] = goal
        result["first_row_goal_met"] = after <= goal
    result["duplicates"] = ctx.servers.count(pipeline.table) - options.records
    result["batches"] = batch_stats(services, result.get("total_s"))
    result["cpu_s"] = cpu_used
    result["rows_per_cpu_s"] = per_cpu_second(options.records, cpu_used)
    result["peak_rss_bytes"] = peaks
    result["rss_at_healthy_bytes"] = baselines
    result["count_samples"] = downsample(samples)
    ctx.progress.step(f"sync: {label}: {result['rows_per_s']:,} rows/s "
                      f"({options.records:,} rows in {result['total_s']:.1f} s, steady "
                      f"{_fmt(result['steady_rows_per_s'])} rows/s)")
    return result


def batch_stats(services: list[Any], total_s: float | None) -> dict[str, Any]:
    """From the workers' `batch inserted` log lines: count, size and flush time."""
    entries = [e for s in services for e in s.log_entries("batch inserted")]
    rows = [int(e.get("rows", 0)) for e in entries]
    durations = [float(e.get("duration_ms", 0)) / 1000 for e in entries]
    reasons: dict[str, int] = {}
    for e in entries:
        reason = str(e.get("reason", "?"))
        reasons[reason] = reasons.get(reason, 0) + 1
    flush_s = sum(durations)
    return {
        "count": len(entries),
        "rows": sum(rows),
        "mean_rows": round(sum(rows) / len(rows)) if rows else None,
        "flush_s": round(flush_s, 3),
        "mean_flush_ms": round(1000 * flush_s / len(durations), 1) if durations else None,
        # Share of the run a worker spent inserting + committing (per worker on average).
        "flush_share": (round(flush_s / len(services) / total_s, 3)
                        if total_s and services else None),
        "reasons": reasons,
    }


def _fmt(value: Any) -> str:
    return f"{value:,}" if isinstance(value, int) else "n/a"


# --- ClickHouse's Kafka engine ---------------------------------------------------------------


def run_engine(ctx: Context, pipeline: Pipeline, options: SyncOptions) -> dict[str, Any]:
    """Kafka table engine + materialized view into a copy of chute's table.

    ClickHouse 18.16's engine (i) sets no auto.offset.reset, so librdkafka's default `latest`
    would skip a pre-filled topic: the group's offsets are committed at 0 first; (ii) parses
    DateTime in JSONEachRow only as 'YYYY-MM-DD hh:mm:ss' and rejects the ISO 8601 text with
    'Z' the ingest API writes (and retries that message for ever): the engine table reads
    such columns as String and the view converts them with parseDateTimeBestEffort.
    """
    consumers = options.engine_consumers
    label = f"ClickHouse Kafka engine + MV ({consumers} consumer{'s' if consumers > 1 else ''})"
    ctx.progress.step(f"sync: {label}")
    base = f"{pipeline.name}_ke"
    target, queue, view, group = base, f"{base}_queue", f"{base}_mv", f"{base}_group"
    ctx.tables += [target, queue, view]  # dropped in reverse: view, queue, target
    ctx.groups.append(group)
    ch = ctx.servers.ch
    ch.execute(f"CREATE TABLE `{target}` AS `{pipeline.table}`")
    columns = ctx.servers.columns(pipeline.table)
    queue_columns, select = [], []
    for name, type_ in columns:
        if type_.startswith("DateTime"):
            queue_columns.append(f"`{name}` String")
            select.append(f"{KAFKA_ENGINE_DATETIME}(`{name}`) AS `{name}`")
        else:
            queue_columns.append(f"`{name}` {type_}")
            select.append(f"`{name}`")
    settings = [
        f"kafka_broker_list = '{ctx.endpoints.kafka}'",
        f"kafka_topic_list = '{pipeline.topic}'",
        f"kafka_group_name = '{group}'",
        "kafka_format = 'JSONEachRow'",
        f"kafka_num_consumers = {consumers}",
    ]
    if options.engine_max_block_size:
        settings.append(f"kafka_max_block_size = {options.engine_max_block_size}")
    queue_sql = (f"CREATE TABLE `{queue}` ({', '.join(queue_columns)}) ENGINE = Kafka "
                 f"SETTINGS {', '.join(settings)}")
    view_sql = (f"CREATE MATERIALIZED VIEW `{view}` TO `{target}` AS "
                f"SELECT {', '.join(select)} FROM `{queue}`")
    ctx.servers.commit_start(group, pipeline.topic)
    err_log = ctx.endpoints.clickhouse_error_log
    err_offset = err_log.stat().st_size if err_log.exists() else 0
    cpu = CpuMeter({"clickhouse": server_pid("clickhouse"),
                    "kafka": server_pid("kafka")})
    cpu.start()
    started = time.monotonic()
    ch.execute(queue_sql)
    ch.execute(view_sql)
    try:
        samples, error = watch_count(ctx, target, options.records, started, label,
                                     options.stall_timeout, options.poll_interval)
        cpu_used = cpu.stop()
    finally:
        ctx.progress.status(f"{label}: dropping the view and the engine table")
        ctx.servers.drop_tables([view, queue])
        ctx.progress.done()
    result: dict[str, Any] = {
        "label": label, "consumers": consumers, "group": group,
        "ddl": [queue_sql, view_sql],
        "max_block_size": options.engine_max_block_size or _server_setting(ctx,
                                                                           "max_block_size"),
        "stream_flush_interval_ms": _server_setting(ctx, "stream_flush_interval_ms"),
    }
    if error is not None:
        errors = engine_errors(err_log, err_offset)
        result.update(status="n/a", reason=error + (f"; ClickHouse: {errors[0]}" if errors
                                                     else ""),
                      errors=errors[:5], count_samples=downsample(samples))
        ctx.progress.step(f"sync: {label}: n/a ({result['reason'][:200]})")
        return result
    result.update(rates(samples, options.records))
    result["duplicates"] = ctx.servers.count(target) - options.records
    result["inserts_seen"] = len({c for _t, c in samples if c > 0})
    result["cpu_s"] = cpu_used
    result["rows_per_cpu_s"] = per_cpu_second(options.records, cpu_used)
    result["count_samples"] = downsample(samples)
    ctx.progress.step(f"sync: {label}: {result['rows_per_s']:,} rows/s "
                      f"({options.records:,} rows in {result['total_s']:.1f} s, steady "
                      f"{_fmt(result['steady_rows_per_s'])} rows/s)")
    return result


def _server_setting(ctx: Context, name: str) -> int | None:
    rows = ctx.servers.ch.execute("SELECT value FROM system.settings WHERE name = %(n)s",
                                  {"n": name})
    return int(rows[0][0]) if rows else None


def engine_errors(err_log: Path, offset: int) -> list[str]:
    """StorageKafka errors ClickHouse logged since offset (first line of each)."""
    if not err_log.exists():
        return []
    with err_log.open("rb") as handle:
        handle.seek(offset)
        text = handle.read(4 << 20).decode("utf-8", "replace")
    found = []
    for line in text.splitlines():
        if "Kafka" in line and ("<Error>" in line or "<Warning>" in line):
            message = line.split("> ", 1)[-1].strip()
            if message not in found:
                found.append(message)
    return found


# --- the section -----------------------------------------------------------------------------


def run(ctx: Context, options: SyncOptions) -> dict[str, Any]:
    pipeline = ctx.pipeline("sync", options.partitions)
    ctx.servers.apply([pipeline.schema_dir], ctx.run_dir / "apply-sync.log")
    ctx.progress.step(f"sync: pre-filling topic {pipeline.topic} with {options.records:,} "
                      f"records over {options.partitions} partitions (kcat)")
    result: dict[str, Any] = {"pipeline": pipeline.name, "records": options.records,
                              "partitions": options.partitions}
    result["prefill"] = prefill(ctx, pipeline, options.records)
    ctx.progress.step(f"sync: pre-filled at {result['prefill']['records_per_s']:,} records/s "
                      f"({result['prefill']['avg_record_bytes']} bytes a record)")
    chute: dict[str, Any] = {}
    for workers in options.chute_workers:
        chute[f"x{workers}"] = run_chute(ctx, pipeline, options, workers)
    result["chute"] = chute
    if options.engine:
        try:
            result["engine"] = run_engine(ctx, pipeline, options)
        except Exception as exc:  # report, do not lose the other figures
            result["engine"] = {"status": "n/a", "reason": short_error(exc)}
    else:
        result["engine"] = {"status": "n/a", "reason": "skipped (--no-engine)"}
    result["ratio"] = ratios(chute.get("x1"), result["engine"])
    return result


def ratios(chute: dict[str, Any] | None, engine: dict[str, Any]) -> dict[str, Any]:
    if chute is None:
        return {"status": "n/a", "reason": "no single-worker run"}
    if engine.get("status") == "n/a":
        return {"status": "n/a", "reason": f"Kafka engine: {engine.get('reason')}"}
    out: dict[str, Any] = {}
    for key in ("rows_per_s", "steady_rows_per_s", "rows_per_cpu_s"):
        a, b = chute.get(key), engine.get(key)
        out[key] = round(a / b, 2) if a and b else None
    return out
