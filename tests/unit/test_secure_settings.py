"""Connection and secret settings: _FILE secrets, no secret in any error, the one table of
Kafka client keys as each backend spells it, ClickHouse TLS arguments, refusal messages."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest
from chute.clickhouse import tls_options
from chute.handshake import network_problem
from chute.kafka import preflight
from chute.kafka.client_config import backend_config
from chute.kafka.security import KafkaSecurity
from chute.settings import CommonSettings, load_settings
from pydantic import ValidationError

PASSWORD = "s3cr3t-Pa55word-value"
SASL = {"CHUTE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CHUTE_KAFKA_SASL_USERNAME": "alice"}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    import os

    for key in list(os.environ):
        if key.startswith("CHUTE_"):
            monkeypatch.delenv(key)
    return monkeypatch


def test_secret_from_file_drops_one_trailing_newline(clean_env: pytest.MonkeyPatch,
                                                     tmp_path: Path) -> None:
    (tmp_path / "pw").write_text(PASSWORD + "\n")
    for key, value in SASL.items():
        clean_env.setenv(key, value)
    clean_env.setenv("CHUTE_KAFKA_SASL_PASSWORD_FILE", str(tmp_path / "pw"))
    clean_env.setenv("CHUTE_CLICKHOUSE_PASSWORD_FILE", str(tmp_path / "pw"))
    settings = CommonSettings()
    assert settings.kafka_sasl_password == PASSWORD
    assert settings.clickhouse_password == PASSWORD
    assert PASSWORD not in repr(settings)
    assert PASSWORD not in repr(settings.kafka_security())


def test_variable_and_its_file_together_are_refused(clean_env: pytest.MonkeyPatch,
                                                    tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "pw").write_text(PASSWORD)
    clean_env.setenv("CHUTE_CLICKHOUSE_PASSWORD", PASSWORD)
    clean_env.setenv("CHUTE_CLICKHOUSE_PASSWORD_FILE", str(tmp_path / "pw"))
    with pytest.raises(SystemExit):
        load_settings(CommonSettings)
    err = capsys.readouterr().err
    assert "CHUTE_CLICKHOUSE_PASSWORD and CHUTE_CLICKHOUSE_PASSWORD_FILE" in err
    assert PASSWORD not in err


def test_unreadable_secret_file_names_the_variable(clean_env: pytest.MonkeyPatch,
                                                   tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    clean_env.setenv("CHUTE_CLICKHOUSE_PASSWORD_FILE", str(tmp_path / "missing"))
    with pytest.raises(SystemExit):
        load_settings(CommonSettings)
    assert "CHUTE_CLICKHOUSE_PASSWORD_FILE=" in capsys.readouterr().err


@pytest.mark.parametrize("bad", [
    {"CHUTE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "CHUTE_KAFKA_SASL_USERNAME": ""},
    {"CHUTE_KAFKA_SECURITY_PROTOCOL": "TLS"},
    {"CHUTE_KAFKA_SASL_MECHANISM": "GSSAPI"},
    {"CHUTE_CLICKHOUSE_PORT": "nine"},
    {"CHUTE_KAFKA_SSL_CERT_FILE": "/c.pem"},
])
def test_a_validation_error_never_contains_a_password(clean_env: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str],
                                                      bad: dict[str, str]) -> None:
    clean_env.setenv("CHUTE_KAFKA_SASL_PASSWORD", PASSWORD)
    clean_env.setenv("CHUTE_CLICKHOUSE_PASSWORD", PASSWORD)
    for key, value in bad.items():
        clean_env.setenv(key, value)
    with pytest.raises(ValidationError) as caught:
        CommonSettings()
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in repr(caught.value)
    with pytest.raises(SystemExit):
        load_settings(CommonSettings)
    err = capsys.readouterr().err
    assert "invalid configuration" in err
    assert PASSWORD not in err


SECURITY = KafkaSecurity(protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-256",
                         sasl_username="alice", sasl_password=PASSWORD, ca_file="/ca.pem",
                         cert_file="/c.pem", key_file="/c.key")


def test_backends_spell_the_same_settings() -> None:
    neutral = {"bootstrap": "b:9093", "client_id": "x"}
    assert backend_config("confluent-kafka", neutral, SECURITY) == {
        "bootstrap.servers": "b:9093", "client.id": "x", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-256", "sasl.username": "alice", "sasl.password": PASSWORD,
        "ssl.ca.location": "/ca.pem", "ssl.certificate.location": "/c.pem",
        "ssl.key.location": "/c.key", "ssl.endpoint.identification.algorithm": "https"}
    assert backend_config("kafka-python", neutral, SECURITY) == {
        "bootstrap_servers": "b:9093", "client_id": "x", "security_protocol": "SASL_SSL",
        "sasl_mechanism": "SCRAM-SHA-256", "sasl_plain_username": "alice",
        "sasl_plain_password": PASSWORD, "ssl_cafile": "/ca.pem", "ssl_certfile": "/c.pem",
        "ssl_keyfile": "/c.key", "ssl_check_hostname": True}


def test_plaintext_sends_no_tls_or_sasl_keys() -> None:
    assert backend_config("confluent-kafka", {"bootstrap": "b:1"}) == {
        "bootstrap.servers": "b:1", "security.protocol": "PLAINTEXT"}


def test_clickhouse_tls_arguments(clean_env: pytest.MonkeyPatch) -> None:
    assert tls_options(CommonSettings()) == {}
    clean_env.setenv("CHUTE_CLICKHOUSE_SECURE", "true")
    clean_env.setenv("CHUTE_CLICKHOUSE_CA_FILE", "/ca.pem")
    assert tls_options(CommonSettings()) == {"secure": True, "verify": True,
                                             "ca_certs": "/ca.pem"}


def test_clickhouse_refusals_name_the_setting() -> None:
    where = "ClickHouse at h:9440"
    untrusted = network_problem("Code: 210. [SSL: CERTIFICATE_VERIFY_FAILED] certificate "
                                "verify failed: self-signed certificate (h:9440)", where, True)
    assert untrusted is not None and "CHUTE_CLICKHOUSE_CA_FILE" in untrusted
    plain = network_problem("Code: 210. [SSL: WRONG_VERSION_NUMBER] wrong version number",
                            where, True)
    assert plain is not None and "CHUTE_CLICKHOUSE_SECURE" in plain
    assert network_problem("Code: 210. Connection refused (h:9440)", where, True) is None


def test_sasl_handshake_answer_is_parsed() -> None:
    body = struct.pack(">hi", 33, 2) + b"\x00\x05PLAIN" + b"\x00\x0dSCRAM-SHA-512"
    assert preflight.parse_sasl_handshake(body) == (33, ["PLAIN", "SCRAM-SHA-512"])
    request = preflight.request(17, 1, b"\x00\x05PLAIN")
    assert struct.unpack(">i", request[:4])[0] == len(request) - 4
