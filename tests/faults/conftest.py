"""Fault scenarios share one summary table, printed at the end of the run."""

from __future__ import annotations

from typing import Any

from tests.e2e.conftest import make_stack
from tests.faults.accounting import SUMMARY, format_summary

__all__ = ["make_stack"]


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if SUMMARY:
        terminalreporter.write_sep("=", "fault scenarios: acknowledged / lost / duplicated")
        terminalreporter.write_line(format_summary(SUMMARY))
