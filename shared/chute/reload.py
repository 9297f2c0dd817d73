"""Notices when the pipeline definitions behind CHUTE_SCHEMAS change, so that a service picks
them up without a manual restart.

The source files named by the spec are hashed (path and content) every few seconds; a new hash
counts as a change once it was seen on two polls in a row, so that a file caught half-written
does not trigger a reload. Before a change is reported, the new definitions are loaded in a
separate interpreter (`python -m chute.reload <spec>`, which prints their model fingerprints):
definitions that do not load are logged and the service keeps running with the ones it has.
`ChangeDetector` and `source_files`/`content_hash` are pure or read-only; `DefinitionsWatcher`
adds the thread and the check.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn

import orjson
import structlog

from chute.fingerprint import model_fingerprint
from chute.registry import DefinitionError, Definitions, load_definitions

log = structlog.get_logger()


def source_files(spec: str) -> list[Path]:
    """The .py files the definitions of `spec` are loaded from (CHUTE_SCHEMAS syntax)."""
    files: set[Path] = set()
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        path = Path(item)
        if path.is_dir():
            files.update(path.glob("*.py"))
        elif item.endswith(".py"):
            files.add(path)
        else:
            files.update(_module_files(item))
    return sorted(p.resolve() for p in files)


def _module_files(name: str) -> list[Path]:
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):
        return []
    if spec is None:
        return []
    if spec.submodule_search_locations:  # a package: every module below it
        return [p for d in spec.submodule_search_locations for p in Path(d).rglob("*.py")]
    return [Path(spec.origin)] if spec.origin else []


def content_hash(files: Iterable[Path]) -> str:
    """16 hex digits over the paths and contents of `files` (a missing file counts too)."""
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(str(path).encode() + b"\0")
        try:
            digest.update(path.read_bytes())
        except OSError:
            digest.update(b"\0missing")
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def definitions_hash(spec: str) -> str:
    return content_hash(source_files(spec))


class ChangeDetector:
    """Fed one hash per poll; says when the definitions changed: a hash other than the current
    one, seen on two polls in a row. Pure."""

    def __init__(self, current: str) -> None:
        self.current = current
        self._candidate: str | None = None

    def observe(self, digest: str) -> bool:
        if digest == self.current:
            self._candidate = None
            return False
        if digest != self._candidate:
            self._candidate = digest
            return False
        self.current = digest
        self._candidate = None
        return True


def fingerprints(defs: Definitions) -> dict[str, str]:
    """{stream name: fingerprint of its model}: what a reload log line compares."""
    return {name: model_fingerprint(s.model) for name, s in sorted(defs.streams.items())}


def models_changed(old: dict[str, str], new: dict[str, str]) -> bool:
    """True when the same streams are defined and some model among them changed: the case in
    which a sync worker waits for records of the new model before it restarts."""
    return old.keys() == new.keys() and old != new


def check_definitions(spec: str, timeout: float = 60) -> dict[str, str]:
    """The fingerprints of the definitions `spec` names now, loaded in a fresh interpreter
    (this process has the old modules imported). Raises DefinitionError when they do not
    load."""
    done = subprocess.run([sys.executable, "-m", "chute.reload", spec], capture_output=True,
                          text=True, timeout=timeout, env=os.environ.copy())
    if done.returncode != 0:
        lines = (done.stderr.strip() or done.stdout.strip()).splitlines()
        raise DefinitionError(lines[-1] if lines else f"exit {done.returncode}")
    result: dict[str, str] = orjson.loads(done.stdout)
    return result


class DefinitionsWatcher:
    """Polls the definitions' source files every `interval` seconds in a daemon thread and
    calls `on_change(old, new)` once (fingerprints by stream), after the new definitions
    loaded. `poll()` is one step."""

    def __init__(self, spec: str, current: Definitions,
                 on_change: Callable[[dict[str, str], dict[str, str]], None],
                 interval: float = 2.0, service: str = "") -> None:
        self.spec = spec
        self.interval = interval
        self.on_change = on_change
        self.service = service
        self.old = fingerprints(current)
        self.detector = ChangeDetector(definitions_hash(spec))
        self.stopped = threading.Event()

    def poll(self) -> bool:
        """One poll: True when the definitions changed and loaded (on_change was called)."""
        if not self.detector.observe(definitions_hash(self.spec)):
            return False
        try:
            new = check_definitions(self.spec)
        except (DefinitionError, subprocess.TimeoutExpired, ValueError) as exc:
            log.error("changed definitions do not load; keeping the current ones",
                      schemas=self.spec, error=str(exc))
            return False
        changed = sorted(k for k in new.keys() | self.old.keys() if new.get(k) != self.old.get(k))
        log.info("definitions changed: reloading", service=self.service, schemas=self.spec,
                 changed=changed, old_fingerprints={k: self.old.get(k) for k in changed},
                 new_fingerprints={k: new.get(k) for k in changed})
        self.on_change(self.old, new)
        return True

    def start(self) -> DefinitionsWatcher:
        threading.Thread(target=self._run, name="definitions-watcher", daemon=True).start()
        return self

    def _run(self) -> None:
        while not self.stopped.wait(self.interval):
            try:
                if self.poll():
                    return
            except Exception:  # never let the watcher die silently
                log.exception("definitions watcher failed")


def reexec() -> NoReturn:
    """Replace this process by a fresh one with the same command line (same pid): it loads the
    definitions anew."""
    log.info("restarting with the new definitions", argv=sys.orig_argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, sys.orig_argv)


def main(argv: list[str]) -> int:
    try:
        defs = load_definitions(argv[0] if argv else "schemas")
    except Exception as exc:  # DefinitionError, or a SyntaxError in an imported module
        print(str(exc).replace("\n", " "), file=sys.stderr)
        return 2
    print(orjson.dumps(fingerprints(defs)).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
