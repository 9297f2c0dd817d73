"""How the ingest API learns which ClickHouse its tables live on (what their columns hold)."""

from __future__ import annotations

import pytest
from ingest_api.__main__ import detect_server
from ingest_api.settings import IngestSettings

from tests.support import free_port


def test_the_configured_version_is_used_without_asking_the_server() -> None:
    settings = IngestSettings(clickhouse_version="25.8.2.29", clickhouse_port=free_port())
    profile = detect_server(settings)
    assert profile.version == (25, 8, 2, 29) and profile.has_datetime64


def test_an_unreachable_server_stops_the_api_with_a_clear_message() -> None:
    settings = IngestSettings(clickhouse_port=free_port(), ingest_startup_timeout_seconds=0.3)
    with pytest.raises(SystemExit) as info:
        detect_server(settings)
    message = str(info.value)
    assert "unreachable" in message and "CHUTE_CLICKHOUSE_VERSION" in message
