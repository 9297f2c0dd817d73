#!/usr/bin/env python3
"""chute's native runner: Kafka, ClickHouse and chute's services as local processes.

`scripts/dev` installs what is missing and runs this file with the project's virtualenv:

    scripts/dev up [--workers N] [--prometheus]
                                      start everything that is not already running and healthy
    scripts/dev down                  stop everything, newest tier first
    scripts/dev status                one line per expected service; non-zero exit if one is down
    scripts/dev start|stop|restart <svc>   one service (stop --kill sends SIGKILL at once)
    scripts/dev logs <svc>            log paths and their last lines

Services: kafka, clickhouse, control-plane, ingest-api, sync-worker-N, and the optional
prometheus (Debian's /usr/bin/prometheus on 127.0.0.1:9090 scraping the services; started by
`up --prometheus` or `start prometheus`, stopped by `down`). Everything the runner writes lives
under the state folder (env CHUTE_STATE, default <repo>/.chute):

    run/<svc>.pid     pid of the service; it leads its own session, so its process group is it
    run/workers       how many sync workers the last `up` started
    log/<svc>.log     the service's stdout and stderr (Kafka and ClickHouse keep more logs there)
    etc/              rendered Kafka, ClickHouse and Prometheus configuration
    data/kafka        Kafka's cluster id (cluster.id) and log.dirs (logs/)
    data/clickhouse   ClickHouse's data
    data/prometheus   Prometheus's time series

Ports and paths come from the environment (see `Settings.from_env`), so tests can move them.
Tests import this module (put scripts/ on sys.path) and call `up`, `down`, `start_service`,
`stop_service`, `is_running`, `is_healthy` and `status`. The first half of the file is pure
(service table, command lines, configuration rendering); process I/O comes after it.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from xml.sax.saxutils import escape as xml_escape

import httpx

# ---------------------------------------------------------------------------------------------
# Pure part: settings, service table, command lines, configuration rendering.
# ---------------------------------------------------------------------------------------------

SCRIPTS_DIR = Path(__file__).resolve().parent
DEFAULT_ROOT = SCRIPTS_DIR.parent

CORE_SERVICES = ("kafka", "clickhouse", "control-plane", "ingest-api")
# Not started by `up` unless asked for (`up --prometheus`); `down` stops them.
OPTIONAL_SERVICES = ("prometheus",)
WORKER_PREFIX = "sync-worker-"
_WORKER_RE = re.compile(r"sync-worker-([1-9][0-9]{0,2})")

# Seconds a service may take to become healthy after it was launched.
READY_TIMEOUTS = {"kafka": 90.0, "clickhouse": 60.0}
DEFAULT_READY_TIMEOUT = 30.0
STOP_GRACE_SECONDS = 15.0
KILL_WAIT_SECONDS = 5.0
POLL_SECONDS = 0.25
LOG_ROTATE_BYTES = 20 * 1024 * 1024

ServiceKind = Literal["kafka", "clickhouse", "python", "prometheus"]


class RunnerError(Exception):
    """A service could not be started, stopped or found; the message says why."""


def _env_port(env: Mapping[str, str], key: str, default: int) -> int:
    raw = env.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise RunnerError(f"{key}={raw!r} is not a port number") from None
    if not 0 < value < 65536:
        raise RunnerError(f"{key}={raw!r} is not a port number")
    return value


@dataclass(frozen=True)
class Settings:
    """Where things are and which ports they use. Build it with `Settings.from_env()`."""

    root: Path
    state: Path
    venv: Path
    kafka_home: Path
    java: str
    clickhouse_bin: str
    prometheus_bin: str = "/usr/bin/prometheus"
    host: str = "127.0.0.1"
    kafka_port: int = 9092
    kafka_controller_port: int = 9093
    clickhouse_port: int = 9000
    clickhouse_http_port: int = 8123
    control_port: int = 4200
    ingest_port: int = 4000
    sync_port_base: int = 4100
    prometheus_port: int = 9090
    prometheus_scrape_interval: str = "5s"
    kafka_heap: tuple[str, ...] = ("-Xmx512m", "-Xms256m")
    timeout_scale: float = 1.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Reads CHUTE_ROOT, CHUTE_STATE, CHUTE_VENV, KAFKA_HOME/KAFKA_VERSION, the port
        variables (CHUTE_KAFKA_PORT, CHUTE_KAFKA_CONTROLLER_PORT, CHUTE_CLICKHOUSE_PORT,
        CHUTE_CLICKHOUSE_HTTP_PORT, CHUTE_CONTROL_PORT, CHUTE_INGEST_PORT, CHUTE_SYNC_PORT_BASE,
        CHUTE_PROMETHEUS_PORT), CHUTE_PROMETHEUS_BIN, CHUTE_PROMETHEUS_SCRAPE_INTERVAL,
        CHUTE_KAFKA_HEAP_OPTS and CHUTE_DEV_TIMEOUT_SCALE."""
        env = os.environ if env is None else env
        root = Path(env.get("CHUTE_ROOT") or DEFAULT_ROOT).resolve()
        state = Path(env.get("CHUTE_STATE") or root / ".chute").resolve()
        venv = Path(env.get("CHUTE_VENV") or root / ".venv")
        version = env.get("KAFKA_VERSION") or "4.1.1"
        if env.get("KAFKA_HOME"):
            kafka_home = Path(env["KAFKA_HOME"])
        else:
            kafka_home = state / "opt" / f"kafka-{version}"
            shared = root / ".chute" / "opt" / f"kafka-{version}"
            # A test's private state folder reuses the jars scripts/install-kafka put in the repo.
            if not (kafka_home / "libs").is_dir() and (shared / "libs").is_dir():
                kafka_home = shared
        clickhouse_bin = (
            env.get("CHUTE_CLICKHOUSE_BIN")
            or shutil.which("clickhouse-server")
            or next(
                (p for p in ("/usr/sbin/clickhouse-server", "/usr/bin/clickhouse-server")
                 if os.access(p, os.X_OK)),
                "clickhouse-server",
            )
        )
        prometheus_bin = (
            env.get("CHUTE_PROMETHEUS_BIN") or shutil.which("prometheus") or "/usr/bin/prometheus"
        )
        heap = tuple((env.get("CHUTE_KAFKA_HEAP_OPTS") or "-Xmx512m -Xms256m").split())
        try:
            scale = float(env.get("CHUTE_DEV_TIMEOUT_SCALE") or "1")
        except ValueError:
            raise RunnerError("CHUTE_DEV_TIMEOUT_SCALE must be a number") from None
        return cls(
            root=root,
            state=state,
            venv=venv,
            kafka_home=kafka_home,
            java=env.get("CHUTE_JAVA") or shutil.which("java") or "java",
            clickhouse_bin=clickhouse_bin,
            prometheus_bin=prometheus_bin,
            kafka_port=_env_port(env, "CHUTE_KAFKA_PORT", 9092),
            kafka_controller_port=_env_port(env, "CHUTE_KAFKA_CONTROLLER_PORT", 9093),
            clickhouse_port=_env_port(env, "CHUTE_CLICKHOUSE_PORT", 9000),
            clickhouse_http_port=_env_port(env, "CHUTE_CLICKHOUSE_HTTP_PORT", 8123),
            control_port=_env_port(env, "CHUTE_CONTROL_PORT", 4200),
            ingest_port=_env_port(env, "CHUTE_INGEST_PORT", 4000),
            sync_port_base=_env_port(env, "CHUTE_SYNC_PORT_BASE", 4100),
            prometheus_port=_env_port(env, "CHUTE_PROMETHEUS_PORT", 9090),
            prometheus_scrape_interval=env.get("CHUTE_PROMETHEUS_SCRAPE_INTERVAL") or "5s",
            kafka_heap=heap,
            timeout_scale=max(scale, 0.1),
        )

    # Layout of the state folder.
    @property
    def run_dir(self) -> Path:
        return self.state / "run"

    @property
    def log_dir(self) -> Path:
        return self.state / "log"

    @property
    def etc_dir(self) -> Path:
        return self.state / "etc"

    @property
    def data_dir(self) -> Path:
        return self.state / "data"

    @property
    def workers_file(self) -> Path:
        return self.run_dir / "workers"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    # Kafka files.
    @property
    def kafka_properties(self) -> Path:
        return self.etc_dir / "kafka" / "server.properties"

    @property
    def kafka_log4j(self) -> Path:
        return self.root / "scripts" / "infra" / "kafka" / "log4j2.yaml"

    @property
    def kafka_data(self) -> Path:
        return self.data_dir / "kafka"

    @property
    def kafka_log_dirs(self) -> Path:
        return self.kafka_data / "logs"

    @property
    def kafka_cluster_id_file(self) -> Path:
        return self.kafka_data / "cluster.id"

    # ClickHouse files.
    @property
    def clickhouse_config(self) -> Path:
        return self.etc_dir / "clickhouse" / "config.xml"

    @property
    def clickhouse_users(self) -> Path:
        return self.etc_dir / "clickhouse" / "users.xml"

    @property
    def clickhouse_data(self) -> Path:
        return self.data_dir / "clickhouse"

    # Prometheus files.
    @property
    def prometheus_config(self) -> Path:
        return self.etc_dir / "prometheus" / "prometheus.yml"

    @property
    def prometheus_template(self) -> Path:
        return self.root / "deploy" / "prometheus" / "prometheus.native.yml.tmpl"

    @property
    def prometheus_data(self) -> Path:
        return self.data_dir / "prometheus"

    @property
    def kafka_bootstrap(self) -> str:
        return f"{self.host}:{self.kafka_port}"

    def template(self, relative: str) -> Path:
        return self.root / "scripts" / "infra" / relative


@dataclass(frozen=True)
class Service:
    """One process the runner manages: how to start it and how to tell it is healthy."""

    name: str
    kind: ServiceKind
    argv: tuple[str, ...]
    port: int  # the port its health check uses
    other_ports: tuple[int, ...]  # further ports it listens on
    health: str  # what the health check asks, for messages
    marker: str  # found in /proc/<pid>/cmdline of the real process (guards against pid reuse)
    ready_timeout: float
    env_defaults: tuple[tuple[str, str], ...]  # applied unless the environment sets them
    env_forced: tuple[tuple[str, str], ...]  # always applied
    pid_file: Path
    logs: tuple[Path, ...]  # logs[0] receives stdout and stderr

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.port, *self.other_ports)

    @property
    def log(self) -> Path:
        return self.logs[0]


def worker_name(index: int) -> str:
    return f"{WORKER_PREFIX}{index}"


def worker_index(name: str) -> int | None:
    match = _WORKER_RE.fullmatch(name)
    return int(match.group(1)) if match else None


def service_names(workers: int) -> list[str]:
    """Start order: infrastructure, the control plane, then the data path."""
    return [*CORE_SERVICES, *(worker_name(i) for i in range(1, workers + 1))]


def kafka_argv(s: Settings) -> tuple[str, ...]:
    return (
        s.java,
        *s.kafka_heap,
        "-XX:+UseG1GC",
        "-XX:MaxGCPauseMillis=20",
        "-XX:+ExitOnOutOfMemoryError",
        "-Djava.awt.headless=true",
        # Kafka logs its own shutdown; log4j2's hook would stop logging before it ends.
        "-Dlog4j2.shutdownHookEnabled=false",
        f"-Dkafka.logs.dir={s.log_dir}",
        f"-Dlog4j2.configurationFile={s.kafka_log4j}",
        "-cp",
        f"{s.kafka_home}/libs/*",
        "kafka.Kafka",
        str(s.kafka_properties),
    )


def kafka_format_argv(s: Settings, cluster_id: str) -> tuple[str, ...]:
    """`kafka-storage format` for a single-node dynamic quorum (KIP-853): with --standalone the
    properties must name controller.quorum.bootstrap.servers and not controller.quorum.voters."""
    return (
        s.java,
        "-Xmx256m",
        "-cp",
        f"{s.kafka_home}/libs/*",
        "kafka.tools.StorageTool",
        "format",
        "--config",
        str(s.kafka_properties),
        "--cluster-id",
        cluster_id,
        "--standalone",
        "--ignore-formatted",
    )


def clickhouse_argv(s: Settings) -> tuple[str, ...]:
    return (s.clickhouse_bin, f"--config-file={s.clickhouse_config}")


def prometheus_argv(s: Settings) -> tuple[str, ...]:
    return (
        s.prometheus_bin,
        f"--config.file={s.prometheus_config}",
        f"--storage.tsdb.path={s.prometheus_data}",
        "--storage.tsdb.retention.time=7d",
        f"--web.listen-address={s.host}:{s.prometheus_port}",
    )


def python_service_env(s: Settings) -> tuple[tuple[str, str], ...]:
    """Defaults every chute service gets unless the caller's environment sets them."""
    return (
        ("CHUTE_KAFKA_BOOTSTRAP", s.kafka_bootstrap),
        ("CHUTE_CLICKHOUSE_HOST", s.host),
        ("CHUTE_CLICKHOUSE_PORT", str(s.clickhouse_port)),
        ("CHUTE_LOG_FORMAT", "console"),
    )


def service_spec(name: str, s: Settings) -> Service:
    """The service called `name` (kafka, clickhouse, control-plane, ingest-api, sync-worker-N)."""
    pid_file = s.run_dir / f"{name}.pid"
    log = s.log_dir / f"{name}.log"
    timeout = READY_TIMEOUTS.get(name, DEFAULT_READY_TIMEOUT) * s.timeout_scale
    if name == "kafka":
        return Service(
            name=name,
            kind="kafka",
            argv=kafka_argv(s),
            port=s.kafka_port,
            other_ports=(s.kafka_controller_port,),
            health=f"kafka metadata at {s.kafka_bootstrap}",
            marker="kafka.Kafka",
            ready_timeout=timeout,
            env_defaults=(),
            env_forced=(),
            pid_file=pid_file,
            logs=(log, s.log_dir / "kafka-server.log"),
        )
    if name == "clickhouse":
        return Service(
            name=name,
            kind="clickhouse",
            argv=clickhouse_argv(s),
            port=s.clickhouse_http_port,
            other_ports=(s.clickhouse_port,),
            health=f"http://{s.host}:{s.clickhouse_http_port}/ping",
            marker="clickhouse-server",
            ready_timeout=timeout,
            env_defaults=(),
            env_forced=(),
            pid_file=pid_file,
            logs=(
                log,
                s.log_dir / "clickhouse-server.log",
                s.log_dir / "clickhouse-server.err.log",
            ),
        )
    if name == "prometheus":
        return Service(
            name=name,
            kind="prometheus",
            argv=prometheus_argv(s),
            port=s.prometheus_port,
            other_ports=(),
            health=f"http://{s.host}:{s.prometheus_port}/-/ready",
            marker=f"--storage.tsdb.path={s.prometheus_data}",
            ready_timeout=timeout,
            env_defaults=(),
            env_forced=(),
            pid_file=pid_file,
            logs=(log,),
        )
    forced: tuple[tuple[str, str], ...]
    args: tuple[str, ...]
    if name == "control-plane":
        module, args, port = "control_plane", ("serve",), s.control_port
        forced = (("CHUTE_CONTROL_PORT", str(port)),)
    elif name == "ingest-api":
        module, args, port = "ingest_api", (), s.ingest_port
        forced = (("CHUTE_INGEST_PORT", str(port)),)
    else:
        index = worker_index(name)
        if index is None:
            raise RunnerError(
                f"unknown service {name!r}; services are "
                f"{', '.join((*CORE_SERVICES, *OPTIONAL_SERVICES))} and {WORKER_PREFIX}N (N >= 1)"
            )
        module, args, port = "sync_worker", (), s.sync_port_base + index
        forced = (("CHUTE_SYNC_PORT", str(port)), ("CHUTE_SYNC_WORKER_ID", name))
    return Service(
        name=name,
        kind="python",
        argv=(str(s.python), "-m", module, *args),
        port=port,
        other_ports=(),
        health=f"http://{s.host}:{port}/health",
        marker=f"-m {module}",
        ready_timeout=timeout,
        env_defaults=python_service_env(s),
        env_forced=(*forced, ("PYTHONUNBUFFERED", "1")),
        pid_file=pid_file,
        logs=(log,),
    )


def service_table(s: Settings, workers: int) -> list[Service]:
    return [service_spec(name, s) for name in service_names(workers)]


def build_env(service: Service, base: Mapping[str, str]) -> dict[str, str]:
    """The environment a service runs with: defaults < the caller's environment < forced."""
    return {**dict(service.env_defaults), **base, **dict(service.env_forced)}


_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Replaces @NAME@ placeholders; a placeholder without a value is an error."""

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise RunnerError(f"template placeholder @{key}@ has no value")
        return values[key]

    return _PLACEHOLDER.sub(substitute, text)


def _properties_value(value: str) -> str:
    """Escapes a value for a Java .properties file (read as ISO-8859-1)."""
    out = value.replace("\\", "\\\\")
    return "".join(ch if ord(ch) < 128 else f"\\u{ord(ch):04x}" for ch in out)


def render_kafka_properties(template: str, s: Settings) -> str:
    values = {
        "HOST": s.host,
        "KAFKA_PORT": str(s.kafka_port),
        "CONTROLLER_PORT": str(s.kafka_controller_port),
        "LOG_DIRS": str(s.kafka_log_dirs),
    }
    return render_template(template, {k: _properties_value(v) for k, v in values.items()})


def render_clickhouse_config(template: str, s: Settings) -> str:
    values = {
        "HOST": s.host,
        "HTTP_PORT": str(s.clickhouse_http_port),
        "TCP_PORT": str(s.clickhouse_port),
        "DATA_DIR": str(s.clickhouse_data),
        "LOG_DIR": str(s.log_dir),
    }
    return render_template(template, {k: xml_escape(v) for k, v in values.items()})


def _yaml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def render_prometheus_config(
    template: str,
    control: Sequence[str],
    ingest: Sequence[str],
    sync: Sequence[str],
    prometheus: Sequence[str] = (),
    scrape_interval: str = "5s",
) -> str:
    """Prometheus's configuration: one job per service (the job names the dashboards use),
    each with its host:port targets. The scrape timeout is the interval, capped at 10 s."""
    seconds = _duration_seconds(scrape_interval)
    timeout = f"{round(min(seconds, 10.0) * 1000)}ms"
    for target in (*control, *ingest, *sync, *prometheus):
        if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]:]+:[0-9]+", target):
            raise RunnerError(f"not a host:port scrape target: {target!r}")
    return render_template(template, {
        "SCRAPE_INTERVAL": scrape_interval,
        "SCRAPE_TIMEOUT": timeout,
        "CONTROL_TARGETS": _yaml_list(control),
        "INGEST_TARGETS": _yaml_list(ingest),
        "SYNC_TARGETS": _yaml_list(sync),
        "PROMETHEUS_TARGETS": _yaml_list(prometheus),
    })


def _duration_seconds(text: str) -> float:
    match = re.fullmatch(r"([1-9][0-9]*)(ms|s|m)", text)
    if not match:
        raise RunnerError(f"scrape interval {text!r} is not like 500ms, 5s or 1m")
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value * (60 if match.group(2) == "m" else 1)


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64 without padding (22 characters),
    like `kafka-storage random-uuid`, never starting with '-' (it would read as a flag)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not text.startswith("-"):
            return text


def parse_meta_cluster_id(text: str) -> str | None:
    """cluster.id from a Kafka meta.properties file."""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "cluster.id":
            return value.strip() or None
    return None


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(cell)) for w, cell in zip(widths, row, strict=True)]
    lines = [headers, *rows]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


# ---------------------------------------------------------------------------------------------
# Process I/O.
# ---------------------------------------------------------------------------------------------

# Processes this Python process started (the API is used from pytest, which must reap them).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}
_lock_depth = 0


def _say(message: str) -> None:
    print(f"[chute] {message}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _runner_lock(s: Settings) -> Iterator[None]:
    """Serialises runners that change state (up, down, start, stop) across processes."""
    global _lock_depth
    if _lock_depth:
        _lock_depth += 1
        try:
            yield
        finally:
            _lock_depth -= 1
        return
    s.run_dir.mkdir(parents=True, exist_ok=True)
    with open(s.run_dir / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _say("waiting for another scripts/dev to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


def _settings(settings: Settings | None) -> Settings:
    return settings if settings is not None else Settings.from_env()


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 1 else None


def _write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


def _group_alive(pgid: int) -> bool:
    child = _CHILDREN.get(pgid)
    if child is not None:
        child.poll()  # reaps the leader if it exited, so a zombie does not count
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A group whose only member is an unreaped zombie leader is gone for our purposes.
    return pid_alive(pgid) or _group_has_live_member(pgid)


def _group_has_live_member(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # fields: state ppid pgrp ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
            return True
    return False


def running_pid(service: Service) -> int | None:
    """The pid from the service's pid file when that process is alive and is the service."""
    pid = read_pid(service.pid_file)
    if pid is None or not pid_alive(pid):
        return None
    if service.marker not in _cmdline(pid):
        return None  # the pid was reused by something else
    return pid


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listening_pids(port: int) -> set[int]:
    """Pids with a TCP socket listening on `port` (any address), from /proc."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A = LISTEN
                continue
            if int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    pids: set[int] = set()
    if not inodes:
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    pids.add(int(entry.name))
                    break
            except OSError:
                continue
    return pids


def _describe(pid: int) -> str:
    command = " ".join(_cmdline(pid).split())
    if len(command) > 100:
        command = command[:97] + "..."
    return f"pid {pid} ({command})" if command else f"pid {pid}"


def _busy_ports(service: Service, s: Settings) -> list[str]:
    busy = []
    for port in service.ports:
        if port_open(s.host, port):
            owners = ", ".join(_describe(p) for p in sorted(listening_pids(port)))
            busy.append(f"{s.host}:{port}" + (f" by {owners}" if owners else ""))
    return busy


# Health checks. ----------------------------------------------------------------------------


def _http_ok(url: str, expect_body: str | None = None) -> bool:
    try:
        response = httpx.get(url, timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    return expect_body is None or response.text.strip() == expect_body


_kafka_logging_quiet = False


def _kafka_lists_topics(bootstrap: str) -> bool:
    global _kafka_logging_quiet
    if not _kafka_logging_quiet:
        # Without a handler, Python would print the client's errors while the broker boots.
        for name in ("kafka", "chute.kafka"):
            logging.getLogger(name).addHandler(logging.NullHandler())
        _kafka_logging_quiet = True
    from chute import kafka

    try:
        admin = kafka.admin(bootstrap, timeout=5.0)
    except Exception:
        return False
    try:
        admin.topic_partitions()
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            admin.close()
    return True


def probe(service: Service, s: Settings) -> bool:
    """Asks the service whether it is ready (does not look at pid files)."""
    if service.kind == "kafka":
        return port_open(s.host, s.kafka_port) and _kafka_lists_topics(s.kafka_bootstrap)
    if service.kind == "clickhouse":
        return _http_ok(service.health, expect_body="Ok.")
    return _http_ok(service.health)


def _tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def log_tails(service: Service, lines: int = 30) -> str:
    parts = []
    for path in service.logs:
        text = _tail(path, lines)
        if text:
            parts.append(f"--- {path} (last lines) ---\n{text}")
    return "\n".join(parts) if parts else f"(no log in {service.log})"


# Preparing and launching. ----------------------------------------------------------------------


def _run_logged(argv: Sequence[str], log: Path, s: Settings, timeout: float) -> int:
    with open(log, "ab") as out:
        out.write(f"\n=== chute: {' '.join(argv)}\n".encode())
        out.flush()
        try:
            done = subprocess.run(
                argv, cwd=s.root, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, timeout=timeout, check=False,
            )
        except subprocess.TimeoutExpired:
            return -1
    return done.returncode


def ensure_kafka_formatted(s: Settings, log: Path) -> str:
    """Formats Kafka's storage once per data directory and returns the cluster id.

    The id lives in data/kafka/cluster.id; a directory that has a meta.properties is never
    formatted again (a different id on an old directory fails with "Invalid cluster.id")."""
    meta = s.kafka_log_dirs / "meta.properties"
    id_file = s.kafka_cluster_id_file
    if meta.exists():
        cluster_id = parse_meta_cluster_id(meta.read_text())
        if cluster_id is None:
            raise RunnerError(f"{meta} has no cluster.id; remove {s.kafka_data} to start afresh")
        if not id_file.exists() or id_file.read_text().strip() != cluster_id:
            id_file.write_text(cluster_id + "\n")
        return cluster_id
    cluster_id = id_file.read_text().strip() if id_file.exists() else ""
    if not cluster_id:
        cluster_id = new_cluster_id()
        id_file.write_text(cluster_id + "\n")
    _say(f"kafka: formatting {s.kafka_log_dirs} (cluster id {cluster_id})")
    code = _run_logged(kafka_format_argv(s, cluster_id), log, s, timeout=120)
    if code != 0 or not meta.exists():
        raise RunnerError(
            f"formatting Kafka storage failed (exit code {code})\n--- {log} ---\n{_tail(log, 30)}"
        )
    return cluster_id


def _prepare(service: Service, s: Settings) -> None:
    s.log_dir.mkdir(parents=True, exist_ok=True)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    if service.kind == "kafka":
        libs = s.kafka_home / "libs"
        if not libs.is_dir() or not any(libs.glob("kafka_*.jar")):
            raise RunnerError(
                f"Kafka is not installed in {s.kafka_home}: run scripts/install-kafka"
            )
        if shutil.which(s.java) is None:
            raise RunnerError(f"no Java runtime ({s.java}): run scripts/install-kafka")
        s.kafka_properties.parent.mkdir(parents=True, exist_ok=True)
        s.kafka_log_dirs.mkdir(parents=True, exist_ok=True)
        template = s.template("kafka/server.properties.tmpl").read_text()
        s.kafka_properties.write_text(render_kafka_properties(template, s))
        ensure_kafka_formatted(s, service.log)
    elif service.kind == "clickhouse":
        if shutil.which(s.clickhouse_bin) is None:
            raise RunnerError(
                f"no ClickHouse server ({s.clickhouse_bin}): run scripts/install-infra"
            )
        s.clickhouse_config.parent.mkdir(parents=True, exist_ok=True)
        s.clickhouse_data.mkdir(parents=True, exist_ok=True)
        template = s.template("clickhouse/config.xml.tmpl").read_text()
        s.clickhouse_config.write_text(render_clickhouse_config(template, s))
        s.clickhouse_users.write_text(s.template("clickhouse/users.xml").read_text())
    elif service.kind == "prometheus":
        if shutil.which(s.prometheus_bin) is None:
            raise RunnerError(f"no Prometheus ({s.prometheus_bin}): run scripts/install-infra")
        s.prometheus_data.mkdir(parents=True, exist_ok=True)
        s.prometheus_config.parent.mkdir(parents=True, exist_ok=True)
        s.prometheus_config.write_text(native_prometheus_config(s))
    elif not s.python.exists():
        raise RunnerError(f"no virtualenv at {s.venv}: run scripts/install-python")


def _rotate(log: Path) -> None:
    with contextlib.suppress(OSError):
        if log.stat().st_size > LOG_ROTATE_BYTES:
            log.replace(log.with_name(log.name + ".1"))


def _spawn(service: Service, s: Settings) -> int:
    _rotate(service.log)
    env = build_env(service, os.environ)
    with open(service.log, "ab") as out:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        command = " ".join(service.argv)
        out.write(f"\n=== chute: {stamp} starting {service.name}: {command}\n".encode())
        out.flush()
        try:
            child = subprocess.Popen(
                service.argv,
                cwd=s.root,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own process group: stop kills the whole group
                close_fds=True,
            )
        except OSError as exc:
            raise RunnerError(f"cannot start {service.name}: {exc}") from exc
    _CHILDREN[child.pid] = child
    _write_pid(service.pid_file, child.pid)
    return child.pid


@dataclass
class Launch:
    service: Service
    pid: int
    started: bool  # False when it was already running
    at: float  # time.monotonic() of the launch


def launch(service: Service, s: Settings) -> Launch:
    """Starts the service unless it is already running; does not wait for it."""
    pid = running_pid(service)
    if pid is not None:
        return Launch(service, pid, started=False, at=time.monotonic())
    service.pid_file.unlink(missing_ok=True)
    busy = _busy_ports(service, s)
    if busy:
        raise RunnerError(
            f"cannot start {service.name}: port already in use: {'; '.join(busy)}. "
            "Stop that process (a system instance of the same server?) or move chute's port "
            "with the CHUTE_*_PORT variables."
        )
    _prepare(service, s)
    at = time.monotonic()
    pid = _spawn(service, s)
    _say(f"{service.name}: started, pid {pid}")
    return Launch(service, pid, started=True, at=at)


def _exit_code(pid: int) -> int | None:
    child = _CHILDREN.get(pid)
    return child.poll() if child is not None else None


def wait_healthy(started: Launch, s: Settings) -> float:
    """Polls the service's health until it answers or its deadline passes; returns the seconds
    since launch. Fails at once, with the log's tail, when the process exits."""
    service = started.service
    deadline = started.at + service.ready_timeout
    while True:
        if not pid_alive(started.pid):
            code = _exit_code(started.pid)
            started.service.pid_file.unlink(missing_ok=True)
            how = f"exited with code {code}" if code is not None else "exited"
            raise RunnerError(
                f"{service.name} {how} before becoming healthy\n{log_tails(service)}"
            )
        if probe(service, s):
            return time.monotonic() - started.at
        if time.monotonic() >= deadline:
            raise RunnerError(
                f"{service.name} did not become healthy within {service.ready_timeout:.0f} s "
                f"({service.health}); it is still running as pid {started.pid} "
                f"(scripts/dev stop {service.name} stops it)\n{log_tails(service)}"
            )
        time.sleep(POLL_SECONDS)


def _start_group(names: Sequence[str], s: Settings) -> list[tuple[Launch, float]]:
    """Launches services together, then waits for each to be healthy."""
    launches = [launch(service_spec(name, s), s) for name in names]
    results = []
    for started in launches:
        seconds = wait_healthy(started, s)
        if started.started:
            _say(f"{started.service.name}: healthy after {seconds:.1f} s")
        else:
            _say(f"{started.service.name}: already running, pid {started.pid}")
        results.append((started, seconds))
    return results


# Stopping. ---------------------------------------------------------------------------------


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: Sequence[int], until: float) -> list[int]:
    remaining = list(pids)
    while remaining:
        remaining = [pid for pid in remaining if _group_alive(pid)]
        if not remaining or time.monotonic() >= until:
            break
        time.sleep(0.1)
    return remaining


def _stop_pids(pids: Mapping[str, int], kill: bool) -> None:
    """Stops process groups: SIGTERM, up to STOP_GRACE_SECONDS, then SIGKILL."""
    if not pids:
        return
    if not kill:
        for pid in pids.values():
            _signal_group(pid, signal.SIGTERM)
        left = _wait_gone(list(pids.values()), time.monotonic() + STOP_GRACE_SECONDS)
        for name, pid in pids.items():
            if pid in left:
                _say(f"{name}: still running {STOP_GRACE_SECONDS:.0f} s after SIGTERM; SIGKILL")
    else:
        left = list(pids.values())
    for pid in left:
        _signal_group(pid, signal.SIGKILL)
    stuck = _wait_gone(left, time.monotonic() + KILL_WAIT_SECONDS)
    for pid in pids.values():
        child = _CHILDREN.pop(pid, None)
        if child is not None and pid not in stuck:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1)
    if stuck:
        names = [name for name, pid in pids.items() if pid in stuck]
        raise RunnerError(f"could not stop {', '.join(names)} (pids {stuck})")


def _stop_services(names: Sequence[str], s: Settings, kill: bool) -> list[str]:
    pids: dict[str, int] = {}
    for name in names:
        service = service_spec(name, s)
        pid = running_pid(service)
        if pid is not None:
            pids[name] = pid
        else:
            service.pid_file.unlink(missing_ok=True)
    _stop_pids(pids, kill)
    for name in pids:
        service_spec(name, s).pid_file.unlink(missing_ok=True)
        _say(f"{name}: stopped" + (" (SIGKILL)" if kill else ""))
    return list(pids)


def _orphans(service: Service, s: Settings) -> list[int]:
    """Processes of ours that listen on the service's ports without a pid file: same command,
    started by this runner (own session) from this checkout or with this state folder."""
    found = []
    for port in service.ports:
        for pid in listening_pids(port):
            command = _cmdline(pid)
            if service.marker not in command:
                continue
            try:
                own_session = os.getsid(pid) == pid
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if own_session and (str(s.state) in command or cwd == str(s.root)):
                found.append(pid)
    return sorted(set(found))


# ---------------------------------------------------------------------------------------------
# API for the CLI and for tests.
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    pid: int | None
    running: bool
    healthy: bool
    port: int
    note: str = ""

    @property
    def ok(self) -> bool:
        return self.running and self.healthy


def is_running(name: str, settings: Settings | None = None) -> bool:
    s = _settings(settings)
    return running_pid(service_spec(name, s)) is not None


def is_healthy(name: str, settings: Settings | None = None) -> bool:
    """Running from our pid file and answering its health check."""
    s = _settings(settings)
    service = service_spec(name, s)
    return running_pid(service) is not None and probe(service, s)


def start_service(name: str, settings: Settings | None = None, wait: bool = True) -> int:
    """Starts one service unless it already runs; waits until it is healthy; returns its pid."""
    s = _settings(settings)
    with _runner_lock(s):
        started = launch(service_spec(name, s), s)
        if wait:
            seconds = wait_healthy(started, s)
            if started.started:
                _say(f"{name}: healthy after {seconds:.1f} s")
        if not started.started:
            _say(f"{name}: already running, pid {started.pid}")
        return started.pid


def stop_service(name: str, kill: bool = False, settings: Settings | None = None) -> bool:
    """Stops one service (SIGTERM then SIGKILL, or SIGKILL at once); True if it was running."""
    s = _settings(settings)
    with _runner_lock(s):
        return bool(_stop_services([name], s, kill))


def restart_service(name: str, settings: Settings | None = None) -> int:
    s = _settings(settings)
    with _runner_lock(s):
        stop_service(name, settings=s)
        return start_service(name, settings=s)


def recorded_workers(s: Settings) -> int:
    try:
        return max(0, int(s.workers_file.read_text().strip()))
    except (OSError, ValueError):
        return 0


def _worker_pid_files(s: Settings) -> list[int]:
    indexes = []
    for path in s.run_dir.glob(f"{WORKER_PREFIX}*.pid"):
        index = worker_index(path.name.removesuffix(".pid"))
        if index is not None:
            indexes.append(index)
    return sorted(indexes)


def _worker_indexes(s: Settings) -> list[int]:
    """The workers `up` recorded and any worker with a pid file."""
    return sorted(set(range(1, recorded_workers(s) + 1)) | set(_worker_pid_files(s)))


def expected_services(s: Settings) -> list[str]:
    """Core services, the workers `up` recorded or that have a pid file, and optional services
    that have a pid file (started and not stopped since)."""
    optional = [n for n in OPTIONAL_SERVICES if service_spec(n, s).pid_file.exists()]
    return [*CORE_SERVICES, *(worker_name(i) for i in _worker_indexes(s)), *optional]


def native_prometheus_config(s: Settings) -> str:
    """Prometheus's configuration for this stack: the control plane, the ingest API, every
    worker `up` recorded or that runs (at least sync-worker-1), and Prometheus itself."""
    host = s.host
    workers = _worker_indexes(s) or [1]
    return render_prometheus_config(
        s.prometheus_template.read_text(),
        control=[f"{host}:{s.control_port}"],
        ingest=[f"{host}:{s.ingest_port}"],
        sync=[f"{host}:{s.sync_port_base + i}" for i in workers],
        prometheus=[f"{host}:{s.prometheus_port}"],
        scrape_interval=s.prometheus_scrape_interval,
    )


def _reload_prometheus(s: Settings) -> None:
    """Re-renders Prometheus's configuration when the workers changed; SIGHUP reloads it."""
    service = service_spec("prometheus", s)
    pid = running_pid(service)
    if pid is None:
        return
    text = native_prometheus_config(s)
    with contextlib.suppress(OSError):
        if s.prometheus_config.read_text() == text:
            return
    s.prometheus_config.write_text(text)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGHUP)
        _say("prometheus: configuration reloaded")


def up(workers: int = 1, settings: Settings | None = None,
       prometheus: bool = False) -> list[ServiceStatus]:
    """Starts every service that is not running, tier by tier, each waited for until healthy;
    with `prometheus`, also Prometheus scraping them. A running Prometheus is told about a
    changed number of workers."""
    if workers < 0:
        raise RunnerError("--workers must be 0 or more")
    s = _settings(settings)
    with _runner_lock(s):
        s.run_dir.mkdir(parents=True, exist_ok=True)
        s.workers_file.write_text(f"{workers}\n")
        extra = [worker_name(i) for i in _worker_pid_files(s) if i > workers]
        if extra:
            _stop_services(extra, s, kill=False)
        _start_group(["kafka", "clickhouse"], s)
        _start_group(["control-plane"], s)
        _start_group(["ingest-api", *(worker_name(i) for i in range(1, workers + 1))], s)
        _reload_prometheus(s)
        if prometheus:
            _start_group(["prometheus"], s)
        return status(s)


def down(settings: Settings | None = None) -> list[str]:
    """Stops everything, the data path first and Kafka and ClickHouse last; returns the names
    of what was stopped. Also stops our processes that lost their pid file."""
    s = _settings(settings)
    with _runner_lock(s):
        names = expected_services(s)
        workers = [n for n in names if n.startswith(WORKER_PREFIX)]
        stopped: list[str] = []
        tiers = ([*OPTIONAL_SERVICES, *workers, "ingest-api"], ["control-plane"],
                 ["clickhouse", "kafka"])
        for tier in tiers:
            stopped += _stop_services(tier, s, kill=False)
            orphans = {
                f"{name} (pid {pid}, no pid file)": pid
                for name in tier
                for pid in _orphans(service_spec(name, s), s)
            }
            _stop_pids(orphans, kill=False)
            for label in orphans:
                _say(f"{label}: stopped")
            stopped += list(orphans)
        return stopped


def status(settings: Settings | None = None) -> list[ServiceStatus]:
    s = _settings(settings)
    result = []
    for name in expected_services(s):
        service = service_spec(name, s)
        pid = running_pid(service)
        running = pid is not None
        healthy = running and probe(service, s)
        note = ""
        if not running:
            busy = [str(p) for p in service.ports if port_open(s.host, p)]
            if busy:
                note = f"port {', '.join(busy)} in use by another process"
        result.append(ServiceStatus(name, pid, running, healthy, service.port, note))
    return result


def status_table(rows: Sequence[ServiceStatus]) -> str:
    notes = any(r.note for r in rows)
    headers = ["SERVICE", "PID", "STATE", "HEALTH", "PORT", *(["NOTE"] if notes else [])]
    body = [
        [
            r.name,
            str(r.pid) if r.pid is not None else "-",
            "running" if r.running else "stopped",
            "healthy" if r.healthy else "unhealthy",
            str(r.port),
            *([r.note] if notes else []),
        ]
        for r in rows
    ]
    return format_table(headers, body)


def log_paths(name: str, settings: Settings | None = None) -> tuple[Path, ...]:
    return service_spec(name, _settings(settings)).logs


# ---------------------------------------------------------------------------------------------
# Command line.
# ---------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scripts/dev", description="Run chute and its servers as local processes."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    cmd_up = commands.add_parser("up", help="start everything that is not running")
    cmd_up.add_argument("--workers", type=int, default=1, help="sync workers (default 1)")
    cmd_up.add_argument(
        "--prometheus", action="store_true",
        help="also run Prometheus on 127.0.0.1:9090 (CHUTE_PROMETHEUS_PORT) scraping the services",
    )
    commands.add_parser("down", help="stop everything")
    commands.add_parser("status", help="show services; exit 1 if one is down or unhealthy")
    cmd_start = commands.add_parser("start", help="start one service")
    cmd_start.add_argument("service")
    cmd_stop = commands.add_parser("stop", help="stop one service")
    cmd_stop.add_argument("service")
    cmd_stop.add_argument("--kill", action="store_true", help="SIGKILL at once")
    cmd_restart = commands.add_parser("restart", help="stop then start one service")
    cmd_restart.add_argument("service")
    cmd_logs = commands.add_parser("logs", help="log paths and their last lines")
    cmd_logs.add_argument("service")
    cmd_logs.add_argument("-n", "--lines", type=int, default=40)
    cmd_logs.add_argument("--path", action="store_true", help="only print the log paths")
    return parser


def _cmd_up(args: argparse.Namespace) -> int:
    print(status_table(up(args.workers, prometheus=args.prometheus)))
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    down()
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    rows = status()
    print(status_table(rows))
    return 0 if all(r.ok for r in rows) else 1


def _cmd_start(args: argparse.Namespace) -> int:
    start_service(args.service)
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    if not stop_service(args.service, kill=args.kill):
        _say(f"{args.service}: not running")
    return 0


def _cmd_restart(args: argparse.Namespace) -> int:
    restart_service(args.service)
    return 0


def _cmd_logs(args: argparse.Namespace) -> int:
    for path in log_paths(args.service):
        if args.path:
            print(path)
            continue
        print(f"==> {path} <==")
        if not path.exists():
            print("(not written yet)")
        else:
            print(_tail(path, args.lines) or "(empty)")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "up": _cmd_up,
    "down": _cmd_down,
    "status": _cmd_status,
    "start": _cmd_start,
    "stop": _cmd_stop,
    "restart": _cmd_restart,
    "logs": _cmd_logs,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except RunnerError as exc:
        print(f"[chute] error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
