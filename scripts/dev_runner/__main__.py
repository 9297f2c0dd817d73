"""`python -m dev_runner`: what `scripts/dev` runs."""

import sys

from dev_runner.cli import main

sys.exit(main())
