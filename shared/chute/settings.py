"""Settings shared by every service, read from CHUTE_* environment variables."""

from __future__ import annotations

import sys
from typing import Literal, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict


class CommonSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="CHUTE_", extra="ignore")

    kafka_bootstrap: str = "127.0.0.1:9092"
    # CHUTE_KAFKA_CLIENT: the Kafka client library behind chute.kafka's seam.
    kafka_client: Literal["confluent-kafka", "kafka-python"] = "confluent-kafka"
    clickhouse_host: str = "127.0.0.1"
    clickhouse_port: int = 9000
    clickhouse_user: str = "default"
    clickhouse_password: str = ""
    clickhouse_database: str = "default"
    schemas: str = "schemas"
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
            lines.append(f"  {prefix}{field.upper()}: {err['msg']} (got {err.get('input')!r})")
        print("\n".join(lines), file=sys.stderr)
        raise SystemExit(2) from None
