"""Several ingest API processes on one port (CHUTE_INGEST_PROCESSES): a real service and a
real broker. Every copy listens on the port and acknowledges records; SIGTERM stops them all;
a copy that dies takes the others down with it, so that whatever restarts the service
restarts it whole."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest
from chute import kafka
from chute.kafka import TopicConfig
from kafka import KafkaConsumer

from tests.integration.test_ingest_api import PARTITIONS, _write_schema, event, read_all
from tests.support import KAFKA, ServiceProcess, free_port, service_env

pytestmark = pytest.mark.integration


@pytest.fixture
def topic(servers: None) -> Iterator[str]:
    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = kafka.admin(KAFKA)
    admin.create_topic(TopicConfig(name, PARTITIONS, {"retention.ms": "3600000"}))
    try:
        yield name
    finally:
        admin.delete_topic(name)
        admin.close()


def _start(tmp_path: Path, topic: str, processes: int) -> ServiceProcess:
    _write_schema(tmp_path, topic)
    port = free_port()
    env = service_env(str(tmp_path), CHUTE_INGEST_PORT=str(port),
                      CHUTE_INGEST_PROCESSES=str(processes))
    return ServiceProcess("ingest_api", env, port, tmp_path / "ingest.log").start()


def _listeners(port: int) -> set[int]:
    return {c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            and c.pid is not None}


def _sample(text: str, name: str, labels: str) -> float:
    """The value of one series in a Prometheus text exposition (labels as written there)."""
    series = f"{name}{{{labels}}}" if labels else name
    values = [float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
              if line.startswith(series + " ")]
    assert len(values) == 1, f"{series}: {values}"
    return values[0]


def _copies(service: ServiceProcess) -> list[psutil.Process]:
    return psutil.Process(service.pid).children()


def test_every_copy_listens_on_the_port_and_acknowledges_records(
        tmp_path: Path, topic: str) -> None:
    service = _start(tmp_path, topic, processes=2)
    consumer = KafkaConsumer(bootstrap_servers=KAFKA, enable_auto_commit=False, group_id=None)
    try:
        copies = _copies(service)
        assert len(copies) == 2
        listening = False
        for _ in range(200):
            if _listeners(service.port) == {c.pid for c in copies}:
                listening = True
                break
            time.sleep(0.1)
        assert listening, f"listeners {_listeners(service.port)}, copies {copies}"
        assert service.pid not in _listeners(service.port)  # the supervisor serves nothing
        # Each request on a new connection: the kernel spreads them over the copies.
        for i in range(40):
            response = httpx.post(f"http://127.0.0.1:{service.port}/ingest/{topic}",
                                  json=[event(i * 2), event(i * 2 + 1)], timeout=10,
                                  trust_env=False)
            assert response.status_code == 200, response.text
            assert response.json() == {"accepted": 2}
        stored = read_all(consumer, topic, 80)
        assert len(stored) == 80
        # Whichever copy answers a scrape reports every copy's counts, and the memory of
        # the whole service.
        for _ in range(6):
            text = httpx.get(f"http://127.0.0.1:{service.port}/metrics", timeout=10,
                             trust_env=False).text
            accepted = _sample(text, "chute_ingest_records_total",
                               f'pipeline="{topic}",result="accepted"')
            assert accepted == 80, text
            rss = _sample(text, "process_resident_memory_bytes", "")
            assert rss >= sum(c.memory_info().rss for c in copies)
            assert _sample(text, "chute_ingest_in_flight_requests", "") == 0
        assert service.terminate(timeout=30) == 0
        assert not any(c.is_running() and c.status() != psutil.STATUS_ZOMBIE for c in copies)
    finally:
        consumer.close()
        service.kill()


def test_a_copy_that_dies_stops_the_others_and_the_supervisor_fails(
        tmp_path: Path, topic: str) -> None:
    service = _start(tmp_path, topic, processes=2)
    try:
        copies = _copies(service)
        assert len(copies) == 2
        os.kill(copies[0].pid, signal.SIGKILL)
        code = service.wait_exit(timeout=30)
        assert code != 0
        assert not copies[1].is_running() or copies[1].status() == psutil.STATUS_ZOMBIE
        assert service.log_entries("an ingest API process exited; stopping the others")
    finally:
        service.kill()


def test_the_copies_stop_when_the_supervisor_is_killed(tmp_path: Path, topic: str) -> None:
    """SIGKILL cannot be forwarded: each copy asked the kernel for a SIGTERM when its parent
    dies, so none keeps serving the port alone."""
    service = _start(tmp_path, topic, processes=2)
    try:
        copies = _copies(service)
        assert len(copies) == 2
        os.kill(service.pid, signal.SIGKILL)
        service.wait_exit(timeout=30)
        _gone, alive = psutil.wait_procs(copies, timeout=30)
        assert not alive, f"copies still running after the supervisor was killed: {alive}"
        assert not _listeners(service.port)
    finally:
        service.kill()
        for copy in _copies_left(copies):
            copy.kill()


def _copies_left(copies: list[psutil.Process]) -> list[psutil.Process]:
    return [c for c in copies if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
