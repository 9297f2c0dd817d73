"""How a Kafka client reaches the brokers: the address and the security settings, defined once
and translated here into each backend's own configuration keys.

`CLIENT_KEYS` is the one table of option names: every setting chute gives both backends has a
neutral name and its librdkafka and kafka-python spellings. The backends build their configs
with `backend_config()` and add only what one of them alone has.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
Backend = Literal["confluent-kafka", "kafka-python"]

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

# The environment variable behind each security field, for error messages.
SETTING_NAMES = {
    "protocol": "CHUTE_KAFKA_SECURITY_PROTOCOL",
    "sasl_mechanism": "CHUTE_KAFKA_SASL_MECHANISM",
    "sasl_username": "CHUTE_KAFKA_SASL_USERNAME",
    "sasl_password": "CHUTE_KAFKA_SASL_PASSWORD",
    "ca_file": "CHUTE_KAFKA_SSL_CA_FILE",
    "cert_file": "CHUTE_KAFKA_SSL_CERT_FILE",
    "key_file": "CHUTE_KAFKA_SSL_KEY_FILE",
    "key_password": "CHUTE_KAFKA_SSL_KEY_PASSWORD",
    "verify_hostname": "CHUTE_KAFKA_SSL_VERIFY_HOSTNAME",
}


@dataclass(frozen=True)
class KafkaSecurity:
    """TLS and SASL for a Kafka connection; the default is plaintext without authentication.
    Secrets are kept out of repr."""

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: str = ""
    ca_file: str | None = None  # None: the system's trusted CAs
    cert_file: str | None = None  # client certificate (mTLS), with key_file
    key_file: str | None = None
    key_password: str = ""
    verify_hostname: bool = True

    def __repr__(self) -> str:
        return (f"KafkaSecurity(protocol={self.protocol!r}, sasl_mechanism="
                f"{self.sasl_mechanism!r}, sasl_username={self.sasl_username!r}, "
                f"ca_file={self.ca_file!r}, cert_file={self.cert_file!r}, "
                f"key_file={self.key_file!r}, verify_hostname={self.verify_hostname})")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    def neutral(self) -> dict[str, Any]:
        """The settings under CLIENT_KEYS' neutral names (only those that apply)."""
        out: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl:
            out.update(sasl_mechanism=self.sasl_mechanism, sasl_username=self.sasl_username,
                       sasl_password=self.sasl_password)
        if self.tls:
            optional = {"ca_file": self.ca_file, "cert_file": self.cert_file,
                        "key_file": self.key_file, "key_password": self.key_password}
            out.update({k: v for k, v in optional.items() if v})
        return out

    def describe(self) -> str:
        """One line for logs and messages, without secrets."""
        if not self.sasl:
            return self.protocol
        return f"{self.protocol} {self.sasl_mechanism} user {self.sasl_username!r}"


PLAINTEXT = KafkaSecurity()


def backend_config(backend: Backend, neutral: Mapping[str, Any],
                   security: KafkaSecurity = PLAINTEXT) -> dict[str, Any]:
    """`neutral` and `security` in the backend's vocabulary (unknown names are an error)."""
    column = 0 if backend == "confluent-kafka" else 1
    merged = {**neutral, **security.neutral()}
    config = {CLIENT_KEYS[name][column]: value for name, value in merged.items()}
    if security.tls:
        # Host names are checked by default; both libraries spell the switch differently.
        if backend == "confluent-kafka":
            config["ssl.endpoint.identification.algorithm"] = (
                "https" if security.verify_hostname else "none")
        else:
            config["ssl_check_hostname"] = security.verify_hostname
    return config
