"""The load generator of the tests and `scripts/loadgen`: POSTs Event records at a steady rate
and records exactly which were acknowledged (HTTP 200), so a test can count what was lost or
duplicated.

    scripts/loadgen --url http://127.0.0.1:4000/ingest/events --rate 2000 --batch 100 \
        --duration 30 --acked acked.txt

Record ids are `<prefix>-<sequence>`; each acknowledged id is written to --acked, one a line.
Only loopback addresses are accepted as targets.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlparse

import httpx
import orjson
from dev_runner.settings import Settings

from testkit.endpoints import is_loopback
from testkit.stats import percentile


def make_records(prefix: str, start: int, count: int) -> list[dict[str, object]]:
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return [{"id": f"{prefix}-{i}", "user_id": f"u{i % 1000}", "timestamp": ts,
             "event_type": "load"} for i in range(start, start + count)]


@dataclass
class LoadStats:
    sent: int = 0
    acked_ids: list[str] = field(default_factory=list)
    codes: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    latencies: dict[int, list[float]] = field(default_factory=dict)  # by status code
    # 429/503 answers without the Retry-After header a well-behaved client needs.
    missing_retry_after: int = 0

    @property
    def acked(self) -> int:
        return len(self.acked_ids)

    def percentile(self, code: int, q: float) -> float | None:
        """Nearest-rank percentile of the latencies of answers with this status code."""
        return percentile(self.latencies.get(code, []), q)

    def summary(self) -> dict[str, object]:
        return {
            "sent": self.sent, "acked": self.acked, "codes": dict(self.codes),
            "errors": dict(self.errors),
            "p50_200_s": self.percentile(200, 0.5), "p99_200_s": self.percentile(200, 0.99),
            "p99_503_s": self.percentile(503, 0.99),
            "missing_retry_after": self.missing_retry_after,
        }


@dataclass
class LoadGenerator:
    """Runs in background threads until stopped, or until `duration`/`total` is reached."""

    url: str
    rate: float  # records per second
    batch: int = 100  # records per request
    concurrency: int = 2
    prefix: str = "r"
    duration: float | None = None
    total: int | None = None
    timeout: float = 30.0
    stats: LoadStats = field(default_factory=LoadStats, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _next: int = field(default=0, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False, repr=False)
    _threads: list[threading.Thread] = field(default_factory=list, init=False, repr=False)
    _started: float = field(default=0.0, init=False)

    def __post_init__(self) -> None:
        host = urlparse(self.url).hostname or ""
        if not is_loopback(host):
            raise ValueError(f"loadgen only targets loopback addresses, not {host!r}")

    def start(self) -> LoadGenerator:
        self._started = time.monotonic()
        for n in range(self.concurrency):
            thread = threading.Thread(target=self._run, name=f"loadgen-{n}", daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self) -> LoadStats:
        self._stop.set()
        for thread in self._threads:
            thread.join(self.timeout + 5)
        return self.stats

    def wait(self) -> LoadStats:
        for thread in self._threads:
            thread.join()
        return self.stats

    @property
    def done(self) -> bool:
        return all(not t.is_alive() for t in self._threads)

    def _claim(self) -> int | None:
        """The first sequence number of the next request, paced to the rate."""
        with self._lock:
            if self._stop.is_set():
                return None
            if self.total is not None and self._next >= self.total:
                return None
            elapsed = time.monotonic() - self._started
            if self.duration is not None and elapsed >= self.duration:
                return None
            start = self._next
            self._next += self.batch
            due = self._started + start / self.rate
        delay = due - time.monotonic()
        if delay > 0:
            self._stop.wait(delay)
        return start

    def _run(self) -> None:
        with httpx.Client(timeout=self.timeout) as client:
            while (start := self._claim()) is not None:
                count = self.batch if self.total is None else min(self.batch,
                                                                 self.total - start)
                records = make_records(self.prefix, start, count)
                body = orjson.dumps(records)
                began = time.monotonic()
                try:
                    response = client.post(self.url, content=body,
                                           headers={"Content-Type": "application/json"})
                    code = response.status_code
                    if code in (429, 503) and "retry-after" not in response.headers:
                        with self._lock:
                            self.stats.missing_retry_after += 1
                except httpx.HTTPError as exc:
                    code = 0
                    with self._lock:
                        self.stats.errors[type(exc).__name__] += 1
                took = time.monotonic() - began
                with self._lock:
                    self.stats.sent += count
                    self.stats.codes[code] += 1
                    self.stats.latencies.setdefault(code, []).append(took)
                    if code == 200:
                        self.stats.acked_ids.extend(str(r["id"]) for r in records)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    ingest_port = Settings.from_env().ingest_port  # CHUTE_INGEST_PORT, as scripts/dev uses
    parser.add_argument("--url", default=f"http://127.0.0.1:{ingest_port}/ingest/events")
    parser.add_argument("--rate", type=float, default=1000, help="records per second")
    parser.add_argument("--batch", type=int, default=100, help="records per request")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--duration", type=float, default=10, help="seconds")
    parser.add_argument("--total", type=int, default=None, help="stop after this many records")
    parser.add_argument("--prefix", default=f"r{int(time.time())}")
    parser.add_argument("--acked", default=None, help="file for acknowledged ids")
    args = parser.parse_args(argv)
    gen = LoadGenerator(args.url, args.rate, args.batch, args.concurrency, args.prefix,
                        args.duration, args.total).start()
    while not gen.done:
        time.sleep(0.5)
        s = gen.stats
        sys.stderr.write(f"\rsent {s.sent:>9,}  acked {s.acked:>9,}  codes {dict(s.codes)}   ")
        sys.stderr.flush()
    sys.stderr.write("\n")
    stats = gen.wait()
    if args.acked:
        with open(args.acked, "w") as fh:
            fh.write("\n".join(stats.acked_ids) + ("\n" if stats.acked_ids else ""))
    print(json.dumps(stats.summary(), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
