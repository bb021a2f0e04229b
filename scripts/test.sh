#!/usr/bin/env bash
# Set up (idempotent) and run the whole test suite against the real Balsam server,
# then the static checks (ruff, mypy --strict). Extra arguments go to pytest.
#   scripts/test.sh fast [pytest args]   the fast tier only: no server, no PostgreSQL
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = fast ]; then
  shift
  bash scripts/setup.sh venv
  exec .venv/bin/python -m pytest -m "not server" "$@"
fi
bash scripts/setup.sh
.venv/bin/python -m pytest "$@"
.venv/bin/ruff check balsam_sync tests scripts
.venv/bin/ruff format --check balsam_sync tests scripts
.venv/bin/mypy
