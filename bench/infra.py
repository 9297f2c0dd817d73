"""What the bench runs on: admin access to the servers (Kafka, ClickHouse) and the clean-up of
what a run created, py-spy and kcat. Processes, RSS sampling, offsets and percentiles come from
the test kit (testkit/), as the tests use them."""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import subprocess
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clickhouse_driver import Client
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

from testkit import offsets
from testkit.clickhouse import count_rows
from testkit.endpoints import PYTHON, ROOT, Endpoints, service_env

logging.getLogger("kafka").addHandler(logging.NullHandler())


class BenchError(RuntimeError):
    """The bench cannot go on; the message says why."""


def short_error(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, without ClickHouse's stack traces."""
    lines = [line.strip() for line in str(exc).splitlines()]
    text = " ".join(line for line in lines[:3] if line and not line.startswith("Stack trace"))
    text = text.split(" Stack trace:")[0]
    return f"{type(exc).__name__}: {text}"[:limit]


def loopback_endpoints() -> Endpoints:
    """The servers of CHUTE_* (testkit.endpoints), refused unless they are on loopback."""
    endpoints = Endpoints.from_env()
    if not endpoints.on_loopback:
        raise BenchError(f"the bench only loads servers on loopback, not {endpoints.kafka!r} / "
                         f"{endpoints.ch_host!r} (CHUTE_KAFKA_BOOTSTRAP, CHUTE_CLICKHOUSE_HOST)")
    return endpoints


class Servers:
    """Admin access to Kafka and ClickHouse, and the clean-up of everything a run created."""

    def __init__(self, endpoints: Endpoints) -> None:
        self.endpoints = endpoints
        self._admin: KafkaAdminClient | None = None
        self.ch = self.new_ch()

    def new_ch(self) -> Client:
        """A ClickHouse client (one per thread: clients are not thread-safe)."""
        return Client(host=self.endpoints.ch_host, port=self.endpoints.ch_port,
                      connect_timeout=5, send_receive_timeout=60)

    @property
    def admin(self) -> KafkaAdminClient:
        if self._admin is None:
            self._admin = KafkaAdminClient(bootstrap_servers=self.endpoints.kafka,
                                           client_id="chute-bench", request_timeout_ms=30_000)
        return self._admin

    def clickhouse_version(self) -> str:
        return str(self.ch.execute("SELECT version()")[0][0])

    def count(self, table: str, client: Client | None = None) -> int:
        return count_rows(client or self.ch, table)

    def columns(self, table: str) -> list[tuple[str, str]]:
        """(name, type) of the table's columns, in order (18.16's system.columns has no
        position: DESCRIBE gives the order)."""
        return [(str(row[0]), str(row[1])) for row in self.ch.execute(f"DESCRIBE TABLE `{table}`")]

    def end_offsets(self, topic: str) -> dict[int, int]:
        return offsets.end_offsets(self.endpoints.kafka, topic)

    def commit_start(self, group: str, topic: str) -> None:
        """Commits offset 0 of every partition of topic for group (which has no members)."""
        consumer = KafkaConsumer(bootstrap_servers=self.endpoints.kafka, group_id=group,
                                 enable_auto_commit=False, client_id="chute-bench")
        try:
            tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
            if not tps:
                raise BenchError(f"topic {topic} has no partitions")
            consumer.assign(tps)
            consumer.commit({tp: OffsetAndMetadata(0, "", -1) for tp in tps})
        finally:
            consumer.close(autocommit=False)

    def apply(self, schemas: Iterable[Path], log: Path) -> None:
        """`python -m control_plane apply` on the schema folders: topics and tables."""
        env = service_env(self.endpoints, ",".join(str(s) for s in schemas))
        done = subprocess.run([PYTHON, "-m", "control_plane", "apply"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=180, check=False)
        log.write_text(done.stdout + done.stderr)
        if done.returncode != 0:
            raise BenchError(f"control-plane apply failed ({done.returncode}):\n"
                             f"{done.stderr[-3000:]}")

    def drop_tables(self, tables: Iterable[str]) -> list[str]:
        problems = []
        for table in tables:
            try:
                self.ch.execute(f"DROP TABLE IF EXISTS `{table}`")
            except Exception as exc:
                problems.append(f"drop table {table}: {exc}")
        return problems

    def delete_topics(self, topics: Iterable[str]) -> list[str]:
        existing = set(self.admin.list_topics())
        doomed = [t for t in topics if t in existing]
        if not doomed:
            return []
        try:
            self.admin.delete_topics(doomed)
        except Exception as exc:
            return [f"delete topics {doomed}: {exc}"]
        return []

    def delete_groups(self, groups: Iterable[str]) -> list[str]:
        problems = []
        for group in groups:
            # A group empties when its last member left, or (a killed member) once the
            # session timed out: retry for a while.
            deadline = time.monotonic() + 20
            while True:
                try:
                    result = self.admin.delete_groups([group])
                except Exception as exc:
                    result = {group: exc}
                outcome = result.get(group)
                if outcome in (None, "OK") or "GroupIdNotFound" in str(outcome):
                    break
                if time.monotonic() > deadline:
                    problems.append(f"delete group {group}: {outcome}")
                    break
                time.sleep(0.5)
        return problems

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.ch.disconnect()
        if self._admin is not None:
            with contextlib.suppress(Exception):
                self._admin.close()


@dataclass
class Profile:
    label: str
    pid: int
    path: Path
    proc: subprocess.Popen[bytes]


@dataclass
class Profiler:
    """py-spy attached to a service for one measurement (`--profile`); summaries of the
    collapsed stacks it writes go into the report."""

    out_dir: Path
    enabled: bool
    rate: int = 100
    summaries: dict[str, dict[str, Any]] = field(default_factory=dict)

    def executable(self) -> str | None:
        local = Path(PYTHON).parent / "py-spy"
        return str(local) if local.exists() else shutil.which("py-spy")

    def start(self, label: str, pid: int) -> Profile | None:
        exe = self.executable() if self.enabled else None
        if exe is None:
            return None
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"profile-{label}.txt"
        log = (self.out_dir / f"profile-{label}.log").open("wb")
        proc = subprocess.Popen(
            [exe, "record", "--pid", str(pid), "--rate", str(self.rate), "--format", "raw",
             "--nolineno", "--threads", "--subprocesses", "--nonblocking", "--output",
             str(path)],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        log.close()
        return Profile(label, pid, path, proc)

    def stop(self, profile: Profile | None) -> None:
        if profile is None:
            return
        if profile.proc.poll() is None:
            profile.proc.send_signal(signal.SIGINT)
            try:
                profile.proc.wait(30)
            except subprocess.TimeoutExpired:
                profile.proc.kill()
                profile.proc.wait(5)
        if profile.path.exists():
            self.summaries[profile.label] = summarize_collapsed(profile.path)
            self.summaries[profile.label]["file"] = str(profile.path)


def _frame_name(frame: str) -> str:
    """'decode (sync_worker/rows.py)' -> 'sync_worker/rows.py:decode'."""
    name, _, where = frame.partition(" (")
    return f"{where.rstrip(')')}:{name}" if where else name


def summarize_collapsed(path: Path, top: int = 20) -> dict[str, Any]:
    """Self and inclusive sample shares per function, and per thread, from py-spy's raw
    (collapsed stack) output: `frame;frame;... count` per line, root first."""
    self_samples: dict[str, int] = defaultdict(int)
    total_samples: dict[str, int] = defaultdict(int)
    threads: dict[str, int] = defaultdict(int)
    samples = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = ""
        if frames and frames[0].startswith("process "):
            frames = frames[1:]
        if frames and frames[0].startswith("thread "):
            thread = frames[0]
            frames = frames[1:]
        if not frames:
            continue
        samples += count
        threads[thread] += count
        names = [_frame_name(f) for f in frames]
        self_samples[names[-1]] += count
        for name in set(names):
            total_samples[name] += count

    def ranked(table: dict[str, int]) -> list[dict[str, Any]]:
        best = sorted(table.items(), key=lambda kv: -kv[1])[:top]
        return [{"function": k, "samples": v, "share": round(v / samples, 4) if samples else 0}
                for k, v in best]

    return {"samples": samples, "self": ranked(self_samples), "total": ranked(total_samples),
            "threads": ranked(threads)}


def kcat_produce(bootstrap: str, topic: str, path: Path, *settings: str,
                 keep: bool = False) -> tuple[float, str]:
    """Produce the key<TAB>value lines of `path` with kcat (acks=all): the seconds it took and
    the command, for the report. The file is removed afterwards, unless `keep`."""
    argv = ["kcat", "-b", bootstrap, "-P", "-t", topic, "-K", "\t", "-X", "acks=all"]
    for setting in settings:
        argv += ["-X", setting]
    argv += ["-l", str(path)]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    seconds = time.monotonic() - started
    if not keep:
        path.unlink(missing_ok=True)
    if done.returncode != 0:
        raise BenchError(f"kcat failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, " ".join(a if a != "\t" else "'\\t'" for a in argv)
