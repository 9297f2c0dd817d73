"""Settings shared by every service, read from CHUTE_* environment variables."""

from __future__ import annotations

import sys
from typing import Literal, TypeVar

from pydantic import Field, JsonValue, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

# Marks a field whose value may hold a secret: its value is never printed, not even when it
# is invalid (`Field(..., json_schema_extra=SECRET, repr=False)`; repr=False keeps it out of
# the settings' repr too).
SECRET: dict[str, JsonValue] = {"secret": True}


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHUTE_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    # CHUTE_KAFKA_CLIENT: the Kafka client library behind chute.kafka's seam.
    kafka_client: Literal["confluent-kafka", "kafka-python"] = "confluent-kafka"
    clickhouse_host: str = "127.0.0.1"
    clickhouse_port: int = 9000
    clickhouse_user: str = "default"
    clickhouse_password: str = Field("", json_schema_extra=SECRET, repr=False)
    clickhouse_database: str = "default"
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
    except ValidationError as exc:
        prefix = str(settings_type.model_config.get("env_prefix", ""))
        lines = [f"invalid configuration for {settings_type.__name__}:"]
        for err in exc.errors():
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
