"""chute over SASL_SSL Kafka and TLS ClickHouse (real listeners, certificates made by the
runner), and the one-line fast exits when a server refuses the settings."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import uuid
from pathlib import Path

import httpx
import pytest
from chute import kafka
from chute.kafka import KafkaSecurity, ProducerOptions
from clickhouse_driver import Client
from dev_runner import secure
from dev_runner.settings import Settings

from testkit.reading import read_topic
from tests.secure import identity_provider
from tests.support import PYTHON, ROOT, wait_for


def secure_clickhouse(s: Settings) -> Client:
    return Client(s.host, port=s.clickhouse_secure_port, secure=True,
                  ca_certs=str(secure.files(s).ca_cert))


def test_ingest_sync_table_over_sasl_ssl_and_tls(secure_stack: Settings) -> None:
    marker = f"secure-{uuid.uuid4().hex[:8]}"
    records = [{"id": f"{marker}-{i}", "user_id": "u", "timestamp": "2024-05-01T12:00:00Z",
                "event_type": marker} for i in range(50)]
    answer = httpx.post(f"http://{secure_stack.host}:{secure_stack.ingest_port}/ingest/events",
                        json=records, timeout=30)
    assert answer.status_code == 200, answer.text
    ch = secure_clickhouse(secure_stack)
    try:
        def stored() -> list[tuple[str]]:
            rows: list[tuple[str]] = ch.execute(
                "SELECT id FROM events WHERE event_type = %(m)s ORDER BY id", {"m": marker})
            return rows if len(rows) >= len(records) else []

        rows = wait_for(stored, timeout=60, what="records in ClickHouse over TLS")
    finally:
        ch.disconnect()
    assert sorted(r[0] for r in rows) == sorted(r["id"] for r in records)


@pytest.mark.parametrize("client", kafka.CLIENTS)
def test_both_backends_produce_and_consume_over_sasl_ssl(secure_stack: Settings,
                                                         security: KafkaSecurity,
                                                         client: str) -> None:
    round_trip(secure_stack.kafka_bootstrap, client, security)


def round_trip(bootstrap: str, client: str, security: KafkaSecurity,
               native: bool = False) -> None:
    """A topic created, two records produced and consumed back, the topic deleted: every
    kind of client of the seam authenticates with `security` (`native`: the producer is
    the ingest API's, chute.kafka.native)."""
    topic = f"secure_{uuid.uuid4().hex[:8]}"
    admin = kafka.admin(bootstrap, client=client, security=security)
    try:
        assert admin.create_topic(kafka.TopicConfig(topic, 1, {}))
        producer = kafka.producer(bootstrap, ProducerOptions(linger_ms=0), client=client,
                                  security=security, native=native)
        if native:
            from chute.kafka.native.producer import NativeProducer
            assert isinstance(producer, NativeProducer)
        producer.deliver(topic, [b"one", b"two"], timeout=30)
        producer.close(5)
        ends = admin.end_offsets([kafka.TopicPartition(topic, 0)])
        assert ends[kafka.TopicPartition(topic, 0)] == 2
        got = read_topic(bootstrap, topic, 2, client=client, security=security)
        assert [record.value for record in got] == [b"one", b"two"]
    finally:
        admin.delete_topic(topic)
        admin.close()


REFUSAL_BOUND_SECONDS = 20.0


def run_chute(env: dict[str, str], *args: str) -> tuple[int, str, float]:
    started = time.monotonic()
    done = subprocess.run([str(PYTHON), "-m", "control_plane", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    elapsed = time.monotonic() - started
    print(f"chute {' '.join(args)}: exit {done.returncode} after {elapsed:.2f} s: "
          f"{done.stderr.strip()}")
    # A refusal ends the command at once, not after the clients' own timeouts (30-60 s);
    # the bound is loose because the machine may be loaded (7 s seen).
    assert elapsed < REFUSAL_BOUND_SECONDS, f"took {elapsed:.1f} s"
    return done.returncode, done.stderr, elapsed


def other_ca(tmp_path: Path) -> Path:
    ca = tmp_path / "other-ca.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout",
                    str(tmp_path / "other-ca.key"), "-out", str(ca), "-days", "2",
                    "-subj", "/CN=not the chute CA"], check=True, capture_output=True)
    return ca


def refused_line(stderr: str) -> str:
    """The last line: a refusal must be one line, the last thing printed."""
    lines = [line for line in stderr.strip().splitlines() if line.strip()]
    assert lines, "nothing printed"
    return lines[-1]


@pytest.mark.parametrize("client", kafka.CLIENTS)
def test_wrong_password_ends_chute_plan_with_one_line(secure_env: dict[str, str],
                                                      tmp_path: Path, client: str) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("not-the-password-7731\n")
    env = {**secure_env, "CHUTE_KAFKA_SASL_PASSWORD_FILE": str(wrong),
           "CHUTE_KAFKA_CLIENT": client}
    code, stderr, _ = run_chute(env, "plan")
    assert code != 0
    line = refused_line(stderr)
    assert "CHUTE_KAFKA_SASL_PASSWORD" in line and "authentication" in line
    assert "not-the-password-7731" not in stderr


def test_wrong_mechanism_is_named(secure_env: dict[str, str]) -> None:
    code, stderr, _ = run_chute({**secure_env, "CHUTE_KAFKA_SASL_MECHANISM": "SCRAM-SHA-256"},
                                "status")
    assert code != 0
    assert "CHUTE_KAFKA_SASL_MECHANISM" in refused_line(stderr)


def test_untrusted_ca_is_named_for_kafka_and_clickhouse(secure_env: dict[str, str],
                                                        tmp_path: Path) -> None:
    ca = str(other_ca(tmp_path))
    code, stderr, _ = run_chute({**secure_env, "CHUTE_KAFKA_SSL_CA_FILE": ca}, "plan")
    assert code != 0 and "CHUTE_KAFKA_SSL_CA_FILE" in refused_line(stderr)
    code, stderr, _ = run_chute({**secure_env, "CHUTE_CLICKHOUSE_CA_FILE": ca}, "apply")
    assert code != 0 and "CHUTE_CLICKHOUSE_CA_FILE" in refused_line(stderr)


def test_plaintext_clients_are_refused(secure_stack: Settings, secure_env: dict[str, str],
                                       security: KafkaSecurity) -> None:
    code, stderr, _ = run_chute({**secure_env, "CHUTE_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT"},
                                "plan")
    assert code != 0 and "CHUTE_KAFKA_SECURITY_PROTOCOL" in refused_line(stderr)
    code, stderr, _ = run_chute({**secure_env, "CHUTE_CLICKHOUSE_SECURE": "false"}, "plan")
    assert code != 0 and "CHUTE_CLICKHOUSE_SECURE" in refused_line(stderr)
    # The broker itself refuses them: a plaintext client gets no metadata.
    plain = kafka.admin(secure_stack.kafka_bootstrap, timeout=3.0,
                        security=dataclasses.replace(security, protocol="PLAINTEXT"))
    try:
        with pytest.raises(kafka.KafkaClientError):
            plain.topic_partitions()
    finally:
        plain.close()


def test_clickhouse_refusals_name_their_settings(secure_stack: Settings,
                                                 secure_env: dict[str, str]) -> None:
    """A wrong ClickHouse password, and TLS spoken to the plaintext native port."""
    code, stderr, _ = run_chute({**secure_env, "CHUTE_CLICKHOUSE_PASSWORD": "no-such-4410"},
                                   "plan")
    assert code != 0
    line = refused_line(stderr)
    assert "login refused" in line and "CHUTE_CLICKHOUSE_PASSWORD" in line
    assert "no-such-4410" not in stderr
    code, stderr, _ = run_chute(
        {**secure_env, "CHUTE_CLICKHOUSE_PORT": str(secure_stack.clickhouse_port)}, "status")
    assert code != 0
    line = refused_line(stderr)
    assert "does not speak TLS" in line and "CHUTE_CLICKHOUSE_PORT" in line


def test_sync_worker_with_a_wrong_password_exits_at_once(secure_env: dict[str, str],
                                                         tmp_path: Path) -> None:
    wrong = tmp_path / "wrong"
    wrong.write_text("wrong-again-5512")
    env = {**secure_env, "CHUTE_KAFKA_SASL_PASSWORD_FILE": str(wrong),
           "CHUTE_SYNC_PORT": "0", "CHUTE_SYNC_WORKER_ID": "refused"}
    started = time.monotonic()
    done = subprocess.run([str(PYTHON), "-m", "sync_worker"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    print(f"sync-worker: exit {done.returncode} after {time.monotonic() - started:.2f} s: "
          f"{done.stderr.strip()[-300:]}")
    assert done.returncode != 0
    line = refused_line(done.stderr)
    assert line.startswith("sync-worker: Kafka at") and "CHUTE_KAFKA_SASL_PASSWORD" in line
    assert "wrong-again-5512" not in done.stderr + done.stdout
    assert not any("retry" in json.dumps(line).lower() for line in done.stdout.splitlines())


def foreign_client_certificate(tmp_path: Path) -> tuple[str, str]:
    """A client certificate signed by a CA the servers do not know."""
    ca, ca_key = other_ca(tmp_path), tmp_path / "other-ca.key"
    key, csr, cert = tmp_path / "c.key", tmp_path / "c.csr", tmp_path / "c.pem"
    subprocess.run(["openssl", "req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key),
                    "-out", str(csr), "-subj", "/CN=stranger"], check=True, capture_output=True)
    subprocess.run(["openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey",
                    str(ca_key), "-CAcreateserial", "-out", str(cert), "-days", "2"],
                   check=True, capture_output=True)
    return str(cert), str(key)


@pytest.mark.parametrize("client", kafka.CLIENTS)
def test_kafka_client_certificates(secure_stack: Settings, security: KafkaSecurity,
                                   client: str) -> None:
    """mTLS settings reach both backends (the broker requests a certificate and checks one
    presented against its CA; it does not require one, so no refusal is tested here)."""
    from chute.kafka import preflight

    f = secure.files(secure_stack)
    mtls = dataclasses.replace(security, cert_file=str(f.client_cert),
                               key_file=str(f.client_key))
    preflight.check(secure_stack.kafka_bootstrap, mtls)
    admin = kafka.admin(secure_stack.kafka_bootstrap, client=client, security=mtls)
    try:
        assert "__consumer_offsets" not in admin.topic_partitions()
    finally:
        admin.close()


def test_clickhouse_client_certificates(secure_stack: Settings, secure_env: dict[str, str],
                                        tmp_path: Path) -> None:
    f = secure.files(secure_stack)
    code, stderr, _ = run_chute({**secure_env, "CHUTE_CLICKHOUSE_CERT_FILE": str(f.client_cert),
                                 "CHUTE_CLICKHOUSE_KEY_FILE": str(f.client_key)}, "plan")
    assert code == 0, stderr
    cert, key = foreign_client_certificate(tmp_path)
    code, stderr, _ = run_chute({**secure_env, "CHUTE_CLICKHOUSE_CERT_FILE": cert,
                                 "CHUTE_CLICKHOUSE_KEY_FILE": key}, "plan")
    assert code != 0 and "CHUTE_CLICKHOUSE_CERT_FILE" in refused_line(stderr)


def mtls_bootstrap(s: Settings) -> str:
    return f"{s.host}:{s.kafka_mtls_port}"


def mtls_env(env: dict[str, str], s: Settings, cert: str, key: str) -> dict[str, str]:
    """A chute command's environment for the MTLS listener: TLS and a client certificate,
    no SASL."""
    env = {k: v for k, v in env.items() if not k.startswith("CHUTE_KAFKA_SASL")}
    return {**env, "CHUTE_KAFKA_BOOTSTRAP": mtls_bootstrap(s),
            "CHUTE_KAFKA_SECURITY_PROTOCOL": "SSL", "CHUTE_KAFKA_SSL_CERT_FILE": cert,
            "CHUTE_KAFKA_SSL_KEY_FILE": key}


@pytest.mark.parametrize("client", [*kafka.CLIENTS, "native"])
def test_every_client_over_tls_with_a_required_client_certificate(
        secure_stack: Settings, secure_env: dict[str, str], client: str) -> None:
    """The MTLS listener (security protocol SSL, no SASL) requires a certificate signed by
    its CA: with the runner's client certificate, chute's check passes and every kind of
    client of the seam works, the ingest API's native producer too ("native")."""
    native = client == "native"
    client = "confluent-kafka" if native else client
    f = secure.files(secure_stack)
    security = KafkaSecurity(protocol="SSL", ca_file=str(f.ca_cert),
                             cert_file=str(f.client_cert), key_file=str(f.client_key))
    code, stderr, _ = run_chute({**mtls_env(secure_env, secure_stack, str(f.client_cert),
                                            str(f.client_key)), "CHUTE_KAFKA_CLIENT": client},
                                "plan")
    assert code == 0, stderr
    round_trip(mtls_bootstrap(secure_stack), client, security, native=native)


def test_refused_kafka_client_certificate_is_named(secure_stack: Settings,
                                                   secure_env: dict[str, str],
                                                   tmp_path: Path) -> None:
    """On the MTLS listener, a certificate from a CA the broker does not know, and no
    certificate at all, end a chute command at once with one line naming the settings."""
    cert, key = foreign_client_certificate(tmp_path)
    code, stderr, _ = run_chute(mtls_env(secure_env, secure_stack, cert, key), "plan")
    assert code != 0
    assert "CHUTE_KAFKA_SSL_CERT_FILE" in refused_line(stderr)
    env = {k: v for k, v in mtls_env(secure_env, secure_stack, "", "").items()
           if k not in ("CHUTE_KAFKA_SSL_CERT_FILE", "CHUTE_KAFKA_SSL_KEY_FILE")}
    code, stderr, _ = run_chute(env, "plan")
    assert code != 0
    line = refused_line(stderr)
    assert "requires a client certificate" in line and "CHUTE_KAFKA_SSL_CERT_FILE" in line


@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256"])
@pytest.mark.parametrize("client", [*kafka.CLIENTS, "native"])
def test_every_client_over_sasl_plaintext(secure_stack: Settings, secure_env: dict[str, str],
                                          security: KafkaSecurity, scram_sha_256_user: str,
                                          mechanism: str, client: str) -> None:
    """The SASL_PLAINTEXT listener with PLAIN and with SCRAM-SHA-256: chute's check passes
    and every kind of client works ("native": the ingest API's producer, which takes PLAIN
    on every librdkafka and SCRAM only from 2.6.1 on, falling back to confluent-kafka's
    before); a wrong password is named in one line."""
    native = client == "native"
    client = "confluent-kafka" if native else client
    bootstrap = f"{secure_stack.host}:{secure_stack.kafka_sasl_plaintext_port}"
    plain_side = dataclasses.replace(security, protocol="SASL_PLAINTEXT",
                                     sasl_mechanism=mechanism,  # type: ignore[arg-type]
                                     sasl_username=scram_sha_256_user, ca_file=None)
    env = {k: v for k, v in secure_env.items() if not k.startswith("CHUTE_KAFKA_SSL")}
    env.update({"CHUTE_KAFKA_BOOTSTRAP": bootstrap, "CHUTE_KAFKA_CLIENT": client,
                "CHUTE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
                "CHUTE_KAFKA_SASL_MECHANISM": mechanism})
    code, stderr, _ = run_chute(env, "plan")
    assert code == 0, stderr
    takes_native = mechanism == "PLAIN" or native_producer_takes_scram()
    round_trip(bootstrap, client, plain_side, native=native and takes_native)
    wrong = dataclasses.replace(plain_side, sasl_password="not-it-2209")
    if not native:
        env = {k: v for k, v in env.items() if k != "CHUTE_KAFKA_SASL_PASSWORD_FILE"}
        code, stderr, _ = run_chute({**env, "CHUTE_KAFKA_SASL_PASSWORD": wrong.sasl_password},
                                    "plan")
        assert code != 0
        line = refused_line(stderr)
        assert mechanism in line and "CHUTE_KAFKA_SASL_PASSWORD" in line
        assert wrong.sasl_password not in stderr


def native_producer_takes_scram() -> bool:
    from chute.kafka.native import rdbatch
    from chute.kafka.native.producer import unsupported

    return unsupported({"sasl.mechanism": "SCRAM-SHA-256"},
                       rdbatch.librdkafka_version()) is None


def oauth(security: KafkaSecurity, provider: identity_provider.Provider) -> KafkaSecurity:
    return dataclasses.replace(security, sasl_mechanism="OAUTHBEARER",
                               sasl_username=provider.client_id,
                               sasl_password=provider.client_secret,
                               oauth_token_url=provider.url, oauth_scope="kafka")


def oauth_env(env: dict[str, str], provider: identity_provider.Provider) -> dict[str, str]:
    env = {k: v for k, v in env.items() if not k.startswith("CHUTE_KAFKA_SASL_PASSWORD")}
    return {**env, "CHUTE_KAFKA_SASL_MECHANISM": "OAUTHBEARER",
            "CHUTE_KAFKA_SASL_USERNAME": provider.client_id,
            "CHUTE_KAFKA_SASL_PASSWORD": provider.client_secret,
            "CHUTE_KAFKA_SASL_OAUTHBEARER_TOKEN_URL": provider.url,
            "CHUTE_KAFKA_SASL_OAUTHBEARER_SCOPE": "kafka"}


@pytest.mark.parametrize("client", kafka.CLIENTS)
def test_oauthbearer_produce_consume_and_chute_plan(secure_stack: Settings,
                                                    security: KafkaSecurity,
                                                    secure_env: dict[str, str],
                                                    client: str) -> None:
    """SASL/OAUTHBEARER with the client credentials grant: tokens from the provider, checked
    by the broker against the provider's public key."""
    with identity_provider.running(secure.files(secure_stack)) as provider:
        round_trip(secure_stack.kafka_bootstrap, client, oauth(security, provider))
        assert provider.issued, "no token was fetched: OAUTHBEARER was not used"
        code, stderr, _ = run_chute({**oauth_env(secure_env, provider),
                                     "CHUTE_KAFKA_CLIENT": client}, "plan")
        assert code == 0, stderr


def test_oauthbearer_refusals_name_their_settings(secure_stack: Settings,
                                                  secure_env: dict[str, str],
                                                  tmp_path: Path) -> None:
    files = secure.files(secure_stack)
    with identity_provider.running(files) as provider:
        env = oauth_env(secure_env, provider)
        code, stderr, _ = run_chute({**env, "CHUTE_KAFKA_SASL_PASSWORD": "not-it-3381"}, "plan")
        line = refused_line(stderr)
        assert code != 0 and "no token for client" in line
        assert "CHUTE_KAFKA_SASL_PASSWORD" in line and "not-it-3381" not in stderr
    # The provider is gone: its URL answers nothing.
    code, stderr, _ = run_chute(env, "plan")
    line = refused_line(stderr)
    assert code != 0 and "not reachable" in line
    assert "CHUTE_KAFKA_SASL_OAUTHBEARER_TOKEN_URL" in line
    # A provider the broker does not trust: tokens signed by another key.
    stranger = tmp_path / "stranger.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA", "-out", str(stranger)],
                   check=True, capture_output=True)
    with identity_provider.running(files, signing_key=stranger) as provider:
        for client in kafka.CLIENTS:
            code, stderr, _ = run_chute({**oauth_env(secure_env, provider),
                                         "CHUTE_KAFKA_CLIENT": client}, "plan")
            line = refused_line(stderr)
            assert code != 0 and "OAUTHBEARER authentication" in line, client
        assert provider.issued, "the token was not even fetched"
