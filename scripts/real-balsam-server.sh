#!/usr/bin/env bash
# real-balsam-server.sh -- run the REAL upstream Balsam REST API server
# (PyPI `balsam==0.7.0a24`: FastAPI + SQLAlchemy 1.4 + PostgreSQL, pydantic v1)
# on loopback only: balsam_sync's tests, demo and benchmarks talk to it, never to a fake.
#
# Usage: real-balsam-server.sh install|start|stop|restart|status|url|token <user> [password]|env|reset-db
#
#   install   apt PostgreSQL (if missing), venv + pinned deps, private PG cluster,
#             database `balsam_test`, upstream alembic migrations. Idempotent.
#   start     start PostgreSQL (127.0.0.1:$PG_PORT) and gunicorn/uvicorn (127.0.0.1:$API_PORT).
#   stop      stop what `start` started (by pid file only).
#   status    exit 0 when PostgreSQL and the API answer, 3 otherwise.
#   token U [P]  print a bearer token for user U (registers U with password P when missing;
#             P defaults to $BALSAM_REAL_PASSWORD or "test-password").
#   url       print the API's base URL.
#   env       print the server's environment (DSN contains the generated DB password).
#   reset-db  TRUNCATE users CASCADE (wipes all users/sites/apps/jobs), like upstream tests do.
#
# Everything lives under $BALSAM_REAL_HOME (default ~/.cache/balsam-real-server): venv/, run/
# (pid files), logs/, secrets/; PostgreSQL's data, socket and log under $BALSAM_REAL_PGHOME
# (default /var/tmp/balsam-real-pg-PORT, owned by the postgres OS user). Loopback only.
#
# Known upstream packaging gap: the PyPI wheel/sdist of 0.7.0a24 ship no alembic versions/
# scripts, so `balsam server migrate` is a no-op; `install` builds the schema from the
# SQLAlchemy models (Base.metadata.create_all) and creates the one GIN index by hand.
set -euo pipefail

BASE=${BALSAM_REAL_HOME:-$HOME/.cache/balsam-real-server}
VENV=$BASE/venv
RUN=$BASE/run
# PostgreSQL runs as the `postgres` OS user, which cannot enter a private $HOME (e.g. root's home):
# its data dir, socket and log live in a folder of its own.
PG_PORT_=${BALSAM_REAL_PG_PORT:-54329}
PGHOME=${BALSAM_REAL_PGHOME:-/var/tmp/balsam-real-pg-$PG_PORT_}
PGDATA=$PGHOME/data
PGSOCK=$PGHOME/sock
PGLOG=$PGHOME/postgres.log
LOGS=$BASE/logs
SECRETS=$BASE/secrets
HOST=127.0.0.1
PG_PORT=${BALSAM_REAL_PG_PORT:-54329}
API_PORT=${BALSAM_REAL_PORT:-8765}
WORKERS=${BALSAM_REAL_WORKERS:-1}
DB_NAME=balsam_test
DB_USER=balsam
PG_OS_USER=postgres
API_URL="http://$HOST:$API_PORT"
DEFAULT_PASSWORD=${BALSAM_REAL_PASSWORD:-test-password}
TIMINGS=$LOGS/timings.log
PYTHON=${BALSAM_REAL_PYTHON:-python3}

die() { echo "real-balsam-server: ERROR: $*" >&2; exit 1; }
say() { echo "real-balsam-server: $*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN{printf "%.1f", b-a}'; }
record() { # phase seconds
  mkdir -p "$LOGS"
  echo "$(date -u +%FT%TZ) $1 $2s" >> "$TIMINGS"
  say "phase '$1' took $2s"
}

pg_bindir() {
  local d
  d=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
  [ -n "$d" ] && [ -x "$d/initdb" ] && { echo "$d"; return 0; }
  return 1
}

as_pg() { (cd / && runuser -u "$PG_OS_USER" -- "$@"); }

# ---------------------------------------------------------------- pinned deps
# Upstream requirements/deploy.txt pins, relaxed only where Python 3.11 needs it:
#   psycopg2==2.9.4        -> psycopg2-binary==2.9.10 (no compiler/libpq-dev; cp311 wheel)
#   pydantic==1.9.1        -> pydantic==1.10.13 (first 1.x line with 3.11 support; still v1)
#   PyYAML==6.0            -> 6.0.1 ; psutil==5.9.2 -> 5.9.8 (cp311/abi3 wheels)
#   + bcrypt==4.0.1 (passlib 1.7.4 breaks with bcrypt>=4.1/5.x)
#   + websockets/uvloop/httptools/h11/watchfiles/urllib3/MarkupSafe pinned to 2022-era
#     versions that have cp311 wheels (uvicorn 0.18.3 predates websockets 14+ API changes)
write_requirements() {
  cat > "$BASE/requirements-server.txt" <<'EOF'
balsam==0.7.0a24
fastapi==0.78.0
starlette==0.19.1
anyio==3.7.1
pydantic[dotenv]==1.10.13
python-dotenv==0.21.0
SQLAlchemy==1.4.41
alembic==1.8.1
psycopg2-binary==2.9.10
orjson==3.8.0
uvicorn[standard]==0.18.3
uvloop==0.17.0
httptools==0.5.0
websockets==10.4
watchfiles==0.18.1
h11==0.14.0
python-multipart==0.0.5
gunicorn==20.1.0
PyJWT==2.5.0
passlib[bcrypt]==1.7.4
bcrypt==4.0.1
aredis==1.1.8
redis==4.3.4
PyYAML==6.0.1
multiprocessing-logging==0.3.3
click==8.1.3
inquirer==2.10.0
python-dateutil==2.8.2
Jinja2==3.1.2
MarkupSafe==2.1.3
requests==2.28.1
urllib3==1.26.20
psutil==5.9.8
globus-sdk==3.14.0
configobj==5.0.6
pyzmq==24.0.1
dill==0.3.6
tblib==1.7.0
EOF
}

# ---------------------------------------------------------------- phases
phase_apt() {
  local t0; t0=$(now)
  local pkgs=""
  pg_bindir >/dev/null || pkgs="postgresql"
  command -v curl >/dev/null || pkgs="$pkgs curl"
  if [ -z "$pkgs" ]; then
    say "PostgreSQL binaries present: $(pg_bindir); curl present"
  else
    [ "$(id -u)" = 0 ] || die "missing Debian packages ($pkgs) and not root: install them first"
    say "installing Debian packages:$pkgs (apt-get update + install)"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
    # shellcheck disable=SC2086
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $pkgs >/dev/null || die "apt-get install$pkgs failed"
    pg_bindir >/dev/null || die "postgresql installed but no /usr/lib/postgresql/*/bin/initdb found"
  fi
  command -v runuser >/dev/null || die "runuser (util-linux) not found"
  id "$PG_OS_USER" >/dev/null 2>&1 || die "OS user '$PG_OS_USER' missing (the Debian postgresql package creates it)"
  record apt "$(elapsed "$t0")"
}

phase_pip() {
  local t0; t0=$(now)
  mkdir -p "$BASE" "$LOGS"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -c 'import sys; assert sys.version_info[:2] >= (3, 8), sys.version' \
      || die "$PYTHON is too old (need Python >= 3.8; tested with 3.11)"
    say "creating venv $VENV"
    "$PYTHON" -m venv "$VENV" || die "python -m venv failed"
  fi
  write_requirements
  local want have=""
  want=$(sha256sum "$BASE/requirements-server.txt" | cut -d' ' -f1)
  [ -f "$BASE/.pip-stamp" ] && have=$(cat "$BASE/.pip-stamp")
  if [ "$want" = "$have" ] && "$VENV/bin/python" -c 'import balsam.server.models, gunicorn, uvicorn, psycopg2' 2>/dev/null; then
    say "pinned requirements already installed"
  else
    say "pip install -r $BASE/requirements-server.txt (log: $LOGS/pip-install.log)"
    if ! "$VENV/bin/pip" install --disable-pip-version-check -r "$BASE/requirements-server.txt" \
        > "$LOGS/pip-install.log" 2>&1; then
      tail -n 30 "$LOGS/pip-install.log" >&2
      die "pip install failed (full log: $LOGS/pip-install.log)"
    fi
    echo "$want" > "$BASE/.pip-stamp"
  fi
  overlay_migrations
  record pip "$(elapsed "$t0")"
}

site_alembic_dir() {
  "$VENV/bin/python" -c 'import pathlib, balsam.server.models.alembic as a; print(pathlib.Path(a.__file__).parent)' 2>/dev/null \
    | tail -n 1
}

overlay_migrations() {
  # The PyPI package ships no alembic versions/ scripts: build the schema from the
  # SQLAlchemy models instead (see migrate step).
  touch "$BASE/.migrations-fallback"
}

write_configs() {
  mkdir -p "$SECRETS" "$RUN" "$LOGS/server"
  chmod 700 "$SECRETS"
  [ -s "$SECRETS/db-password" ] || { "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(16))' > "$SECRETS/db-password"; }
  [ -s "$SECRETS/auth-secret" ] || { "$VENV/bin/python" -c 'import secrets; print(secrets.token_hex(32))' > "$SECRETS/auth-secret"; }
  chmod 600 "$SECRETS"/*
  local dbpw; dbpw=$(cat "$SECRETS/db-password")
  # NOTE: not named .env on purpose (balsam Settings also reads ./.env)
  cat > "$BASE/server.env" <<EOF
BALSAM_DATABASE_URL='postgresql://$DB_USER:$dbpw@$HOST:$PG_PORT/$DB_NAME'
BALSAM_AUTH_LOGIN_METHODS='["password"]'
BALSAM_AUTH_SECRET_KEY='$(cat "$SECRETS/auth-secret")'
BALSAM_LOG_DIR='$LOGS/server'
BALSAM_LOG_LEVEL='INFO'
BALSAM_REDIS_PARAMS='{"unix_socket_path": "$RUN/redis-not-running.sock"}'
EOF
  chmod 600 "$BASE/server.env"
  cat > "$BASE/gunicorn.conf.py" <<EOF
# generated by real-balsam-server.sh (upstream gunicorn.conf.example.py, but loopback-only)
bind = "$HOST:$API_PORT"
workers = $WORKERS
worker_class = "uvicorn.workers.UvicornWorker"
timeout = 60
# upstream leaves gunicorn's 2 s keep-alive; 75 s avoids sporadic "connection reset" races
# when a test client reuses an idle pooled connection
keepalive = 75
daemon = True
pidfile = "$RUN/gunicorn.pid"
loglevel = "info"
accesslog = "$LOGS/gunicorn.access"
errorlog = "$LOGS/gunicorn.error"
capture_output = True
proc_name = "balsam-server"
EOF
}

load_env() {
  [ -f "$BASE/server.env" ] || die "not installed ($BASE/server.env missing): run '$0 install' first"
  set -a; . "$BASE/server.env"; set +a
}

pg_running() { [ -f "$PGDATA/PG_VERSION" ] && as_pg "$(pg_bindir)/pg_ctl" -D "$PGDATA" status >/dev/null 2>&1; }

port_busy() { # port -> 0 if something listens on 127.0.0.1:port
  "$PYTHON" - "$1" <<'EOF' 2>/dev/null
import socket, sys
s = socket.socket(); s.settimeout(0.5)
sys.exit(0 if s.connect_ex(("127.0.0.1", int(sys.argv[1]))) == 0 else 1)
EOF
}

start_pg() {
  local bin; bin=$(pg_bindir) || die "PostgreSQL not installed: run '$0 install'"
  [ -f "$PGDATA/PG_VERSION" ] || die "no cluster at $PGDATA: run '$0 install'"
  if pg_running; then return 0; fi
  port_busy "$PG_PORT" && die "port $HOST:$PG_PORT is already in use by another process (set BALSAM_REAL_PG_PORT)"
  mkdir -p "$PGSOCK"; chown "$PG_OS_USER" "$PGHOME" "$PGSOCK"
  touch "$PGLOG"; chown "$PG_OS_USER" "$PGLOG"
  as_pg "$bin/pg_ctl" -D "$PGDATA" -l "$PGLOG" -w -t 60 start >/dev/null \
    || { tail -n 20 "$PGLOG" >&2; die "PostgreSQL failed to start (log: $PGLOG)"; }
  say "PostgreSQL up on $HOST:$PG_PORT (pid $(head -n 1 "$PGDATA/postmaster.pid"))"
}

psql_admin() { as_pg "$(pg_bindir)/psql" -h "$PGSOCK" -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qAt "$@"; }

phase_db() {
  local t0 bin; t0=$(now)
  bin=$(pg_bindir) || die "PostgreSQL not installed"
  write_configs
  if [ ! -f "$PGDATA/PG_VERSION" ]; then
    say "initdb $PGDATA (as OS user $PG_OS_USER)"
    mkdir -p "$PGDATA" "$PGSOCK"; chown "$PG_OS_USER" "$PGHOME" "$PGDATA" "$PGSOCK"; chmod 700 "$PGDATA"
    as_pg "$bin/initdb" -D "$PGDATA" -U postgres -E UTF8 --locale=C.UTF-8 \
      --auth-local=peer --auth-host=scram-sha-256 > "$LOGS/initdb.log" 2>&1 \
      || { tail -n 20 "$LOGS/initdb.log" >&2; die "initdb failed (log: $LOGS/initdb.log)"; }
    cat >> "$PGDATA/postgresql.conf" <<EOF
# appended by real-balsam-server.sh (loopback only; settings after upstream balsam.util.postgres)
listen_addresses = '$HOST'
port = $PG_PORT
unix_socket_directories = '$PGSOCK'
max_connections = 210
synchronous_commit = off
password_encryption = 'scram-sha-256'
client_encoding = 'UTF8'
timezone = 'UTC'
EOF
  fi
  start_pg
  local dbpw; dbpw=$(cat "$SECRETS/db-password")
  if [ "$(psql_admin -c "SELECT 1 FROM pg_roles WHERE rolname='$DB_USER'")" != 1 ]; then
    psql_admin -c "CREATE ROLE $DB_USER LOGIN PASSWORD '$dbpw'"
  else
    psql_admin -c "ALTER ROLE $DB_USER LOGIN PASSWORD '$dbpw'"
  fi
  if [ "$(psql_admin -c "SELECT 1 FROM pg_database WHERE datname='$DB_NAME'")" != 1 ]; then
    psql_admin -c "CREATE DATABASE $DB_NAME OWNER $DB_USER ENCODING 'UTF8'"
  fi
  migrate
  record initdb+migrate "$(elapsed "$t0")"
}

migrate() {
  load_env
  rm -f "$BASE/.schema-ok"
  if [ -f "$BASE/.migrations-fallback" ]; then
    # upstream create_tables() itself fails on PG (Index text "(tags jsonb_path_ops)" gets double
    # parenthesised), so create everything else from the models and that one index by hand.
    (cd "$BASE" && "$VENV/bin/python" - <<'PYEOF'
from sqlalchemy import text
from balsam.server.models import Base, get_engine
engine = get_engine()
jobs = Base.metadata.tables["jobs"]
for ix in [ix for ix in jobs.indexes if ix.name == "ix_jobs_tags"]:
    jobs.indexes.discard(ix)
Base.metadata.create_all(engine)
with engine.begin() as conn:
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_jobs_tags ON jobs USING gin (tags jsonb_path_ops)"))
print("tables:", sorted(Base.metadata.tables))
PYEOF
    ) > "$LOGS/migrate.log" 2>&1 || { tail -n 30 "$LOGS/migrate.log" >&2; die "create_tables fallback failed (log: $LOGS/migrate.log)"; }
  else
    # exactly what upstream runs: balsam server migrate -> balsam.util.postgres.run_alembic_migrations
    (cd "$BASE" && "$VENV/bin/balsam" server migrate) > "$LOGS/migrate.log" 2>&1 \
      || { tail -n 30 "$LOGS/migrate.log" >&2; die "alembic migrations failed (log: $LOGS/migrate.log)"; }
  fi
  local rev
  rev=$(as_pg "$(pg_bindir)/psql" -h "$PGSOCK" -p "$PG_PORT" -U postgres -d "$DB_NAME" -qAt \
        -c "SELECT version_num FROM alembic_version" 2>/dev/null || echo "n/a")
  touch "$BASE/.schema-ok"
  say "schema ready in $DB_NAME (alembic revision: ${rev:-none})"
}

gunicorn_pid() {
  local pid
  [ -f "$RUN/gunicorn.pid" ] || return 1
  pid=$(tr -dc 0-9 < "$RUN/gunicorn.pid")
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null && grep -qa gunicorn "/proc/$pid/cmdline" 2>/dev/null || return 1
  echo "$pid"
}

api_ok() { curl -fsS -m 3 "$API_URL/auth/how" >/dev/null 2>&1; }

cmd_install() {
  local t0; t0=$(now)
  phase_apt
  phase_pip
  phase_db
  record install-total "$(elapsed "$t0")"
  say "installed. next: $0 start"
}

cmd_start() {
  local t0 pid i; t0=$(now)
  [ -x "$VENV/bin/gunicorn" ] || die "not installed ($VENV missing): run '$0 install' first"
  [ -f "$PGDATA/PG_VERSION" ] || die "no DB cluster at $PGDATA: run '$0 install' first"
  [ -f "$BASE/.schema-ok" ] || die "database schema not initialised (last migrate failed?): run '$0 install' first"
  write_configs   # regenerates env/gunicorn conf (ports may have been overridden)
  start_pg
  load_env
  if pid=$(gunicorn_pid); then
    if api_ok; then say "API already running (gunicorn master pid $pid) at $API_URL"; cmd_status; return 0; fi
    die "gunicorn pid $pid is alive but $API_URL does not answer; see $LOGS/gunicorn.error (try: $0 stop; $0 start)"
  fi
  port_busy "$API_PORT" && die "port $HOST:$API_PORT is already in use by another process (set BALSAM_REAL_PORT)"
  rm -f "$RUN/gunicorn.pid"
  (cd "$BASE" && "$VENV/bin/gunicorn" -c "$BASE/gunicorn.conf.py" balsam.server.main:app) \
    || die "gunicorn failed to launch; see $LOGS/gunicorn.error"
  for i in $(seq 1 120); do
    if api_ok; then break; fi
    if [ "$i" -gt 4 ] && ! gunicorn_pid >/dev/null; then
      tail -n 40 "$LOGS/gunicorn.error" >&2 || true
      die "gunicorn exited during startup (log: $LOGS/gunicorn.error)"
    fi
    sleep 0.25
  done
  api_ok || { tail -n 40 "$LOGS/gunicorn.error" >&2; die "API did not answer on $API_URL within 30s"; }
  record server-start "$(elapsed "$t0")"
  cmd_status
}

cmd_stop() {
  local pid i
  if pid=$(gunicorn_pid); then
    say "stopping gunicorn (master pid $pid)"
    kill -TERM "$pid"
    for i in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && die "gunicorn pid $pid did not exit after 15s"
  else
    say "gunicorn not running"
  fi
  rm -f "$RUN/gunicorn.pid"
  if pg_running; then
    say "stopping PostgreSQL"
    as_pg "$(pg_bindir)/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null || die "pg_ctl stop failed"
  else
    say "PostgreSQL not running"
  fi
}

cmd_status() {
  local rc=0 pid
  if pg_running; then echo "postgres: running pid=$(head -n 1 "$PGDATA/postmaster.pid") listen=$HOST:$PG_PORT db=$DB_NAME data=$PGDATA"
  else echo "postgres: stopped"; rc=3; fi
  if pid=$(gunicorn_pid); then
    echo "api: gunicorn master pid=$pid workers=[$(pgrep -P "$pid" | tr '\n' ' ' | sed 's/ $//')] url=$API_URL"
  else echo "api: stopped"; rc=3; fi
  if api_ok; then echo "health: GET $API_URL/auth/how -> $(curl -fsS -m 3 "$API_URL/auth/how")"
  else echo "health: no answer from $API_URL"; rc=3; fi
  echo "logs: $LOGS   token: $0 token <user>"
  return $rc
}

cmd_token() {
  local user=${1:-} pw=${2:-$DEFAULT_PASSWORD}
  [ -n "$user" ] || die "usage: $0 token <user> [password]"
  [ -x "$VENV/bin/python" ] || die "not installed: run '$0 install' first"
  api_ok || die "API not answering at $API_URL: run '$0 start'"
  "$VENV/bin/python" - "$API_URL" "$user" "$pw" <<'EOF'
import sys, requests
url, user, pw = sys.argv[1:4]
r = requests.post(f"{url}/auth/password/register", json={"username": user, "password": pw}, timeout=30)
if r.status_code not in (201, 400):
    sys.exit(f"real-balsam-server: ERROR: register {user}: HTTP {r.status_code} {r.text}")
r = requests.post(f"{url}/auth/password/login", data={"username": user, "password": pw}, timeout=30)
if r.status_code != 200:
    sys.exit(f"real-balsam-server: ERROR: login {user}: HTTP {r.status_code} {r.text} "
             "(user exists with another password?)")
print(r.json()["access_token"])
EOF
}

cmd_env() { load_env; cat "$BASE/server.env"; echo "BALSAM_API_URL=$API_URL"; }

cmd_reset_db() {
  pg_running || die "PostgreSQL not running: run '$0 start'"
  as_pg env PGOPTIONS='-c client_min_messages=warning' "$(pg_bindir)/psql" -h "$PGSOCK" -p "$PG_PORT" \
    -U postgres -d "$DB_NAME" -v ON_ERROR_STOP=1 -qAt -c "TRUNCATE TABLE users CASCADE" >/dev/null
  say "truncated users (cascade) in $DB_NAME"
}

case "${1:-}" in
  install) cmd_install ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  restart) cmd_stop; cmd_start ;;
  status) cmd_status ;;
  token) shift; cmd_token "$@" ;;
  env) cmd_env ;;
  url) echo "$API_URL" ;;
  migrate) start_pg; migrate ;;
  reset-db) cmd_reset_db ;;
  *) sed -n '2,20p' "$0" | sed 's/^# \{0,1\}//'; [ -n "${1:-}" ] && die "unknown subcommand '$1'"; exit 2 ;;
esac
