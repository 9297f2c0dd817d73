"""The native runner's settings and rendered configuration: every port and path moves with the
environment, and nothing in the templates listens anywhere else."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from dev_runner import PORTS, RunnerError, Settings
from dev_runner.configs import render_clickhouse_config, render_kafka_properties
from dev_runner.services import service_names, service_spec

MOVED = {var: str(20_000 + i) for i, (var, _default) in enumerate(PORTS.values())}


def settings(tmp_path: Path, **env: str) -> Settings:
    return Settings.from_env({"CHUTE_STATE": str(tmp_path / "state"), **env})


def test_every_port_variable_moves_its_port(tmp_path: Path) -> None:
    s = settings(tmp_path, **MOVED)
    for name, (var, _default) in PORTS.items():
        assert getattr(s, name) == int(MOVED[var]), var


def test_defaults_are_the_documented_ones(tmp_path: Path) -> None:
    s = settings(tmp_path)
    assert (s.kafka_port, s.clickhouse_port, s.ingest_port, s.sync_port_base) == (
        9092, 9000, 4000, 4100)


def test_a_bad_port_is_refused_with_its_variable(tmp_path: Path) -> None:
    with pytest.raises(RunnerError, match="CHUTE_INGEST_PORT"):
        settings(tmp_path, CHUTE_INGEST_PORT="70000")


def test_worker_n_listens_on_base_plus_n(tmp_path: Path) -> None:
    s = settings(tmp_path, CHUTE_SYNC_PORT_BASE="30000")
    assert service_spec("sync-worker-3", s).port == 30003
    assert dict(service_spec("sync-worker-3", s).env_forced)["CHUTE_SYNC_PORT"] == "30003"


def test_every_service_listens_only_on_ports_from_the_settings(tmp_path: Path) -> None:
    s = settings(tmp_path, **MOVED)
    moved = {int(p) for p in MOVED.values()} | {s.sync_port_base + i for i in range(1, 3)}
    for name in [*service_names(2), "prometheus"]:
        assert set(service_spec(name, s).ports) <= moved, name


ROOT = Path(__file__).resolve().parents[2]


def _listening_ports_in(text: str) -> set[str]:
    """Numbers in the port settings of a rendered configuration (XML *_port elements,
    listeners and quorum addresses of Kafka's properties)."""
    ports = set(re.findall(r"<[a-z_]*port>\s*([0-9]+)\s*<", text))
    for key in ("listeners", "advertised.listeners", "controller.quorum.bootstrap.servers"):
        for line in text.splitlines():
            if line.startswith(key + "="):
                ports |= set(re.findall(r":([0-9]+)", line))
    return ports


def test_rendered_clickhouse_config_listens_only_on_the_two_set_ports(tmp_path: Path) -> None:
    s = settings(tmp_path, **MOVED)
    template = (ROOT / "scripts/infra/clickhouse/config.xml.tmpl").read_text()
    text = render_clickhouse_config(template, s)
    assert _listening_ports_in(text) == {str(s.clickhouse_port), str(s.clickhouse_http_port)}
    # Ports ClickHouse opens when the element is present: none of them may be.
    for element in ("interserver_http_port", "https_port", "tcp_port_secure", "mysql_port",
                    "postgresql_port", "grpc_port", "prometheus"):
        assert f"<{element}>" not in text, element
    assert str(s.state) in text and "/var/lib/clickhouse" not in text


def test_rendered_kafka_properties_use_the_set_ports_and_state(tmp_path: Path) -> None:
    s = settings(tmp_path, **MOVED)
    template = (ROOT / "scripts/infra/kafka/server.properties.tmpl").read_text()
    text = render_kafka_properties(template, s)
    assert _listening_ports_in(text) == {str(s.kafka_port), str(s.kafka_controller_port)}
    assert f"log.dirs={s.kafka_log_dirs}" in text
