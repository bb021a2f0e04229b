"""Fault-injecting HTTP/1.1 proxy for testing balsam_sync against a REAL Balsam server.

Why this exists: the client must survive a flaky network (resets, timeouts, 5xx storms and,
above all, *lost replies* where the server committed a write but the client never saw the
answer).  We never fake the Balsam server in tests or benchmarks; instead this proxy sits on
127.0.0.1 between the client and the real server and breaks individual requests on purpose.

Design notes:

* stdlib only: one accept thread plus one thread per client connection;
* HTTP/1.1 aware: request boundaries (Content-Length or chunked bodies) and response
  boundaries (Content-Length, chunked, no body for 1xx/204/304/HEAD, or read-until-close) are
  parsed, so a fault is chosen PER REQUEST, also on keep-alive connections;
* each client connection owns at most one upstream connection; a stale upstream connection is
  replaced before a request is sent, but a request is never re-sent after a failure (that
  would hide exactly the duplicate-write problems we want to expose);
* faults are drawn from ``random.Random(seed)`` under a lock, so the fault sequence is
  deterministic for a given seed and request order;
* a close the server does not announce (the Balsam server drops the connection after a 204
  DELETE) is passed on to the client together with the reply where TCP_CORK allows it;
* loopback only: both the listening and the upstream address must be loopback;
* not supported: pipelining, ``Expect: 100-continue`` request bodies, protocol upgrades.

Faults (one per request at most): ``refuse`` (reset after the request head, nothing forwarded),
``reset_before`` (whole request read, then RST), ``delay``, ``timeout`` (silence for
``hang_seconds``), ``http_5xx`` (local 502/503/504), ``lost_reply`` (forwarded, complete reply
read so the server has committed, then the client is reset), ``burst_5xx`` (next N requests get
a local 503) and ``down`` (:meth:`FaultProxy.set_down`).

Example::

    plan = FaultPlan(lost_reply=0.2, methods={"POST"}, path_prefix="/jobs/")
    with FaultProxy("http://127.0.0.1:8000", plan=plan, seed=1) as proxy:
        client = make_client(proxy.url)  # talks to the real server through the proxy
        ...
        assert proxy.stats.faults["lost_reply"] > 0
"""

from __future__ import annotations

import contextlib
import dataclasses
import enum
import ipaddress
import json
import random
import select
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from http import HTTPStatus
from io import BufferedReader
from types import TracebackType
from typing import TYPE_CHECKING, Any, NamedTuple
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from typing import Self  # type-checking only: importable at runtime on 3.10 too

__all__ = ["FaultKind", "FaultPlan", "FaultProxy", "LogEntry", "ProxyStats"]

_MAX_LINE = 65536
_MAX_HEADER_LINES = 256
_CHUNK = 65536
_ACCEPT_POLL_SECONDS = 0.05


class FaultKind(str, enum.Enum):
    """What the proxy did to one request (``NONE`` = forwarded untouched)."""

    NONE = "none"
    REFUSE = "refuse"
    RESET_BEFORE = "reset_before"
    DELAY = "delay"
    TIMEOUT = "timeout"
    HTTP_5XX = "http_5xx"
    LOST_REPLY = "lost_reply"
    BURST_5XX = "burst_5xx"
    DOWN = "down"


# Order in which the random draw is mapped onto the plan's probabilities (part of the
# determinism contract: do not reorder).
_RANDOM_FAULTS = (
    FaultKind.REFUSE,
    FaultKind.RESET_BEFORE,
    FaultKind.TIMEOUT,
    FaultKind.HTTP_5XX,
    FaultKind.LOST_REPLY,
    FaultKind.DELAY,
)
_INJECTABLE = frozenset(_RANDOM_FAULTS) | {FaultKind.BURST_5XX}


def _normalize_methods(methods: Collection[str] | None) -> frozenset[str] | None:
    if methods is None:
        return None
    if isinstance(methods, str):
        return frozenset({methods.upper()})
    return frozenset(m.upper() for m in methods)


def _target_matches(
    methods: Collection[str] | None, path_prefix: str | None, method: str, path: str
) -> bool:
    if methods is not None and method.upper() not in methods:
        return False
    return path_prefix is None or path.startswith(path_prefix)


def _check_status(status: int) -> None:
    if not 400 <= status <= 599:
        raise ValueError(f"injected status must be 4xx/5xx, got {status}")


@dataclass(frozen=True)
class FaultPlan:
    """Per-request fault probabilities (immutable; swap it on the proxy to change it).

    At most one fault is applied per request; the probabilities must sum to <= 1.  The filter
    fields (``methods``, ``path_prefix``, ``match``) restrict random faults to matching
    requests; ``path`` is the request target as sent (including any query string).
    """

    refuse: float = 0.0
    reset_before: float = 0.0
    delay: float = 0.0
    timeout: float = 0.0
    http_5xx: float = 0.0
    lost_reply: float = 0.0
    delay_seconds: float = 0.1
    hang_seconds: float = 5.0
    status_codes: tuple[int, ...] = (502, 503, 504)
    close_on_5xx: bool = True
    methods: Collection[str] | None = None
    path_prefix: str | None = None
    match: Callable[[str, str], bool] | None = None

    def __post_init__(self) -> None:
        probabilities = [self.probability(kind) for kind in _RANDOM_FAULTS]
        if any(not 0.0 <= p <= 1.0 for p in probabilities):
            raise ValueError("fault probabilities must be within [0, 1]")
        if sum(probabilities) > 1.0 + 1e-9:
            raise ValueError("fault probabilities must sum to at most 1")
        if self.delay_seconds < 0 or self.hang_seconds < 0:
            raise ValueError("delay_seconds and hang_seconds must be >= 0")
        codes = tuple(self.status_codes)
        if not codes:
            raise ValueError("status_codes must not be empty")
        for code in codes:
            _check_status(code)
        object.__setattr__(self, "status_codes", codes)
        object.__setattr__(self, "methods", _normalize_methods(self.methods))

    def probability(self, kind: FaultKind) -> float:
        """Probability of the random fault ``kind`` (0 for non-random kinds)."""
        table = {
            FaultKind.REFUSE: self.refuse,
            FaultKind.RESET_BEFORE: self.reset_before,
            FaultKind.DELAY: self.delay,
            FaultKind.TIMEOUT: self.timeout,
            FaultKind.HTTP_5XX: self.http_5xx,
            FaultKind.LOST_REPLY: self.lost_reply,
        }
        return table.get(kind, 0.0)

    def applies_to(self, method: str, path: str) -> bool:
        """True if random faults may be applied to this request."""
        if not _target_matches(self.methods, self.path_prefix, method, path):
            return False
        return self.match is None or self.match(method, path)

    def pick(self, draw: float) -> FaultKind:
        """Map a uniform draw in [0, 1) onto a fault kind."""
        edge = 0.0
        for kind in _RANDOM_FAULTS:
            edge += self.probability(kind)
            if draw < edge:
                return kind
        return FaultKind.NONE


class LogEntry(NamedTuple):
    """One decision of the proxy: ``method``/``path`` are ``"-"`` for refused connections."""

    method: str
    path: str
    fault: FaultKind


@dataclass(frozen=True)
class ProxyStats:
    """Snapshot of the proxy counters.

    ``connections`` accepted, ``requests`` seen (heads read), ``forwarded`` to the server
    (including lost replies), ``upstream_errors`` (server unreachable or no response), and
    ``faults``: one count per :class:`FaultKind` value except ``"none"``.
    """

    connections: int = 0
    requests: int = 0
    forwarded: int = 0
    upstream_errors: int = 0
    faults: dict[str, int] = field(default_factory=dict)


@dataclass
class _Counters:
    connections: int = 0
    requests: int = 0
    forwarded: int = 0
    upstream_errors: int = 0
    faults: dict[str, int] = field(
        default_factory=lambda: {k.value: 0 for k in FaultKind if k is not FaultKind.NONE}
    )

    def snapshot(self) -> ProxyStats:
        return ProxyStats(
            self.connections,
            self.requests,
            self.forwarded,
            self.upstream_errors,
            dict(self.faults),
        )


@dataclass
class _Injection:
    kind: FaultKind
    remaining: int
    methods: frozenset[str] | None
    path_prefix: str | None
    status: int


class _Decision(NamedTuple):
    kind: FaultKind
    status: int
    plan: FaultPlan


# --------------------------------------------------------------------------- HTTP parsing


class _ProtocolError(Exception):
    """Malformed or truncated HTTP message."""


class _UpstreamError(Exception):
    """The upstream server could not be reached or sent no response."""


@dataclass(frozen=True)
class _Head:
    start_line: str
    headers: tuple[tuple[str, str], ...]
    raw: bytes

    def get(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def tokens(self, name: str) -> set[str]:
        values = (v for k, v in self.headers if k == name)
        return {t.strip().lower() for v in values for t in v.split(",") if t.strip()}


def _read_line(rfile: BufferedReader) -> bytes:
    line = rfile.readline(_MAX_LINE + 1)
    if len(line) > _MAX_LINE:
        raise _ProtocolError("line too long")
    return line


def _read_head(rfile: BufferedReader) -> _Head | None:
    """Read a message head; None on a clean EOF before any byte."""
    lines: list[bytes] = []
    while True:
        line = _read_line(rfile)
        if not line:
            if lines:
                raise _ProtocolError("connection closed inside a message head")
            return None
        if line in (b"\r\n", b"\n"):
            if lines:
                return _parse_head(lines, line)
            continue  # tolerate stray CRLF between messages
        lines.append(line)
        if len(lines) > _MAX_HEADER_LINES:
            raise _ProtocolError("too many header lines")


def _parse_head(lines: list[bytes], terminator: bytes) -> _Head:
    text = [line.decode("latin-1").rstrip("\r\n") for line in lines]
    headers: list[tuple[str, str]] = []
    for line in text[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise _ProtocolError(f"bad header line {line!r}")
        headers.append((name.strip().lower(), value.strip()))
    return _Head(text[0], tuple(headers), b"".join(lines) + terminator)


def _request_line(head: _Head) -> tuple[str, str, str]:
    parts = head.start_line.split()
    if len(parts) != 3 or not parts[2].startswith("HTTP/"):
        raise _ProtocolError(f"bad request line {head.start_line!r}")
    return parts[0].upper(), parts[1], parts[2]


def _status_line(head: _Head) -> tuple[str, int]:
    parts = head.start_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise _ProtocolError(f"bad status line {head.start_line!r}")
    return parts[0], int(parts[1])


def _content_length(head: _Head) -> int | None:
    value = head.get("content-length")
    if value is None:
        return None
    if not value.isdigit():
        raise _ProtocolError(f"bad Content-Length {value!r}")
    return int(value)


def _keep_alive(version: str, head: _Head) -> bool:
    tokens = head.tokens("connection")
    if "close" in tokens:
        return False
    return version != "HTTP/1.0" or "keep-alive" in tokens


def _iter_fixed(rfile: BufferedReader, length: int) -> Iterator[bytes]:
    while length > 0:
        chunk = rfile.read(min(length, _CHUNK))
        if not chunk:
            raise _ProtocolError("connection closed inside a body")
        length -= len(chunk)
        yield chunk


def _iter_chunked(rfile: BufferedReader) -> Iterator[bytes]:
    """Yield a chunked body verbatim (framing included) up to the end of its trailers."""
    while True:
        line = _read_line(rfile)
        if not line:
            raise _ProtocolError("connection closed inside a chunked body")
        yield line
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise _ProtocolError(f"bad chunk size {size_text!r}") from None
        if size == 0:
            yield from _iter_trailers(rfile)
            return
        yield from _iter_fixed(rfile, size + 2)


def _iter_trailers(rfile: BufferedReader) -> Iterator[bytes]:
    while True:
        line = _read_line(rfile)
        if not line:
            raise _ProtocolError("connection closed inside chunk trailers")
        yield line
        if line in (b"\r\n", b"\n"):
            return


def _iter_until_close(rfile: BufferedReader) -> Iterator[bytes]:
    while chunk := rfile.read1(_CHUNK):
        yield chunk


def _read_request_body(rfile: BufferedReader, head: _Head) -> bytes:
    if "chunked" in head.tokens("transfer-encoding"):
        return b"".join(_iter_chunked(rfile))
    return b"".join(_iter_fixed(rfile, _content_length(head) or 0))


def _response_body(rfile: BufferedReader, head: _Head, method: str) -> tuple[Iterator[bytes], bool]:
    """Return (body iterator, delimited-by-close)."""
    _, status = _status_line(head)
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return iter(()), False
    if "chunked" in head.tokens("transfer-encoding"):
        return _iter_chunked(rfile), False
    length = _content_length(head)
    if length is not None:
        return _iter_fixed(rfile, length), False
    return _iter_until_close(rfile), True


def _read_final_head(rfile: BufferedReader) -> tuple[_Head, bytes]:
    """Read the final response head, returning it plus any raw interim (1xx) heads."""
    interim = b""
    while True:
        head = _read_head(rfile)
        if head is None:
            raise _UpstreamError("upstream closed the connection without a response")
        _, status = _status_line(head)
        if not 100 <= status < 200 or status == 101:
            return head, interim
        interim += head.raw


def _local_response(status: int, kind: FaultKind, close: bool) -> bytes:
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Injected Fault"
    body = json.dumps({"detail": f"faultproxy injected {status} ({kind.value})"}).encode()
    lines = [
        f"HTTP/1.1 {status} {reason}",
        "Content-Type: application/json",
        f"Content-Length: {len(body)}",
        f"X-Faultproxy-Fault: {kind.value}",
        f"Connection: {'close' if close else 'keep-alive'}",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


# --------------------------------------------------------------------------- sockets


def _discard(_: bytes) -> None:
    return None


class _Endpoint:
    """A connected socket plus its buffered reader."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.rfile = sock.makefile("rb")
        self.used = False

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def cork(self, on: bool) -> bool:
        """Hold back partial segments (Linux TCP_CORK); False where unsupported."""
        option = getattr(socket, "TCP_CORK", None)
        if option is None:
            return False
        try:
            self.sock.setsockopt(socket.IPPROTO_TCP, option, int(on))
        except OSError:
            return False
        return True

    def uncork(self, *, keep_open: bool) -> None:
        """Flush corked data; without ``keep_open`` the FIN leaves together with it."""
        if keep_open:
            self.cork(False)
        else:
            self.sock.shutdown(socket.SHUT_WR)

    def is_dropped(self) -> bool:
        """True if the idle peer closed (or sent unsolicited data): unusable for a request."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True
        return bool(readable)

    def shutdown(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for closable in (self.rfile, self.sock):
            with contextlib.suppress(OSError):
                closable.close()

    def reset(self) -> None:
        """Abortive close: the peer gets a TCP RST instead of a FIN."""
        with contextlib.suppress(OSError):
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close()


def _tune(sock: socket.socket, timeout: float) -> None:
    sock.settimeout(timeout)
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def _loopback_host(host: str, *, listen: bool) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not a loopback IP address") from None
    if listen and str(addr) != "127.0.0.1":
        raise ValueError(f"the proxy only listens on 127.0.0.1, not {host!r}")
    if not addr.is_loopback:
        raise ValueError(f"upstream {host!r} is not a loopback address")
    return str(addr)


def _parse_upstream(upstream: str | tuple[str, int]) -> tuple[str, int]:
    if isinstance(upstream, tuple):
        host, port = upstream
    else:
        parts = urlsplit(upstream)
        if parts.scheme != "http":
            raise ValueError(f"only plain http:// upstreams are supported: {upstream!r}")
        if parts.path not in ("", "/") or parts.query:
            raise ValueError(f"upstream URL must not have a path: {upstream!r}")
        host, port = parts.hostname or "", parts.port or 80
    if not 0 < port < 65536:
        raise ValueError(f"bad upstream port {port}")
    return _loopback_host(host, listen=False), port


# --------------------------------------------------------------------------- per connection


class _Session:
    """Serves one client connection, one request at a time."""

    def __init__(self, proxy: FaultProxy, client: _Endpoint, name: str) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: _Endpoint | None = None
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)
        self._lock = threading.Lock()
        self._closed = False

    def run(self) -> None:
        try:
            while not self.proxy.stopping and self._serve_one():
                pass
        except _UpstreamError:
            self.proxy._count_upstream_error()
            self.client.reset()
        except (OSError, _ProtocolError):
            self.client.reset()
        finally:
            self._close_all()
            self.proxy._forget(self)

    def shutdown(self) -> None:
        with self._lock:
            self._closed = True
            endpoints = [e for e in (self.client, self.upstream) if e is not None]
        for endpoint in endpoints:
            endpoint.shutdown()

    def _close_all(self) -> None:
        with self._lock:
            self._closed = True
        self.client.close()
        self._drop_upstream()

    def _serve_one(self) -> bool:
        head = _read_head(self.client.rfile)
        if head is None:
            return False
        method, target, version = _request_line(head)
        decision = self.proxy._decide(method, target)
        if decision.kind in (FaultKind.REFUSE, FaultKind.DOWN):
            self.client.reset()
            return False
        body = _read_request_body(self.client.rfile, head)
        keep_alive = _keep_alive(version, head)
        return self._apply(decision, method, head.raw + body, keep_alive)

    def _apply(self, decision: _Decision, method: str, raw: bytes, keep_alive: bool) -> bool:
        kind, plan = decision.kind, decision.plan
        if kind is FaultKind.RESET_BEFORE:
            self.client.reset()
            return False
        if kind is FaultKind.TIMEOUT:
            self.proxy._sleep(plan.hang_seconds)
            return False
        if kind in (FaultKind.HTTP_5XX, FaultKind.BURST_5XX):
            close = plan.close_on_5xx or not keep_alive
            self.client.send(_local_response(decision.status, kind, close))
            return not close
        if kind is FaultKind.LOST_REPLY:
            self._forward(method, raw, relay=False)
            self.client.reset()
            return False
        if kind is FaultKind.DELAY and not self.proxy._sleep(plan.delay_seconds):
            return False
        return self._forward(method, raw, relay=True) and keep_alive

    def _forward(self, method: str, raw: bytes, *, relay: bool) -> bool:
        """Send one request upstream and read its complete response.

        With ``relay`` the response goes to the client, otherwise it is dropped (lost reply).
        Returns True if the client connection may stay open.
        """
        upstream = self._upstream()
        head, interim = self._exchange(upstream, raw)
        corked = relay and self.client.cork(True)
        sink = self.client.send if relay else _discard
        sink(interim + head.raw)
        body, until_close = _response_body(upstream.rfile, head, method)
        for chunk in body:
            sink(chunk)
        version, _ = _status_line(head)
        announced_close = until_close or not _keep_alive(version, head)
        silent_close = not announced_close and upstream.is_dropped()
        if announced_close or silent_close:
            self._drop_upstream()
        # A close the server did not announce (e.g. after a 204 DELETE) is mirrored only when
        # the reply and the FIN can leave together; otherwise the next request reconnects.
        keep_client = not announced_close and not (silent_close and corked)
        if corked:
            self.client.uncork(keep_open=keep_client)
        return keep_client

    def _exchange(self, upstream: _Endpoint, raw: bytes) -> tuple[_Head, bytes]:
        try:
            upstream.send(raw)
            self.proxy._count_forwarded()
            return _read_final_head(upstream.rfile)
        except (OSError, _ProtocolError) as exc:
            raise _UpstreamError(str(exc)) from exc

    def _upstream(self) -> _Endpoint:
        """The upstream connection, replaced first if the server closed it while idle."""
        current = self.upstream
        if current is not None and not current.is_dropped():
            return current
        self._drop_upstream()
        try:
            sock = socket.create_connection(self.proxy.upstream_address, self.proxy.io_timeout)
        except OSError as exc:
            raise _UpstreamError(f"cannot connect upstream: {exc}") from exc
        _tune(sock, self.proxy.io_timeout)
        endpoint = _Endpoint(sock)
        with self._lock:  # published under the lock so that shutdown() sees it
            closed = self._closed
            if not closed:
                self.upstream = endpoint
        if closed:
            endpoint.close()
            raise _UpstreamError("proxy is stopping")
        return endpoint

    def _drop_upstream(self) -> None:
        with self._lock:
            upstream, self.upstream = self.upstream, None
        if upstream is not None:
            upstream.close()


# --------------------------------------------------------------------------- the proxy


class FaultProxy:
    """Fault-injecting HTTP/1.1 proxy from ``127.0.0.1:listen_port`` to a loopback upstream.

    ``upstream`` is ``"http://127.0.0.1:PORT"`` or ``(host, port)``.  Use as a context manager
    or call :meth:`start` / :meth:`stop`.  The proxy stops accepting connections after
    ``max_connections`` accepted connections or ``max_seconds`` after :meth:`start`.
    """

    def __init__(
        self,
        upstream: str | tuple[str, int],
        *,
        plan: FaultPlan | None = None,
        seed: int = 0,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        max_connections: int = 100_000,
        max_seconds: float = 3600.0,
        io_timeout: float = 120.0,
        log_size: int = 1000,
    ) -> None:
        if max_connections < 1 or max_seconds <= 0 or io_timeout <= 0 or log_size < 1:
            raise ValueError("max_connections, max_seconds, io_timeout, log_size must be > 0")
        self.upstream_address = _parse_upstream(upstream)
        self._listen_host = _loopback_host(listen_host, listen=True)
        self._listen_port = listen_port
        self.max_connections = max_connections
        self.max_seconds = max_seconds
        self.io_timeout = io_timeout
        self._lock = threading.Lock()
        self._plan = plan if plan is not None else FaultPlan()
        self._rng = random.Random(seed)
        self._down = False
        self._injections: list[_Injection] = []
        self._counters = _Counters()
        self._log: deque[LogEntry] = deque(maxlen=log_size)
        self._sessions: set[_Session] = set()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._deadline = 0.0
        self._port = 0

    # -- lifecycle -----------------------------------------------------------------------

    def start(self) -> Self:
        """Bind the listening socket and start accepting; returns ``self``."""
        if self._listener is not None or self._stopping.is_set():
            raise RuntimeError("FaultProxy can only be started once")
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((self._listen_host, self._listen_port))
            listener.listen(128)
            listener.settimeout(_ACCEPT_POLL_SECONDS)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._port = int(listener.getsockname()[1])
        self._deadline = time.monotonic() + self.max_seconds
        self._accept_thread = threading.Thread(
            target=self._accept_loop,
            args=(listener,),
            name=f"faultproxy-{self.port}-accept",
            daemon=True,
        )
        self._accept_thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Close every socket and join the threads (waiting at most ``timeout`` seconds)."""
        self._stopping.set()
        deadline = time.monotonic() + timeout
        if self._accept_thread is not None:
            self._accept_thread.join(timeout)
        with self._lock:
            sessions = list(self._sessions)
        for session in sessions:
            session.shutdown()
        for session in sessions:
            session.thread.join(max(0.0, deadline - time.monotonic()))

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    @property
    def accepting(self) -> bool:
        """True while the accept thread runs (not stopped, limits not reached)."""
        thread = self._accept_thread
        return thread is not None and thread.is_alive()

    @property
    def port(self) -> int:
        if self._listener is None:
            raise RuntimeError("FaultProxy is not started")
        return self._port

    @property
    def url(self) -> str:
        return f"http://{self._listen_host}:{self.port}"

    # -- fault control -------------------------------------------------------------------

    @property
    def plan(self) -> FaultPlan:
        with self._lock:
            return self._plan

    @plan.setter
    def plan(self, plan: FaultPlan) -> None:
        with self._lock:
            self._plan = plan

    def update_plan(self, **changes: Any) -> FaultPlan:
        """Atomically replace fields of the current plan (``dataclasses.replace``)."""
        with self._lock:
            self._plan = dataclasses.replace(self._plan, **changes)
            return self._plan

    def set_down(self, down: bool) -> None:
        """While down, new connections and new requests are reset immediately."""
        with self._lock:
            self._down = down

    @property
    def is_down(self) -> bool:
        with self._lock:
            return self._down

    def inject(
        self,
        kind: FaultKind | str,
        count: int = 1,
        *,
        methods: Collection[str] | None = None,
        path_prefix: str | None = None,
        status: int = 503,
    ) -> None:
        """Force ``kind`` on the next ``count`` matching requests (before the random plan).

        Injections are consumed first-in first-out; ``status`` is used by the 5xx kinds.
        """
        fault = FaultKind(kind)
        if fault not in _INJECTABLE:
            raise ValueError(f"cannot inject {fault.value!r}")
        if count < 1:
            raise ValueError("count must be >= 1")
        _check_status(status)
        injection = _Injection(fault, count, _normalize_methods(methods), path_prefix, status)
        with self._lock:
            self._injections.append(injection)

    def burst_5xx(self, count: int, status: int = 503) -> None:
        """Answer the next ``count`` requests (any method/path) with ``status`` locally."""
        self.inject(FaultKind.BURST_5XX, count, status=status)

    def clear_injections(self) -> None:
        with self._lock:
            self._injections.clear()

    # -- observation ---------------------------------------------------------------------

    @property
    def stats(self) -> ProxyStats:
        with self._lock:
            return self._counters.snapshot()

    @property
    def log(self) -> list[LogEntry]:
        with self._lock:
            return list(self._log)

    def reset_stats(self) -> None:
        with self._lock:
            self._counters = _Counters()
            self._log.clear()

    # -- internals used by the connection threads ----------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        try:
            while not self._stopping.is_set() and self._may_accept():
                try:
                    sock, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                self._on_accept(sock)
        finally:
            listener.close()

    def _may_accept(self) -> bool:
        with self._lock:
            connections = self._counters.connections
        return connections < self.max_connections and time.monotonic() < self._deadline

    def _on_accept(self, sock: socket.socket) -> None:
        _tune(sock, self.io_timeout)
        client = _Endpoint(sock)
        with self._lock:
            self._counters.connections += 1
            name = f"faultproxy-{self.port}-conn-{self._counters.connections}"
            session = None if self._down else _Session(self, client, name)
            if session is None:
                self._record("-", "-", FaultKind.DOWN)
            else:
                self._sessions.add(session)
        if session is None:
            client.reset()
            return
        session.thread.start()

    def _forget(self, session: _Session) -> None:
        with self._lock:
            self._sessions.discard(session)

    def _record(self, method: str, path: str, kind: FaultKind) -> None:
        if kind is not FaultKind.NONE:
            self._counters.faults[kind.value] += 1
        self._log.append(LogEntry(method, path, kind))

    def _decide(self, method: str, path: str) -> _Decision:
        with self._lock:
            self._counters.requests += 1
            plan = self._plan
            kind, status = self._choose(method, path, plan)
            self._record(method, path, kind)
        return _Decision(kind, status, plan)

    def _choose(self, method: str, path: str, plan: FaultPlan) -> tuple[FaultKind, int]:
        """Pick the fault for one request; caller holds the lock."""
        if self._down:
            return FaultKind.DOWN, 0
        injection = self._take_injection(method, path)
        if injection is not None:
            return injection.kind, injection.status
        if not plan.applies_to(method, path):
            return FaultKind.NONE, 0
        kind = plan.pick(self._rng.random())
        if kind is FaultKind.HTTP_5XX:
            return kind, self._rng.choice(plan.status_codes)
        return kind, 0

    def _take_injection(self, method: str, path: str) -> _Injection | None:
        for index, injection in enumerate(self._injections):
            if _target_matches(injection.methods, injection.path_prefix, method, path):
                injection.remaining -= 1
                if injection.remaining == 0:
                    del self._injections[index]
                return injection
        return None

    def _count_forwarded(self) -> None:
        with self._lock:
            self._counters.forwarded += 1

    def _count_upstream_error(self) -> None:
        with self._lock:
            self._counters.upstream_errors += 1

    def _sleep(self, seconds: float) -> bool:
        """Sleep unless the proxy stops first; True if the full time elapsed."""
        return not self._stopping.wait(seconds)
