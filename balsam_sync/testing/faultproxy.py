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

Faults: see ``FaultKind`` (faultplan.py); one per request at most.
Lies (``rewrite.py``): :meth:`FaultProxy.rewrite` changes the server's replies (a bad
``Date``, a repeated page, a malformed row); :meth:`FaultProxy.intercept` answers instead.
:meth:`FaultProxy.set_accepting` (``stall.py``) makes connects hang, as to a host that is gone.

Example::

    plan = FaultPlan(lost_reply=0.2, methods={"POST"}, path_prefix="/jobs/")
    with FaultProxy("http://127.0.0.1:8000", plan=plan, seed=1) as proxy:
        client = make_client(proxy.url)  # talks to the real server through the proxy
        ...
        assert proxy.stats.faults["lost_reply"] > 0
"""

from __future__ import annotations

import dataclasses
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Collection
from types import TracebackType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from typing import Self  # type-checking only: importable at runtime on 3.10 too

from .faultplan import (
    _ACCEPT_POLL_SECONDS,
    _INJECTABLE,
    FaultKind,
    FaultPlan,
    LogEntry,
    ProxyStats,
    _check_status,
    _Counters,
    _Decision,
    _Injection,
    _normalize_methods,
    take_injection,
)
from .relay import _Endpoint, _loopback_host, _parse_upstream, _Session, _tune
from .rewrite import Intercept, Rewrite, Rewriting
from .stall import Stall

__all__ = ["FaultKind", "FaultPlan", "FaultProxy", "LogEntry", "ProxyStats"]


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
        self._silent = False
        self._forwards: deque[LogEntry] = deque(maxlen=log_size)
        self._forwarded = threading.Condition(self._lock)
        self._injections: list[_Injection] = []
        self._counters = _Counters()
        self._log: deque[LogEntry] = deque(maxlen=log_size)
        self._sessions: set[_Session] = set()
        self._stopping = threading.Event()
        self._listener: socket.socket | None = None
        self._accept_thread: threading.Thread | None = None
        self._deadline = 0.0
        self._port = 0
        self.rewriting = Rewriting()
        self._stall = Stall()
        self._paused = threading.Event()  # the accept loop takes no connection

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
        self._stall.end(None)
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

    def set_accepting(self, accepting: bool) -> None:
        """While not accepting, new connects are never answered (open connections go on)."""
        if accepting:
            self._stall.end(self._listener)
            self._paused.clear()
            return
        self._paused.set()
        time.sleep(3 * _ACCEPT_POLL_SECONDS)  # let an accept() in progress return first
        if self._listener is not None:
            self._stall.begin(self._listener)

    def set_silent(self, silent: bool) -> None:
        """While silent, requests (on new and open connections) are read and never answered.

        A request already held stays unanswered until its client gives up or the proxy stops.
        """
        with self._lock:
            self._silent = silent

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

    def rewrite(self, fn: Rewrite | None) -> None:
        """Pass every reply through ``fn(request, reply)`` (see ``rewrite.Rewrite``)."""
        self.rewriting.rewrite = fn

    def intercept(self, fn: Intercept | None) -> None:
        """Ask ``fn(request)`` first: a reply it returns is sent, never forwarded (None:
        forward it; faults drawn for the request come first)."""
        self.rewriting.intercept = fn

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
            self._forwards.clear()

    def wait_forwarded(
        self, method: str, path_prefix: str = "/", count: int = 1, timeout: float = 30.0
    ) -> bool:
        """Wait until ``count`` matching requests were sent to the server; False on timeout.

        A request counts once its head and body were written to the upstream connection.
        """

        def seen() -> bool:
            return count <= sum(
                1 for e in self._forwards if e.method == method and e.path.startswith(path_prefix)
            )

        with self._forwarded:
            return self._forwarded.wait_for(seen, timeout)

    # -- internals used by the connection threads ----------------------------------------

    def _accept_loop(self, listener: socket.socket) -> None:
        try:
            while not self._stopping.is_set() and self._may_accept():
                if self._paused.wait(0) and self._pause():
                    continue
                try:
                    sock, _ = listener.accept()
                except TimeoutError:
                    continue
                except OSError:
                    break
                self._on_accept(sock)
        finally:
            listener.close()

    def _pause(self) -> bool:
        return not self._stopping.wait(_ACCEPT_POLL_SECONDS)

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

    def forget(self, session: _Session) -> None:
        with self._lock:
            self._sessions.discard(session)

    def _record(self, method: str, path: str, kind: FaultKind) -> None:
        if kind is not FaultKind.NONE:
            self._counters.faults[kind.value] += 1
        self._log.append(LogEntry(method, path, kind))

    def decide(self, method: str, path: str) -> _Decision:
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
        if self._silent:
            return FaultKind.SILENT, 0
        injection = take_injection(self._injections, method, path)
        if injection is not None:
            return injection.kind, injection.status
        return plan.draw(self._rng, method, path)

    def count_forwarded(self, method: str, path: str) -> None:
        with self._lock:
            self._counters.forwarded += 1
            self._forwards.append(LogEntry(method, path, FaultKind.NONE))
            self._forwarded.notify_all()

    def count_upstream_error(self) -> None:
        with self._lock:
            self._counters.upstream_errors += 1

    def pause(self, seconds: float) -> bool:
        """Sleep unless the proxy stops first; True if the full time elapsed."""
        return not self._stopping.wait(seconds)
