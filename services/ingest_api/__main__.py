"""`python -m ingest_api`: load settings and definitions, connect to Kafka, serve HTTP."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time

import structlog
import uvicorn
from chute import clickhouse, kafka
from chute.logging import configure_logging
from chute.registry import DefinitionError, Definitions, load_definitions
from chute.reload import DefinitionsWatcher, reexec
from chute.runtime import tune_garbage_collector
from chute.server import ServerProfile, parse_version
from chute.settings import load_settings
from chute.startup_checks import check_servers
from chute.typemap import UnsupportedTypeError

from ingest_api import replicas
from ingest_api.app import create_app
from ingest_api.gate import ColumnGate, GateRefresher, table_needs
from ingest_api.server import bounded_headers_protocol
from ingest_api.settings import IngestSettings

log = structlog.get_logger()


def connect_producer(settings: IngestSettings) -> kafka.Producer:
    """A producer connected to Kafka, retried with backoff for a bounded time.

    Kafka may start after this service; keep trying for ingest_startup_timeout_seconds, then
    exit non-zero with a clear message instead of crash-looping forever.
    """
    deadline = time.monotonic() + settings.ingest_startup_timeout_seconds
    delay = 0.5
    attempt = 0
    while True:
        attempt += 1
        remaining = deadline - time.monotonic()
        try:
            return kafka.producer(settings.kafka_bootstrap, settings.producer_options(
                bootstrap_timeout_ms=int(max(1.0, min(10.0, remaining)) * 1000)),
                security=settings.kafka_security(), native=settings.ingest_native_producer)
        except Exception as exc:  # broker unreachable (kafka-python checks at start), DNS...
            remaining = deadline - time.monotonic()
            error = f"{type(exc).__name__}: {exc}"
            if remaining <= 0:
                log.error("cannot reach Kafka, giving up", bootstrap=settings.kafka_bootstrap,
                          attempts=attempt, error=error,
                          waited_seconds=settings.ingest_startup_timeout_seconds)
                raise SystemExit(
                    f"ingest-api: Kafka at {settings.kafka_bootstrap} unreachable for "
                    f"{settings.ingest_startup_timeout_seconds:g} s ({error}); is it running? "
                    "(CHUTE_KAFKA_BOOTSTRAP, CHUTE_INGEST_STARTUP_TIMEOUT_SECONDS)") from None
            wait = min(delay, remaining)
            log.warning("Kafka unreachable, retrying", bootstrap=settings.kafka_bootstrap,
                        attempt=attempt, retry_in_seconds=round(wait, 2), error=error)
            time.sleep(wait)
            delay = min(delay * 2, 5.0)


def detect_server(settings: IngestSettings) -> ServerProfile:
    """The ClickHouse server profile whose column types decide which values are accepted.

    CHUTE_CLICKHOUSE_VERSION when set; else the server's own `SELECT version()`, retried like
    Kafka for ingest_startup_timeout_seconds: without it the API cannot know what the tables
    hold, so it does not start.
    """
    if settings.clickhouse_version:
        return ServerProfile(parse_version(settings.clickhouse_version))
    deadline = time.monotonic() + settings.ingest_startup_timeout_seconds
    delay = 0.5
    while True:
        try:
            probe = clickhouse.connect(settings)
            try:
                return clickhouse.server_profile(probe)
            finally:
                probe.disconnect()
        except Exception as exc:  # connection refused, timeout, DNS...
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise SystemExit(
                    f"ingest-api: ClickHouse at {settings.clickhouse_host}:"
                    f"{settings.clickhouse_port} unreachable ({type(exc).__name__}: {exc}); "
                    "it is asked once for its version, or set CHUTE_CLICKHOUSE_VERSION"
                ) from None
            log.warning("ClickHouse unreachable, retrying", error=str(exc),
                        retry_in_seconds=round(min(delay, remaining), 2))
            time.sleep(min(delay, remaining))
            delay = min(delay * 2, 5.0)


def start_gate(settings: IngestSettings, definitions: Definitions,
               profile: ServerProfile) -> ColumnGate:
    """The column gate, checked once now and then every ingest_column_check_seconds."""
    gate = ColumnGate(table_needs(definitions, profile))
    client = clickhouse.connect(settings, profile)

    def read_columns() -> dict[str, dict[str, str]]:
        return clickhouse.existing_columns(client, settings.clickhouse_database)

    refresher = GateRefresher(gate, read_columns, settings.ingest_column_check_seconds)
    refresher.refresh()
    refresher.start()
    return gate


def main() -> int:
    settings = load_settings(IngestSettings)
    configure_logging(settings.log_format, settings.log_level, service="ingest-api")
    processes = replicas.process_count(settings.ingest_processes)
    if replicas.is_replica():
        replicas.follow_supervisor()
    elif processes > 1:
        return replicas.supervise(processes)
    try:
        definitions = load_definitions(settings.schemas)
    except DefinitionError as exc:
        log.error("cannot load pipeline definitions", schemas=settings.schemas, error=str(exc))
        return 2
    if not definitions.ingest_apis:
        log.warning("no ingest pipelines defined", schemas=settings.schemas)
    # Exits when a server refuses these settings; with CHUTE_CLICKHOUSE_VERSION the API does
    # not depend on ClickHouse to start, so it is not asked.
    check_servers(settings, "ingest-api", clickhouse=settings.clickhouse_version is None)
    tune_garbage_collector()
    if kafka.client_from_env() == "kafka-python" and importlib.util.find_spec("crc32c") is None:
        log.warning("package crc32c is not installed: kafka-python computes the CRC32C of "
                    "every record batch in pure Python (~13 ms per 128 KiB: half the ingest "
                    "throughput); install kafka-python[crc32c]")
    profile = detect_server(settings)
    gate = start_gate(settings, definitions, profile)
    producer = connect_producer(settings)
    log.info("kafka producer ready", producer=type(producer).__name__)
    # Asks each topic's max.message.bytes (with its partitions, in the metadata pool).
    admin = kafka.admin(settings.kafka_bootstrap, security=settings.kafka_security())

    def close_producer() -> None:
        # Every request was answered; whatever is still buffered belongs to requests that
        # were answered 503 (and will be retried), but give it a moment to reach Kafka.
        producer.close(timeout=5)
        admin.close()
        log.info("ingest API stopped")

    try:
        app = create_app(settings, definitions, producer, on_shutdown=close_producer,
                         profile=profile, gate=gate, limit_of=admin.max_message_bytes)
    except UnsupportedTypeError as exc:
        log.error("a model cannot be stored on this ClickHouse", error=str(exc),
                  clickhouse=profile.version_text)
        producer.close(timeout=1)
        admin.close()
        return 2
    log.info("ingest API listening", host=settings.ingest_host, port=settings.ingest_port,
             pipelines=sorted(definitions.ingest_apis), kafka=settings.kafka_bootstrap,
             auth=bool(settings.ingest_api_keys), public_docs=settings.docs_public,
             clickhouse=profile.version_text)
    # uvicorn stops on SIGTERM/SIGINT: no new connections, in-flight requests finish (each is
    # bounded by the ack timeout), then the lifespan shutdown closes the producer. Its log
    # lines go through chute's logging set-up (log_config=None).
    protocol = bounded_headers_protocol(settings.ingest_header_timeout_seconds,
                                        settings.ingest_max_header_bytes)
    server = uvicorn.Server(uvicorn.Config(
        app, host=settings.ingest_host, port=settings.ingest_port, access_log=False,
        log_config=None, log_level=settings.log_level, http=protocol,
        timeout_graceful_shutdown=int(settings.ingest_ack_timeout_seconds) + 2))
    reload = threading.Event()
    if settings.reload_definitions:
        def restart(_old: dict[str, str], _new: dict[str, str]) -> None:
            # The same path as SIGTERM: stop accepting, finish in-flight requests, close the
            # producer; then this process re-executes itself with the new definitions.
            reload.set()
            server.should_exit = True
        DefinitionsWatcher(settings.schemas, definitions, restart,
                           settings.reload_interval_seconds, service="ingest-api").start()
    if replicas.is_replica():
        server.run(sockets=[replicas.reuse_port_socket(settings.ingest_host,
                                                       settings.ingest_port)])
    else:
        server.run()
    if reload.is_set():
        reexec()
    return 0


if __name__ == "__main__":
    sys.exit(main())
