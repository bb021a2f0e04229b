"""``balsam-sync status / push / pull / daemon``: see and drive the sync of the mirror."""

from __future__ import annotations

import logging
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

import click

from ..cache import append_own
from ..client import Client
from ..errors import BalsamSyncError, OfflineError, ServerUnreachable
from ..remote.auth import check_server
from ..remote.jwt import claims
from ..sync.daemon import RoundReport
from ..sync.status import SyncStatus
from .app import (
    EXIT_ERROR,
    EXIT_NOT_AUTHENTICATED,
    EXIT_UNREACHABLE,
    State,
    cannot_reach,
    logging_to,
    main,
    pass_state,
    sentence,
)
from .progress import Bars
from .show import ago, duration, echo_json, expiry, table

OFFLINE = "BALSAM_SYNC_OFFLINE is set"


def _token_text(accepted: bool | None, offline: bool) -> str:
    if accepted is None:
        return f"not checked{' (offline)' if offline else ''}"
    return "accepted by the server" if accepted else "refused by the server: `balsam-sync login`"


def _reachable_text(st: SyncStatus) -> str:
    if st.offline:
        return f"not checked ({OFFLINE})"
    return {True: "yes", False: "no", None: "not checked"}[st.server_reachable]


def _skew_text(skew: float | None) -> str | None:
    if skew is None:
        return None
    side = "ahead of" if skew > 0 else "behind"
    return f"this machine's clock is {duration(abs(skew))} {side} the server's"


def _paused_text(since: Any) -> str | None:
    if since is None:
        return None
    return (
        f"since {ago(since)}: the server refused the token; `balsam-sync login` "
        "(the daemon resumes by itself)"
    )


def _status(client: Client, st: SyncStatus) -> list[tuple[str, Any, str | None]]:
    """(JSON key, JSON value, text or None) of each field `status` shows."""
    root, user = client.settings.api_root, claims(client.settings.token or "").get("username")
    age, exp = st.oldest_pending_age, st.token_expiry
    oldest = f" (oldest {duration(age)})" if age is not None else ""
    mirror = st.mirror_path + (f" (UNUSABLE: {st.mirror_error})" if st.mirror_error else "")
    expired = None if st.token_accepted is None else not st.token_accepted
    unknown = "UNKNOWN: the mirror cannot be read (`balsam-sync salvage` keeps what it can)"
    pending = unknown if st.pending is None else f"{st.pending}{oldest}"
    dead = unknown if st.dead is None else f"{st.dead}"
    return [
        ("server", root, f"{root} as {user or '?'}"),
        ("user", user, None),
        ("mirror", st.mirror_path, mirror),
        ("mirror_error", st.mirror_error, None),
        ("pending", st.pending, pending),
        ("oldest_pending_age", age, None),
        ("dead letters", st.dead, dead + (" (`balsam-sync dead list`)" if st.dead else "")),
        ("last_push", st.last_push, ago(st.last_push)),
        ("last_pull", st.last_pull, ago(st.last_pull)),
        ("last_error", st.last_error, st.last_error or "-"),
        ("token_expiry", exp, expiry(exp)),
        ("token", st.token_accepted, _token_text(st.token_accepted, st.offline)),
        ("token_expired", expired, None),
        ("server_reachable", st.server_reachable, _reachable_text(st)),
        ("paused_for_auth", st.paused_for_auth, _paused_text(st.paused_for_auth)),
        ("clock_skew", st.clock_skew, _skew_text(st.clock_skew)),
        ("offline", st.offline, None),
        ("elsewhere", [vars(n) for n in st.elsewhere], None),
    ]


def _warn_elsewhere(st: SyncStatus) -> None:
    for other in st.elsewhere:
        click.echo(
            f"note: {other.pending} change(s) of yours wait in another mirror, for "
            f"{other.api_root}: {other.path} (send them with "
            f"`balsam-sync --api-root {other.api_root} push`)",
            err=True,
        )


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@click.option("--offline", is_flag=True, help="Do not ask the server (token, reachability).")
@pass_state
@click.pass_context
def status(ctx: click.Context, state: State, as_json: bool, offline: bool) -> None:
    """Show the sync state of this mirror, and whether the server takes the token.

    Exits 4 when the server refuses the token, 5 when it cannot be reached, 1 when the mirror
    cannot be used.
    """
    client = state.client()
    unreachable = None
    if not offline and not client.settings.offline:
        try:
            check_server(client.transport)
        except ServerUnreachable as exc:
            unreachable = exc
    st = client.status(check_server=not offline)
    fields = _status(client, st)
    if as_json:
        echo_json({key.split()[0]: value for key, value, _ in fields})
    else:
        for key, _, text in fields:
            if text is not None:
                click.echo(f"{key.replace('_', ' ') + ':':<18}{text}")
        _warn_elsewhere(st)
    if st.token_accepted is False:
        click.echo(
            "error: token refused by the server: log in again (`balsam-sync login`).", err=True
        )
        ctx.exit(EXIT_NOT_AUTHENTICATED)
    if unreachable is not None:
        click.echo(f"error: {sentence(state.redact(cannot_reach(unreachable, None)))}", err=True)
        ctx.exit(EXIT_UNREACHABLE)
    if st.mirror_error:
        click.echo("error: the mirror cannot be used: `balsam-sync check` tells why.", err=True)
        ctx.exit(EXIT_ERROR)


@main.command()
@pass_state
@click.pass_context
def push(ctx: click.Context, state: State) -> None:
    """Send the queued changes now.

    Exits 4 when the server refuses the token, 5 when it cannot be reached, 1 when a change
    failed or was refused.
    """
    client = state.client()
    if client.settings.offline:
        pending = client.status(check_server=False).pending
        raise OfflineError(f"{OFFLINE}: nothing sent; {pending} change(s) stay queued")
    state.first_use(client)
    r = client.push()
    if r.skipped:
        raise BalsamSyncError("another process is sending this queue (a daemon?); try later")
    click.echo(f"sent {r.sent}, failed {r.failed}, dead {r.dead}, remaining {r.remaining}")
    unreachable = bool(r.error) and not r.paused_for_auth and client.transport.link.down()
    if r.error and not unreachable:
        click.echo(f"last error: {state.redact(r.error)}", err=True)
    if r.dead:
        click.echo("refused changes: see `balsam-sync dead list`", err=True)
    _warn_elsewhere(client.status(check_server=False))
    if r.paused_for_auth:
        click.echo(
            "error: the server refused the token: log in again (`balsam-sync login`); "
            f"{r.remaining} change(s) stay queued.",
            err=True,
        )
        ctx.exit(EXIT_NOT_AUTHENTICATED)
    if unreachable:
        text = cannot_reach(BalsamSyncError(r.error), client.settings.api_root)
        click.echo(f"error: {sentence(state.redact(text))}", err=True)
        ctx.exit(EXIT_UNREACHABLE)
    if r.failed or r.dead:
        ctx.exit(EXIT_ERROR)


@main.command()
@click.option("--full", is_flag=True, help="Re-read every job and event, not only changes.")
@pass_state
def pull(state: State, full: bool) -> None:
    """Bring the mirror up to date (a progress bar per resource on a terminal)."""
    client = state.client()
    if client.settings.offline:
        raise OfflineError(f"{OFFLINE}: pulling needs the server; unset it to pull")
    state.first_use(client)
    started = time.monotonic()
    with Bars(sys.stderr.isatty()) as bars:
        report = client.pull(full=full, progress=bars)
    kind = "full" if report.full else "incremental"
    click.echo(f"{kind} pull done in {time.monotonic() - started:.1f}s")
    rows = [[res, str(n), str(report.deleted.get(res, 0))] for res, n in report.fetched.items()]
    table(["resource", "fetched", "deleted"], rows)


class _LogFile(logging.StreamHandler[TextIO]):
    """The daemon's log: a file opened safely, closed with the handler."""

    def close(self) -> None:
        try:
            self.flush()
            self.stream.close()
        finally:
            super().close()


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
@click.option("--log-file", type=click.Path(dir_okay=False), help="Default: next to the mirror.")
@click.option("--once", is_flag=True, help="Run one round (push, then pull) and exit.")
@pass_state
@click.pass_context
def daemon(ctx: click.Context, state: State, /, log_file: str | None, **opts: Any) -> None:
    """Push and pull repeatedly, one daemon per mirror, logging to a file (mode 0600).

    SIGTERM lets the batch in flight finish, then exits 0. A token the server refuses pauses
    sending until `balsam-sync login` writes a new one (the daemon takes it up by itself); a
    daemon stopped while paused exits 4. With --once, exits 4 when the server refused the
    token, 5 when it could not be reached, 1 when the round failed otherwise.
    """
    client = state.client()
    if client.settings.offline:
        raise OfflineError(f"{OFFLINE}: the daemon has nothing to do offline; unset it to sync")
    state.first_use(client)
    path = Path(log_file) if log_file else client.mirror.companion(".daemon.log")
    once = opts.pop("once")
    runner = client.daemon(**opts)
    level = logging.DEBUG if ctx.find_root().params.get("verbose", 0) > 1 else logging.INFO
    handler = _LogFile(append_own(path))  # never through a link planted at its name
    click.echo(f"syncing {client.mirror.path}; log: {path}", err=True)
    fmt = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s"
    with logging_to(handler, level, fmt), _own_signals():
        code = runner.run(max_rounds=1 if once else None)
    if once:
        st = client.status(check_server=False)
        click.echo(f"one round done: {st.pending} pending, {st.dead} dead letters")
        last = runner.last_round
        if last is not None and last.error:
            click.echo(f"error: {sentence(state.redact(_round_failure(last, client)))}", err=True)
            code = code or _round_code(last)
    elif runner.paused:
        click.echo(
            "error: stopped while the server refused the token: `balsam-sync login`.", err=True
        )
        code = code or EXIT_NOT_AUTHENTICATED
    ctx.exit(code)


def _round_failure(report: RoundReport, client: Client) -> str:
    if report.token_refused:
        return "the round failed: the server refused the token: log in again (`balsam-sync login`)"
    if report.unreachable:
        return cannot_reach(BalsamSyncError(report.error), client.settings.api_root)
    return f"the round failed: {report.error}"


def _round_code(report: RoundReport) -> int:
    if report.token_refused:
        return EXIT_NOT_AUTHENTICATED
    return EXIT_UNREACHABLE if report.unreachable else EXIT_ERROR
