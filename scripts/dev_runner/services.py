"""The services the runner manages: names, command lines, ports, environment and logs (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from dev_runner import cluster, secure
from dev_runner.settings import RunnerError, Settings

CORE_SERVICES = ("kafka", "clickhouse", "control-plane", "ingest-api")
# Not started by `up` unless asked for (`up --prometheus`); `down` stops them.
OPTIONAL_SERVICES = ("prometheus",)
WORKER_PREFIX = "sync-worker-"
_WORKER_RE = re.compile(r"sync-worker-([1-9][0-9]{0,2})")

# Seconds a service may take to become healthy after it was launched.
READY_TIMEOUTS = {"kafka": 90.0, "clickhouse": 60.0}
DEFAULT_READY_TIMEOUT = 30.0
ServiceKind = Literal["kafka", "clickhouse", "python", "prometheus", "zookeeper"]


@dataclass(frozen=True)
class Service:
    """One process the runner manages: how to start it and how to tell it is healthy."""

    name: str
    kind: ServiceKind
    argv: tuple[str, ...]
    port: int  # the port its health check uses
    health: str  # what the health check asks, for messages
    marker: str  # found in /proc/<pid>/cmdline of the real process (guards against pid reuse)
    ready_timeout: float
    pid_file: Path
    logs: tuple[Path, ...]  # logs[0] receives stdout and stderr
    other_ports: tuple[int, ...] = ()  # further ports it listens on
    env_defaults: tuple[tuple[str, str], ...] = ()  # applied unless the environment sets them
    env_forced: tuple[tuple[str, str], ...] = ()  # always applied

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


def core_services(s: Settings) -> list[str]:
    """CORE_SERVICES with Kafka and ClickHouse as the layout has them (dev_runner.cluster)."""
    return [*cluster.infra_services(s), *CORE_SERVICES[2:]]


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
        *(secure.kafka_jvm_options(s) if secure.enabled(s) else ()),
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
        *(secure.format_args(s) if secure.enabled(s) else ()),
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


def _cluster_node(name: str, s: Settings, pid_file: Path, log: Path) -> Service | None:
    """kafka-N, clickhouse-N and zookeeper of the cluster mode; None for other names."""
    node = cluster.node_index(name)
    if name == "zookeeper":
        return Service(
            name=name, kind="zookeeper", argv=cluster.zookeeper_argv(s), port=s.zookeeper_port,
            health=f"srvr at {s.host}:{s.zookeeper_port}",
            marker=str(cluster.zookeeper_config(s)),
            ready_timeout=DEFAULT_READY_TIMEOUT * s.timeout_scale, pid_file=pid_file,
            logs=(log,))
    if node is None:
        return None
    kind, index = node
    if kind == "kafka":
        port, controller = cluster.kafka_ports(s, index)
        return Service(
            name=name, kind="kafka", argv=cluster.kafka_argv(s, index), port=port,
            other_ports=(controller,), health=f"kafka metadata at {s.host}:{port}",
            marker=str(cluster.kafka_properties(s, index)),
            ready_timeout=READY_TIMEOUTS["kafka"] * s.timeout_scale, pid_file=pid_file,
            logs=(log, s.log_dir / name / "kafka-server.log"))
    tcp, http, interserver = cluster.clickhouse_ports(s, index)
    logs = cluster.clickhouse_log_dir(s, index)
    return Service(
        name=name, kind="clickhouse",
        argv=(s.clickhouse_bin, f"--config-file={cluster.clickhouse_config(s, index)}"),
        port=http, other_ports=(tcp, interserver), health=f"http://{s.host}:{http}/ping",
        marker=str(cluster.clickhouse_config(s, index)),
        ready_timeout=READY_TIMEOUTS["clickhouse"] * s.timeout_scale, pid_file=pid_file,
        logs=(log, logs / "clickhouse-server.log", logs / "clickhouse-server.err.log"))


def service_spec(name: str, s: Settings) -> Service:
    """The service called `name` (kafka, clickhouse, control-plane, ingest-api, sync-worker-N)."""
    pid_file = s.run_dir / f"{name}.pid"
    log = s.log_dir / f"{name}.log"
    timeout = READY_TIMEOUTS.get(name, DEFAULT_READY_TIMEOUT) * s.timeout_scale
    node = _cluster_node(name, s, pid_file, log)
    if node is not None:
        return node
    if name == "kafka":
        return Service(
            name=name,
            kind="kafka",
            argv=kafka_argv(s),
            port=s.kafka_port,
            other_ports=(s.kafka_controller_port,
                         *((s.kafka_mtls_port, s.kafka_sasl_plaintext_port)
                           if secure.enabled(s) else ())),
            health=f"kafka metadata at {s.kafka_bootstrap}",
            marker="kafka.Kafka",
            ready_timeout=timeout,
            pid_file=pid_file,
            logs=(log, s.log_dir / "kafka-server.log"),
        )
    if name == "clickhouse":
        return Service(
            name=name,
            kind="clickhouse",
            argv=clickhouse_argv(s),
            port=s.clickhouse_http_port,
            other_ports=(s.clickhouse_port,
                         *((s.clickhouse_secure_port,) if secure.enabled(s) else ())),
            health=f"http://{s.host}:{s.clickhouse_http_port}/ping",
            marker="clickhouse-server",
            ready_timeout=timeout,
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
            health=f"http://{s.host}:{s.prometheus_port}/-/ready",
            marker=f"--storage.tsdb.path={s.prometheus_data}",
            ready_timeout=timeout,
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
                f"{', '.join((*CORE_SERVICES, *OPTIONAL_SERVICES))} and {WORKER_PREFIX}N (N >= 1); "
                "in cluster mode kafka-N, zookeeper and clickhouse-N"
            )
        module, args, port = "sync_worker", (), s.sync_port_base + index
        forced = (("CHUTE_SYNC_PORT", str(port)), ("CHUTE_SYNC_WORKER_ID", name))
    return Service(
        name=name,
        kind="python",
        argv=(str(s.python), "-m", module, *args),
        port=port,
        health=f"http://{s.host}:{port}/health",
        marker=f"-m {module}",
        ready_timeout=timeout,
        env_defaults=python_service_env(s),
        # Secure mode's connection settings win over the caller's plaintext ones.
        env_forced=(*forced, *cluster.service_env(s),
                    *(secure.service_env(s) if secure.enabled(s) else ()),
                    ("PYTHONUNBUFFERED", "1")),
        pid_file=pid_file,
        logs=(log,),
    )


def build_env(service: Service, base: Mapping[str, str]) -> dict[str, str]:
    """The environment a service runs with: defaults < the caller's environment < forced."""
    return {**dict(service.env_defaults), **base, **dict(service.env_forced)}

