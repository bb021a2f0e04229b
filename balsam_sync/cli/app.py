"""The ``balsam-sync`` group: global options, the client they build, and error reporting.

Every error is printed as one line on stderr that ends with what to do (never a traceback,
never a token or a password). A closed pipe (``balsam-sync jobs | head``) ends the command
quietly. Exit codes: 0 ok, 1 error, 2 bad usage, 3 a daemon already runs, 4 not authenticated
(or the server refused the token), 5 the server cannot be reached (or no Balsam server answers
at its URL): "cannot reach <scheme://host:port>", never "not logged in".
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import click

import balsam_sync

from ..client import Client
from ..config import ENV_TOKEN, client_yml_path, origin, read_client_yml, server_key
from ..errors import BalsamSyncError, NotAuthenticated, ServerUnreachable, UsageError
from ..remote.auth import check_server, check_token
from ..sync.daemon import DaemonAlreadyRunning

log = logging.getLogger(__name__)

EXIT_ERROR, EXIT_USAGE, EXIT_DAEMON_RUNNING, EXIT_NOT_AUTHENTICATED = 1, 2, 3, 4
EXIT_UNREACHABLE = 5
_CODES = {DaemonAlreadyRunning: 3, NotAuthenticated: 4, UsageError: 2, ServerUnreachable: 5}
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")


class State:
    """The global options, and the client built from them on first use."""

    def __init__(self, api_root: str | None, home: str | None) -> None:
        self.api_root = api_root
        self.home = home
        self._client: Client | None = None

    def connect(self) -> Client:
        """The client of these options (no token needed; nothing is opened yet)."""
        if self._client is None:
            self._client = balsam_sync.connect(api_root=self.api_root, home=self.home)
        return self._client

    def client(self) -> Client:
        """The client of these options; a token is required.

        Raises:
            ServerUnreachable: there is no token, and no Balsam server answers at the URL
                either (a mistyped URL is not a missing login).
            NotAuthenticated: there is no token for this server.
        """
        client = self.connect()
        root = client.settings.api_root
        if not client.settings.token:
            if not client.settings.offline:
                check_server(client.transport)
            text = f"not logged in to {root}: run `balsam-sync login` or set {ENV_TOKEN}"
            raise NotAuthenticated(text + _logged_in_elsewhere(root), url=root, **_NO_REPLY)
        return client

    def first_use(self, client: Client) -> None:
        """Before a command creates the mirror (there is none yet), make sure the server takes
        the token: a refused token, or a server that cannot be reached, creates no mirror.

        Raises:
            NotAuthenticated: the server refuses the token.
            ServerUnreachable: no Balsam server answers.
        """
        if not client.settings.offline and not client.mirror_file.exists():
            check_token(client.remote)

    def redact(self, text: str) -> str:
        """``text`` on one line, with any token and any password in a URL replaced by ***."""
        secrets = [os.environ.get(ENV_TOKEN), self._client.settings.token if self._client else None]
        for secret in [s for s in secrets if s]:
            text = text.replace(secret, "***")
        return " ".join(_USERINFO.sub(r"\1***@", text).split())

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


_NO_REPLY: dict[str, Any] = {"method": "", "status": 401, "body": None}


def _logged_in_elsewhere(root: str) -> str:
    """A hint when client.yml holds a token for another server (a mistyped URL, say)."""
    try:
        stored = str(read_client_yml(client_yml_path()).get("api_root") or "")
        other = stored and server_key(stored) != server_key(root)
    except BalsamSyncError:
        return ""
    return (
        f" (client.yml holds a token for {stored}: is that the server you meant?)" if other else ""
    )


def cannot_reach(exc: BaseException, api_root: str | None) -> str:
    """The one-line text of a server that cannot be reached: "cannot reach <origin>: ..."."""
    text = str(exc)
    if text.startswith("cannot reach"):
        return text
    where = getattr(exc, "url", "") or api_root or "the server"
    return f"cannot reach {origin(where)}: {text}"


pass_state = click.make_pass_decorator(State)


def sentence(text: str) -> str:
    """``text`` ending with a full stop (messages end with a sentence, not a fragment)."""
    text = text.rstrip()
    return text if text.endswith((".", "!", "?", ")")) else text + "."


class Main(click.Group):
    """Turns every error into one line on stderr and a distinct exit code."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.exceptions.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except BrokenPipeError:
            raise  # click's standalone mode ends quietly on a closed pipe
        except (BalsamSyncError, OSError) as exc:
            text = str(exc) or type(exc).__name__
            if isinstance(exc, NotAuthenticated) and "login" not in text:
                text += ": log in again (`balsam-sync login`)"
            if isinstance(exc, ServerUnreachable):
                state = ctx.find_object(State)
                text = cannot_reach(exc, state.api_root if state else None)
            fail(ctx, exc, text)
        except Exception as exc:  # a bug: still one line, the traceback goes to the debug log
            log.debug("unexpected error", exc_info=True)
            text = f"unexpected {type(exc).__name__}: {exc} (a bug in balsam-sync; -vv shows more)"
            fail(ctx, exc, text)


def fail(ctx: click.Context, exc: BaseException, text: str) -> None:
    """Print ``text`` as the one error line and exit with the code of ``exc``."""
    state = ctx.find_object(State) or State(None, None)
    click.echo(f"error: {sentence(state.redact(text))}", err=True)
    ctx.exit(next((c for kind, c in _CODES.items() if isinstance(exc, kind)), EXIT_ERROR))


@contextmanager
def logging_to(handler: logging.Handler, level: int, fmt: str) -> Iterator[None]:
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


@click.group(cls=Main)
@click.option("--api-root", metavar="URL", help="The Balsam server (overrides env/client.yml).")
@click.option("--home", type=click.Path(file_okay=False), help="Folder holding the mirrors.")
@click.option("-v", "--verbose", count=True, help="Log more to stderr (-v info, -vv debug).")
@click.version_option(balsam_sync.__version__, prog_name="balsam-sync")
@click.pass_context
def main(ctx: click.Context, api_root: str | None, home: str | None, verbose: int) -> None:
    """Sync a local mirror of your Balsam jobs with the server, and work offline.

    Settings come from --api-root/--home, then BALSAM_SYNC_API_ROOT, BALSAM_SYNC_TOKEN,
    BALSAM_SYNC_HOME and BALSAM_SYNC_OFFLINE=1 (no command then talks to the server), then
    ~/.balsam/client.yml (written by `balsam-sync login`).
    """
    ctx.obj = state = State(api_root, home)
    ctx.call_on_close(state.close)
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(verbose, 2)]
    fmt = "%(levelname)s %(name)s: %(message)s"
    ctx.with_resource(logging_to(logging.StreamHandler(sys.stderr), level, fmt))
