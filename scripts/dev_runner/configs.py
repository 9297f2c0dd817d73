"""Configuration files of the servers, rendered from the templates in scripts/infra and
deploy/prometheus (pure: text in, text out)."""

from __future__ import annotations

import base64
import re
import uuid
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape as xml_escape

from dev_runner.settings import RunnerError, Settings

_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")


def render_template(text: str, values: Mapping[str, str]) -> str:
    """Replaces @NAME@ placeholders; a placeholder without a value is an error."""

    def substitute(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise RunnerError(f"template placeholder @{key}@ has no value")
        return values[key]

    return _PLACEHOLDER.sub(substitute, text)


def _properties_value(value: str) -> str:
    """Escapes a value for a Java .properties file (read as ISO-8859-1)."""
    out = value.replace("\\", "\\\\")
    return "".join(ch if ord(ch) < 128 else f"\\u{ord(ch):04x}" for ch in out)


def render_kafka_properties(template: str, s: Settings) -> str:
    values = {"HOST": s.host, "KAFKA_PORT": str(s.kafka_port),
              "CONTROLLER_PORT": str(s.kafka_controller_port), "LOG_DIRS": str(s.kafka_log_dirs)}
    return render_template(template, {k: _properties_value(v) for k, v in values.items()})


def render_clickhouse_config(template: str, s: Settings) -> str:
    values = {"HOST": s.host, "HTTP_PORT": str(s.clickhouse_http_port),
              "TCP_PORT": str(s.clickhouse_port), "DATA_DIR": str(s.clickhouse_data),
              "LOG_DIR": str(s.log_dir)}
    return render_template(template, {k: xml_escape(v) for k, v in values.items()})


def _yaml_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def render_prometheus_config(
    template: str,
    control: Sequence[str],
    ingest: Sequence[str],
    sync: Sequence[str],
    prometheus: Sequence[str] = (),
    scrape_interval: str = "5s",
) -> str:
    """Prometheus's configuration: one job per service (the job names the dashboards use),
    each with its host:port targets. The scrape timeout is the interval, capped at 10 s."""
    seconds = _duration_seconds(scrape_interval)
    timeout = f"{round(min(seconds, 10.0) * 1000)}ms"
    for target in (*control, *ingest, *sync, *prometheus):
        if not re.fullmatch(r"[A-Za-z0-9_.\-\[\]:]+:[0-9]+", target):
            raise RunnerError(f"not a host:port scrape target: {target!r}")
    return render_template(template, {
        "SCRAPE_INTERVAL": scrape_interval,
        "SCRAPE_TIMEOUT": timeout,
        "CONTROL_TARGETS": _yaml_list(control),
        "INGEST_TARGETS": _yaml_list(ingest),
        "SYNC_TARGETS": _yaml_list(sync),
        "PROMETHEUS_TARGETS": _yaml_list(prometheus),
    })


def _duration_seconds(text: str) -> float:
    match = re.fullmatch(r"([1-9][0-9]*)(ms|s|m)", text)
    if not match:
        raise RunnerError(f"scrape interval {text!r} is not like 500ms, 5s or 1m")
    value = float(match.group(1))
    return value / 1000 if match.group(2) == "ms" else value * (60 if match.group(2) == "m" else 1)


def new_cluster_id() -> str:
    """A Kafka cluster id: a random UUID in URL-safe base64 without padding (22 characters),
    like `kafka-storage random-uuid`, never starting with '-' (it would read as a flag)."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode("ascii")
        if not text.startswith("-"):
            return text


def parse_meta_cluster_id(text: str) -> str | None:
    """cluster.id from a Kafka meta.properties file."""
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() == "cluster.id":
            return value.strip() or None
    return None

