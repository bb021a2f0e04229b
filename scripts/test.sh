#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite against the real Balsam server,
# then the static checks (ruff, mypy --strict). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/python -m pytest "$@"
.venv/bin/ruff check balsam_sync tests scripts
.venv/bin/ruff format --check balsam_sync tests scripts
.venv/bin/mypy
