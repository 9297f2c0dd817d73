"""Finds pipeline definitions in the user's schema modules and resolves them.

`CHUTE_SCHEMAS` is a comma-separated list of module names (imported, with all submodules of a
package) or directories (every .py file in them is loaded). Every `IngestPipeline`,
`OlapTable`, `Stream` and `IngestApi` found at module level is a definition.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import pkgutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from chute.ddl import TableDefinition
from chute.pipeline import IngestApi, IngestPipeline, OlapTable, Stream
from chute.server import ServerProfile


class DefinitionError(ValueError):
    """The schema modules could not be loaded or contradict each other."""


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    retention_ms: int
    replication_factor: int | None = None  # None: chute.replication's default
    min_insync_replicas: int | None = None
    max_message_bytes: int | None = None  # None: the broker's default


@dataclass
class Definitions:
    tables: dict[str, OlapTable[Any]]
    streams: dict[str, Stream[Any]]
    ingest_apis: dict[str, IngestApi[Any]]

    @classmethod
    def from_resources(cls, resources: list[Any]) -> Definitions:
        defs = cls({}, {}, {})
        for resource in resources:
            parts = resource.parts() if isinstance(resource, (IngestPipeline, Stream)) \
                else [resource]
            for part in parts:
                defs._add(part)
        return defs

    def _add(self, part: Any) -> None:
        bucket: dict[str, Any]
        if isinstance(part, OlapTable):
            bucket = self.tables
        elif isinstance(part, Stream):
            bucket = self.streams
        elif isinstance(part, IngestApi):
            bucket = self.ingest_apis
        else:
            return
        existing = bucket.get(part.name)
        if existing is not None and existing is not part:
            raise DefinitionError(f"{part.kind} {part.name!r} is defined twice")
        bucket[part.name] = part

    def topics(self) -> list[TopicSpec]:
        return [
            TopicSpec(s.topic, s.config.partitions, s.config.retention_period * 1000,
                      s.config.replication_factor, s.config.min_insync_replicas,
                      s.config.max_message_bytes)
            for s in self.streams.values()
        ]

    def exactly_once_tables(self) -> set[str]:
        """Tables fed by at least one exactly-once stream: they carry the position columns."""
        return {s.destination.name for s in self.streams.values()
                if s.destination is not None and s.exactly_once}

    def table_definition(self, name: str, profile: ServerProfile,
                         default_cluster: str | None = None,
                         shards: Mapping[str, int] | None = None) -> TableDefinition:
        """The DDL of a defined table, or of a stream's destination defined only inline
        (`shards`: per cluster, as OlapTable.definition takes them)."""
        table = self.tables.get(name) or next(
            (s.destination for s in self.streams.values()
             if s.destination is not None and s.destination.name == name), None)
        if table is None:
            raise KeyError(name)
        return table.definition(profile, exactly_once=name in self.exactly_once_tables(),
                                default_cluster=default_cluster, shards=shards)

    def table_definitions(self, profile: ServerProfile, default_cluster: str | None = None,
                          shards: Mapping[str, int] | None = None) -> list[TableDefinition]:
        return [self.table_definition(name, profile, default_cluster, shards)
                for name in self.tables]

    def synced_streams(self) -> list[Stream[Any]]:
        """Streams with a destination table: what the sync workers consume."""
        return [s for s in self.streams.values() if s.destination is not None]


_RESOURCE_TYPES = (IngestPipeline, OlapTable, Stream, IngestApi)


def load_definitions(spec: str) -> Definitions:
    """Load every definition named by `spec` (the CHUTE_SCHEMAS syntax)."""
    modules: list[ModuleType] = []
    for item in (s.strip() for s in spec.split(",")):
        if not item:
            continue
        path = Path(item)
        if path.is_dir():
            modules.extend(_load_directory(path))
        elif item.endswith(".py") and path.is_file():
            modules.append(_load_file(path))
        else:
            modules.extend(_import_tree(item))
    resources: list[Any] = []
    seen: set[int] = set()
    for module in modules:
        for value in vars(module).values():
            if isinstance(value, _RESOURCE_TYPES) and id(value) not in seen:
                seen.add(id(value))
                resources.append(value)
    return Definitions.from_resources(resources)


def _import_tree(name: str) -> list[ModuleType]:
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise DefinitionError(f"cannot import schema module {name!r}: {exc}") from exc
    modules = [module]
    if hasattr(module, "__path__"):
        for info in pkgutil.walk_packages(module.__path__, prefix=f"{name}."):
            modules.append(importlib.import_module(info.name))
    return modules


def _load_directory(directory: Path) -> list[ModuleType]:
    files = sorted(p for p in directory.glob("*.py") if not p.name.startswith("_"))
    if not files:
        raise DefinitionError(f"no .py files with definitions in {directory}")
    return [_load_file(p) for p in files]


def _load_file(path: Path) -> ModuleType:
    digest = hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:10]
    module_name = f"chute_schemas_{digest}_{path.stem}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise DefinitionError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as exc:
        del sys.modules[module_name]
        raise DefinitionError(f"error in schema file {path}: {exc}") from exc
    return module
