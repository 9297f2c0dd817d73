"""Noticing changed definitions: the hash of their source files and the two-poll rule."""

from __future__ import annotations

from pathlib import Path

from chute.registry import load_definitions
from chute.reload import (
    ChangeDetector,
    DefinitionsWatcher,
    check_definitions,
    content_hash,
    definitions_hash,
    models_changed,
    source_files,
)

SCHEMA = '''
from pydantic import BaseModel
from chute import IngestPipeline, Key

class Visit(BaseModel):
    id: Key[str]
{extra}

visits = IngestPipeline[Visit]("visits_reload", {{}})
'''


def write(directory: Path, extra: str = "") -> Path:
    path = directory / "visits.py"
    path.write_text(SCHEMA.format(extra=extra))
    return path


def test_a_change_counts_once_seen_on_two_polls() -> None:
    detector = ChangeDetector("a")
    assert not detector.observe("a")
    assert not detector.observe("b")  # maybe half-written
    assert not detector.observe("c")  # still moving
    assert detector.observe("c")
    assert detector.current == "c"
    assert not detector.observe("c")


def test_a_change_reverted_before_the_second_poll_is_no_change() -> None:
    detector = ChangeDetector("a")
    assert not detector.observe("b")
    assert not detector.observe("a")
    assert not detector.observe("a")


def test_the_hash_follows_the_content_of_the_source_files(tmp_path: Path) -> None:
    path = write(tmp_path)
    (tmp_path / "_helpers.py").write_text("X = 1\n")
    assert source_files(str(tmp_path)) == sorted([path.resolve(),
                                                  (tmp_path / "_helpers.py").resolve()])
    before = definitions_hash(str(tmp_path))
    assert definitions_hash(str(tmp_path)) == before
    write(tmp_path, "    page: str = ''")
    assert definitions_hash(str(tmp_path)) != before
    assert content_hash([tmp_path / "gone.py"]) != content_hash([])


def test_a_package_is_hashed_with_its_modules() -> None:
    files = source_files("schemas")
    assert files and all(f.suffix == ".py" for f in files)
    assert any(f.name == "events.py" for f in files)


def test_the_watcher_calls_back_after_the_new_definitions_load(tmp_path: Path) -> None:
    write(tmp_path)
    defs = load_definitions(str(tmp_path / "visits.py"))
    calls: list[int] = []
    watcher = DefinitionsWatcher(str(tmp_path), defs, lambda old, new: calls.append(1), interval=60)
    assert not watcher.poll()
    write(tmp_path, "    page: str = ''")
    assert not watcher.poll()  # first sight of the new hash
    assert watcher.poll()
    assert calls == [1]
    new = check_definitions(str(tmp_path))
    assert "visits_reload" in new and new["visits_reload"] != watcher.old["visits_reload"]


def test_definitions_that_do_not_load_keep_the_current_ones(tmp_path: Path) -> None:
    write(tmp_path)
    defs = load_definitions(str(tmp_path / "visits.py"))
    calls: list[int] = []
    watcher = DefinitionsWatcher(str(tmp_path), defs, lambda old, new: calls.append(1), interval=60)
    (tmp_path / "visits.py").write_text("class Broken(:\n")
    assert not watcher.poll()
    assert not watcher.poll()
    assert calls == []


def test_a_worker_waits_only_when_a_model_of_the_same_streams_changed() -> None:
    assert models_changed({"a": "1", "b": "2"}, {"a": "1", "b": "3"})
    assert not models_changed({"a": "1"}, {"a": "1"})  # e.g. a batch setting changed
    assert not models_changed({"a": "1"}, {"a": "2", "c": "3"})  # a pipeline added
