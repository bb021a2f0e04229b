"""How a reply becomes a value or one of our errors: every ``requests`` exception class is
mapped by an explicit table (``REQUESTS_ERRORS``) and every error status by its class, so
nothing above the transport sees a ``requests`` type.
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
    ReplyLost,
    TransportError,
    describe_body,
    status_error_class,
)


def decode(method: str, url: str, response: requests.Response) -> Any:
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
            f"{method} {path_of(url)} -> {response.status_code}: {reason}",
            method=method,
            url=url,
            status=response.status_code,
            body=body,
        )
    if isinstance(body, str) and text and method != "DELETE":
        raise TransportError(
            f"{method} {path_of(url)}: the server answered with non-JSON text",
            method=method,
            url=url,
        )
    return body


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
