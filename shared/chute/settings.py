"""Settings shared by every service, read from CHUTE_* environment variables.

Every secret setting (marked SECRET) may instead be read from a file named by the same
variable with `_FILE` appended (CHUTE_CLICKHOUSE_PASSWORD_FILE=/run/secrets/ch_password), the
Docker secrets convention; see secret_files.
"""

from __future__ import annotations

import sys
from typing import Literal, Self, TypeVar

from pydantic import Field, JsonValue, ValidationError, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from chute.kafka.security import KafkaSecurity, SaslMechanism, SecurityProtocol
from chute.secret_files import SecretFileError, SecretFilesSource

# Marks a field whose value may hold a secret: its value is never printed, not even when it
# is invalid (`Field(..., json_schema_extra=SECRET, repr=False)`; repr=False keeps it out of
# the settings' repr too), and it may be read from a file (`<VARIABLE>_FILE`).
SECRET: dict[str, JsonValue] = {"secret": True}


class ChuteSettings(BaseSettings):
    """CHUTE_* variables, secrets also from `_FILE` variables; a validation error never
    shows the input (hide_input_in_errors): it may hold a secret."""

    model_config = SettingsConfigDict(env_prefix="CHUTE_", extra="ignore",
                                      hide_input_in_errors=True)

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, SecretFilesSource(settings_cls, is_secret),
                dotenv_settings, file_secret_settings)


class KafkaConnectionSettings(ChuteSettings):
    """Where Kafka is and how to reach it (TLS, SASL)."""

    kafka_bootstrap: str = "127.0.0.1:9092"
    kafka_security_protocol: SecurityProtocol = "PLAINTEXT"
    kafka_sasl_mechanism: SaslMechanism = "SCRAM-SHA-512"
    kafka_sasl_username: str = ""
    kafka_sasl_password: str = Field("", json_schema_extra=SECRET, repr=False)
    # CA bundle (PEM) the brokers' certificates are checked against; unset: the system's CAs.
    kafka_ssl_ca_file: str | None = None
    # Client certificate and key (PEM) for mutual TLS.
    kafka_ssl_cert_file: str | None = None
    kafka_ssl_key_file: str | None = None
    kafka_ssl_key_password: str = Field("", json_schema_extra=SECRET, repr=False)
    kafka_ssl_verify_hostname: bool = True
    # SASL OAUTHBEARER (OAuth 2.0 client credentials): where the client id and secret (the
    # SASL username and password) are exchanged for tokens; the scope asked for, and SASL
    # extensions as key=value,key=value.
    kafka_sasl_oauthbearer_token_url: str = ""
    kafka_sasl_oauthbearer_scope: str = ""
    kafka_sasl_oauthbearer_extensions: str = ""

    @model_validator(mode="after")
    def _complete_kafka_security(self) -> Self:
        sasl = self.kafka_security_protocol.startswith("SASL_")
        oauth = sasl and self.kafka_sasl_mechanism == "OAUTHBEARER"
        if sasl and not (self.kafka_sasl_username and self.kafka_sasl_password):
            raise ValueError(
                f"CHUTE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                "CHUTE_KAFKA_SASL_USERNAME and CHUTE_KAFKA_SASL_PASSWORD (or _FILE)"
                + (": the OAuth client id and secret" if oauth else ""))
        if oauth and not self.kafka_sasl_oauthbearer_token_url.startswith(
                ("https://", "http://")):
            raise ValueError("CHUTE_KAFKA_SASL_MECHANISM=OAUTHBEARER needs "
                             "CHUTE_KAFKA_SASL_OAUTHBEARER_TOKEN_URL, the identity provider's "
                             "token endpoint (https://...)")
        if bool(self.kafka_ssl_cert_file) != bool(self.kafka_ssl_key_file):
            raise ValueError("CHUTE_KAFKA_SSL_CERT_FILE and CHUTE_KAFKA_SSL_KEY_FILE go "
                             "together (a client certificate needs its key)")
        return self

    def kafka_security(self) -> KafkaSecurity:
        return KafkaSecurity(
            protocol=self.kafka_security_protocol, sasl_mechanism=self.kafka_sasl_mechanism,
            sasl_username=self.kafka_sasl_username, sasl_password=self.kafka_sasl_password,
            ca_file=self.kafka_ssl_ca_file, cert_file=self.kafka_ssl_cert_file,
            key_file=self.kafka_ssl_key_file, key_password=self.kafka_ssl_key_password,
            verify_hostname=self.kafka_ssl_verify_hostname,
            oauth_token_url=self.kafka_sasl_oauthbearer_token_url,
            oauth_scope=self.kafka_sasl_oauthbearer_scope,
            oauth_extensions=self.kafka_sasl_oauthbearer_extensions)


class ClickHouseConnectionSettings(ChuteSettings):
    """Where ClickHouse is and how to reach it (native protocol, optionally over TLS)."""

    clickhouse_host: str = "127.0.0.1"
    # The native port: 9000 in plaintext; a TLS port (9440 by convention) with
    # CHUTE_CLICKHOUSE_SECURE=true.
    clickhouse_port: int = 9000
    clickhouse_user: str = "default"
    clickhouse_password: str = Field("", json_schema_extra=SECRET, repr=False)
    clickhouse_database: str = "default"
    clickhouse_secure: bool = False
    # CA bundle (PEM) the server's certificate is checked against; unset: certifi's CAs.
    clickhouse_ca_file: str | None = None
    # Check the server's certificate and host name (on by default; off only for testing).
    clickhouse_verify: bool = True
    # Client certificate and key (PEM) for servers that ask for one.
    clickhouse_cert_file: str | None = None
    clickhouse_key_file: str | None = None
    clickhouse_key_password: str = Field("", json_schema_extra=SECRET, repr=False)
    # CHUTE_CLICKHOUSE_ALT_HOSTS: further replicas as host:port,host:port; a connection that
    # cannot reach clickhouse_host:clickhouse_port tries them in turn.
    clickhouse_alt_hosts: str = ""
    # CHUTE_CLICKHOUSE_CLUSTER: a <remote_servers> cluster; every table is then created
    # Replicated*MergeTree ON CLUSTER (an OlapConfig's `cluster` overrides it per table).
    clickhouse_cluster: str | None = None
    # CHUTE_CLICKHOUSE_INSERT_QUORUM: replicas that must have an exactly-once insert before it
    # is acknowledged (0: off; see chute.replication). Watermarks are then read with
    # select_sequential_consistency, so they see every acknowledged insert.
    clickhouse_insert_quorum: int = Field(0, ge=0, le=16)

    @model_validator(mode="after")
    def _complete_clickhouse_tls(self) -> Self:
        if bool(self.clickhouse_cert_file) != bool(self.clickhouse_key_file):
            raise ValueError("CHUTE_CLICKHOUSE_CERT_FILE and CHUTE_CLICKHOUSE_KEY_FILE go "
                             "together (a client certificate needs its key)")
        return self


class CommonSettings(KafkaConnectionSettings, ClickHouseConnectionSettings):
    # CHUTE_KAFKA_CLIENT: the Kafka client library behind chute.kafka's seam.
    kafka_client: Literal["confluent-kafka", "kafka-python"] = "confluent-kafka"
    # Topic replication (see chute.replication): unset, min(3, brokers) copies, and 2 in sync
    # where there are 3 or more; a stream's StreamConfig overrides both.
    kafka_replication_factor: int | None = Field(None, ge=1, le=16)
    kafka_min_insync_replicas: int | None = Field(None, ge=1, le=16)
    # The ClickHouse version the tables live on (e.g. "18.16.1"), for a service that should not
    # ask the server itself (the ingest API asks `SELECT version()` at start when it is unset).
    clickhouse_version: str | None = None
    schemas: str = "schemas"
    # Watch the files behind `schemas` and pick up changed definitions without a manual
    # restart (see chute.reload), polling every reload_interval_seconds.
    reload_definitions: bool = True
    reload_interval_seconds: float = Field(2.0, gt=0, le=3600)
    log_format: Literal["console", "json"] = "console"
    log_level: Literal["debug", "info", "warning", "error"] = "info"


S = TypeVar("S", bound=BaseSettings)


def load_settings(settings_type: type[S]) -> S:
    """Read settings or exit with a message naming each bad variable."""
    try:
        return settings_type()
    except SecretFileError as exc:
        print(f"invalid configuration for {settings_type.__name__}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except ValidationError as exc:
        prefix = str(settings_type.model_config.get("env_prefix", ""))
        lines = [f"invalid configuration for {settings_type.__name__}:"]
        for err in exc.errors():
            if not err["loc"]:  # a check across settings: its message names them
                lines.append(f"  {err['msg']}")
                continue
            field = ".".join(str(p) for p in err["loc"])
            shown = "" if is_secret(settings_type, err["loc"]) else f" (got {err.get('input')!r})"
            lines.append(f"  {prefix}{field.upper()}: {err['msg']}{shown}")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None


def is_secret(settings_type: type[BaseSettings], loc: tuple[int | str, ...]) -> bool:
    """True when the field at loc is marked SECRET (or unknown: better safe than printed)."""
    info = settings_type.model_fields.get(str(loc[0])) if loc else None
    if info is None:
        return True
    extra = info.json_schema_extra
    return isinstance(extra, dict) and extra.get("secret") is True
