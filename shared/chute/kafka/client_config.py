"""Client configuration defined once and translated into each backend's own keys.

`CLIENT_KEYS` is the one table of option names: every setting chute gives both backends has a
neutral name and its librdkafka and kafka-python spellings. The backends build their configs
from `producer_settings`/`consumer_settings` with `backend_config()` and add only what one of
them alone has.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from chute.kafka.seam import ConsumerOptions, ProducerOptions
from chute.kafka.security import PLAINTEXT, Backend, KafkaSecurity

# neutral name -> (librdkafka key, kafka-python key)
CLIENT_KEYS: dict[str, tuple[str, str]] = {
    "bootstrap": ("bootstrap.servers", "bootstrap_servers"),
    "client_id": ("client.id", "client_id"),
    "group_id": ("group.id", "group_id"),
    "acks": ("acks", "acks"),
    "linger_ms": ("linger.ms", "linger_ms"),
    "request_timeout_ms": ("request.timeout.ms", "request_timeout_ms"),
    "enable_idempotence": ("enable.idempotence", "enable_idempotence"),
    "reconnect_backoff_max_ms": ("reconnect.backoff.max.ms", "reconnect_backoff_max_ms"),
    "enable_auto_commit": ("enable.auto.commit", "enable_auto_commit"),
    "auto_offset_reset": ("auto.offset.reset", "auto_offset_reset"),
    "session_timeout_ms": ("session.timeout.ms", "session_timeout_ms"),
    "heartbeat_interval_ms": ("heartbeat.interval.ms", "heartbeat_interval_ms"),
    "max_poll_interval_ms": ("max.poll.interval.ms", "max_poll_interval_ms"),
    "fetch_max_wait_ms": ("fetch.wait.max.ms", "fetch_max_wait_ms"),
    "fetch_max_bytes": ("fetch.max.bytes", "fetch_max_bytes"),
    "max_partition_fetch_bytes": ("max.partition.fetch.bytes", "max_partition_fetch_bytes"),
    "security_protocol": ("security.protocol", "security_protocol"),
    "sasl_mechanism": ("sasl.mechanism", "sasl_mechanism"),
    "sasl_username": ("sasl.username", "sasl_plain_username"),
    "sasl_password": ("sasl.password", "sasl_plain_password"),
    "ca_file": ("ssl.ca.location", "ssl_cafile"),
    "cert_file": ("ssl.certificate.location", "ssl_certfile"),
    "key_file": ("ssl.key.location", "ssl_keyfile"),
    "key_password": ("ssl.key.password", "ssl_password"),
}


def producer_settings(bootstrap: str, options: ProducerOptions) -> dict[str, Any]:
    """What every producer gets, whatever the backend (neutral names)."""
    return {
        "bootstrap": bootstrap,
        "client_id": options.client_id,
        "acks": "all",
        "linger_ms": options.linger_ms,
        "request_timeout_ms": options.request_timeout_ms,
        # Idempotence is each backend's choice (on in confluent/producer.py, off in
        # kafkapython/producer.py).
        "reconnect_backoff_max_ms": 2_000,
    }


def consumer_settings(bootstrap: str, options: ConsumerOptions) -> dict[str, Any]:
    """What every consumer gets, whatever the backend (neutral names): manual commits,
    partitions without a commit start at the earliest offset."""
    return {
        "bootstrap": bootstrap,
        "group_id": options.group_id,
        "client_id": options.client_id,
        "enable_auto_commit": False,
        "auto_offset_reset": "earliest",
        "session_timeout_ms": options.session_timeout_ms,
        "heartbeat_interval_ms": options.heartbeat_interval_ms,
        "max_poll_interval_ms": options.max_poll_interval_ms,
        "fetch_max_wait_ms": options.fetch_max_wait_ms,
        "fetch_max_bytes": options.fetch_max_bytes,
        "max_partition_fetch_bytes": options.max_partition_fetch_bytes,
        "reconnect_backoff_max_ms": 2_000,
    }



def backend_config(backend: Backend, neutral: Mapping[str, Any],
                   security: KafkaSecurity = PLAINTEXT) -> dict[str, Any]:
    """`neutral` and `security` in the backend's vocabulary (unknown names are an error)."""
    column = 0 if backend == "confluent-kafka" else 1
    merged = {**neutral, **security.neutral()}
    config = {CLIENT_KEYS[name][column]: value for name, value in merged.items()}
    if security.oauth:
        config.update(oauth_config(backend, security))
    if security.tls:
        # Host names are checked by default; both libraries spell the switch differently.
        if backend == "confluent-kafka":
            config["ssl.endpoint.identification.algorithm"] = (
                "https" if security.verify_hostname else "none")
        else:
            config["ssl_check_hostname"] = security.verify_hostname
    return config


def oauth_config(backend: Backend, security: KafkaSecurity) -> dict[str, Any]:
    """SASL/OAUTHBEARER with the client credentials grant: librdkafka fetches and refreshes
    its tokens itself; kafka-python is given a token provider."""
    if backend == "confluent-kafka":
        config = {
            "sasl.oauthbearer.method": "oidc",
            "sasl.oauthbearer.client.id": security.sasl_username,
            "sasl.oauthbearer.client.secret": security.sasl_password,
            "sasl.oauthbearer.token.endpoint.url": security.oauth_token_url,
        }
        if security.oauth_scope:
            config["sasl.oauthbearer.scope"] = security.oauth_scope
        if security.oauth_extensions:
            config["sasl.oauthbearer.extensions"] = ",".join(
                f"{k}={v}" for k, v in security.extensions().items())
        return config
    from chute.kafka.kafkapython.oauth import TokenProvider

    return {"sasl_oauth_token_provider": TokenProvider(security)}
