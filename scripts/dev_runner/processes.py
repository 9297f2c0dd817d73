"""Processes on this machine: launching one in its own session with its output in a log, pid
files, liveness and listening ports (psutil), and stopping whole process groups."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

from dev_runner.services import Service, build_env
from dev_runner.settings import RunnerError, Settings

# SIGTERM to SIGKILL: longer than the sync worker's shutdown flush (20 s by default,
# CHUTE_SYNC_SHUTDOWN_FLUSH_SECONDS), as compose's stop_grace_period for it.
STOP_GRACE_SECONDS = 30.0
KILL_WAIT_SECONDS = 5.0
LOG_ROTATE_BYTES = 20 * 1024 * 1024


_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)

# Processes this Python process started (the API is used from pytest, which must reap them).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def read_pid(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 1 else None


def _write_pid(path: Path, pid: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(f"{pid}\n")
    tmp.replace(path)


def _cmdline(pid: int) -> str:
    try:
        return " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return ""


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        return psutil.Process(pid).status() not in _GONE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True


def _group_alive(pgid: int) -> bool:
    """True while a live process is in the process group (an unreaped zombie leader whose
    group is otherwise empty does not count)."""
    child = _CHILDREN.get(pgid)
    if child is not None:
        child.poll()  # reaps the leader if it exited
    if pid_alive(pgid):
        return True
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getpgid(proc.pid) == pgid and proc.info["status"] not in _GONE:
                return True
    return False


def running_pid(service: Service) -> int | None:
    """The pid from the service's pid file when that process is alive and is the service."""
    pid = read_pid(service.pid_file)
    if pid is None or not pid_alive(pid):
        return None
    if service.marker not in _cmdline(pid):
        return None  # the pid was reused by something else
    return pid


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def listening_pids(port: int) -> set[int]:
    """Pids with a TCP socket listening on `port` (any address)."""
    return {c.pid for c in psutil.net_connections(kind="tcp")
            if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
            and c.pid is not None}


def _describe(pid: int) -> str:
    command = " ".join(_cmdline(pid).split())
    if len(command) > 100:
        command = command[:97] + "..."
    return f"pid {pid} ({command})" if command else f"pid {pid}"


def busy_ports(service: Service, s: Settings) -> list[str]:
    busy = []
    for port in service.ports:
        if port_open(s.host, port):
            owners = ", ".join(_describe(p) for p in sorted(listening_pids(port)))
            busy.append(f"{s.host}:{port}" + (f" by {owners}" if owners else ""))
    return busy


def _rotate(log: Path) -> None:
    with contextlib.suppress(OSError):
        if log.stat().st_size > LOG_ROTATE_BYTES:
            log.replace(log.with_name(log.name + ".1"))


def spawn(argv: Sequence[str], env: Mapping[str, str], cwd: Path, log: Path,
          label: str) -> subprocess.Popen[bytes]:
    """Starts `argv` in its own session (so its process group is its pid and stopping it stops
    everything it started), stdin closed, stdout and stderr appended to `log`."""
    with open(log, "ab") as out:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        out.write(f"\n=== chute: {stamp} starting {label}: {' '.join(argv)}\n".encode())
        out.flush()
        try:
            return subprocess.Popen(
                list(argv), cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
        except OSError as exc:
            raise RunnerError(f"cannot start {label}: {exc}") from exc


def spawn_service(service: Service, s: Settings) -> int:
    """Starts a service of the runner and writes its pid file; returns the pid."""
    _rotate(service.log)
    child = spawn(service.argv, build_env(service, os.environ), s.root, service.log,
                  service.name)
    _CHILDREN[child.pid] = child
    _write_pid(service.pid_file, child.pid)
    return child.pid


def exit_code(pid: int) -> int | None:
    """The exit code of a child this process started, None while it runs or if not ours."""
    child = _CHILDREN.get(pid)
    return child.poll() if child is not None else None


def signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait_gone(pids: Sequence[int], until: float) -> list[int]:
    remaining = list(pids)
    while remaining:
        remaining = [pid for pid in remaining if _group_alive(pid)]
        if not remaining or time.monotonic() >= until:
            break
        time.sleep(0.1)
    return remaining


def stop_pids(pids: Mapping[str, int], kill: bool) -> None:
    """Stops process groups: SIGTERM, up to STOP_GRACE_SECONDS, then SIGKILL."""
    if not pids:
        return
    if not kill:
        for pid in pids.values():
            signal_group(pid, signal.SIGTERM)
        left = _wait_gone(list(pids.values()), time.monotonic() + STOP_GRACE_SECONDS)
        for name, pid in pids.items():
            if pid in left:
                say(f"{name}: still running {STOP_GRACE_SECONDS:.0f} s after SIGTERM; SIGKILL")
    else:
        left = list(pids.values())
    for pid in left:
        signal_group(pid, signal.SIGKILL)
    stuck = _wait_gone(left, time.monotonic() + KILL_WAIT_SECONDS)
    for pid in pids.values():
        child = _CHILDREN.pop(pid, None)
        if child is not None and pid not in stuck:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1)
    if stuck:
        names = [name for name, pid in pids.items() if pid in stuck]
        raise RunnerError(f"could not stop {', '.join(names)} (pids {stuck})")


def orphans(service: Service, s: Settings) -> list[int]:
    """Processes of ours that listen on the service's ports without a pid file: same command,
    started by this runner (own session) from this checkout or with this state folder."""
    found = []
    for port in service.ports:
        for pid in listening_pids(port):
            command = _cmdline(pid)
            if service.marker not in command:
                continue
            try:
                own_session = os.getsid(pid) == pid
                cwd = psutil.Process(pid).cwd()
            except (OSError, psutil.Error):
                continue
            if own_session and (str(s.state) in command or cwd == str(s.root)):
                found.append(pid)
    return sorted(set(found))


def say(message: str) -> None:
    print(f"[chute] {message}", file=sys.stderr, flush=True)
