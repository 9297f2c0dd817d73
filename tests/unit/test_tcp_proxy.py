"""The fault tests' TCP proxy against a tiny echo server on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.faults.tcp_proxy import Mode, TcpProxy


class EchoServer:
    """Echoes every chunk it reads and remembers everything it was sent."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port = int(self.sock.getsockname()[1])
        self.received = b""
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        with conn:
            while True:
                try:
                    data = conn.recv(4096)
                except OSError:
                    return
                if not data:
                    return
                with self.lock:
                    self.received += data
                conn.sendall(data)


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    server = EchoServer()
    yield server
    server.sock.close()


@pytest.fixture
def proxy(echo: EchoServer) -> Iterator[TcpProxy]:
    with TcpProxy(echo.port) as p:
        yield p


def connect(proxy: TcpProxy) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
    return sock


def round_trip(sock: socket.socket, data: bytes) -> bytes:
    sock.sendall(data)
    got = b""
    while len(got) < len(data):
        chunk = sock.recv(4096)
        if not chunk:
            break
        got += chunk
    return got


def test_pass_through_relays_both_ways(proxy: TcpProxy, echo: EchoServer) -> None:
    assert proxy.port not in (0, echo.port)
    with connect(proxy) as sock:
        assert round_trip(sock, b"hello") == b"hello"
        assert round_trip(sock, b"INSERT INTO t") == b"INSERT INTO t"
        assert round_trip(sock, b"rows\x05") == b"rows\x05"   # pass mode never cuts
    assert proxy.cuts == 0


def test_delay_holds_server_answers(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        proxy.delay_replies(0.5)
        assert proxy.mode is Mode.DELAY
        started = time.monotonic()
        sock.sendall(b"ping")
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(4096)          # nothing within 0.3 s of a 0.5 s delay
        sock.settimeout(5)
        assert sock.recv(4096) == b"ping"
        assert time.monotonic() - started >= 0.5
        proxy.pass_through()
        assert round_trip(sock, b"fast") == b"fast"


def test_cut_after_insert_reply_delivers_data_but_not_the_answer(
        proxy: TcpProxy, echo: EchoServer) -> None:
    proxy.cut_after_insert_reply(times=1)
    with connect(proxy) as sock:
        assert round_trip(sock, b"SELECT 1") == b"SELECT 1"          # not an insert
        assert round_trip(sock, b"INSERT INTO t") == b"INSERT INTO t"  # the sample block
        sock.sendall(b"rows\x05")
        assert sock.recv(4096) == b""                                 # cut, answer swallowed
    assert proxy.wait_for_cuts(1, timeout=5)
    with echo.lock:
        assert echo.received.endswith(b"rows\x05")                    # the server got the data
    assert proxy.mode is Mode.PASS                                    # budget used up
    with connect(proxy) as sock:
        assert round_trip(sock, b"INSERT INTO t") == b"INSERT INTO t"
        assert round_trip(sock, b"rows\x05") == b"rows\x05"
    assert proxy.cuts == 1


def test_cut_waits_for_the_complete_answer(proxy: TcpProxy, echo: EchoServer) -> None:
    proxy.cut_after_insert_reply(times=2)
    with connect(proxy) as sock:
        round_trip(sock, b"INSERT INTO t")
        sock.sendall(b"progress")             # the echoed answer does not end the stream yet
        sock.settimeout(0.3)
        with pytest.raises(TimeoutError):
            sock.recv(4096)
        sock.settimeout(5)
        sock.sendall(b"\x05")
        assert sock.recv(4096) == b""
    assert proxy.cuts == 1


def test_a_failed_insert_is_passed_on(proxy: TcpProxy) -> None:
    proxy.cut_after_insert_reply(times=1)
    with connect(proxy) as sock:
        round_trip(sock, b"INSERT INTO t")
        assert round_trip(sock, b"\x02exception") == b"\x02exception"
    assert proxy.cuts == 0


def test_modes_switch_on_open_connections(proxy: TcpProxy) -> None:
    with connect(proxy) as sock:
        assert round_trip(sock, b"INSERT INTO t") == b"INSERT INTO t"
        proxy.cut_after_insert_reply(times=1)
        sock.sendall(b"rows\x05")
        assert sock.recv(4096) == b""
    assert proxy.cuts == 1
