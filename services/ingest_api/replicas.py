"""Several ingest API processes on one port (CHUTE_INGEST_PROCESSES; by default one per core).

Decoding, validation and producing hold the GIL, so one process uses one core at most. With
N processes, `python -m ingest_api` becomes a small supervisor that starts N copies of
itself; each binds the same address with SO_REUSEPORT and the kernel spreads new connections
over them. The native runner and compose start the service the same way in both cases.

The supervisor forwards SIGTERM/SIGINT to every copy as SIGTERM (each drains its requests and
closes its producer) and waits for them. When one copy exits on its own, the others are
stopped too and the supervisor exits with that copy's code: whatever restarts the service
(the runner, compose's restart policy) restarts it whole. Their metrics are reported
together (ingest_api.replica_metrics).
"""

from __future__ import annotations

import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import FrameType

import structlog
from chute.runtime import available_cores

from ingest_api.replica_metrics import MULTIPROC_ENV, write_pids

log = structlog.get_logger()

# Set by the supervisor for its copies: bind with SO_REUSEPORT, serve, start no copies.
REPLICA_ENV = "CHUTE_INGEST_REPLICA"
SUPERVISOR_ENV = "CHUTE_INGEST_SUPERVISOR_PID"
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
POLL_SECONDS = 0.2
# CHUTE_INGEST_PROCESSES=0 (the default) starts one copy per core, at most this many: each
# holds a Kafka producer and its connections, and about 100 MiB under load (scripts/bench).
AUTO_MAXIMUM = 8


def is_replica() -> bool:
    return os.environ.get(REPLICA_ENV) == "1"


def follow_supervisor() -> None:
    """In a copy: SIGTERM when the supervisor dies, even by SIGKILL (which it cannot forward),
    so that no copy keeps serving the port on its own (Linux's PR_SET_PDEATHSIG)."""
    supervisor = int(os.environ.get(SUPERVISOR_ENV, "0"))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) != 0:
        log.warning("cannot ask to be stopped with the supervisor",
                    error=os.strerror(ctypes.get_errno()))
    if supervisor and os.getppid() != supervisor:  # it died before prctl: no signal will come
        os.kill(os.getpid(), signal.SIGTERM)


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A bound (not yet listening) TCP socket that other processes may bind too."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def process_count(setting: int) -> int:
    """CHUTE_INGEST_PROCESSES, where 0 means one per core available (at most AUTO_MAXIMUM)."""
    return setting if setting > 0 else min(AUTO_MAXIMUM, available_cores())


def supervise(count: int) -> int:
    """Runs `count` copies of `python -m ingest_api` until they exit; returns the exit code."""
    metrics_dir = Path(tempfile.mkdtemp(prefix="chute-ingest-metrics-"))
    try:
        return _supervise(count, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)


def _supervise(count: int, metrics_dir: Path) -> int:
    env = {**os.environ, REPLICA_ENV: "1", SUPERVISOR_ENV: str(os.getpid()),
           MULTIPROC_ENV: str(metrics_dir)}
    children = [subprocess.Popen([sys.executable, "-m", "ingest_api"], env=env)
                for _ in range(count)]
    write_pids(metrics_dir, [os.getpid(), *(child.pid for child in children)])
    log.info("ingest API processes started", processes=count,
             pids=[child.pid for child in children])
    stopping = False

    def stop_all(_signum: int = signal.SIGTERM, _frame: FrameType | None = None) -> None:
        nonlocal stopping
        stopping = True
        for child in children:
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop_all)
    signal.signal(signal.SIGINT, stop_all)
    code = 0
    while any(child.poll() is None for child in children):
        for child in children:
            returned = child.poll()
            if returned is not None and not stopping:
                log.error("an ingest API process exited; stopping the others",
                          pid=child.pid, exit_code=returned)
                code = returned or 1
                stop_all()
        time.sleep(POLL_SECONDS)
    if code == 0:
        # uvicorn re-raises the SIGTERM it stopped on once it has shut down: a copy ended by
        # it stopped cleanly.
        code = next((c.returncode for c in children
                     if c.returncode not in (0, -signal.SIGTERM)), 0)
    return code if code >= 0 else 128 - code  # killed by a signal: 128 + its number
