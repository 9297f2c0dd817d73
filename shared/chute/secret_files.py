"""Secrets from files: a settings source that reads `<VARIABLE>_FILE` for each secret field.

`CHUTE_CLICKHOUSE_PASSWORD_FILE=/run/secrets/ch` gives `clickhouse_password` the file's text
(one trailing newline dropped, as editors and `echo` add one). Setting both the variable and
its `_FILE` form is an error, as is a file that cannot be read; the messages name the
variable and the path, never the contents.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource


class SecretFileError(ValueError):
    """A `_FILE` variable that cannot be used; the message holds no secret."""


def read_secret_file(variable: str, path: str) -> str:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else type(exc).__name__
        raise SecretFileError(f"{variable}={path}: cannot read the file ({reason})") from None
    return text[:-1] if text.endswith("\n") else text


def secret_values(fields: Mapping[str, FieldInfo], prefix: str, env: Mapping[str, str],
                  is_secret: Callable[[str], bool]) -> dict[str, str]:
    """{field name: secret read from its file} for each secret field whose _FILE is set."""
    values: dict[str, str] = {}
    for name in fields:
        if not is_secret(name):
            continue
        variable = f"{prefix}{name}".upper()
        path = env.get(f"{variable}_FILE", "")
        if not path:
            continue
        if env.get(variable):
            raise SecretFileError(f"{variable} and {variable}_FILE are both set: use one")
        values[name] = read_secret_file(f"{variable}_FILE", path)
    return values


class SecretFilesSource(PydanticBaseSettingsSource):
    def __init__(self, settings_cls: type[BaseSettings],
                 is_secret: Callable[[type[BaseSettings], tuple[int | str, ...]], bool]) -> None:
        super().__init__(settings_cls)
        self._is_secret = is_secret

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # unused: __call__ reads every field at once

    def __call__(self) -> dict[str, Any]:
        prefix = str(self.config.get("env_prefix", ""))
        return secret_values(self.settings_cls.model_fields, prefix, os.environ,
                             lambda name: self._is_secret(self.settings_cls, (name,)))
