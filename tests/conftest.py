"""Fixtures: real Kafka and ClickHouse (started through the native runner when needed)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support import CH_HOST, CH_PORT, KAFKA


@pytest.fixture(scope="session")
def servers() -> None:
    """Kafka and ClickHouse running and healthy (started by scripts/dev's runner if not)."""
    import dev_runner

    for name in ("kafka", "clickhouse"):
        if not dev_runner.is_healthy(name):
            dev_runner.start_service(name)


@pytest.fixture(scope="session")
def kafka_bootstrap(servers: None) -> str:
    return KAFKA


@pytest.fixture
def ch(servers: None) -> Iterator[Any]:
    from clickhouse_driver import Client

    client = Client(host=CH_HOST, port=CH_PORT)
    yield client
    client.disconnect()


@pytest.fixture
def admin(servers: None) -> Iterator[Any]:
    from chute.kafka import admin_client

    client = admin_client(KAFKA)
    yield client
    client.close()


@pytest.fixture
def current_ch(tmp_path: Path) -> Iterator[Any]:
    """A current ClickHouse (26.x) in-process, through chDB; see tests/current_server.py."""
    from tests.current_server import CurrentServer

    server = CurrentServer.open(tmp_path / "chdb")
    yield server
    server.close()


@pytest.fixture
def unique_name() -> str:
    return f"t_{uuid.uuid4().hex[:12]}"


@pytest.fixture
def schema_dir(tmp_path: Path) -> Path:
    path = tmp_path / "schemas"
    path.mkdir()
    return path
