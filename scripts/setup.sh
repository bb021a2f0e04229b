#!/usr/bin/env bash
# Set up everything balsam_sync needs on a fresh Debian machine, idempotently:
#   - the project's own venv (.venv) with balsam_sync installed editable + test/dev tools;
#   - the real upstream Balsam server (PostgreSQL from Debian + its own venv), started on
#     127.0.0.1 (scripts/real-balsam-server.sh); `scripts/setup.sh venv` stops before it
#     (the fast tier of the tests needs no server).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}

if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.setup-stamp
want=$(cat setup.cfg pyproject.toml | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "setup: installing balsam_sync and its test tools into .venv"
  .venv/bin/python -m pip install --disable-pip-version-check -q --upgrade pip >/dev/null
  .venv/bin/python -m pip install --disable-pip-version-check -q -e ".[test,dev]"
  echo "$want" > "$stamp"
fi

if [ "${1:-}" = venv ]; then
  echo "setup: done (venv only)"
  exit 0
fi

bash scripts/real-balsam-server.sh install
bash scripts/real-balsam-server.sh start >/dev/null
echo "setup: done (server: $(bash scripts/real-balsam-server.sh url))"
