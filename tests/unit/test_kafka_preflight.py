"""The Kafka preflight against tiny local TCP servers: a broker that accepts and says nothing
is busy and one that hangs up may be a proxy without its broker (no refusal: the caller
retries), a TLS alert in answer to a plaintext request is a refusal."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest
from chute.handshake import HandshakeError
from chute.kafka import preflight
from chute.kafka.security import KafkaSecurity


@pytest.fixture
def server() -> Iterator[Callable[[Callable[[socket.socket], None]], int]]:
    listeners: list[socket.socket] = []

    def start(handle: Callable[[socket.socket], None]) -> int:
        listener = socket.create_server(("127.0.0.1", 0))
        listeners.append(listener)

        def serve() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            with conn:
                handle(conn)

        threading.Thread(target=serve, daemon=True).start()
        return int(listener.getsockname()[1])

    yield start
    for listener in listeners:
        listener.close()


def test_a_silent_broker_is_not_a_refusal(server: Callable[..., int]) -> None:
    done = threading.Event()
    port = server(lambda conn: done.wait(5))
    preflight.check(f"127.0.0.1:{port}", KafkaSecurity(), timeout=0.3)
    done.set()


def test_a_tls_listener_refuses_a_plaintext_request(server: Callable[..., int]) -> None:
    alert = b"\x15\x03\x03\x00\x02\x02\x50"  # what Kafka's TLS listener sends back
    port = server(lambda conn: (conn.recv(100), conn.sendall(alert)))
    with pytest.raises(HandshakeError, match="CHUTE_KAFKA_SECURITY_PROTOCOL"):
        preflight.check(f"127.0.0.1:{port}", KafkaSecurity(), timeout=2)


def test_a_hang_up_without_a_word_is_left_to_the_caller(server: Callable[..., int]) -> None:
    port = server(lambda conn: conn.recv(100))  # e.g. a proxy whose broker is down
    preflight.check(f"127.0.0.1:{port}", KafkaSecurity(), timeout=2)


def test_a_plaintext_server_under_tls_is_named(server: Callable[..., int]) -> None:
    port = server(lambda conn: (conn.recv(1000), conn.sendall(b"\x00\x00\x00\x10" + b"x" * 16)))
    with pytest.raises(HandshakeError, match="does not speak TLS"):
        preflight.check(f"127.0.0.1:{port}", KafkaSecurity(protocol="SSL"), timeout=2)


def test_nothing_listening_is_left_to_the_caller() -> None:
    probe = socket.create_server(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    preflight.check(f"127.0.0.1:{port}", KafkaSecurity(), timeout=1)


def test_a_hang_up_during_the_tls_handshake_is_left_to_the_caller(
        server: Callable[..., int]) -> None:
    port = server(lambda conn: conn.recv(1000))
    preflight.check(f"127.0.0.1:{port}", KafkaSecurity(protocol="SSL"), timeout=2)
