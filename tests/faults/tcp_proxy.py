"""A loopback TCP proxy for fault tests: sits in front of a server's port and misbehaves on demand.

    with TcpProxy(target_port=9000) as proxy:     # listens on 127.0.0.1:proxy.port
        proxy.delay_replies(10)                   # every server answer arrives 10 s late
        proxy.cut_after_insert_reply(times=3)     # the next 3 INSERTs: answer lost, link cut
        proxy.pass_through()                      # back to a plain relay

Modes apply to every connection at once and can be switched while connections are open.
`delay_replies` holds every chunk the server sends, including the answers to clickhouse-driver's
ping before each query on a reused connection: such a query takes about twice the delay.

`cut_after_insert_reply` speaks just enough of ClickHouse's native protocol: a connection whose
client sent a query containing `INSERT` (case-sensitive) forwards the server's first answer (the
table's sample block) and the client's data; when the server's answer to the data is complete
(it ends with the one-byte EndOfStream packet, 0x05) the proxy swallows it and closes both
sides. The server has then applied the insert while the client only sees a lost connection:
the ambiguous outcome.
An answer that starts with an Exception packet (0x02) is passed on: that insert failed plainly.
"""

from __future__ import annotations

import contextlib
import select
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from types import TracebackType

_CHUNK = 65536
_END_OF_STREAM = b"\x05"   # server packet types of the native protocol
_EXCEPTION = b"\x02"


class Mode(Enum):
    PASS = "pass"
    DELAY = "delay"
    CUT_AFTER_INSERT_REPLY = "cut-after-insert-reply"


class _InsertPhase(Enum):
    IDLE = 0             # no INSERT seen on this connection (since the last answer)
    QUERY_SENT = 1       # client sent the INSERT query; server answers with the sample block
    AWAITING_DATA = 2    # sample block forwarded; the client's data comes next
    DATA_SENT = 3        # client sent data: the server's next answer is the insert's outcome


@dataclass
class _Link:
    """One client connection and its connection to the server, pumped by one thread."""

    client: socket.socket
    server: socket.socket
    phase: _InsertPhase = _InsertPhase.IDLE
    held_reply: bytes = b""
    # Server bytes waiting for their release time (delay mode), in arrival order.
    delayed: deque[tuple[float, bytes]] = field(default_factory=deque)

    def close(self) -> None:
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class TcpProxy:
    """Relay 127.0.0.1:<port> to target_host:target_port; see the module docstring for modes."""

    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._lock = threading.Lock()
        self._mode = Mode.PASS
        self._delay = 0.0
        self._cuts_left = 0
        self._cuts_done = 0
        self._cut_event = threading.Condition(self._lock)
        self._listener: socket.socket | None = None
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self._links: list[_Link] = []

    # -- life cycle -------------------------------------------------------------------------

    def start(self) -> TcpProxy:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(64)
        listener.settimeout(0.2)
        self._listener = listener
        self.port = int(listener.getsockname()[1])
        self._spawn(self._accept_loop)
        return self

    def stop(self) -> None:
        self._stopping.set()
        for thread in self._threads:
            thread.join(timeout=5)
        if self._listener is not None:
            self._listener.close()
        with self._lock:
            links, self._links = self._links, []
        for link in links:
            link.close()

    def __enter__(self) -> TcpProxy:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # -- modes --------------------------------------------------------------------------------

    def pass_through(self) -> None:
        with self._lock:
            self._mode, self._delay, self._cuts_left = Mode.PASS, 0.0, 0

    def delay_replies(self, seconds: float) -> None:
        """Hold every chunk the server sends for `seconds` before passing it on (order kept)."""
        with self._lock:
            self._mode, self._delay, self._cuts_left = Mode.DELAY, seconds, 0

    def cut_after_insert_reply(self, times: int = 1) -> None:
        """Lose the answer of the next `times` INSERTs and cut their connections; then relay."""
        with self._lock:
            self._mode, self._delay, self._cuts_left = Mode.CUT_AFTER_INSERT_REPLY, 0.0, times

    @property
    def mode(self) -> Mode:
        with self._lock:
            return self._mode

    @property
    def cuts(self) -> int:
        """How many connections were cut after an INSERT's answer so far."""
        with self._lock:
            return self._cuts_done

    def wait_for_cuts(self, count: int, timeout: float) -> bool:
        """Block until `count` cuts happened in total; False on timeout."""
        with self._cut_event:
            return self._cut_event.wait_for(lambda: self._cuts_done >= count, timeout)

    # -- relay --------------------------------------------------------------------------------

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        thread.start()
        self._threads.append(thread)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            link = _Link(client, server)
            with self._lock:
                self._links.append(link)
            self._spawn(self._pump, link)

    def _pump(self, link: _Link) -> None:
        try:
            while not self._stopping.is_set():
                timeout = 0.2
                if link.delayed:
                    timeout = max(0.0, min(timeout, link.delayed[0][0] - time.monotonic()))
                readable, _, _ = select.select([link.client, link.server], [], [], timeout)
                if link.client in readable and not self._from_client(link):
                    return
                if link.server in readable and not self._from_server(link):
                    return
                self._release_delayed(link)
        except OSError:
            return
        finally:
            link.close()
            with self._lock:
                if link in self._links:
                    self._links.remove(link)

    def _from_client(self, link: _Link) -> bool:
        data = link.client.recv(_CHUNK)
        if not data:
            return False
        if link.phase is _InsertPhase.IDLE and b"INSERT" in data:
            link.phase = _InsertPhase.QUERY_SENT
        elif link.phase is _InsertPhase.AWAITING_DATA:
            link.phase = _InsertPhase.DATA_SENT
        link.server.sendall(data)
        return True

    def _from_server(self, link: _Link) -> bool:
        data = link.server.recv(_CHUNK)
        if not data:
            # Pass on what is still held back, then end the link.
            for _, chunk in link.delayed:
                link.client.sendall(chunk)
            return False
        with self._lock:
            mode, delay = self._mode, self._delay
        if link.phase is _InsertPhase.QUERY_SENT:
            link.phase = _InsertPhase.AWAITING_DATA
        elif link.phase is _InsertPhase.DATA_SENT and mode is not Mode.CUT_AFTER_INSERT_REPLY:
            link.phase = _InsertPhase.IDLE
        elif (link.phase is _InsertPhase.DATA_SENT and not link.held_reply
              and data[:1] == _EXCEPTION):
            link.phase = _InsertPhase.IDLE     # the insert failed: nothing ambiguous to stage
        elif link.phase is _InsertPhase.DATA_SENT:
            link.held_reply += data
            if not link.held_reply.endswith(_END_OF_STREAM):
                return True      # the answer is not complete yet: keep holding it
            data, link.held_reply = link.held_reply, b""
            link.phase = _InsertPhase.IDLE
            if mode is Mode.CUT_AFTER_INSERT_REPLY and self._take_cut():
                return False     # the server applied the insert; its answer is dropped
        if mode is Mode.DELAY or link.delayed:
            link.delayed.append((time.monotonic() + delay, data))
        else:
            link.client.sendall(data)
        return True

    def _take_cut(self) -> bool:
        with self._cut_event:
            if self._cuts_left <= 0:
                return False
            self._cuts_left -= 1
            self._cuts_done += 1
            if self._cuts_left == 0:
                self._mode = Mode.PASS
            self._cut_event.notify_all()
            return True

    def _release_delayed(self, link: _Link) -> None:
        now = time.monotonic()
        while link.delayed and link.delayed[0][0] <= now:
            link.client.sendall(link.delayed.popleft()[1])
