"""`make_stack`: a per-test chute stack (used by the e2e and the fault tests)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.stack import Stack, Stacks


@pytest.fixture
def make_stack(ch: Any, unique_name: str, tmp_path: Path) -> Iterator[Callable[..., Stack]]:
    stacks = Stacks(tmp_path, unique_name)

    def make(stream: dict[str, Any] | None = None, extra_fields: str = "",
             name: str | None = None) -> Stack:
        default_name, schema_dir = stacks.next_place()
        return stacks.add(Stack(name or default_name, schema_dir, tmp_path, ch, stream or {},
                                extra_fields=extra_fields))

    yield make
    stacks.stop_all()
