"""The cluster fault tests' servers: three KRaft brokers, ZooKeeper and two ClickHouse replicas
of the native runner's cluster mode (`scripts/dev up --kafka-brokers 3 --clickhouse-replicas
2`), started for the session when they are not running and stopped again afterwards.

They run only under `scripts/test --cluster` (CHUTE_TEST_CLUSTER=1, with CHUTE_KAFKA_BOOTSTRAP
naming every broker): the main pass skips them."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dev_runner
import pytest
from dev_runner import cluster

from tests.e2e.stack import Stack, Stacks
from tests.faults.accounting import SUMMARY, format_summary
from tests.support import wait_for

BROKERS = 3
REPLICAS = 2


def pytest_collection_modifyitems(config: Any, items: list[Any]) -> None:
    if os.environ.get("CHUTE_TEST_CLUSTER") == "1":
        return
    skip = pytest.mark.skip(reason="cluster fault tests run under scripts/test --cluster")
    for item in items:
        if "tests/cluster/" in str(item.fspath):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    rows = [r for r in SUMMARY if r.scenario.startswith("C")]
    if rows:
        terminalreporter.write_sep("=", "cluster fault scenarios: acknowledged / lost / duplicated")
        terminalreporter.write_line(format_summary(rows))


def cluster_settings() -> dev_runner.Settings:
    return cluster.write_layout(dev_runner.Settings.from_env(), BROKERS, REPLICAS)


def _wait_healthy(name: str, s: dev_runner.Settings) -> None:
    wait_for(lambda: dev_runner.is_healthy(name, s), 120, f"{name} healthy", interval=0.5)


def start_missing(s: dev_runner.Settings, *tiers: list[str]) -> list[str]:
    """Starts the services of each tier that are not healthy, all of a tier together, and
    waits until they are before the next tier; returns those it started, in order."""
    started: list[str] = []
    for tier in tiers:
        launched = [n for n in tier if not dev_runner.is_healthy(n, s)]
        for name in launched:
            dev_runner.start_service(name, s, wait=False)
        for name in launched:
            _wait_healthy(name, s)
        started += launched
    return started


@pytest.fixture(scope="session")
def servers() -> Iterator[None]:
    """Every node of the cluster running and healthy; the nodes this session started are
    stopped at its end and the layout recorded before it is recorded again."""
    before = cluster.with_recorded_layout(dev_runner.Settings.from_env())
    s = cluster_settings()
    # ZooKeeper first; the brokers together (a KRaft node alone has no quorum to join).
    started = start_missing(s, ["zookeeper"],
                            [n for n in cluster.infra_services(s) if n != "zookeeper"])
    yield
    if started == cluster.infra_services(s):
        dev_runner.down(s)  # the brokers together: the last one alone cannot leave its quorum
    else:
        for name in reversed(started):
            dev_runner.stop_service(name, settings=s)
    cluster.write_layout(s, before.kafka_brokers, before.clickhouse_replicas)


@pytest.fixture(scope="session")
def cluster_env(servers: None) -> dict[str, str]:
    """What chute's services are told on this cluster (as `scripts/dev up` tells them)."""
    return dict(cluster.service_env(cluster_settings()))


@pytest.fixture
def replicas(servers: None) -> Iterator[list[Any]]:
    """A client on each ClickHouse replica, clickhouse-1 first."""
    from clickhouse_driver import Client

    s = cluster_settings()
    clients = [Client(host=s.host, port=cluster.clickhouse_ports(s, i)[0])
               for i in range(1, REPLICAS + 1)]
    yield clients
    for client in clients:
        client.disconnect()


@dataclass
class ClusterStack(Stack):
    """A Stack whose services and apply run against the cluster."""

    cluster_env: dict[str, str] = field(default_factory=dict)

    def env(self, **extra: str) -> dict[str, str]:
        return super().env(**{**self.cluster_env, **extra})


@pytest.fixture
def make_cluster_stack(replicas: list[Any], cluster_env: dict[str, str], unique_name: str,
                       tmp_path: Path) -> Iterator[Callable[..., ClusterStack]]:
    stacks = Stacks(tmp_path, unique_name)

    def make(stream: dict[str, Any], **env: str) -> ClusterStack:
        name, schema_dir = stacks.next_place()
        return stacks.add(ClusterStack(name, schema_dir, tmp_path, replicas[0], stream,
                                       cluster_env={**cluster_env, **env}))

    yield make
    stacks.stop_all()
