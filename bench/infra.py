"""What the bench runs on: the servers (Kafka, ClickHouse), chute's services as real processes
(started the way tests/e2e/stack.py and scripts/dev start them), RSS sampling and py-spy."""

from __future__ import annotations

import contextlib
import ipaddress
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from clickhouse_driver import Client
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable

logging.getLogger("kafka").addHandler(logging.NullHandler())


class BenchError(RuntimeError):
    """The bench cannot go on; the message says why."""


def short_error(exc: BaseException, limit: int = 300) -> str:
    """`Type: first line of the message`, without ClickHouse's stack traces."""
    lines = [line.strip() for line in str(exc).splitlines()]
    text = " ".join(line for line in lines[:3] if line and not line.startswith("Stack trace"))
    text = text.split(" Stack trace:")[0]
    return f"{type(exc).__name__}: {text}"[:limit]


def is_loopback(host: str) -> bool:
    host = host.strip().strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Endpoints:
    """Where the servers are, from the same variables the services and tests read."""

    kafka: str
    ch_host: str
    ch_port: int
    state: Path

    @classmethod
    def from_env(cls) -> Endpoints:
        env = os.environ
        endpoints = cls(
            kafka=env.get("CHUTE_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
            ch_host=env.get("CHUTE_CLICKHOUSE_HOST", "127.0.0.1"),
            ch_port=int(env.get("CHUTE_CLICKHOUSE_PORT", "9000")),
            state=Path(env.get("CHUTE_STATE") or ROOT / ".chute").resolve(),
        )
        hosts = [a.strip().rpartition(":")[0] for a in endpoints.kafka.split(",") if a.strip()]
        for host in [*hosts, endpoints.ch_host]:
            if not is_loopback(host):
                raise BenchError(f"the bench only loads servers on loopback, not {host!r} "
                                 "(CHUTE_KAFKA_BOOTSTRAP, CHUTE_CLICKHOUSE_HOST)")
        return endpoints

    @property
    def kafka_hostport(self) -> tuple[str, int]:
        host, _, port = self.kafka.split(",")[0].strip().rpartition(":")
        return host.strip("[]"), int(port)

    @property
    def clickhouse_error_log(self) -> Path:
        return self.state / "log" / "clickhouse-server.err.log"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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
        return int((client or self.ch).execute(f"SELECT count() FROM `{table}`")[0][0])

    def columns(self, table: str) -> list[tuple[str, str]]:
        """(name, type) of the table's columns, in order (18.16's system.columns has no
        position: DESCRIBE gives the order)."""
        return [(str(row[0]), str(row[1])) for row in self.ch.execute(f"DESCRIBE TABLE `{table}`")]

    def end_offsets(self, topic: str) -> dict[int, int]:
        consumer = KafkaConsumer(bootstrap_servers=self.endpoints.kafka,
                                 client_id="chute-bench")
        try:
            parts = consumer.partitions_for_topic(topic) or set()
            ends = consumer.end_offsets([TopicPartition(topic, p) for p in parts])
            return {tp.partition: int(o) for tp, o in ends.items()}
        finally:
            consumer.close()

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


def service_env(endpoints: Endpoints, schemas: str, **extra: str) -> dict[str, str]:
    """The environment chute's services get here: as tests/support.py's service_env."""
    env = dict(os.environ)
    env.update({
        "CHUTE_KAFKA_BOOTSTRAP": endpoints.kafka,
        "CHUTE_CLICKHOUSE_HOST": endpoints.ch_host,
        "CHUTE_CLICKHOUSE_PORT": str(endpoints.ch_port),
        "CHUTE_SCHEMAS": schemas,
        "CHUTE_LOG_FORMAT": "json",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


@dataclass
class Service:
    """One of chute's services as a real process (`python -m <module>`), in its own session."""

    label: str
    module: str
    env: dict[str, str]
    port: int
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def start(self) -> Service:
        with self.log_path.open("ab") as log:
            self.started_at = time.monotonic()
            self.proc = subprocess.Popen(
                [PYTHON, "-m", self.module], cwd=ROOT, env=self.env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def health(self) -> dict[str, Any] | None:
        if self.proc is not None and self.proc.poll() is not None:
            raise BenchError(f"{self.label} exited with {self.proc.returncode}:\n"
                             f"{self.log_tail()}")
        try:
            response = httpx.get(f"http://127.0.0.1:{self.port}/health", timeout=2,
                                 trust_env=False)
        except httpx.HTTPError:
            return None
        if response.status_code != 200:
            return None
        body = response.json()
        return body if isinstance(body, dict) else {}

    def wait_healthy(self, timeout: float = 90,
                     ready: Callable[[dict[str, Any]], bool] = lambda _h: True) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            health = self.health()
            if health is not None and ready(health):
                return health
            time.sleep(0.1)
        raise BenchError(f"{self.label} not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])

    def log_entries(self, event: str) -> list[dict[str, Any]]:
        """The JSON log lines whose event is `event`."""
        needle = json.dumps(event)
        entries = []
        for line in self.log_text().splitlines():
            if needle in line:
                with contextlib.suppress(ValueError):
                    entry = json.loads(line)
                    if isinstance(entry, dict) and entry.get("event") == event:
                        entries.append(entry)
        return entries

    def stop(self, timeout: float = 30) -> int | None:
        """SIGTERM (the service flushes and leaves its group), SIGKILL after timeout."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)


def read_memory(pid: int) -> tuple[int, int] | None:
    """(VmRSS, VmHWM) of a process in bytes, None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    values = {}
    for line in text.splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0]) * 1024
    if len(values) < 2:
        return None
    return values["VmRSS"], values["VmHWM"]


@dataclass
class _Track:
    pid: int
    peak: int = 0
    first: int | None = None  # RSS at the first sample


class RssSampler:
    """Samples the RSS of tracked processes every `interval` s in a daemon thread; a label's
    figure is the largest sample or VmHWM (the kernel's own peak) seen while tracked."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self._tracks: dict[str, _Track] = {}
        self.peaks: dict[str, int] = {}
        self.baselines: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss", daemon=True)
        self._thread.start()

    def track(self, label: str, pid: int) -> None:
        with self._lock:
            self._tracks[label] = _Track(pid)
        self._sample(label)

    def untrack(self, label: str) -> int:
        """Ends tracking (take it before the process exits); returns the peak in bytes."""
        self._sample(label)
        with self._lock:
            track = self._tracks.pop(label, None)
            if track is None:
                return self.peaks.get(label, 0)
            self.peaks[label] = max(self.peaks.get(label, 0), track.peak)
            if track.first is not None:
                self.baselines.setdefault(label, track.first)
            return self.peaks[label]

    def _sample(self, label: str) -> None:
        with self._lock:
            track = self._tracks.get(label)
            if track is None:
                return
            memory = read_memory(track.pid)
            if memory is not None:
                rss, hwm = memory
                if track.first is None:
                    track.first = rss
                track.peak = max(track.peak, rss, hwm)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with self._lock:
                labels = list(self._tracks)
            for label in labels:
                self._sample(label)

    def close(self) -> None:
        self._stop.set()


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
             "--nolineno", "--threads", "--nonblocking", "--output", str(path)],
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


def kcat_produce(bootstrap: str, topic: str, path: Path, *settings: str) -> tuple[float, str]:
    """Produce the key<TAB>value lines of `path` with kcat (acks=all): the seconds it took and
    the command, for the report. The file is removed afterwards."""
    argv = ["kcat", "-b", bootstrap, "-P", "-t", topic, "-K", "\t", "-X", "acks=all"]
    for setting in settings:
        argv += ["-X", setting]
    argv += ["-l", str(path)]
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=600, check=False)
    seconds = time.monotonic() - started
    path.unlink(missing_ok=True)
    if done.returncode != 0:
        raise BenchError(f"kcat failed ({done.returncode}): {done.stderr[-2000:]}")
    return seconds, " ".join(a if a != "\t" else "'\\t'" for a in argv)
