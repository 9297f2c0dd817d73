"""Where the native runner's servers and services live and which ports they use: every port
and path is defined here once, read from the environment (CHUTE_*), so tests can move them."""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

# Each port setting: (environment variable, default). The services read the same variables
# (CHUTE_CLICKHOUSE_PORT, CHUTE_CONTROL_PORT, CHUTE_INGEST_PORT); sync worker N listens on
# CHUTE_SYNC_PORT_BASE + N.
PORTS: dict[str, tuple[str, int]] = {
    "kafka_port": ("CHUTE_KAFKA_PORT", 9092),
    "kafka_controller_port": ("CHUTE_KAFKA_CONTROLLER_PORT", 9093),
    "clickhouse_port": ("CHUTE_CLICKHOUSE_PORT", 9000),
    "clickhouse_http_port": ("CHUTE_CLICKHOUSE_HTTP_PORT", 8123),
    "clickhouse_secure_port": ("CHUTE_CLICKHOUSE_SECURE_PORT", 9440),  # secure mode only
    # Secure mode only: Kafka's listener for TLS with a required client certificate (no SASL).
    "kafka_mtls_port": ("CHUTE_KAFKA_MTLS_PORT", 9096),
    # Secure mode only: Kafka's SASL_PLAINTEXT listener (PLAIN and SCRAM-SHA-256, no TLS).
    "kafka_sasl_plaintext_port": ("CHUTE_KAFKA_SASL_PLAINTEXT_PORT", 9097),
    "control_port": ("CHUTE_CONTROL_PORT", 4200),
    "ingest_port": ("CHUTE_INGEST_PORT", 4000),
    "sync_port_base": ("CHUTE_SYNC_PORT_BASE", 4100),
    "prometheus_port": ("CHUTE_PROMETHEUS_PORT", 9090),
    # Cluster mode (dev_runner.cluster): ClickHouse replication and ZooKeeper.
    "clickhouse_interserver_port": ("CHUTE_CLICKHOUSE_INTERSERVER_PORT", 9009),
    "zookeeper_port": ("CHUTE_ZOOKEEPER_PORT", 2181),
}


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
    kafka_port: int = PORTS["kafka_port"][1]
    kafka_controller_port: int = PORTS["kafka_controller_port"][1]
    clickhouse_port: int = PORTS["clickhouse_port"][1]
    clickhouse_http_port: int = PORTS["clickhouse_http_port"][1]
    clickhouse_secure_port: int = PORTS["clickhouse_secure_port"][1]
    kafka_mtls_port: int = PORTS["kafka_mtls_port"][1]
    kafka_sasl_plaintext_port: int = PORTS["kafka_sasl_plaintext_port"][1]
    control_port: int = PORTS["control_port"][1]
    ingest_port: int = PORTS["ingest_port"][1]
    sync_port_base: int = PORTS["sync_port_base"][1]
    prometheus_port: int = PORTS["prometheus_port"][1]
    prometheus_scrape_interval: str = "5s"
    kafka_heap: tuple[str, ...] = ("-Xmx512m", "-Xms256m")
    timeout_scale: float = 1.0
    # Cluster mode: the layout `up` recorded (dev_runner.cluster), ports and the brokers' heap.
    kafka_brokers: int = 1
    clickhouse_replicas: int = 1  # per shard
    clickhouse_shards: int = 1
    clickhouse_interserver_port: int = PORTS["clickhouse_interserver_port"][1]
    zookeeper_port: int = PORTS["zookeeper_port"][1]
    cluster_kafka_heap: tuple[str, ...] = ("-Xmx256m", "-Xms64m")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Reads CHUTE_ROOT, CHUTE_STATE, CHUTE_VENV, KAFKA_HOME/KAFKA_VERSION, the port
        variables of PORTS, CHUTE_PROMETHEUS_BIN, CHUTE_PROMETHEUS_SCRAPE_INTERVAL,
        CHUTE_KAFKA_HEAP_OPTS, CHUTE_CLUSTER_KAFKA_HEAP_OPTS and CHUTE_DEV_TIMEOUT_SCALE."""
        env = os.environ if env is None else env
        root = Path(env.get("CHUTE_ROOT") or ROOT).resolve()
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
            kafka_port=_env_port(env, *PORTS["kafka_port"]),
            kafka_controller_port=_env_port(env, *PORTS["kafka_controller_port"]),
            clickhouse_port=_env_port(env, *PORTS["clickhouse_port"]),
            clickhouse_http_port=_env_port(env, *PORTS["clickhouse_http_port"]),
            clickhouse_secure_port=_env_port(env, *PORTS["clickhouse_secure_port"]),
            kafka_mtls_port=_env_port(env, *PORTS["kafka_mtls_port"]),
            kafka_sasl_plaintext_port=_env_port(env, *PORTS["kafka_sasl_plaintext_port"]),
            control_port=_env_port(env, *PORTS["control_port"]),
            ingest_port=_env_port(env, *PORTS["ingest_port"]),
            sync_port_base=_env_port(env, *PORTS["sync_port_base"]),
            prometheus_port=_env_port(env, *PORTS["prometheus_port"]),
            prometheus_scrape_interval=env.get("CHUTE_PROMETHEUS_SCRAPE_INTERVAL") or "5s",
            kafka_heap=heap,
            timeout_scale=max(scale, 0.1),
            clickhouse_interserver_port=_env_port(env, *PORTS["clickhouse_interserver_port"]),
            zookeeper_port=_env_port(env, *PORTS["zookeeper_port"]),
            cluster_kafka_heap=tuple(
                (env.get("CHUTE_CLUSTER_KAFKA_HEAP_OPTS") or "-Xmx256m -Xms64m").split()),
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

