"""The ``balsam-sync`` command: log in, inspect and drive the sync of the local mirror.

Every balsam_sync error is printed as one line on stderr (never a traceback, never the token).
Exit codes: 0 ok, 1 error, 2 bad usage, 3 a daemon already runs, 4 not authenticated.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

import balsam_sync

from .auth import password_login
from .cache.outbox import Entry, EntryState
from .client import Client
from .config import ENV_API_ROOT, ENV_TOKEN, client_yml_path, read_client_yml
from .errors import BalsamSyncError, NotAuthenticated, UsageError
from .query import Query
from .sync.daemon import DaemonAlreadyRunning, SyncDaemon
from .sync.lock import FileLock
from .sync.pull import Progress
from .sync.status import SyncStatus
from .token import claims

EXIT_ERROR, EXIT_USAGE, EXIT_DAEMON_RUNNING, EXIT_NOT_AUTHENTICATED = 1, 2, 3, 4
_CODES = {DaemonAlreadyRunning: 3, NotAuthenticated: 4, UsageError: 2}
_YES_NO = {True: "yes", False: "no", None: "not checked"}


class _State:
    """The global options, and the client built from them on first use."""

    def __init__(self, api_root: str | None, home: str | None) -> None:
        self.api_root = api_root
        self.home = home
        self._client: Client | None = None

    def client(self) -> Client:
        if self._client is None:
            self._client = balsam_sync.connect(api_root=self.api_root, home=self.home)
        root = self._client.settings.api_root
        if not self._client.settings.token:
            text = f"not logged in to {root}: run `balsam-sync login` or set {ENV_TOKEN}"
            raise NotAuthenticated(text, method="", url=root, status=401, body=None)
        return self._client

    def redact(self, text: str) -> str:
        """``text`` on one line, with any token replaced by ***."""
        secrets = [os.environ.get(ENV_TOKEN), self._client.settings.token if self._client else None]
        for secret in [s for s in secrets if s]:
            text = text.replace(secret, "***")
        return " ".join(text.split())

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


pass_state = click.make_pass_decorator(_State)


class _Main(click.Group):
    """Turns balsam_sync errors into one line on stderr and a distinct exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (BalsamSyncError, OSError) as exc:
            state = ctx.find_object(_State) or _State(None, None)
            click.echo(f"error: {state.redact(str(exc)) or type(exc).__name__}", err=True)
            ctx.exit(next((c for kind, c in _CODES.items() if isinstance(exc, kind)), EXIT_ERROR))


@contextmanager
def _logging_to(handler: logging.Handler, level: int, fmt: str) -> Iterator[None]:
    """Send balsam_sync's records of ``level`` and up to ``handler`` (undone on exit)."""
    handler.setLevel(level)
    handler.setFormatter(logging.Formatter(fmt))
    package = logging.getLogger("balsam_sync")
    saved = package.level
    package.setLevel(min(level, saved or logging.WARNING))
    package.addHandler(handler)
    try:
        yield
    finally:
        package.removeHandler(handler)
        package.setLevel(saved)
        handler.close()


def duration(seconds: float) -> str:
    """Say how long ``seconds`` is in at most two units: "3m 12s", "2h", "1d 4h", "0s"."""
    rest = int(max(seconds, 0))
    days, rest = divmod(rest, 86400)
    hours, rest = divmod(rest, 3600)
    parts = [(days, "d"), (hours, "h"), *zip(divmod(rest, 60), ("m", "s"), strict=True)]
    first = next((i for i, (value, _) in enumerate(parts) if value), 3)
    shown = [parts[first]] + [p for p in parts[first + 1 : first + 2] if p[0]]
    return " ".join(f"{value}{unit}" for value, unit in shown)


def _stamp(when: datetime | None) -> str:
    when = when and (when if when.tzinfo else when.replace(tzinfo=timezone.utc))  # naive: UTC
    return when.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if when else "-"


def _ago(when: datetime | None) -> str:
    return f"{duration(time.time() - when.timestamp())} ago ({_stamp(when)})" if when else "never"


def _expiry(when: datetime | None) -> str:
    if when is None:
        return "unknown"
    left = when.timestamp() - time.time()
    return f"{_stamp(when)} ({'EXPIRED' if left <= 0 else 'expires in ' + duration(left)})"


def _table(headers: list[str], rows: list[list[str]], widest: int = 48) -> None:
    cells = [[c if len(c) <= widest else c[: widest - 1] + "…" for c in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    for row in [headers, *cells]:
        click.echo("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def _echo_json(value: Any) -> None:
    click.echo(json.dumps(value, indent=2, default=lambda v: getattr(v, "isoformat", v.__str__)()))


@click.group(cls=_Main)
@click.option("--api-root", metavar="URL", help="The Balsam server (overrides env/client.yml).")
@click.option("--home", type=click.Path(file_okay=False), help="Folder holding the mirrors.")
@click.option("-v", "--verbose", count=True, help="Log more to stderr (-v info, -vv debug).")
@click.version_option(balsam_sync.__version__, prog_name="balsam-sync")
@click.pass_context
def main(ctx: click.Context, api_root: str | None, home: str | None, verbose: int) -> None:
    """Sync a local mirror of your Balsam jobs with the server, and work offline."""
    ctx.obj = state = _State(api_root, home)
    ctx.call_on_close(state.close)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    fmt = "%(levelname)s %(name)s: %(message)s"
    ctx.with_resource(_logging_to(logging.StreamHandler(sys.stderr), level, fmt))


@main.command()
@click.option("--url", help="The server's URL (default: --api-root, env or client.yml).")
@click.option("--username", help="Your Balsam user name (asked when not given).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (scripts).")
@pass_state
def login(state: _State, url: str | None, username: str | None, password_stdin: bool) -> None:
    """Log in with a password; save the token."""
    if password_stdin and not username:
        raise click.UsageError("--password-stdin needs --username")
    url = url or state.api_root or os.environ.get(ENV_API_ROOT)
    url = url or read_client_yml(client_yml_path()).get("api_root") or click.prompt("Server URL")
    username = username or str(click.prompt("Username"))
    typed = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    if typed == "":
        raise click.UsageError("--password-stdin: no password on stdin")
    done = password_login(url, username, typed or click.prompt("Password", hide_input=True))
    click.echo(f"logged in as {username} at {done.api_root}")
    click.echo(f"settings written to {done.settings_path} (mode 0600)")
    click.echo(f"token expiry: {_expiry(done.expiry)}")
    if os.environ.get(ENV_TOKEN):
        click.echo(f"note: {ENV_TOKEN} is set and takes precedence over the saved token", err=True)


def _status(client: Client, st: SyncStatus) -> list[tuple[str, Any, str | None]]:
    """(JSON key, JSON value, text or None) of each field `status` shows."""
    root, user = client.settings.api_root, claims(client.settings.token or "").get("username")
    age, exp = st.oldest_pending_age, st.token_expiry
    oldest = f" (oldest {duration(age)})" if age is not None else ""
    return [
        ("server", root, f"{root} as {user or '?'}"),
        ("user", user, None),
        ("mirror", st.mirror_path, st.mirror_path),
        ("pending", st.pending, f"{st.pending}{oldest}"),
        ("oldest_pending_age", age, None),
        ("dead letters", st.dead, f"{st.dead}" + (" (`balsam-sync dead list`)" if st.dead else "")),
        ("last_push", st.last_push, _ago(st.last_push)),
        ("last_pull", st.last_pull, _ago(st.last_pull)),
        ("last_error", st.last_error, st.last_error or "-"),
        ("token_expiry", exp, _expiry(exp)),
        ("token_expired", exp is not None and exp <= datetime.now(timezone.utc), None),
        ("server_reachable", st.server_reachable, _YES_NO[st.server_reachable]),
    ]


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--offline", is_flag=True, help="Do not check whether the server answers.")
@pass_state
def status(state: _State, as_json: bool, offline: bool) -> None:
    """Show the sync state of this mirror."""
    client = state.client()
    fields = _status(client, client.status(check_server=not offline))
    if as_json:
        _echo_json({key.split()[0]: value for key, value, _ in fields})
        return
    for key, _, text in fields:
        if text is not None:
            click.echo(f"{key.replace('_', ' ') + ':':<18}{text}")


@main.command()
@pass_state
@click.pass_context
def push(ctx: click.Context, state: _State) -> None:
    """Send the queued changes now.

    Exits 1 when a change failed or was refused, or the token must be renewed.
    """
    r = state.client().push()
    if r.skipped:
        raise BalsamSyncError("another process is sending this queue (a daemon?); try later")
    click.echo(f"sent {r.sent}, failed {r.failed}, dead {r.dead}, remaining {r.remaining}")
    if r.error:
        click.echo(f"last error: {state.redact(r.error)}", err=True)
    if r.dead:
        click.echo("refused changes: see `balsam-sync dead list`", err=True)
    if r.paused_for_auth:
        click.echo("the server refused the token: log in again (`balsam-sync login`)", err=True)
    if r.failed or r.dead or r.paused_for_auth:
        ctx.exit(EXIT_ERROR)


def _progress(tty: bool) -> Progress:
    """One updating line on a terminal, plain lines otherwise."""

    def show(resource: str, done: int, total: int | None) -> None:
        text = f"pulling {resource}: {done:,} rows" + (f" of {total:,}" if total else "")
        click.echo(f"\r{text:<60}" if tty else text, nl=not tty)

    return show


@main.command()
@click.option("--full", is_flag=True, help="Re-read every job and event, not only changes.")
@pass_state
def pull(state: _State, full: bool) -> None:
    """Bring the mirror up to date."""
    tty, started = sys.stdout.isatty(), time.monotonic()
    try:
        report = state.client().pull(full=full, progress=_progress(tty))
    finally:
        click.echo(f"\r{'':<60}\r" if tty else "", nl=False)
    kind = "full" if report.full else "incremental"
    click.echo(f"{kind} pull done in {time.monotonic() - started:.1f}s")
    rows = [[res, str(n), str(report.deleted.get(res, 0))] for res, n in report.fetched.items()]
    _table(["resource", "fetched", "deleted"], rows)


def _job_row(job: Any) -> list[str]:
    state = getattr(job.state, "value", job.state)
    tags = " ".join(f"{k}:{v}" for k, v in (job.tags or {}).items())
    return [str(job.id), str(state), str(job.workdir), tags, _stamp(job.last_update)]


def _job_query(client: Client, opts: dict[str, Any]) -> Query[Any]:
    """Build (and so validate) the query before any I/O."""
    filters: dict[str, Any] = {"state": list(opts["state"]), "tags": list(opts["tag"])}
    filters = {k: v for k, v in filters.items() if v}
    if opts["workdir"] is not None:
        filters["workdir__contains"] = opts["workdir"]
    query: Query[Any] = client.Job.objects.filter(**filters)
    if opts["order"]:
        query = query.order_by(opts["order"])
    return query.online() if opts["online"] else query.offline()


@main.command()
@click.option("--state", multiple=True, help="Only jobs in this state (repeatable).")
@click.option("--tag", multiple=True, metavar="KEY:VALUE", help="Only jobs with this tag (repeat).")
@click.option("--workdir", help="Only jobs whose workdir contains this text.")
@click.option("--order", help="Order by last_update, id, state or workdir ('-' descending).")
@click.option("--limit", type=click.IntRange(min=0), default=50, help="At most this many [50].")
@click.option("--offset", type=click.IntRange(min=0), default=0, help="Skip this many jobs.")
@click.option("--count", is_flag=True, help="Print only how many jobs match.")
@click.option("--json", "as_json", is_flag=True, help="Print the jobs as JSON.")
@click.option("--online", is_flag=True, help="Ask the server instead of the local mirror.")
@pass_state
def jobs(state: _State, /, limit: int, offset: int, count: bool, **opts: Any) -> None:
    """List jobs from the mirror (works offline)."""
    query = _job_query(state.client(), opts)
    total = query.count()
    if count:
        click.echo(str(total))
        return
    window = query[offset : offset + limit]
    shown = window if isinstance(window, Query) else query
    found = list(window)
    if opts["as_json"]:
        origin = {"source": shown.source, "as_of": shown.as_of}
        _echo_json({"jobs": [j.to_dict() for j in found], "total": total, **origin})
        return
    if found:
        _table(["id", "state", "workdir", "tags", "last_update"], [_job_row(j) for j in found])
    when = f"as of {_stamp(shown.as_of)}" if shown.as_of else "(never synced: `balsam-sync pull`)"
    click.echo(f"{len(found)} of {total} jobs, from {shown.source or 'cache'} {when}")


@main.group()
def dead() -> None:
    """Inspect and resolve refused changes."""


def _dead_row(e: Entry) -> list[str]:
    queued = _stamp(datetime.fromisoformat(e.created_at) if e.created_at else None)
    cells = (e.seq, e.resource, e.op.value, e.obj_id, e.status or "-", e.error or "-", queued)
    return [str(c) for c in cells]


@dead.command("list")
@pass_state
def dead_list(state: _State) -> None:
    """List refused changes and their reasons."""
    entries = state.client().dead_letters()
    headers = ["seq", "resource", "op", "object id", "status", "error", "queued at"]
    if entries:
        _table(headers, [_dead_row(e) for e in entries], widest=80)
    click.echo(f"{len(entries)} dead letter(s)" if entries else "no dead letters")


def _chosen(client: Client, seq: int | None, everything: bool) -> list[int]:
    if (seq is None) != everything:
        raise click.UsageError("give one SEQ or --all")
    if seq is None:
        return [e.seq for e in client.dead_letters()]
    entry = client.mirror.outbox.get(seq)
    if entry is None or entry.state is not EntryState.DEAD:
        raise BalsamSyncError(f"no dead letter with seq {seq} (see `balsam-sync dead list`)")
    return [seq]


_SEQ = click.argument("seq", type=int, required=False)
_ALL = click.option("--all", "everything", is_flag=True, help="Every dead letter.")


@dead.command("retry")
@_SEQ
@_ALL
@pass_state
def dead_retry(state: _State, seq: int | None, everything: bool) -> None:
    """Queue a refused change again."""
    client = state.client()
    done = [s for s in _chosen(client, seq, everything) if client.retry_dead(s)]
    click.echo(f"queued again: {len(done)} (send with `balsam-sync push`)")


@dead.command("discard")
@_SEQ
@_ALL
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def dead_discard(state: _State, seq: int | None, everything: bool, yes: bool) -> None:
    """Drop a refused change for good."""
    client = state.client()
    seqs = _chosen(client, seq, everything)
    if seqs and not yes:
        click.confirm(f"Discard {len(seqs)} refused change(s) for good?", abort=True)
    done = [s for s in seqs if client.discard_dead(s)]
    click.echo(f"discarded: {len(done)}")


@contextmanager
def _own_signals() -> Iterator[None]:
    """Give the previous SIGTERM/SIGINT handlers back afterwards (for in-process callers)."""
    saved = [(s, signal.getsignal(s)) for s in (signal.SIGTERM, signal.SIGINT)]
    try:
        yield
    finally:
        for signum, handler in saved:
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)


@main.command()
@click.option("--interval", type=click.FloatRange(min=0.1), default=30.0, help="Seconds [30].")
@click.option("--batch-size", type=click.IntRange(1, 5000), default=5000, help="Most per request.")
@click.option("--max-backoff", type=click.FloatRange(min=0), default=600.0, help="Max pause [600].")
@click.option("--log-file", type=click.Path(dir_okay=False), help="Default: <mirror>/daemon.log.")
@click.option("--once", is_flag=True, help="Run one round (push, then pull) and exit.")
@pass_state
@click.pass_context
def daemon(ctx: click.Context, state: _State, /, log_file: str | None, **opts: Any) -> None:
    """Push and pull repeatedly, one daemon per mirror.

    SIGTERM lets the batch in flight finish, then exits 0.
    """
    client = state.client()
    path = Path(log_file) if log_file else client.mirror.path.parent / "daemon.log"
    once = opts.pop("once")
    runner = SyncDaemon(client, **opts)
    level = logging.DEBUG if ctx.find_root().params.get("verbose", 0) > 1 else logging.INFO
    path.parent.mkdir(parents=True, exist_ok=True)
    click.echo(f"syncing {client.mirror.path}; log: {path}", err=True)
    fmt = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    with _logging_to(logging.FileHandler(path), level, fmt), _own_signals():
        code = runner.run(max_rounds=1 if once else None)
    if once:
        st = client.status(check_server=False)
        click.echo(f"one round done: {st.pending} pending, {st.dead} dead letters")
    ctx.exit(code)


@main.command()
@click.option("--force", is_flag=True, help="Delete even if changes are queued (they are lost).")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_state
def rebuild(state: _State, force: bool, yes: bool) -> None:
    """Delete the mirror; the next pull rebuilds it."""
    client = state.client()
    st, mirror = client.status(check_server=False), client.mirror
    if st.pending and not force:
        text = f"{st.pending} change(s) are not sent yet: `balsam-sync push` first (or --force)"
        raise BalsamSyncError(text)
    locks = [FileLock(mirror.path.with_suffix(".daemon.lock")), FileLock(mirror.lock_path)]
    try:
        if not all(lock.acquire(0) for lock in locks):
            raise DaemonAlreadyRunning(f"a daemon or a push is using {mirror.path}: stop it first")
        lost = f" ({st.pending} unsent, {st.dead} refused changes are lost)"
        if not yes:
            click.confirm(f"Delete {mirror.path}{lost if st.pending + st.dead else ''}", abort=True)
        state.close()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{mirror.path}{suffix}").unlink(missing_ok=True)
    finally:
        for lock in locks:
            lock.release()
    click.echo(f"deleted {mirror.path}; run `balsam-sync pull` to rebuild it")


if __name__ == "__main__":
    main()
