"""The one seed of every random choice in tests: CHUTE_TEST_SEED reproduces a run."""

from __future__ import annotations

import os

TEST_SEED = int(os.environ.get("CHUTE_TEST_SEED", "20261203"))
