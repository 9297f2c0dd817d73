"""compose.managed.yaml, the override for managed Kafka and ClickHouse, checked without a
Docker engine: valid Compose alone and merged over compose.yaml (the spec's JSON schema), the
bundled servers left out of the default profile with nothing waiting for them, every variable
one the service reads, and every secret read from a declared Docker secret."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, cast

import jsonschema
import yaml

from tests.unit.test_compose import (
    PYTHON_SERVICES,
    REPO,
    SCHEMA_FILE,
    load_compose,
    variables_read_by,
)

MANAGED_FILE = REPO / "compose.managed.yaml"


class Reset:
    """Compose's `!reset` tag: the override empties the base file's value."""


class _Loader(yaml.SafeLoader):
    pass


_Loader.add_constructor("!reset", lambda loader, node: Reset())


def load(path: Path) -> dict[str, Any]:
    return cast(dict[str, Any], yaml.load(path.read_text(), Loader=_Loader))


def without_resets(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: without_resets(v) for k, v in value.items() if not isinstance(v, Reset)}
    return value


def merged(base: Any, override: Any) -> Any:
    """Compose's merge, as far as these files use it: mappings merge key by key, `!reset`
    removes, sequences of the override are appended."""
    if isinstance(override, Reset):
        return None
    if isinstance(base, dict) and isinstance(override, dict):
        out = dict(base)
        for key, value in override.items():
            result = merged(base.get(key), value)
            if result is None:
                out.pop(key, None)
            else:
                out[key] = result
        return out
    if isinstance(base, list) and isinstance(override, list):
        return base + [item for item in override if item not in base]
    return override


def schema_errors(document: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA_FILE.read_text()))
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in validator.iter_errors(document)]


def project() -> dict[str, Any]:
    return cast(dict[str, Any], merged(load_compose(), load(MANAGED_FILE)))


def test_the_override_and_the_merged_project_match_the_compose_schema() -> None:
    assert not schema_errors(without_resets(load(MANAGED_FILE)))
    assert not schema_errors(project())


def test_bundled_servers_are_out_of_the_default_profile_and_nothing_waits_for_them() -> None:
    services = project()["services"]
    bundled = {name for name, s in services.items() if s.get("profiles")}
    assert bundled == {"kafka", "clickhouse"}
    for name, service in services.items():
        if name in bundled:
            continue
        waits_for = set(service.get("depends_on") or {})
        assert not waits_for & bundled, f"{name} still waits for {waits_for & bundled}"


def test_services_read_every_variable_and_secrets_come_from_declared_files() -> None:
    document = project()
    declared = set(document["secrets"])
    for name, (_native, settings_type) in PYTHON_SERVICES.items():
        service = document["services"][name]
        env = {k: str(v) for k, v in service["environment"].items() if k.startswith("CHUTE_")}
        unread = set(env) - variables_read_by(settings_type)
        assert not unread, f"{name}: sets {sorted(unread)}, which it never reads"
        mounted = set(service.get("secrets") or [])
        assert mounted <= declared
        for key, value in env.items():
            if key.endswith("_FILE") and value.startswith("/run/secrets/"):
                assert value.removeprefix("/run/secrets/") in mounted, f"{name}: {key}"
        # A password is never in the environment: only its file.
        assert env.get("CHUTE_CLICKHOUSE_PASSWORD", "") == ""
        assert "CHUTE_KAFKA_SASL_PASSWORD" not in env
        assert env["CHUTE_CLICKHOUSE_SECURE"].endswith("true}")
