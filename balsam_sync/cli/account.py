"""``balsam-sync login``: get a token with a password; save it as upstream's ``balsam login``."""

from __future__ import annotations

import os
import sys

import click

from ..config import (
    ENV_API_ROOT,
    ENV_TOKEN,
    client_yml_path,
    normalize_url,
    offline_from_env,
    read_client_yml,
)
from ..errors import OfflineError
from ..remote.auth import password_login
from .app import State, main, pass_state
from .show import expiry

ACCOUNTS = """\
Accounts are made by whoever runs your Balsam server: ask its administrators for a user name
and password (for the ALCF service, the ALCF help desk). A server that allows self-service sign
up takes `POST <url>/auth/password/register` with the JSON {"username": ..., "password": ...}.
An administrator can also hand you a token: set BALSAM_SYNC_TOKEN instead of logging in."""


@main.command(epilog=ACCOUNTS)
@click.option("--url", help="The server's URL with its scheme, e.g. https://balsam.example.org.")
@click.option("--username", help="Your Balsam user name (asked when not given).")
@click.option("--password-stdin", is_flag=True, help="Read the password from stdin (scripts).")
@pass_state
def login(state: State, url: str | None, username: str | None, password_stdin: bool) -> None:
    """Log in with a user name and password; save the token (client.yml, mode 0600)."""
    if password_stdin and not username:
        raise click.UsageError("--password-stdin needs --username")
    if offline_from_env():
        raise OfflineError("logging in needs the server, but BALSAM_SYNC_OFFLINE is set: unset it")
    url = url or state.api_root or os.environ.get(ENV_API_ROOT)
    url = url or read_client_yml(client_yml_path()).get("api_root") or click.prompt("Server URL")
    url = normalize_url(str(url))
    username = username or str(click.prompt("Username"))
    typed = sys.stdin.readline().rstrip("\r\n") if password_stdin else None
    if typed == "":
        raise click.UsageError("--password-stdin: no password on stdin")
    done = password_login(url, username, typed or click.prompt("Password", hide_input=True))
    click.echo(f"logged in as {username} at {done.api_root}")
    click.echo(f"settings written to {done.settings_path} (mode 0600)")
    click.echo(f"token expiry: {expiry(done.expiry)}")
    if os.environ.get(ENV_TOKEN):
        click.echo(f"note: {ENV_TOKEN} is set and takes precedence over the saved token", err=True)
