#!/usr/bin/env python3
"""`scripts/loadgen`: steady HTTP load against chute's ingest API (testkit.loadgen; --help)."""

from __future__ import annotations

import sys

from testkit.loadgen import LoadGenerator, LoadStats, main, make_records

__all__ = ["LoadGenerator", "LoadStats", "main", "make_records"]

if __name__ == "__main__":
    sys.exit(main())
