"""A secure stack of its own (scripts/dev's secure mode) in <CHUTE_STATE>/secure-tests: Kafka
with SASL_SSL (SCRAM-SHA-512) on CHUTE_KAFKA_PORT + 2 (controller + 2) and TLS with a required
client certificate on CHUTE_KAFKA_MTLS_PORT + 2 and SASL_PLAINTEXT (PLAIN, SCRAM-SHA-256) on
CHUTE_KAFKA_SASL_PLAINTEXT_PORT + 2, ClickHouse with a TLS native port
(CHUTE_CLICKHOUSE_SECURE_PORT, its other ports + 1), and the services on their ports + 1
(workers + 10), so it runs beside the plaintext servers."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator

import pytest
from chute.kafka import KafkaSecurity
from dev_runner import secure, supervise
from dev_runner.settings import Settings


@pytest.fixture(scope="session")
def secure_stack() -> Iterator[Settings]:
    base = Settings.from_env()
    s = dataclasses.replace(
        base, state=base.state / "secure-tests", kafka_port=base.kafka_port + 2,
        kafka_controller_port=base.kafka_controller_port + 2,
        kafka_mtls_port=base.kafka_mtls_port + 2,
        kafka_sasl_plaintext_port=base.kafka_sasl_plaintext_port + 2,
        clickhouse_port=base.clickhouse_port + 1,
        clickhouse_http_port=base.clickhouse_http_port + 1,
        control_port=base.control_port + 1, ingest_port=base.ingest_port + 1,
        sync_port_base=base.sync_port_base + 10)
    supervise.up(1, settings=s, secure_mode=True)
    try:
        yield s
    finally:
        supervise.down(s)


@pytest.fixture(scope="session")
def security(secure_stack: Settings) -> KafkaSecurity:
    return secure.kafka_security(secure_stack)


@pytest.fixture(scope="session")
def scram_sha_256_user(secure_stack: Settings, security: KafkaSecurity) -> str:
    """The client user's SCRAM-SHA-256 credentials, set through the admin API over SASL_SSL
    (the storage was formatted with SCRAM-SHA-512 ones only); the user's name."""
    from chute.kafka.client_config import backend_config
    from confluent_kafka.admin import (
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient(backend_config(
        "confluent-kafka", {"bootstrap": secure_stack.kafka_bootstrap, "client_id": "t"},
        security))
    upsert = UserScramCredentialUpsertion(
        security.sasl_username, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096),
        security.sasl_password.encode())
    for future in admin.alter_user_scram_credentials([upsert]).values():
        future.result(timeout=30)
    return security.sasl_username


@pytest.fixture
def secure_env(secure_stack: Settings) -> dict[str, str]:
    """The environment of a chute command on the secure stack (as its services get it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHUTE_KAFKA_SSL")}
    env.update(dict(secure.service_env(secure_stack)))
    env["CHUTE_LOG_FORMAT"] = "json"
    return env
