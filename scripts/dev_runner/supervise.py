"""Supervision: preparing, launching and stopping the runner's services, tier by tier, with pid
files under the state folder, readiness waits, and one lock so that runners do not interleave.
This is the API the CLI and the tests use."""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from dev_runner import cluster, secure
from dev_runner.configs import (
    new_cluster_id,
    parse_meta_cluster_id,
    render_clickhouse_config,
    render_kafka_properties,
    render_prometheus_config,
)
from dev_runner.health import log_tails, probe, tail
from dev_runner.processes import (
    busy_ports,
    exit_code,
    orphans,
    pid_alive,
    port_open,
    running_pid,
    say,
    spawn_service,
    stop_pids,
)
from dev_runner.services import (
    OPTIONAL_SERVICES,
    WORKER_PREFIX,
    Service,
    core_services,
    kafka_format_argv,
    service_spec,
    worker_index,
    worker_name,
)
from dev_runner.settings import RunnerError, Settings

POLL_SECONDS = 0.25
_lock_depth = 0


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
            say("waiting for another scripts/dev to finish")
            fcntl.flock(handle, fcntl.LOCK_EX)
        _lock_depth = 1
        try:
            yield
        finally:
            _lock_depth = 0
            fcntl.flock(handle, fcntl.LOCK_UN)


def _settings(settings: Settings | None) -> Settings:
    s = settings if settings is not None else Settings.from_env()
    return cluster.with_recorded_layout(s)


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
    say(f"kafka: formatting {s.kafka_log_dirs} (cluster id {cluster_id})")
    code = _run_logged(kafka_format_argv(s, cluster_id), log, s, timeout=120)
    if code != 0 or not meta.exists():
        raise RunnerError(
            f"formatting Kafka storage failed (exit code {code})\n--- {log} ---\n{tail(log, 30)}"
        )
    return cluster_id


def _prepare(service: Service, s: Settings) -> None:
    s.log_dir.mkdir(parents=True, exist_ok=True)
    s.run_dir.mkdir(parents=True, exist_ok=True)
    node = cluster.node_index(service.name)
    if service.name == "zookeeper":
        cluster.prepare_zookeeper(s)
    elif node is not None and node[0] == "clickhouse":
        cluster.prepare_clickhouse(s, node[1])
    elif service.kind == "kafka":
        libs = s.kafka_home / "libs"
        if not libs.is_dir() or not any(libs.glob("kafka_*.jar")):
            raise RunnerError(
                f"Kafka is not installed in {s.kafka_home}: run scripts/install-kafka"
            )
        if shutil.which(s.java) is None:
            raise RunnerError(f"no Java runtime ({s.java}): run scripts/install-kafka")
        if node is not None:
            cluster.prepare_kafka(s, node[1], service.log)
            return
        s.kafka_properties.parent.mkdir(parents=True, exist_ok=True)
        s.kafka_log_dirs.mkdir(parents=True, exist_ok=True)
        template = s.template("kafka/server.properties.tmpl").read_text()
        properties = render_kafka_properties(template, s)
        if secure.enabled(s):
            secure.ensure_certificates(s)
            properties = secure.kafka_properties(properties, s)
        s.kafka_properties.write_text(properties)
        ensure_kafka_formatted(s, service.log)
    elif service.kind == "clickhouse":
        if shutil.which(s.clickhouse_bin) is None:
            raise RunnerError(
                f"no ClickHouse server ({s.clickhouse_bin}): run scripts/install-infra"
            )
        s.clickhouse_config.parent.mkdir(parents=True, exist_ok=True)
        s.clickhouse_data.mkdir(parents=True, exist_ok=True)
        template = s.template("clickhouse/config.xml.tmpl").read_text()
        config = render_clickhouse_config(template, s)
        if secure.enabled(s):
            secure.ensure_certificates(s)
            config = secure.clickhouse_config(config, s)
        s.clickhouse_config.write_text(config)
        s.clickhouse_users.write_text(s.template("clickhouse/users.xml").read_text())
    elif service.kind == "prometheus":
        if shutil.which(s.prometheus_bin) is None:
            raise RunnerError(f"no Prometheus ({s.prometheus_bin}): run scripts/install-infra")
        s.prometheus_data.mkdir(parents=True, exist_ok=True)
        s.prometheus_config.parent.mkdir(parents=True, exist_ok=True)
        s.prometheus_config.write_text(native_prometheus_config(s))
    elif not s.python.exists():
        raise RunnerError(f"no virtualenv at {s.venv}: run scripts/install-python")


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
    busy = busy_ports(service, s)
    if busy:
        raise RunnerError(
            f"cannot start {service.name}: port already in use: {'; '.join(busy)}. "
            "Stop that process (a system instance of the same server?) or move chute's port "
            "with the CHUTE_*_PORT variables."
        )
    _prepare(service, s)
    at = time.monotonic()
    pid = spawn_service(service, s)
    say(f"{service.name}: started, pid {pid}")
    return Launch(service, pid, started=True, at=at)


def wait_healthy(started: Launch, s: Settings) -> float:
    """Polls the service's health until it answers or its deadline passes; returns the seconds
    since launch. Fails at once, with the log's tail, when the process exits."""
    service = started.service
    deadline = started.at + service.ready_timeout
    while True:
        if not pid_alive(started.pid):
            code = exit_code(started.pid)
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
            say(f"{started.service.name}: healthy after {seconds:.1f} s")
        else:
            say(f"{started.service.name}: already running, pid {started.pid}")
        results.append((started, seconds))
    return results


# Stopping. ---------------------------------------------------------------------------------

def _stop_services(names: Sequence[str], s: Settings, kill: bool) -> list[str]:
    pids: dict[str, int] = {}
    for name in names:
        service = service_spec(name, s)
        pid = running_pid(service)
        if pid is not None:
            pids[name] = pid
        else:
            service.pid_file.unlink(missing_ok=True)
    stop_pids(pids, kill)
    for name in pids:
        service_spec(name, s).pid_file.unlink(missing_ok=True)
        say(f"{name}: stopped" + (" (SIGKILL)" if kill else ""))
    return list(pids)


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
                say(f"{name}: healthy after {seconds:.1f} s")
        if not started.started:
            say(f"{name}: already running, pid {started.pid}")
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
    return [*core_services(s), *(worker_name(i) for i in _worker_indexes(s)), *optional]


def _infra_tiers(s: Settings) -> list[list[str]]:
    """Kafka and ClickHouse services of the recorded layout and of any other layout that left
    a pid file, stopped together (a KRaft node left alone cannot leave its quorum), then
    ZooKeeper once no replica needs it."""
    names = [*cluster.infra_services(s), "kafka", "clickhouse",
             *(f"kafka-{i}" for i in range(1, cluster.MAX_BROKERS + 1)),
             *(f"clickhouse-{i}" for i in range(1, cluster.MAX_REPLICAS + 1))]
    found = [n for n in dict.fromkeys(names)
             if n in cluster.infra_services(s) or (s.run_dir / f"{n}.pid").exists()]
    return [[n for n in found if n != "zookeeper"], [n for n in found if n == "zookeeper"]]


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
        say("prometheus: configuration reloaded")


def up(workers: int = 1, settings: Settings | None = None,
       prometheus: bool = False, secure_mode: bool = False, kafka_brokers: int | None = None,
       clickhouse_replicas: int | None = None,
       clickhouse_shards: int | None = None) -> list[ServiceStatus]:
    """Starts every service that is not running, tier by tier, each waited for until healthy;
    with `prometheus`, also Prometheus scraping them. A running Prometheus is told about a
    changed number of workers. `secure_mode`: see dev_runner.secure (it stays on). More than
    one broker or replica: the cluster mode (dev_runner.cluster), recorded for the commands
    that follow; None keeps what the last `up` recorded. The two modes do not combine."""
    if workers < 0:
        raise RunnerError("--workers must be 0 or more")
    recorded = _settings(settings)
    brokers = recorded.kafka_brokers if kafka_brokers is None else kafka_brokers
    replicas = recorded.clickhouse_replicas if clickhouse_replicas is None else clickhouse_replicas
    shards = recorded.clickhouse_shards if clickhouse_shards is None else clickhouse_shards
    if (secure_mode or secure.enabled(recorded)) and (brokers > 1 or replicas * shards > 1):
        raise RunnerError("secure mode runs one Kafka broker and one ClickHouse server: "
                          "--secure does not combine with --kafka-brokers/--clickhouse-replicas/"
                          "--clickhouse-shards")
    cluster.check_layout(brokers, replicas, shards)
    cluster.check_shards(dataclasses.replace(recorded, clickhouse_replicas=replicas,
                                             clickhouse_shards=shards))
    s = cluster.write_layout(recorded, brokers, replicas, shards)
    with _runner_lock(s):
        if secure_mode:
            secure.enable(s)
        s.run_dir.mkdir(parents=True, exist_ok=True)
        s.workers_file.write_text(f"{workers}\n")
        extra = [worker_name(i) for i in _worker_pid_files(s) if i > workers]
        if extra:
            _stop_services(extra, s, kill=False)
        if cluster.clickhouse_clustered(s):
            _start_group(["zookeeper"], s)
        _start_group([n for n in cluster.infra_services(s) if n != "zookeeper"], s)
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
                 *_infra_tiers(s))
        for tier in tiers:
            stopped += _stop_services(tier, s, kill=False)
            leftovers = {
                f"{name} (pid {pid}, no pid file)": pid
                for name in tier
                for pid in orphans(service_spec(name, s), s)
            }
            stop_pids(leftovers, kill=False)
            for label in leftovers:
                say(f"{label}: stopped")
            stopped += list(leftovers)
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


def log_paths(name: str, settings: Settings | None = None) -> tuple[Path, ...]:
    return service_spec(name, _settings(settings)).logs

