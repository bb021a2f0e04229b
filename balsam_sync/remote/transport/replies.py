"""How a reply becomes a value or one of our errors: every ``requests`` exception and error
status is mapped here, most specific first, so nothing above the transport sees a
``requests`` type.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import requests
import urllib3.exceptions

from ...errors import (
    ConfigError,
    ConnectFailed,
    HTTPStatusError,
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


@contextmanager
def mapped(method: str, url: str) -> Iterator[None]:
    """Translate ``requests`` exceptions into our tree, most specific first."""
    where, at = f"{method} {path_of(url)}", {"method": method, "url": url}
    try:
        yield
    except HTTPStatusError:
        raise
    except requests.exceptions.ConnectTimeout as exc:
        raise ConnectFailed(f"{where}: connection timed out", **at) from exc
    except requests.exceptions.SSLError as exc:
        raise TransportError(f"{where}: TLS failed: {exc}", **at) from exc
    except requests.exceptions.ProxyError as exc:
        raise ConnectFailed(f"{where}: proxy refused: {exc}", **at) from exc
    except requests.exceptions.ConnectionError as exc:
        if never_sent(exc):
            raise ConnectFailed(f"{where}: cannot connect", **at) from exc
        raise ReplyLost(f"{where}: connection lost before the reply", **at) from exc
    except requests.exceptions.ReadTimeout as exc:
        raise ReplyLost(f"{where}: no reply within the read timeout", **at) from exc
    except (
        requests.exceptions.ChunkedEncodingError,
        requests.exceptions.ContentDecodingError,
    ) as exc:
        raise ReplyLost(f"{where}: the reply was cut off", **at) from exc
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
        raise TransportError(f"{where}: {exc}", **at) from exc


def never_sent(exc: requests.exceptions.ConnectionError) -> bool:
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
