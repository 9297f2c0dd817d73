"""What a service does when a server refuses its configuration: exit at once, non-zero, with
one line naming the setting to check (chute.handshake), instead of retrying."""

from __future__ import annotations

import logging
from typing import NoReturn

from chute.handshake import HandshakeError, clickhouse_problem
from chute.kafka import preflight
from chute.settings import ClickHouseConnectionSettings, CommonSettings


def refused(service: str, problem: str) -> NoReturn:
    raise SystemExit(f"{service}: {problem}")


def check_kafka(settings: CommonSettings, service: str, timeout: float = 10.0) -> None:
    """Exits when Kafka refuses the TLS/SASL settings; returns when it accepts them or cannot
    be reached (the caller's retry handles an absent broker)."""
    try:
        preflight.check(settings.kafka_bootstrap, settings.kafka_security(), timeout)
    except HandshakeError as exc:
        refused(service, str(exc))


def exit_if_clickhouse_refused(settings: ClickHouseConnectionSettings, service: str,
                               exc: BaseException) -> None:
    """Exits when `exc` (from connecting) is a refusal of the configuration; returns otherwise."""
    problem = clickhouse_problem(exc, settings.clickhouse_host, settings.clickhouse_port,
                                 settings.clickhouse_secure)
    if problem is not None:
        refused(service, problem)


def check_clickhouse(settings: ClickHouseConnectionSettings, service: str) -> None:
    """Connects once: exits when ClickHouse refuses the login or TLS settings; returns when it
    answers or cannot be reached."""
    from chute import clickhouse

    # clickhouse-driver logs a refused connection with a traceback; the exit line says it.
    driver_log = logging.getLogger("clickhouse_driver.connection")
    level = driver_log.level
    driver_log.setLevel(logging.CRITICAL)
    client = clickhouse.connect(settings)
    try:
        client.execute("SELECT 1")
    except Exception as exc:
        exit_if_clickhouse_refused(settings, service, exc)
    finally:
        client.disconnect()
        driver_log.setLevel(level)


def check_servers(settings: CommonSettings, service: str, clickhouse: bool = True) -> None:
    """Both checks; `clickhouse=False` for a service told not to depend on ClickHouse at
    start (the ingest API with CHUTE_CLICKHOUSE_VERSION)."""
    if clickhouse:
        check_clickhouse(settings, service)
    check_kafka(settings, service)
