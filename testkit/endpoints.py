"""Where Kafka and ClickHouse are, and the environment chute's services are started with: from
the dev runner's settings (CHUTE_KAFKA_PORT, CHUTE_CLICKHOUSE_PORT, CHUTE_STATE...), where an
explicit CHUTE_KAFKA_BOOTSTRAP or CHUTE_CLICKHOUSE_HOST wins, as it does for the services."""

from __future__ import annotations

import ipaddress
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from dev_runner.settings import ROOT, Settings

PYTHON = sys.executable

__all__ = ["PYTHON", "ROOT", "Endpoints", "is_loopback", "service_env"]


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
    kafka: str
    ch_host: str
    ch_port: int
    state: Path

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Endpoints:
        env = os.environ if env is None else env
        runner = Settings.from_env(env)
        return cls(
            kafka=env.get("CHUTE_KAFKA_BOOTSTRAP") or runner.kafka_bootstrap,
            ch_host=env.get("CHUTE_CLICKHOUSE_HOST") or runner.host,
            ch_port=runner.clickhouse_port,
            state=runner.state,
        )

    @property
    def kafka_hosts(self) -> list[str]:
        return [a.strip().rpartition(":")[0] for a in self.kafka.split(",") if a.strip()]

    @property
    def on_loopback(self) -> bool:
        return all(is_loopback(h) for h in [*self.kafka_hosts, self.ch_host])

    @property
    def clickhouse_error_log(self) -> Path:
        return self.state / "log" / "clickhouse-server.err.log"


def service_env(endpoints: Endpoints, schemas: str, **extra: str) -> dict[str, str]:
    """The environment of a chute service started by a test or the bench: this process's, with
    the servers' addresses, the given definitions and JSON logs (which tests read)."""
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
