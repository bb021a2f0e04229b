"""How a reply becomes a value or one of our errors: every ``requests`` exception class is
mapped by an explicit table (``REQUESTS_ERRORS``) and every error status by its class, so
nothing above the transport sees a ``requests`` type.

A reply that is not what the API answers is a ``ProtocolError``, never data: a redirect (the
API never redirects; a proxy or load balancer in between does, and whether the request went
on is unknown), a body that is not JSON (an HTML page from something in between), a body over
the size limit, or one off the schema the caller expects (``wire.Expect``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import requests
import urllib3.exceptions

from ...errors import (
    BalsamSyncError,
    ConfigError,
    ConnectFailed,
    ProtocolError,
    ReplyLost,
    TransportError,
    describe_body,
    status_error_class,
)
from ..wire import Expect

MAX_REPLY_BYTES = 256 * 2**20
"""The largest reply body read (bytes): a full page of 100,000 jobs is about 70 MB."""
_READ_CHUNK = 1 << 16


def read_body(method: str, url: str, response: requests.Response, limit: int) -> bytes:
    """Read ``response``'s body (opened with ``stream=True``), refusing more than ``limit``
    bytes without reading the rest."""
    announced = response.headers.get("Content-Length", "")
    if announced.isdigit() and int(announced) > limit:
        response.close()
        raise _too_large(
            method, url, response.status_code, f"{int(announced)} bytes announced", limit
        )
    parts: list[bytes] = []
    size = 0
    for chunk in response.iter_content(_READ_CHUNK):
        size += len(chunk)
        if size > limit:
            response.close()
            raise _too_large(method, url, response.status_code, f"over {limit} bytes", limit)
        parts.append(chunk)
    body = b"".join(parts)
    # Keep the response whole for whoever else looks at it (``response.content``, hooks).
    response._content = body
    return body


def _too_large(method: str, url: str, status: int, size: str, limit: int) -> ProtocolError:
    return ProtocolError(
        f"{method} {path_of(url)}: the reply is too large ({size}; the limit is {limit} bytes); "
        "it was not read. Ask for smaller pages, or check what answers at this URL",
        method=method,
        url=url,
        status=status,
    )


def decode(
    method: str,
    url: str,
    response: requests.Response,
    content: bytes,
    expect: Expect | None = None,
) -> Any:
    """Return the body of a successful response (checked against ``expect``, when given),
    or raise the mapped status error or a ``ProtocolError``."""
    status = response.status_code
    where = f"{method} {path_of(url)}"
    if 300 <= status < 400:
        target = response.headers.get("Location", "nowhere")
        raise ProtocolError(
            f"{where} -> {status}: redirected to {target}. The API never redirects: something "
            "between this machine and the server answered (check the URL), and whether the "
            "request went on is unknown",
            method=method,
            url=url,
            status=status,
        )
    if status >= 400:
        body = _json_or_text(content)
        cls = status_error_class(status)
        reason = describe_body(body) or response.reason
        raise cls(
            f"{where} -> {status}: {reason}", method=method, url=url, status=status, body=body
        )
    if expect is not None:
        return expect.parse(content, method, url)
    if not content.strip():
        return None
    body = _json_or_text(content)
    if isinstance(body, str) and method != "DELETE":
        kind = response.headers.get("Content-Type", "no content type")
        raise ProtocolError(
            f"{where} -> {status}: the reply is not JSON ({kind}: {body[:80]!r}); something "
            "between this machine and the server may have answered (check the URL)",
            method=method,
            url=url,
            status=status,
        )
    return body


def _json_or_text(content: bytes) -> Any:
    text = content.decode("utf-8", errors="replace")
    try:
        return json.loads(text) if text else None
    except ValueError:
        return text


def path_of(url: str) -> str:
    return "/" + url.split("://", 1)[-1].split("/", 1)[-1] if "://" in url else url


@dataclass(frozen=True)
class Rule:
    """What one ``requests`` exception becomes: our error class and its wording.

    ``wording`` is formatted with ``where`` ("GET /jobs/") and ``exc`` (the exception).
    ``unsent``, when set, applies instead when the request cannot have left (``never_sent``).
    """

    error: type[TransportError] | type[ConfigError]
    wording: str
    unsent: Rule | None = None

    def build(self, exc: BaseException, method: str, url: str) -> BalsamSyncError:
        rule = self.unsent if self.unsent is not None and never_sent(exc) else self
        text = rule.wording.format(where=f"{method} {path_of(url)}", exc=exc)
        if issubclass(rule.error, TransportError):
            return rule.error(text, method=method, url=url)
        return rule.error(text)


_E = requests.exceptions
_CUT_OFF = Rule(ReplyLost, "{where}: the reply was cut off")
_BAD_REQUEST = Rule(ConfigError, "{where}: {exc}")  # nothing was sent: fix the call or URL
_OTHER = Rule(TransportError, "{where}: {exc}")

REQUESTS_ERRORS: dict[type[BaseException], Rule] = {
    _E.ConnectTimeout: Rule(ConnectFailed, "{where}: connection timed out"),
    _E.SSLError: Rule(TransportError, "{where}: TLS failed: {exc}"),
    _E.ProxyError: Rule(ConnectFailed, "{where}: proxy refused: {exc}"),
    _E.ConnectionError: Rule(
        ReplyLost,
        "{where}: connection lost before the reply",
        unsent=Rule(ConnectFailed, "{where}: cannot connect"),
    ),
    _E.ReadTimeout: Rule(ReplyLost, "{where}: no reply within the read timeout"),
    _E.ChunkedEncodingError: _CUT_OFF,
    _E.ContentDecodingError: _CUT_OFF,
    _E.InvalidURL: _BAD_REQUEST,
    _E.InvalidProxyURL: _BAD_REQUEST,
    _E.InvalidSchema: _BAD_REQUEST,
    _E.MissingSchema: _BAD_REQUEST,
    _E.InvalidHeader: _BAD_REQUEST,
    _E.InvalidJSONError: _BAD_REQUEST,
    _E.JSONDecodeError: _BAD_REQUEST,
    _E.URLRequired: _BAD_REQUEST,
    _E.Timeout: _OTHER,
    _E.HTTPError: _OTHER,
    _E.RetryError: _OTHER,
    _E.TooManyRedirects: _OTHER,
    _E.StreamConsumedError: _OTHER,
    _E.UnrewindableBodyError: _OTHER,
    _E.RequestException: _OTHER,
}
"""Every ``requests`` exception class, mapped explicitly (a test fails on one missing)."""


def rule_for(exc: BaseException) -> Rule:
    """The rule of ``exc``'s own class (a subclass the table lacks: its nearest base's)."""
    return next(REQUESTS_ERRORS[k] for k in type(exc).__mro__ if k in REQUESTS_ERRORS)


@contextmanager
def mapped(method: str, url: str) -> Iterator[None]:
    """Translate ``requests`` exceptions into our tree through ``REQUESTS_ERRORS``."""
    try:
        yield
    except tuple(REQUESTS_ERRORS) as exc:
        raise rule_for(exc).build(exc, method, url) from exc


def never_sent(exc: BaseException) -> bool:
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
