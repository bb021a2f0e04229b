#!/usr/bin/env python
"""Benchmarks of balsam_sync against the local real Balsam server, side by side in one run.

``python scripts/bench.py --help`` lists the options; the benchmarks are the package
``scripts/benchmarks/`` (its ``__init__.py`` lists the figures and modules).
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# This repository's balsam_sync first, and scripts/ (the folder of the benchmarks package).
for path in (ROOT / "scripts", ROOT):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

from benchmarks.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
