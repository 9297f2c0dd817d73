"""TLS and SASL for a Kafka connection, as plain values (chute.kafka.client_config spells
them in each backend's keys)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512", "OAUTHBEARER"]
Backend = Literal["confluent-kafka", "kafka-python"]

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
    "oauth_token_url": "CHUTE_KAFKA_SASL_OAUTHBEARER_TOKEN_URL",
    "oauth_scope": "CHUTE_KAFKA_SASL_OAUTHBEARER_SCOPE",
    "oauth_extensions": "CHUTE_KAFKA_SASL_OAUTHBEARER_EXTENSIONS",
}


@dataclass(frozen=True)
class KafkaSecurity:
    """TLS and SASL for a Kafka connection; the default is plaintext without authentication.
    Secrets are kept out of repr. With OAUTHBEARER, `sasl_username` and `sasl_password` are
    the OAuth client id and secret, exchanged at `oauth_token_url` for tokens (the client
    credentials grant); `oauth_extensions` is `key=value,key=value` (SASL extensions, e.g.
    Confluent Cloud's logicalCluster and identityPoolId)."""

    protocol: SecurityProtocol = "PLAINTEXT"
    sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    sasl_username: str = ""
    sasl_password: str = ""
    ca_file: str | None = None  # None: the system's trusted CAs
    cert_file: str | None = None  # client certificate (mTLS), with key_file
    key_file: str | None = None
    key_password: str = ""
    verify_hostname: bool = True
    oauth_token_url: str = ""
    oauth_scope: str = ""
    oauth_extensions: str = ""

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

    @property
    def oauth(self) -> bool:
        return self.sasl and self.sasl_mechanism == "OAUTHBEARER"

    def extensions(self) -> dict[str, str]:
        """`oauth_extensions` as a dict (empty pairs ignored)."""
        pairs = (item.partition("=") for item in self.oauth_extensions.split(","))
        return {k.strip(): v.strip() for k, _, v in pairs if k.strip()}

    def neutral(self) -> dict[str, Any]:
        """The settings under CLIENT_KEYS' neutral names (only those that apply)."""
        out: dict[str, Any] = {"security_protocol": self.protocol}
        if self.sasl:
            out.update(sasl_mechanism=self.sasl_mechanism)
        if self.sasl and not self.oauth:  # OAuth: each backend's own keys (client_config)
            out.update(sasl_username=self.sasl_username, sasl_password=self.sasl_password)
        if self.tls:
            optional = {"ca_file": self.ca_file, "cert_file": self.cert_file,
                        "key_file": self.key_file, "key_password": self.key_password}
            out.update({k: v for k, v in optional.items() if v})
        return out

    def describe(self) -> str:
        """One line for logs and messages, without secrets."""
        if not self.sasl:
            return self.protocol
        if self.oauth:
            return (f"{self.protocol} OAUTHBEARER client {self.sasl_username!r} "
                    f"(tokens from {self.oauth_token_url})")
        return f"{self.protocol} {self.sasl_mechanism} user {self.sasl_username!r}"


PLAINTEXT = KafkaSecurity()
