"""Is a service ready? Each kind answers its own probe; logs say why when it is not."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from pathlib import Path

import httpx
from chute.kafka.security import PLAINTEXT, KafkaSecurity

from dev_runner import secure
from dev_runner.processes import port_open
from dev_runner.services import Service
from dev_runner.settings import Settings


def _http_ok(url: str, expect_body: str | None = None) -> bool:
    try:
        response = httpx.get(url, timeout=2.0, trust_env=False)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    return expect_body is None or response.text.strip() == expect_body


_kafka_logging_quiet = False


def _kafka_lists_topics(bootstrap: str, security: KafkaSecurity | None = None) -> bool:
    global _kafka_logging_quiet
    if not _kafka_logging_quiet:
        # Without a handler, Python would print the client's errors while the broker boots.
        for name in ("kafka", "chute.kafka"):
            logging.getLogger(name).addHandler(logging.NullHandler())
        _kafka_logging_quiet = True
    from chute import kafka

    try:
        admin = kafka.admin(bootstrap, timeout=5.0, security=security or PLAINTEXT)
    except Exception:
        return False
    try:
        admin.topic_partitions()
    except Exception:
        return False
    finally:
        with contextlib.suppress(Exception):
            admin.close()
    return True


def _zookeeper_ok(host: str, port: int) -> bool:
    """ZooKeeper's four-letter `srvr` names its mode once it serves sessions (`ruok` answers
    `imok` earlier, while it still loads its database and refuses handshakes)."""
    try:
        with socket.create_connection((host, port), timeout=2.0) as conn:
            conn.sendall(b"srvr")
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
    except OSError:
        return False
    return b"Mode: " in answer


def probe(service: Service, s: Settings) -> bool:
    """Asks the service whether it is ready (does not look at pid files)."""
    if service.kind == "kafka":
        security = secure.kafka_security(s) if secure.enabled(s) else None
        return (port_open(s.host, service.port)
                and _kafka_lists_topics(f"{s.host}:{service.port}", security))
    if service.kind == "zookeeper":
        return _zookeeper_ok(s.host, service.port)
    if service.kind == "clickhouse":
        return _http_ok(service.health, expect_body="Ok.")
    return _http_ok(service.health)


def tail(path: Path, lines: int) -> str:
    try:
        with open(path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def log_tails(service: Service, lines: int = 30) -> str:
    parts = []
    for path in service.logs:
        text = tail(path, lines)
        if text:
            parts.append(f"--- {path} (last lines) ---\n{text}")
    return "\n".join(parts) if parts else f"(no log in {service.log})"


# Preparing and launching. ----------------------------------------------------------------------
