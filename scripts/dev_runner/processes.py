"""Processes on this machine: launching one in its own session with its output in a log, pid
files, liveness, listening ports (from /proc), and stopping whole process groups."""

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

from dev_runner.services import Service, build_env
from dev_runner.settings import RunnerError, Settings

# SIGTERM to SIGKILL: longer than the sync worker's shutdown flush (20 s by default,
# CHUTE_SYNC_SHUTDOWN_FLUSH_SECONDS), as compose's stop_grace_period for it.
STOP_GRACE_SECONDS = 30.0
KILL_WAIT_SECONDS = 5.0
LOG_ROTATE_BYTES = 20 * 1024 * 1024


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
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode("utf-8", "replace")


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] not in (["Z"], ["X"])


def _group_alive(pgid: int) -> bool:
    child = _CHILDREN.get(pgid)
    if child is not None:
        child.poll()  # reaps the leader if it exited, so a zombie does not count
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A group whose only member is an unreaped zombie leader is gone for our purposes.
    return pid_alive(pgid) or _group_has_live_member(pgid)


def _group_has_live_member(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == pgid:
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        # fields: state ppid pgrp ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] not in ("Z", "X"):
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
    """Pids with a TCP socket listening on `port` (any address), from /proc."""
    inodes: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) < 10 or fields[3] != "0A":  # 0A = LISTEN
                continue
            if int(fields[1].rpartition(":")[2], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    pids: set[int] = set()
    if not inodes:
        return pids
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fds = list((entry / "fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(fd) in inodes:
                    pids.add(int(entry.name))
                    break
            except OSError:
                continue
    return pids


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
                cwd = os.readlink(f"/proc/{pid}/cwd")
            except OSError:
                continue
            if own_session and (str(s.state) in command or cwd == str(s.root)):
                found.append(pid)
    return sorted(set(found))



def say(message: str) -> None:
    print(f"[chute] {message}", file=sys.stderr, flush=True)
