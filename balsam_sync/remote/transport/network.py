"""What the network itself says about an exchange in flight: connected yet, request delivered.

A server busy with other users' bulk requests may take seconds to answer, yet its kernel
accepts a new TCP connection at once and acknowledges the request's bytes: the host is there.
A link that answers nothing at that level (a connect never accepted, bytes never acknowledged)
is down. ``Watch`` records, from inside the exchange's thread, when its connection was made
and its request written; the waiting caller asks it, and may give up on a connect still
pending (``abandon_unconnected``) knowing for sure that nothing was sent.

The connection classes here also count the requests each connection carried, so the first
reply on a new connection can be told apart (its ``Date`` is the only fresh one; see
``serverclock.py``).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection

_current = threading.local()


class Abandoned(ConnectionError):
    """The caller gave up before the connection was made: nothing was sent."""


class Watch:
    """One exchange's connection, as its thread reports it (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.connected_at: float | None = None  # monotonic; reused connections count too
        self.sent_at: float | None = None
        self._socket: socket.socket | None = None
        self._abandoned = False

    # -- from the exchange's thread ------------------------------------------------------------

    def connected(self, sock: socket.socket | None) -> bool:
        """The connection is up (False: the caller gave up meanwhile; do not send)."""
        with self._lock:
            if self._abandoned:
                return False
            self.connected_at = self.connected_at or time.monotonic()
            self._socket = sock
            return True

    def sent(self, sock: socket.socket | None) -> None:
        with self._lock:
            self.connected_at = self.connected_at or time.monotonic()
            self.sent_at = time.monotonic()
            self._socket = sock

    # -- from the caller -----------------------------------------------------------------------

    def abandon_unconnected(self) -> bool:
        """Give up on the exchange if its connection is not made yet; True when given up (then
        the request is never sent)."""
        with self._lock:
            if self.connected_at is None:
                self._abandoned = True
            return self._abandoned

    def unacknowledged(self) -> int | None:
        """Request segments the peer has not acknowledged (None: unknown on this system)."""
        with self._lock:
            sock = self._socket
        return unacknowledged(sock) if sock is not None else None


def unacknowledged(sock: socket.socket) -> int | None:
    """Segments ``sock`` sent that the peer has not acknowledged (Linux ``TCP_INFO``), else
    None. A live peer whose program does not read (a full receive window) still acknowledges
    what it received: only a host that is gone leaves segments unacknowledged."""
    option = getattr(socket, "TCP_INFO", None)
    try:
        if option is None or sock.fileno() < 0:
            return None
        info = sock.getsockopt(socket.IPPROTO_TCP, option, _TCP_INFO_SIZE)
    except (OSError, ValueError):
        return None
    if len(info) < _UNACKED_AT + 4:
        return None
    return int(struct.unpack_from("I", info, _UNACKED_AT)[0])


_TCP_INFO_SIZE = 104
_UNACKED_AT = 24  # struct tcp_info: eight u8 fields, then rto, ato, snd_mss, rcv_mss, unacked


@contextlib.contextmanager
def watching(watch: Watch | None) -> Iterator[None]:
    """Report this thread's connections to ``watch`` while inside."""
    _current.watch = watch
    try:
        yield
    finally:
        _current.watch = None


def _watch() -> Watch | None:
    found: Watch | None = getattr(_current, "watch", None)
    return found


class _Observed:
    """Mixed into urllib3's connections: reports to the thread's ``Watch``, counts requests."""

    requests_sent = 0
    sock: socket.socket | None

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        self.requests_sent = 0
        watch = _watch()
        if watch is not None and not watch.connected(self.sock):
            self.close()  # type: ignore[attr-defined]
            raise Abandoned("the caller stopped waiting before the connection was made")

    def request(self, *args: Any, **kwargs: Any) -> None:
        super().request(*args, **kwargs)  # type: ignore[misc]
        self.requests_sent += 1
        watch = _watch()
        if watch is not None:
            watch.sent(self.sock)


class _HTTPConnection(_Observed, HTTPConnection):
    pass


class _HTTPSConnection(_Observed, HTTPSConnection):
    pass


class _HTTPPool(urllib3.HTTPConnectionPool):
    ConnectionCls = _HTTPConnection


class _HTTPSPool(urllib3.HTTPSConnectionPool):
    ConnectionCls = _HTTPSConnection


class ObservedAdapter(HTTPAdapter):
    """requests' adapter with connections that report to a ``Watch``."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _HTTPPool, "https": _HTTPSPool}


def first_on_connection(response: requests.Response) -> bool:
    """True when ``response`` answered the first request of a new connection."""
    connection = getattr(response.raw, "connection", None)
    return getattr(connection, "requests_sent", 0) == 1


def session_factory(verify: bool | str, on_response: Callable[..., None]) -> requests.Session:
    """A session whose connections report to a ``Watch``, with ``on_response`` as a hook."""
    session = requests.Session()
    for scheme in ("http://", "https://"):
        session.mount(scheme, ObservedAdapter())
    session.verify = verify
    session.auth = _no_ambient_auth
    session.hooks["response"].append(on_response)
    return session


def _no_ambient_auth(request: requests.PreparedRequest) -> requests.PreparedRequest:
    """Keep our headers: no Basic auth from a URL's user info or from ~/.netrc replaces them."""
    return request
