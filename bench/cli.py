"""`scripts/bench [flags]`: runs the sections, prints one table, writes the figures as JSON to
<state>/bench/result-<UTC timestamp>.json (state: CHUTE_STATE, default .chute) and to --json.

Exit status: 0 when every section ran (a comparison that could not be made, such as the Kafka
engine when it cannot read the topic, is reported as n/a with its reason and is not a
failure), 1 when a section failed, 2 on bad flags or unreachable servers, 130 when
interrupted. Whatever happens, the run's topics, tables and consumer groups are deleted.
"""

from __future__ import annotations

import argparse
import os
import platform
import secrets
import shutil
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

from bench import ingest, latency, sync
from bench.context import Context
from bench.infra import BenchError, Profiler, Servers, loopback_endpoints
from bench.memory import buffered_row_bytes
from bench.progress import Progress
from bench.report import format_table, header, table_rows, write_json
from testkit.endpoints import Endpoints
from testkit.processes import ServiceFailed
from testkit.rss import RssSampler

SECTIONS = ("sync", "ingest", "latency", "memory")


def _ints(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}") from None
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected non-negative integers, got {text!r}")
    return values


def _sections(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(",") if p.strip())
    unknown = [n for n in names if n not in SECTIONS]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {unknown}; sections: "
                                         f"{', '.join(SECTIONS)}")
    return names


def _positive(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value
    return parse


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="scripts/bench", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="chute's benchmark (DESIGN.md section 8): sync throughput versus "
                    "ClickHouse's Kafka engine, ingest throughput versus kcat, end-to-end "
                    "latency, memory. Loopback only; a few minutes with the defaults.")
    p.add_argument("--only", type=_sections, default=SECTIONS, metavar="SECTIONS",
                   help=f"comma-separated sections to run, of {','.join(SECTIONS)}")
    p.add_argument("--json", type=Path, help="also write the JSON result here")
    p.add_argument("--out-dir", type=Path,
                   help="where result-<time>.json and the run's folder (logs, profiles) go "
                        "[default: <CHUTE_STATE or .chute>/bench]")
    p.add_argument("--profile", action="store_true",
                   help="attach py-spy to the worker (sync x1) and the ingest API (the "
                        "highest concurrency of each request size); top entries in the table")
    p.add_argument("--keep", action="store_true",
                   help="keep the run's topics and tables (for inspection)")
    g = p.add_argument_group("sync")
    g.add_argument("--records", type=_positive(int), default=2_000_000,
                   help="records pre-filled into the topic")
    g.add_argument("--partitions", type=_positive(int), default=4,
                   help="partitions of every bench topic")
    g.add_argument("--chute-workers", type=_ints, default=(1, 2),
                   help="chute runs: worker processes of each")
    g.add_argument("--no-engine", dest="engine", action="store_false",
                   help="skip ClickHouse's Kafka engine")
    g.add_argument("--engine-consumers", type=_positive(int), default=1,
                   help="kafka_num_consumers of the Kafka engine table")
    g.add_argument("--engine-max-block-size", type=int, default=0,
                   help="kafka_max_block_size (0: the server's max_block_size)")
    g.add_argument("--stall-timeout", type=_positive(float), default=60.0,
                   help="give a sync run up when no row arrived for this long (s)")
    g = p.add_argument_group("ingest")
    g.add_argument("--ingest-seconds", type=_positive(float), default=8.0,
                   help="length of each ingest measurement (s)")
    g.add_argument("--ingest-concurrency", type=_ints, default=(1, 8, 32),
                   help="connections for 1-record requests")
    g.add_argument("--ingest-batch-concurrency", type=_ints, default=(1, 4, 16),
                   help="connections for batch requests")
    g.add_argument("--ingest-batch-size", type=_positive(int), default=1000,
                   help="records per batch request")
    g.add_argument("--ingest-processes", type=int, default=0,
                   help="CHUTE_INGEST_PROCESSES of the measured ingest API (SO_REUSEPORT "
                        "copies on one port; 0: the service's default, one per core)")
    g.add_argument("--ingest-baseline", type=Path, metavar="DIR",
                   help="also measure the ingest API of another source tree (its services/ "
                        "and shared/, e.g. an export of main), each measurement right "
                        "before this tree's, on the same pipeline")
    g.add_argument("--kcat-records", type=_positive(int), default=2_000_000,
                   help="records produced with kcat -P")
    g.add_argument("--producer-records", type=_positive(int), default=300_000,
                   help="records produced in-process with the ingest API's own producer")
    g = p.add_argument_group("latency")
    g.add_argument("--latency-rate", type=_ints, default=(10_000, 50_000),
                   help="records/s offered, one measurement per rate (comma-separated)")
    g.add_argument("--latency-batch", type=_positive(int), default=100,
                   help="records per request")
    g.add_argument("--latency-seconds", type=_positive(float), default=20.0,
                   help="how long the rate is offered (s)")
    g.add_argument("--latency-concurrency", type=_positive(int), default=16,
                   help="connections (most requests outstanding at once)")
    g.add_argument("--poll-interval", type=_positive(float), default=0.05,
                   help="how often ClickHouse is asked what is visible (s)")
    g = p.add_argument_group("memory")
    g.add_argument("--memory-rows", type=_positive(int), default=100_000,
                   help="rows buffered for the bytes-per-row measurement")
    args = p.parse_args(argv)
    if any(c < 1 for c in (*args.ingest_concurrency, *args.ingest_batch_concurrency,
                           *args.chute_workers, *args.latency_rate)):
        p.error("worker and connection counts and latency rates must be >= 1")
    if not args.latency_rate:
        p.error("--latency-rate: at least one rate")
    if max((*args.ingest_concurrency, *args.ingest_batch_concurrency), default=1) > 64:
        p.error("at most 64 connections (the ingest API answers 503 beyond its in-flight "
                "limit, CHUTE_INGEST_MAX_IN_FLIGHT_REQUESTS)")
    return args


def machine(servers: Servers, endpoints: Endpoints) -> dict[str, Any]:
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        memory = 0
    return {
        "cpus": os.cpu_count(),
        "memory_gib": round(memory / 2**30, 1),
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "platform": platform.platform(),
        "kafka": endpoints.kafka,
        "clickhouse": f"{endpoints.ch_host}:{endpoints.ch_port}",
        "clickhouse_version": servers.clickhouse_version(),
    }


def memory_section(ctx: Context, result: dict[str, Any], rows: int) -> dict[str, Any]:
    sections = result["sections"]
    peaks: dict[str, int] = {}
    for run in sections.get("sync", {}).get("chute", {}).values():
        for label, value in run.get("peak_rss_bytes", {}).items():
            peaks[f"sync-worker {label} (sync)"] = value
    if "ingest-api" in ctx.sampler.peaks:
        peaks["ingest-api (ingest + latency)"] = ctx.sampler.peaks["ingest-api"]
    if "latency-w1" in ctx.sampler.peaks:
        peaks["sync-worker latency-w1 (latency)"] = ctx.sampler.peaks["latency-w1"]
    out: dict[str, Any] = {"peak_rss_bytes": peaks}
    x1 = sections.get("sync", {}).get("chute", {}).get("x1")
    if x1:
        label = next(iter(x1["peak_rss_bytes"]))
        base = x1["rss_at_healthy_bytes"].get(label)
        batch_rows = min(sections["sync"]["records"], 100_000)
        if base:
            out["rss_growth_per_batch_row"] = round(
                (x1["peak_rss_bytes"][label] - base) / batch_rows, 1)
    ctx.progress.step(f"memory: bytes per buffered row ({rows:,} rows, tracemalloc)")
    out["buffered_row"] = buffered_row_bytes(rows)
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    progress = Progress()
    try:
        endpoints = loopback_endpoints()
    except BenchError as exc:
        print(f"bench: {exc}", file=sys.stderr)
        return 2
    if shutil.which("kcat") is None and ({"sync", "ingest"} & set(args.only)):
        print("bench: kcat is not installed (scripts/install-infra installs it)",
              file=sys.stderr)
        return 2
    started = time.time()
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(started))
    run_id = f"bench_{time.strftime('%m%d%H%M%S', time.gmtime(started))}_{secrets.token_hex(2)}"
    out_dir = args.out_dir or endpoints.state / "bench"
    run_dir = out_dir / f"run-{stamp}-{run_id[-4:]}"
    run_dir.mkdir(parents=True, exist_ok=True)
    servers = Servers(endpoints)
    try:
        info = machine(servers, endpoints)
        servers.admin.list_topics()
    except Exception as exc:
        print(f"bench: Kafka ({endpoints.kafka}) or ClickHouse ({endpoints.ch_host}:"
              f"{endpoints.ch_port}) unreachable: {type(exc).__name__}: {exc}\n"
              "start them with: scripts/dev start kafka && scripts/dev start clickhouse",
              file=sys.stderr)
        servers.close()
        return 2
    ctx = Context(run_id, run_dir, endpoints, servers, progress, RssSampler(),
                  Profiler(run_dir, args.profile), keep=args.keep)
    config = {k: (list(v) if isinstance(v, tuple) else str(v) if isinstance(v, Path) else v)
              for k, v in vars(args).items()}
    result: dict[str, Any] = {
        "version": 1,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
        "run_id": run_id,
        "command": " ".join(["scripts/bench", *(sys.argv[1:] if argv is None else argv)]),
        "config": config,
        "machine": info,
        "sections": {},
        "failures": {},
    }

    def on_term(_signum: int, _frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, on_term)
    progress.step(f"run {run_id}: sections {','.join(args.only)}; files in {run_dir}")
    status = 0

    def section(name: str, body: Callable[[], dict[str, Any]]) -> None:
        try:
            result["sections"][name] = body()
        except KeyboardInterrupt:
            raise
        except Exception as exc:
            progress.step(f"{name}: FAILED: {type(exc).__name__}: {str(exc)[:500]}")
            result["failures"][name] = f"{type(exc).__name__}: {exc}\n{traceback.format_exc()}"

    try:
        if "sync" in args.only:
            section("sync", lambda: sync.run(ctx, sync.SyncOptions(
                records=args.records, partitions=args.partitions,
                chute_workers=args.chute_workers, engine=args.engine,
                engine_consumers=args.engine_consumers,
                engine_max_block_size=args.engine_max_block_size,
                stall_timeout=args.stall_timeout)))
        if {"ingest", "latency"} & set(args.only):
            try:
                run_ingest_and_latency(ctx, args, section)
            except (BenchError, ServiceFailed) as exc:
                progress.step(f"ingest/latency: FAILED: {str(exc)[:500]}")
                result["failures"]["ingest/latency"] = str(exc)
        if "memory" in args.only:
            section("memory", lambda: memory_section(ctx, result, args.memory_rows))
    except KeyboardInterrupt:
        progress.step("interrupted: cleaning up")
        result["interrupted"] = True
        status = 130
    finally:
        progress.status("cleaning up: stopping services, dropping tables and topics")
        result["cleanup_problems"] = ctx.cleanup()
        servers.close()
        progress.done()
        signal.signal(signal.SIGTERM, previous)
    result["profiles"] = ctx.profiler.summaries
    result["duration_s"] = round(time.time() - started, 1)
    paths = [out_dir / f"result-{stamp}.json"]
    if args.json is not None:
        paths.append(args.json)
    write_json(result, paths)
    print(header(result))
    print(format_table(table_rows(result), width=shutil.get_terminal_size((160, 40)).columns))
    for problem in result["cleanup_problems"]:
        progress.step(f"clean-up problem: {problem}")
    progress.step(f"{result['duration_s']:.0f} s; JSON: {', '.join(str(p) for p in paths)}")
    if status:
        return status
    return 1 if result["failures"] else 0


def run_ingest_and_latency(ctx: Context, args: argparse.Namespace,
                           section: Callable[[str, Callable[[], dict[str, Any]]], None]) -> None:
    """One ingest API process serves both sections, each on its own pipeline."""
    wanted = [name for name in ("ingest", "latency") if name in args.only]
    pipelines = {name: ctx.pipeline(name, args.partitions) for name in wanted}
    ctx.progress.step("ingest/latency: creating topics and tables, starting the ingest API")
    ctx.servers.apply([p.schema_dir for p in pipelines.values()],
                      ctx.run_dir / "apply-ingest.log")
    api = ctx.service("ingest-api", "ingest_api", list(pipelines.values()),
                      CHUTE_INGEST_PROCESSES=str(args.ingest_processes))
    api.start(wait_healthy=False)
    ctx.sampler.track(api.label, api.pid)
    baseline = None
    if args.ingest_baseline is not None and "ingest" in pipelines:
        tree = args.ingest_baseline.resolve()
        baseline = ctx.service("ingest-api-baseline", "ingest_api", [pipelines["ingest"]],
                               PYTHONPATH=f"{tree / 'services'}:{tree / 'shared'}")
        baseline.start(wait_healthy=False)
    try:
        api.wait_healthy(timeout=120)
        if baseline is not None:
            baseline.wait_healthy(timeout=120)
        if "ingest" in pipelines:
            section("ingest", lambda: ingest.run(ctx, ingest.IngestOptions(
                seconds=args.ingest_seconds,
                single_concurrency=args.ingest_concurrency,
                batch_concurrency=args.ingest_batch_concurrency,
                batch_size=args.ingest_batch_size,
                kcat_records=args.kcat_records,
                producer_records=args.producer_records), api, pipelines["ingest"],
                baseline))
        if "latency" in pipelines:
            section("latency", lambda: {"runs": [latency.run(
                ctx, latency.LatencyOptions(
                    rate=rate, batch=args.latency_batch, seconds=args.latency_seconds,
                    concurrency=args.latency_concurrency, poll_interval=args.poll_interval,
                    drain_timeout=30.0), api, pipelines["latency"])
                for rate in args.latency_rate]})
    finally:
        ctx.sampler.untrack(api.label)
        api.stop()
        if baseline is not None:
            baseline.stop()


if __name__ == "__main__":
    sys.exit(main())
