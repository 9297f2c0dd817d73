"""Closed-loop HTTP load with wrk (C, Debian's `wrk`): POST bodies to one path for a fixed time.

The Python load generator (testkit.httpload) tops out at a few thousand requests per second
on one core, below what the ingest API is meant to answer; wrk does not. Its Lua script
pre-formats one request per body (each connection cycles through them from its own offset),
counts answers by status and prints a JSON summary. The generator's own CPU time (user +
system, from the kernel's accounting of the finished process) is reported beside the result,
so a reader can tell whether the generator was the limit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

# Bodies are written one per line (JSON has no raw newlines); each wrk thread formats them
# into requests once, at start.
LUA_SCRIPT = r"""
local threads = {}
local counter = 0

function setup(thread)
  thread:set("id", counter)
  counter = counter + 1
  table.insert(threads, thread)
end

function init(args)
  local bodies_file, target = args[1], args[2]
  requests = {}
  for line in io.lines(bodies_file) do
    table.insert(requests, wrk.format("POST", target,
      {["Content-Type"] = "application/json"}, line))
  end
  index = (id * 7919) % #requests
  statuses = {}
end

function request()
  index = index + 1
  if index > #requests then index = 1 end
  return requests[index]
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
end

function done(summary, latency, requests)
  local counts = {}
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    for status, n in pairs(s) do
      counts[tostring(status)] = (counts[tostring(status)] or 0) + n
    end
  end
  local parts = {}
  for status, n in pairs(counts) do
    table.insert(parts, string.format('"%s": %d', status, n))
  end
  local e = summary.errors
  io.write(string.format(
    'WRK_JSON {"requests": %d, "duration_us": %d, "p50_us": %d, "p99_us": %d, ' ..
    '"max_us": %d, "statuses": {%s}, "errors": {"connect": %d, "read": %d, "write": %d, ' ..
    '"timeout": %d}}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(99),
    latency.max, table.concat(parts, ", "), e.connect, e.read, e.write, e.timeout))
end
"""


class WrkError(RuntimeError):
    pass


@dataclass
class WrkResult:
    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    statuses: dict[str, int]
    errors: dict[str, int]
    cpu_seconds: float  # wrk's own user + system time
    threads: int
    command: list[str] = field(default_factory=list)

    @property
    def ok(self) -> int:
        return self.statuses.get("200", 0)


def available() -> bool:
    return shutil.which("wrk") is not None


def run(host: str, port: int, path: str, bodies: list[bytes], connections: int,
        seconds: float, work_dir: Path, threads: int = 2) -> WrkResult:
    """Runs wrk for `seconds` with `connections` connections over `threads` threads."""
    exe = shutil.which("wrk")
    if exe is None:
        raise WrkError("wrk is not installed (scripts/install-infra installs it)")
    work_dir.mkdir(parents=True, exist_ok=True)
    script = work_dir / "wrk-post.lua"
    script.write_text(LUA_SCRIPT)
    bodies_file = work_dir / f"wrk-bodies-{len(bodies)}-{len(bodies[0]) if bodies else 0}.txt"
    if any(b"\n" in body for body in bodies):
        raise WrkError("wrk bodies must not contain newlines")
    bodies_file.write_bytes(b"\n".join(bodies) + b"\n")
    threads = max(1, min(threads, connections))
    command = [exe, "-t", str(threads), "-c", str(connections), "-d", f"{seconds:g}s",
               "--timeout", "30s", "-s", str(script), f"http://{host}:{port}{path}",
               "--", str(bodies_file), path]
    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _pid, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
    stderr = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stdout:
        proc.stdout.close()
    if proc.stderr:
        proc.stderr.close()
    wall = time.monotonic() - started
    line = next((ln for ln in stdout.splitlines() if ln.startswith("WRK_JSON ")), None)
    if proc.returncode != 0 or line is None:
        raise WrkError(f"wrk failed (exit {proc.returncode}): {stderr[-500:] or stdout[-500:]}")
    data = json.loads(line.removeprefix("WRK_JSON "))
    return WrkResult(
        requests=int(data["requests"]),
        seconds=data["duration_us"] / 1e6 or wall,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        statuses={str(k): int(v) for k, v in data["statuses"].items()},
        errors={k: int(v) for k, v in data["errors"].items() if v},
        cpu_seconds=usage.ru_utime + usage.ru_stime,
        threads=threads,
        command=command)
