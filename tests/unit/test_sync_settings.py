"""The sync worker's timeouts are checked against one another at start, and against the
supervisors that stop it (compose's stop_grace_period, the dev runner's grace)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from dev_runner.processes import STOP_GRACE_SECONDS
from pydantic import ValidationError
from sync_worker.settings import SyncSettings

ROOT = Path(__file__).resolve().parents[2]


def test_a_shutdown_flush_longer_than_the_grace_before_sigkill_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"sync_shutdown_flush_seconds \(40\).*SIGKILL"):
        SyncSettings(sync_shutdown_flush_seconds=40)
    SyncSettings(sync_shutdown_flush_seconds=40, sync_stop_grace_seconds=60)


def test_a_retry_start_above_its_cap_is_refused() -> None:
    with pytest.raises(ValidationError, match=r"sync_retry_initial_seconds .* above"):
        SyncSettings(sync_retry_initial_seconds=20, sync_retry_max_seconds=10)


def test_a_revocation_flush_that_outlasts_the_poll_interval_is_refused() -> None:
    with pytest.raises(ValidationError, match="quarter of sync_max_poll_interval_ms"):
        SyncSettings(sync_rebalance_flush_seconds=60, sync_max_poll_interval_ms=120_000)


def _seconds(text: str) -> float:
    match = re.fullmatch(r"(\d+)s", text)
    assert match, text
    return float(match.group(1))


def test_the_supervisors_wait_as_long_as_the_worker_expects() -> None:
    grace = SyncSettings().sync_stop_grace_seconds
    assert grace <= STOP_GRACE_SECONDS
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    assert _seconds(compose["services"]["sync-worker"]["stop_grace_period"]) >= grace
