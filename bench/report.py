"""The result as one table (stdout) and as JSON (the same figures, and more detail)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

Row = tuple[str, str, str, str]
HEADERS = ("section", "measurement", "result", "detail")


def _n(value: Any, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float) and not value.is_integer():
        text = f"{value:,.2f}"
    else:
        text = f"{int(value):,}"
    return f"{text} {unit}".rstrip()


def _mib(value: Any) -> str:
    return "n/a" if not value else f"{value / 2**20:,.0f} MiB"


def _na(section: dict[str, Any]) -> str:
    return f"n/a ({section.get('reason', 'not measured')})"


def sync_rows(sync: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    prefill = sync.get("prefill", {})
    if prefill:
        rows.append(("sync", f"pre-fill: kcat -P, {prefill['partitions']} partitions",
                     _n(prefill["records_per_s"], "records/s"),
                     f"{prefill['records']:,} records of {prefill['avg_record_bytes']} B "
                     f"in {prefill['seconds']:.1f} s"))
    for run in [*sync.get("chute", {}).values(), sync.get("engine")]:
        if not run:
            continue
        if run.get("status") == "n/a":
            rows.append(("sync", run.get("label", "ClickHouse Kafka engine + MV"), _na(run),
                         ""))
            continue
        cpu = run.get("cpu_s", {})
        cpu_text = ", ".join(f"{k} {v:.1f}" for k, v in sorted(cpu.items()))
        batches = run.get("batches")
        batch_text = ""
        if batches and batches.get("count"):
            batch_text = (f"; {batches['count']} inserts of {batches['mean_rows']:,} rows, "
                          f"{batches['mean_flush_ms']:.0f} ms each")
        steady = run["steady_rows_per_s"]
        steady_text = (f"steady {steady:,} rows/s" if steady is not None else
                       f"steady n/a ({run.get('inserts_seen', '?')} inserts seen)")
        duplicates = run.get("duplicates") or 0
        rows.append(("sync", run["label"], _n(run["rows_per_s"], "rows/s"),
                     f"{sync['records']:,} rows in {run['total_s']:.1f} s (first row at "
                     f"{run['first_row_s']:.1f} s{_first_row_text(run)}); "
                     f"{steady_text}{batch_text}"
                     + (f"; {duplicates:,} duplicates" if duplicates else "")
                     + (f"; {run['rows_per_cpu_s']:,} rows per CPU-s ({cpu_text})"
                        if run.get("rows_per_cpu_s") else "")))
    ratio = sync.get("ratio")
    if ratio is not None:
        if ratio.get("status") == "n/a":
            rows.append(("sync", "chute x1 / Kafka engine", _na(ratio), "goal >= 1"))
        else:
            total, steady = ratio.get("rows_per_s"), ratio.get("steady_rows_per_s")
            cpu = ratio.get("rows_per_cpu_s")
            verdict = "met" if total is not None and total >= 1 else "NOT met"
            parts = [f"goal >= 1: {verdict}"]
            if steady is not None:
                parts.append(f"steady {steady:.2f}x")
            if cpu is not None:
                parts.append(f"per CPU-s {cpu:.2f}x")
            rows.append(("sync", "chute x1 / Kafka engine (rows/s)",
                         f"{total:.2f}x" if total is not None else "n/a", "; ".join(parts)))
    return rows


def _first_row_text(run: dict[str, Any]) -> str:
    after = run.get("first_row_after_healthy_s")
    if after is None:
        return ""
    verdict = "met" if run["first_row_goal_met"] else "NOT met"
    return (f", {after:.2f} s after healthy: goal <= {run['first_row_goal_s']:g} s "
            f"{verdict}")


def ingest_rows(ingest: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for run in ingest.get("http", []):
        bad = {k: v for k, v in run["statuses"].items() if k != "200"}
        detail = (f"{run['requests_per_s']:,} req/s; p50 {_n(run['p50_ms'])} ms, "
                  f"p99 {_n(run['p99_ms'])} ms")
        if bad or run["errors"]:
            detail += f"; non-200: {bad or ''} {run['errors'] or ''}".rstrip()
        if run.get("api_cpu_us_per_record"):
            used = run.get("cpu_s", {})
            detail += (f"; API {run['api_cpu_us_per_record']:,} CPU-us/record (CPU-s: API "
                       f"{used.get('ingest-api', 0):.1f}, Kafka {used.get('kafka', 0):.1f})")
        if run.get("generator_cpu_s") is not None:
            detail += (f"; {run['generator']} used {run['generator_cpu_s']:.1f} CPU-s in "
                       f"{run['seconds']:.1f} s")
        rows.append(("ingest", run["label"], _n(run["records_per_s"], "records/s"), detail))
    for key in ("kcat", "producer"):
        run = ingest.get(key)
        if run:
            runs = run.get("runs_records_per_s")
            rows.append(("ingest", run["label"], _n(run["records_per_s"], "records/s"),
                         f"{run['records']:,} records in {run['seconds']:.1f} s"
                         + (f"; runs: {', '.join(f'{r:,}' for r in runs)} records/s"
                            if runs else "")))
    ratio = ingest.get("kcat_ratio")
    if ratio:
        verdict = "met" if ratio["goal_met"] else "NOT met"
        rows.append(("ingest", f"chute's best {ratio['batch']:,}-record rate / kcat",
                     f"{ratio['ratio']:.2f}x",
                     f"{ratio['best_records_per_s']:,} records/s with "
                     f"{ingest.get('api_processes', 1)} API process(es); goal >= "
                     f"{ratio['goal']:g}x: {verdict}"))
    return rows


def latency_rows(section: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for run in section.get("runs", []):
        rows += latency_run_rows(run)
    return rows


def latency_run_rows(latency: dict[str, Any]) -> list[Row]:
    verdict = "met" if latency["goal_met"] else "NOT met"
    return [
        ("latency", f"POST acknowledged -> row visible, {latency['offered_records_per_s']:,} "
                    f"records/s offered in {latency['batch']}-record requests",
         f"p50 {_n(latency['p50_s'])} s, p99 {_n(latency['p99_s'])} s",
         f"goal p99 <= {latency['goal_p99_s']:g} s: {verdict}; max {_n(latency['max_s'])} s; "
         f"{latency['measured_requests']:,} requests, {latency['acked_records_per_s']:,} "
         f"records/s acknowledged; poll every {latency['poll_interval_s'] * 1000:.0f} ms"),
        ("latency", f"POST answered (ingest API, {latency['offered_records_per_s']:,} "
                    "records/s)",
         f"p50 {_n(latency['post_p50_ms'])} ms, p99 {_n(latency['post_p99_ms'])} ms",
         f"not visible: {latency['not_visible_requests']}; statuses {latency['statuses']}"),
    ]


def memory_rows(memory: dict[str, Any]) -> list[Row]:
    rows: list[Row] = []
    for label, value in memory.get("peak_rss_bytes", {}).items():
        rows.append(("memory", f"peak RSS, {label}", _mib(value), ""))
    per_row = memory.get("buffered_row")
    if per_row:
        rows.append(("memory", "sync-worker bytes per buffered row",
                     f"{per_row['buffer_bytes_per_row']:,.0f} B",
                     f"payload {per_row['payload_bytes_per_row']:.0f} B; +"
                     f"{per_row['columns_bytes_per_row']:.0f} B/row while columns are built; "
                     f"{per_row['batch_buffer_mib']:.0f} MiB for a full batch of "
                     f"{per_row['batch_rows']:,} (tracemalloc)"))
    growth = memory.get("rss_growth_per_batch_row")
    if growth is not None:
        rows.append(("memory", "sync-worker RSS growth per batch row (sync x1)",
                     f"{growth:,.0f} B", "(peak RSS - RSS when healthy) / max_batch_rows: "
                     "buffer, fetched data, columns"))
    return rows


def profile_rows(profiles: dict[str, Any], top: int = 5) -> list[Row]:
    rows: list[Row] = []
    for label, summary in profiles.items():
        entries = summary.get("self", [])[:top]
        text = "; ".join(f"{e['function']} {e['share']:.0%}" for e in entries)
        rows.append(("profile", f"{label} (self time, top {top})",
                     f"{summary.get('samples', 0):,} samples", text))
    return rows


def table_rows(result: dict[str, Any]) -> list[Row]:
    sections = result.get("sections", {})
    rows: list[Row] = []
    rows += sync_rows(sections.get("sync", {}))
    rows += ingest_rows(sections.get("ingest", {}))
    rows += latency_rows(sections.get("latency", {}))
    rows += memory_rows(sections.get("memory", {}))
    rows += profile_rows(result.get("profiles", {}))
    for name, problem in result.get("failures", {}).items():
        rows.append((name, "section failed", "n/a", problem.splitlines()[0][:200]))
    return rows


def _wrap(text: str, size: int) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in " ".join(text.split()).split(" "):
        while len(word) > size:  # a word longer than the column: cut it
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:size])
            word = word[size:]
        if line and len(line) + 1 + len(word) > size:
            lines.append(line)
            line = word
        else:
            line = f"{line} {word}" if line else word
    lines.append(line)
    return lines


def format_table(rows: list[Row], width: int = 160) -> str:
    """Columns sized to their content within limits; long cells wrap onto more lines."""
    limits = [8, 56, 28, 0]
    widths = [len(h) for h in HEADERS]
    for row in rows:
        widths = [max(w, len(" ".join(c.split()))) for w, c in zip(widths, row, strict=True)]
    widths = [min(w, lim) if lim else w for w, lim in zip(widths, limits, strict=True)]
    widths[3] = max(30, min(widths[3], width - sum(widths[:3]) - 6))
    out = ["  ".join(h.ljust(w) for h, w in zip(HEADERS, widths, strict=True)).rstrip(),
           "  ".join("-" * w for w in widths)]
    for row in rows:
        cells = [_wrap(c, w) for c, w in zip(row, widths, strict=True)]
        for i in range(max(len(c) for c in cells)):
            out.append("  ".join((c[i] if i < len(c) else "").ljust(w)
                                 for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(out)


def header(result: dict[str, Any]) -> str:
    m = result.get("machine", {})
    return (f"chute bench {result.get('started_at', '')}: {m.get('cpus')} CPUs, "
            f"{m.get('memory_gib')} GiB; Kafka {m.get('kafka')}, ClickHouse "
            f"{m.get('clickhouse_version')}; load average at start {m.get('load_average')}")


def write_json(result: dict[str, Any], paths: list[Path]) -> None:
    text = json.dumps(result, indent=2, sort_keys=False) + "\n"
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
