"""compose.cluster.yaml, checked without a Docker engine: valid Compose on its own and layered
over compose.yaml, and in step with the native cluster mode (`scripts/dev up --kafka-brokers 3
--clickhouse-replicas 2`): as many brokers and replicas, the same replication, the same cluster
name, and chute's services told the same things with container addresses."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, cast

import jsonschema
import pytest
import yaml
from dev_runner import Settings, cluster

REPO = Path(__file__).resolve().parents[2]
SCHEMA_FILE = REPO / "tests" / "vendor" / "compose-spec" / "compose-spec.json"
BROKERS, REPLICAS = 3, 2
KAFKA_SERVICES = ["kafka", "kafka-2", "kafka-3"]
CLICKHOUSE_SERVICES = ["clickhouse", "clickhouse-2"]
CHUTE_SERVICES = ["control-plane", "ingest-api", "sync-worker"]


def load(name: str) -> dict[str, Any]:
    return cast(dict[str, Any], yaml.safe_load((REPO / name).read_text()))


def merged() -> dict[str, Any]:
    """compose.yaml with compose.cluster.yaml layered over it, as `docker compose -f compose.yaml
    -f compose.cluster.yaml` merges them: mappings key by key, lists (ports, volumes) added."""
    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            out = dict(base)
            for key, value in over.items():
                out[key] = merge(base[key], value) if key in base else value
            return out
        if isinstance(base, list) and isinstance(over, list):
            return [*base, *(item for item in over if item not in base)]
        return over
    return cast(dict[str, Any], merge(load("compose.yaml"), load("compose.cluster.yaml")))


def native(tmp_path: Path) -> Settings:
    return cluster.write_layout(Settings.from_env({"CHUTE_STATE": str(tmp_path)}), BROKERS,
                                REPLICAS)


@pytest.mark.parametrize("document", ["alone", "layered"])
def test_the_cluster_file_matches_the_compose_spec_schema(document: str) -> None:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text()))
    data = load("compose.cluster.yaml") if document == "alone" else merged()
    errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(data)]
    assert not errors, errors


def test_as_many_brokers_and_replicas_as_the_native_cluster_mode(tmp_path: Path) -> None:
    services = merged()["services"]
    s = native(tmp_path)
    assert [n for n in services if re.fullmatch(r"kafka(-\d)?", n)] == KAFKA_SERVICES
    assert len(KAFKA_SERVICES) == len(cluster.kafka_nodes(s))
    assert [n for n in services if re.fullmatch(r"clickhouse(-\d)?", n)] == CLICKHOUSE_SERVICES
    assert len(CLICKHOUSE_SERVICES) == len(cluster.clickhouse_nodes(s)) - 1  # minus ZooKeeper


def test_every_broker_votes_and_replicates_like_the_native_nodes(tmp_path: Path) -> None:
    services = merged()["services"]
    template = (REPO / "scripts/infra/kafka/cluster.properties.tmpl").read_text()
    props = dict(line.split("=", 1) for line in cluster.render_kafka_node(
        template, native(tmp_path), 1).splitlines() if "=" in line and not line.startswith("#"))
    ids = set()
    for name in KAFKA_SERVICES:
        env = services[name]["environment"]
        ids.add(env["KAFKA_NODE_ID"])
        assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == (
            "1@kafka:9093,2@kafka-2:9093,3@kafka-3:9093")
        for key in ("default.replication.factor", "min.insync.replicas",
                    "offsets.topic.replication.factor", "transaction.state.log.min.isr",
                    "unclean.leader.election.enable"):
            assert env[f"KAFKA_{key.upper().replace('.', '_')}"] == props[key], (name, key)
    assert ids == {"1", "2", "3"}


def test_chute_services_are_told_what_the_native_runner_tells_them(tmp_path: Path) -> None:
    services = merged()["services"]
    told = dict(cluster.service_env(native(tmp_path)))
    for name in CHUTE_SERVICES:
        env = services[name]["environment"]
        assert {k for k in env if k in told} == set(told), name
        assert env["CHUTE_CLICKHOUSE_CLUSTER"] == told["CHUTE_CLICKHOUSE_CLUSTER"]
        assert env["CHUTE_KAFKA_BOOTSTRAP"] == ",".join(f"{k}:9092" for k in KAFKA_SERVICES)
        assert env["CHUTE_CLICKHOUSE_ALT_HOSTS"] == "clickhouse-2:9000"
        assert env["CHUTE_CLICKHOUSE_INSERT_QUORUM"] == told["CHUTE_CLICKHOUSE_INSERT_QUORUM"] \
            == str(len(CLICKHOUSE_SERVICES))


def test_both_replicas_load_the_cluster_config_with_their_own_name() -> None:
    services = merged()["services"]
    text = (REPO / "deploy/clickhouse/cluster.xml").read_text()
    assert f"<{cluster.CLUSTER_NAME}>" in text and "<distributed_ddl>" in text
    names = set()
    for name in CLICKHOUSE_SERVICES:
        service = services[name]
        assert any(v.endswith("/etc/clickhouse-server/config.d/cluster.xml:ro")
                   for v in service["volumes"]), name
        names.add(service["environment"]["CLICKHOUSE_REPLICA"])
        assert service["depends_on"]["clickhouse-keeper"]["condition"] == "service_healthy"
    assert names == {"clickhouse-1", "clickhouse-2"}
    for host in CLICKHOUSE_SERVICES:
        assert f"<host>{host}</host><port>9000</port>" in text


def test_published_ports_bind_localhost_only_and_do_not_collide() -> None:
    ports = [p for s in merged()["services"].values() for p in s.get("ports", [])]
    assert all(str(p).startswith("127.0.0.1:") for p in ports), ports
    host_ports = [str(p).split(":")[1] for p in ports]
    assert len(host_ports) == len(set(host_ports)), host_ports
