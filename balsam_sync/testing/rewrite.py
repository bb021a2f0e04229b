"""Replies the fault proxy rewrites or makes up: a lying server, in front of the real one.

A test installs a function on the proxy (``FaultProxy.rewrite``) that sees each request and the
real server's complete reply, and returns another reply (or None: pass it on as it is). It can
change the status, a header (a frozen or absurd ``Date``) or the body (a repeated page, a
malformed row). ``FaultProxy.intercept`` installs one that answers *instead of* the server: the
request is never forwarded (a redirect or an HTML page from a proxy in between, a huge body).

Example::

    def absurd(request: Request, reply: Message) -> Message | None:
        return reply.with_header("date", "Fri, 01 Jan 2100 00:00:00 GMT")

    proxy.rewrite(absurd)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from http import HTTPStatus
from typing import Any

FRAMING = frozenset({"content-length", "transfer-encoding"})
"""Headers the proxy writes itself for a rewritten reply (the body's framing)."""


@dataclass(frozen=True)
class Request:
    """What a rewrite sees of the request it answers."""

    method: str
    target: str  # as sent: path and query string
    body: bytes
    index: int  # 0 for the first request on its client connection

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.partition("?")[2]


@dataclass(frozen=True)
class Message:
    """A reply as the proxy relays it: status, headers (lower-case names), body.

    ``body`` is bytes, or an iterable of byte chunks for a large made-up body (sent chunked).
    """

    status: int
    headers: tuple[tuple[str, str], ...] = ()
    body: bytes | Iterable[bytes] = b""
    reason: str = ""

    def header(self, name: str) -> str | None:
        name = name.lower()
        return next((v for k, v in self.headers if k == name), None)

    def with_header(self, name: str, value: str) -> Message:
        """This reply with header ``name`` set to ``value`` (replacing any)."""
        name = name.lower()
        kept = tuple((k, v) for k, v in self.headers if k != name)
        return replace(self, headers=(*kept, (name, value)))

    def with_body(self, body: bytes | Iterable[bytes], status: int | None = None) -> Message:
        return replace(self, body=body, status=self.status if status is None else status)

    def json(self) -> Any:
        """The body decoded as JSON (it must be bytes)."""
        if not isinstance(self.body, bytes):
            raise TypeError("a streamed body cannot be decoded")
        return json.loads(self.body)

    def with_json(self, value: Any) -> Message:
        return self.with_header("content-type", "application/json").with_body(
            json.dumps(value).encode()
        )

    def encode_head(self, keep_alive: bool) -> bytes:
        """The status line and headers, with framing for ``body`` and the connection's fate."""
        reason = self.reason or _phrase(self.status)
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        lines += [f"{k}: {v}" for k, v in self.headers if k not in FRAMING and k != "connection"]
        if isinstance(self.body, bytes):
            lines.append(f"content-length: {len(self.body)}")
        else:
            lines.append("transfer-encoding: chunked")
        lines.append(f"connection: {'keep-alive' if keep_alive else 'close'}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def encode_body(self) -> Iterator[bytes]:
        if isinstance(self.body, bytes):
            yield self.body
            return
        for chunk in self.body:
            if chunk:
                yield b"%x\r\n%s\r\n" % (len(chunk), chunk)
        yield b"0\r\n\r\n"


def reply(
    status: int, body: bytes | Iterable[bytes] = b"", content_type: str = "application/json"
) -> Message:
    """A made-up reply (for ``FaultProxy.intercept``)."""
    return Message(status, (("content-type", content_type),), body)


def redirect(status: int, location: str) -> Message:
    """A redirect, as a proxy or a load balancer in front of the server may send one."""
    return Message(status, (("location", location), ("content-type", "text/html")), b"")


Rewrite = Callable[[Request, Message], Message | None]
"""Given a request and the server's reply, return the reply to send (None: unchanged)."""
Intercept = Callable[[Request], Message | None]
"""Given a request, return a reply to send instead of forwarding it (None: forward it)."""


@dataclass
class Rewriting:
    """The rewrite and intercept functions installed on a proxy, and how often they acted."""

    rewrite: Rewrite | None = None
    intercept: Intercept | None = None
    rewritten: int = 0  # replies the rewrite changed
    intercepted: int = 0  # requests answered by the intercept, never forwarded


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Rewritten"
