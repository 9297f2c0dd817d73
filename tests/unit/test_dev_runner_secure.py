"""Secure mode's configuration files, rendered from the plaintext runner's (pure)."""

from __future__ import annotations

from pathlib import Path

import pytest
from dev_runner import secure
from dev_runner.configs import render_clickhouse_config, render_kafka_properties
from dev_runner.settings import ROOT, RunnerError, Settings


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = Settings.from_env({"CHUTE_STATE": str(tmp_path), "CHUTE_KAFKA_PORT": "19094",
                           "CHUTE_CLICKHOUSE_SECURE_PORT": "19440"})
    folder = secure.files(s).folder
    folder.mkdir(parents=True)
    for name in ("kafka-chute.password", "kafka-broker.password"):
        (folder / name).write_text("pw-" + name + "\n")
    return s


def test_kafka_listeners_are_sasl_ssl_mtls_and_sasl_plaintext(settings: Settings) -> None:
    template = (ROOT / "scripts/infra/kafka/server.properties.tmpl").read_text()
    text = secure.kafka_properties(render_kafka_properties(template, settings), settings)
    props = dict(line.split("=", 1) for line in text.splitlines()
                 if "=" in line and not line.startswith("#"))
    assert props["listeners"] == (
        f"SASL_SSL://127.0.0.1:19094,MTLS://127.0.0.1:{settings.kafka_mtls_port},"
        f"SASL_PLAINTEXT://127.0.0.1:{settings.kafka_sasl_plaintext_port},"
        f"CONTROLLER://127.0.0.1:{settings.kafka_controller_port}")
    assert props["advertised.listeners"] == props["listeners"]
    assert "PLAINTEXT" not in [item.split("://")[0] for item in props["listeners"].split(",")]
    assert props["listener.security.protocol.map"].split(",")[-2:] == [
        "MTLS:SSL", "SASL_PLAINTEXT:SASL_PLAINTEXT"]
    assert props["listener.name.mtls.ssl.client.auth"] == "required"
    assert props["listener.name.sasl_plaintext.sasl.enabled.mechanisms"] == (
        "PLAIN,SCRAM-SHA-256")
    assert 'user_chute="pw-kafka-chute.password"' in props[
        "listener.name.sasl_plaintext.plain.sasl.jaas.config"]
    assert props["sasl.enabled.mechanisms"] == "SCRAM-SHA-512,OAUTHBEARER"
    # OAuth tokens are checked against the JWKS, signature included (not 4.1's default).
    assert props["sasl.oauthbearer.jwt.validator.class"].endswith(".BrokerJwtValidator")
    assert props["sasl.oauthbearer.jwks.endpoint.url"].startswith("file:///")
    assert props["ssl.keystore.type"] == "PEM"
    assert 'password="pw-kafka-broker.password"' in props[
        "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config"]


def test_clickhouse_gets_a_tls_native_port(settings: Settings) -> None:
    template = (ROOT / "scripts/infra/clickhouse/config.xml.tmpl").read_text()
    text = secure.clickhouse_config(render_clickhouse_config(template, settings), settings)
    assert "<tcp_port_secure>19440</tcp_port_secure>" in text
    assert text.rstrip().endswith("</yandex>")
    assert "--" not in text.split("<openSSL>")[0].rsplit("<!--", 1)[1].split("-->")[0]


def test_services_get_the_password_by_file_only(settings: Settings) -> None:
    env = dict(secure.service_env(settings))
    assert env["CHUTE_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
    assert env["CHUTE_CLICKHOUSE_PORT"] == "19440"
    assert "CHUTE_KAFKA_SASL_PASSWORD" not in env
    assert all("pw-" not in value for value in env.values())


def test_a_plaintext_kafka_data_folder_is_refused(settings: Settings) -> None:
    settings.kafka_log_dirs.mkdir(parents=True)
    (settings.kafka_log_dirs / "meta.properties").write_text("cluster.id=x\n")
    with pytest.raises(RunnerError, match="formatted without SCRAM users"):
        secure.enable(settings)
