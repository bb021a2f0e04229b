"""HTTP to the Balsam server: the only module that imports ``requests``.

It adds the bearer token, applies timeouts and the retry policy, and maps every ``requests``
exception and error status onto ``balsam_sync.errors`` at one boundary (``_mapped``). Nothing
above this module sees a ``requests`` type.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Any, NamedTuple

import requests
import urllib3.exceptions

from .errors import (
    ConfigError,
    ConnectFailed,
    HTTPStatusError,
    NotAuthenticated,
    ReplyLost,
    TransportError,
    describe_body,
    status_error_class,
)
from .retry import RetryPolicy
from .token import expiry

log = logging.getLogger(__name__)

Params = Sequence[tuple[str, str]]
RequestHook = Callable[[str, str], None]
"""Called with (method, url) just before each attempt is sent; used by tests and tracing."""


class Reply(NamedTuple):
    """One reply as ``on_response`` hooks see it (its ``Date`` header is the server's clock)."""

    method: str
    url: str
    status: int
    headers: Mapping[str, str]
    size: int  # body bytes
    seconds: float  # from sending the request until the reply's head arrived


ResponseHook = Callable[[Reply], None]


class Transport:
    """A session with one Balsam server for one user.

    Args:
        api_root: base URL, e.g. ``http://127.0.0.1:8765``.
        token: bearer token (JWT); ``None`` for the auth routes only.
        retry: bounds for retrying transient failures.
        connect_timeout: seconds to establish a connection.
        read_timeout: seconds to wait for a reply.
        verify: TLS certificate verification (on unless explicitly turned off).
    """

    def __init__(
        self,
        api_root: str,
        token: str | None,
        *,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 6.2,
        read_timeout: float = 120.0,
        verify: bool | str = True,
    ) -> None:
        if not api_root.startswith(("http://", "https://")):
            raise ConfigError(f"api_root must start with http:// or https://, got {api_root!r}")
        self.api_root = api_root.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.timeout = (connect_timeout, read_timeout)
        self.on_request: list[RequestHook] = []
        self.on_response: list[ResponseHook] = []
        self._token = token
        self._verify = verify
        self._local = threading.local()

    # -- token ---------------------------------------------------------------------------------

    @property
    def token_expiry(self) -> datetime | None:
        """When the token stops being accepted, read from its ``exp`` claim (no I/O)."""
        return expiry(self._token) if self._token else None

    def set_token(self, token: str | None) -> None:
        """Use a new token from the next request on (after ``balsam-sync login``)."""
        self._token = token

    def _auth_headers(self, auth: bool) -> dict[str, str]:
        if not auth:
            return {}
        if not self._token:
            raise NotAuthenticated(
                "no token: log in with `balsam-sync login` or set BALSAM_SYNC_TOKEN",
                method="",
                url=self.api_root,
                status=401,
                body=None,
            )
        expiry = self.token_expiry
        if expiry is not None and expiry <= datetime.now(timezone.utc):
            raise NotAuthenticated(
                f"the token expired at {expiry.isoformat()}: log in again with `balsam-sync login`",
                method="",
                url=self.api_root,
                status=401,
                body=None,
            )
        return {"Authorization": f"Bearer {self._token}"}

    # -- requests ------------------------------------------------------------------------------

    @property
    def _session(self) -> requests.Session:
        # One pooled session per thread: requests.Session is not documented as thread-safe.
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            session.verify = self._verify
            self._local.session = session
        return session

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        auth: bool = True,
        retry: RetryPolicy | None = None,
    ) -> Any:
        """Send one request (retrying transient failures) and return the decoded JSON body.

        ``idempotent`` defaults to True for every method but POST. A 204 or empty body returns
        ``None``. Error statuses raise the matching ``HTTPStatusError`` subclass at once.
        """
        if idempotent is None:
            idempotent = method != "POST"
        policy = retry or self.retry
        url = self.api_root + path
        headers = self._auth_headers(auth)
        if method == "DELETE":
            # The server closes the connection after every 204 DELETE; closing it on our side
            # too keeps a dead connection out of the pool (balsam-api.md, real-server pitfalls).
            headers["Connection"] = "close"

        def attempt() -> Any:
            for hook in self.on_request:
                hook(method, url)
            with _mapped(method, url):
                response = self._session.request(
                    method,
                    url,
                    params=params,
                    json=json_body,
                    data=form,
                    headers=headers,
                    timeout=self.timeout,
                    allow_redirects=False,
                )
            if self.on_response:
                reply = Reply(
                    method,
                    url,
                    response.status_code,
                    response.headers,
                    len(response.content),
                    response.elapsed.total_seconds(),
                )
                for on_reply in self.on_response:
                    on_reply(reply)
            return _decode(method, url, response)

        return policy.call(attempt, idempotent=idempotent)

    def close(self) -> None:
        """Close this thread's pooled connections."""
        session: requests.Session | None = getattr(self._local, "session", None)
        if session is not None:
            session.close()
            self._local.session = None


def _decode(method: str, url: str, response: requests.Response) -> Any:
    """Return the JSON body of a successful response, or raise the mapped status error."""
    text = response.text
    try:
        body: Any = json.loads(text) if text else None
    except ValueError:
        body = text
    if response.status_code >= 400 or 300 <= response.status_code < 400:
        cls = status_error_class(response.status_code)
        reason = describe_body(body) or response.reason
        raise cls(
            f"{method} {_path_of(url)} -> {response.status_code}: {reason}",
            method=method,
            url=url,
            status=response.status_code,
            body=body,
        )
    if isinstance(body, str) and text and method != "DELETE":
        raise TransportError(
            f"{method} {_path_of(url)}: the server answered with non-JSON text",
            method=method,
            url=url,
        )
    return body


def _path_of(url: str) -> str:
    return "/" + url.split("://", 1)[-1].split("/", 1)[-1] if "://" in url else url


@contextmanager
def _mapped(method: str, url: str) -> Iterator[None]:
    """Translate ``requests`` exceptions into our tree, most specific first."""
    where = f"{method} {_path_of(url)}"
    try:
        yield
    except HTTPStatusError:
        raise
    except requests.exceptions.ConnectTimeout as exc:
        raise ConnectFailed(f"{where}: connection timed out", method=method, url=url) from exc
    except requests.exceptions.SSLError as exc:
        raise TransportError(f"{where}: TLS failed: {exc}", method=method, url=url) from exc
    except requests.exceptions.ProxyError as exc:
        raise ConnectFailed(f"{where}: proxy refused: {exc}", method=method, url=url) from exc
    except requests.exceptions.ConnectionError as exc:
        if _never_sent(exc):
            raise ConnectFailed(f"{where}: cannot connect", method=method, url=url) from exc
        raise ReplyLost(
            f"{where}: connection lost before the reply", method=method, url=url
        ) from exc
    except requests.exceptions.ReadTimeout as exc:
        raise ReplyLost(
            f"{where}: no reply within the read timeout", method=method, url=url
        ) from exc
    except (
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ContentDecodingError,
    ) as exc:
        raise ReplyLost(f"{where}: the reply was cut off", method=method, url=url) from exc
    except (
        requests.exceptions.InvalidURL,
        requests.exceptions.InvalidSchema,
        requests.exceptions.MissingSchema,
        requests.exceptions.InvalidHeader,
        requests.exceptions.InvalidJSONError,
        requests.exceptions.URLRequired,
    ) as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except requests.exceptions.RequestException as exc:
        raise TransportError(f"{where}: {exc}", method=method, url=url) from exc


def _never_sent(exc: requests.exceptions.ConnectionError) -> bool:
    """True when the connection could not be opened, so the request cannot have arrived."""
    reason: BaseException | None = exc
    seen = 0
    while reason is not None and seen < 8:
        if isinstance(reason, urllib3.exceptions.NewConnectionError | ConnectionRefusedError):
            return True
        if isinstance(reason, urllib3.exceptions.MaxRetryError):
            reason = reason.reason
        else:
            reason = (
                reason.args[0]
                if reason.args and isinstance(reason.args[0], BaseException)
                else (reason.__cause__ or reason.__context__)
            )
        seen += 1
    return False
