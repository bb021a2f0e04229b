#!/usr/bin/env bash
# Set up (idempotent), start the real Balsam server locally and run a short demo against it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python scripts/demo.py "$@"
