"""The one percentile definition of chute's reports (bench, load generator, fault suite)."""

from __future__ import annotations

import math
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """Nearest-rank percentile: the smallest value with at least q of all values at or below
    it, i.e. the ceil(q * n)-th smallest (1-based; q = 0 gives the minimum). None when empty.
    Every figure it returns is one that was measured, never an interpolation."""
    if not values:
        return None
    if not 0.0 <= q <= 1.0:
        raise ValueError(f"percentile q must be within [0, 1], not {q}")
    ordered = sorted(values)
    # round() first: 0.99 * 100 is 98.99999999999999 in binary floating point.
    rank = math.ceil(round(q * len(ordered), 9))
    return ordered[max(rank, 1) - 1]
