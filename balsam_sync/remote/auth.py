"""Logging in: the password flow of the Balsam server, and saving the token like upstream;
and asking whether a Balsam server answers at a URL, and whether it takes the token."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from ..config import client_yml_path, write_client_yml
from ..errors import ConfigError, NotAuthenticated, NotFound, ServerUnreachable
from ..resources import SITE
from ..spec import QuerySpec
from .jwt import expiry
from .outcomes import RetryPolicy
from .rest import Remote
from .transport import Transport
from .wire import login_reply

LOGIN_ROUTE = "/auth/how"
"""The server's list of login methods: every Balsam server answers it, without a token."""


@dataclass(frozen=True)
class Login:
    """The result of a successful login."""

    api_root: str
    token: str
    expiry: datetime | None
    settings_path: Path


def login_methods(api_root: str) -> list[str]:
    """The login methods the server offers ("password", "oauth_device", ...).

    Raises:
        ServerUnreachable: no Balsam server answers at ``api_root`` (see ``check_server``).
    """
    return check_server(Transport(api_root, None, retry=RetryPolicy(attempts=2)))


def check_server(transport: Transport) -> list[str]:
    """Ask, without a token, for the login methods: whether a Balsam server answers at the
    transport's URL. Returns the methods.

    Raises:
        ServerUnreachable: nothing answers, or what answers is no Balsam server (a 404 for
            its login route: a mistyped URL, say), never "not logged in".
    """
    try:
        raw = transport.request("GET", LOGIN_ROUTE, auth=False)
    except NotFound as exc:
        raise ServerUnreachable(
            f"cannot reach a Balsam server at {transport.api_root}: {exc} (is the URL right?)",
            method=exc.method,
            url=exc.url,
        ) from exc
    # The server renders its enum with str(): accept "LoginMethod.password" and "password".
    return [str(m).rsplit(".", 1)[-1] for m in raw or []]


def check_token(remote: Remote) -> None:
    """Make sure a Balsam server answers and takes the token (two small requests).

    Raises:
        ServerUnreachable: no Balsam server answers (``check_server``).
        NotAuthenticated: the server refuses the token.
    """
    check_server(remote.transport)
    remote.count(SITE, QuerySpec(SITE.name))


def password_login(api_root: str, username: str, password: str) -> Login:
    """Log in with a username and password and save the token to client.yml (mode 0600).

    Raises:
        NotAuthenticated: wrong username or password (asked once; never retried).
        ConfigError: the server does not offer password login.
    """
    api_root = api_root.rstrip("/")
    if not api_root.startswith(("http://", "https://")):
        api_root = "https://" + api_root
    if "password" not in login_methods(api_root):
        raise ConfigError(f"{api_root} does not offer password login")
    transport = Transport(api_root, None, retry=RetryPolicy(attempts=2))
    try:
        reply = transport.request(
            "POST",
            "/auth/password/login",
            form={"username": username, "password": password},
            auth=False,
            idempotent=True,
            expect=login_reply(),
        )
    except NotAuthenticated as exc:
        raise NotAuthenticated(
            f"login as {username!r} refused: wrong username or password",
            method="POST",
            url=api_root + "/auth/password/login",
            status=401,
            body=None,
        ) from exc
    token: str = reply["access_token"]
    when = expiry(token)
    path = client_yml_path()
    write_client_yml(path, {"api_root": api_root, "token": token, "token_expiry": when})
    return Login(api_root, token, when, path)
