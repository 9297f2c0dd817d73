"""`make_stack`: a per-test chute stack (used by the e2e and the fault tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import Stack


@pytest.fixture
def make_stack(ch: Any, unique_name: str, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks: list[Stack] = []

    def make(stream: dict[str, Any] | None = None, extra_fields: str = "",
             name: str | None = None) -> Stack:
        schema_dir = tmp_path / f"schemas{len(stacks)}"
        schema_dir.mkdir()
        stack = Stack(name or f"{unique_name}{len(stacks) or ''}", schema_dir, tmp_path, ch,
                      stream or {}, extra_fields=extra_fields)
        stack.apply()
        stacks.append(stack)
        return stack

    yield make
    for stack in stacks:
        stack.stop_all()
