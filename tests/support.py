"""The tests' names for the test kit (testkit/): the servers' addresses from the environment,
and chute's services as real processes."""

from __future__ import annotations

from testkit.clickhouse import count_rows
from testkit.endpoints import PYTHON, ROOT, Endpoints
from testkit.endpoints import service_env as _service_env
from testkit.processes import ServiceProcess, running
from testkit.waits import free_port, wait_for

ENDPOINTS = Endpoints.from_env()
KAFKA = ENDPOINTS.kafka
CH_HOST = ENDPOINTS.ch_host
CH_PORT = ENDPOINTS.ch_port

__all__ = ["CH_HOST", "CH_PORT", "ENDPOINTS", "KAFKA", "PYTHON", "ROOT", "ServiceProcess",
           "count_rows", "free_port", "running", "service_env", "wait_for"]


def service_env(schemas: str, **extra: str) -> dict[str, str]:
    """The environment of a service on these servers with the definitions `schemas`."""
    return _service_env(ENDPOINTS, schemas, **extra)
