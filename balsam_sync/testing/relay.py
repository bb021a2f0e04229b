"""One client connection of the fault proxy: relay requests and break them on purpose."""

from __future__ import annotations

import contextlib
import ipaddress
import select
import socket
import struct
import threading
from typing import Protocol
from urllib.parse import urlsplit

from .faultplan import (
    FaultKind,
    _Decision,
)
from .http11 import (
    _discard,
    _Head,
    _keep_alive,
    _local_response,
    _ProtocolError,
    _read_final_head,
    _read_head,
    _read_request_body,
    _request_line,
    _response_body,
    _response_data,
    _status_line,
    _UpstreamError,
)
from .rewrite import Message, Request, Rewriting


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


class Switchboard(Protocol):
    """What a session asks of its proxy (a ``FaultProxy``): the proxy's public face to it."""

    upstream_address: tuple[str, int]
    io_timeout: float
    rewriting: Rewriting

    @property
    def stopping(self) -> bool: ...

    def decide(self, method: str, path: str) -> _Decision:
        """Count one request and choose its fault."""
        ...

    def pause(self, seconds: float) -> bool:
        """Sleep unless the proxy stops first; True if the full time elapsed."""
        ...

    def count_forwarded(self, method: str, path: str) -> None: ...

    def count_upstream_error(self) -> None: ...

    def forget(self, session: _Session) -> None:
        """The session ended."""
        ...


_HOLD_CHUNK = 65536


class _Session:
    """Serves one client connection, one request at a time."""

    def __init__(self, proxy: Switchboard, client: _Endpoint, name: str) -> None:
        self.proxy = proxy
        self.client = client
        self.upstream: _Endpoint | None = None
        self.thread = threading.Thread(target=self.run, name=name, daemon=True)
        self._lock = threading.Lock()
        self._closed = False
        self._served = 0  # requests read on this client connection

    def run(self) -> None:
        try:
            while not self.proxy.stopping and self._serve_one():
                pass
        except _UpstreamError:
            self.proxy.count_upstream_error()
            self.client.reset()
        except (OSError, _ProtocolError):
            self.client.reset()
        finally:
            self._close_all()
            self.proxy.forget(self)

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
        decision = self.proxy.decide(method, target)
        if decision.kind in (FaultKind.REFUSE, FaultKind.DOWN):
            self.client.reset()
            return False
        if decision.kind is FaultKind.SILENT:
            self._hold()
            return False
        body = _read_request_body(self.client.rfile, head)
        keep_alive = _keep_alive(version, head)
        request = Request(method, target, body, self._served)
        self._served += 1
        intercept = self.proxy.rewriting.intercept
        made = intercept(request) if intercept and decision.kind is FaultKind.NONE else None
        if made is not None:
            self.proxy.rewriting.intercepted += 1
            self._send_message(made, keep_alive)
            return keep_alive
        return self._apply(decision, request, head.raw + body, keep_alive)

    def _send_message(self, message: Message, keep_alive: bool) -> None:
        self.client.send(message.encode_head(keep_alive))
        for chunk in message.encode_body():
            self.client.send(chunk)

    def _hold(self) -> None:
        """Say nothing until the client hangs up or the proxy stops (a silent link)."""
        sock = self.client.sock
        while not self.proxy.stopping:
            try:
                readable, _, _ = select.select([sock], [], [], 0.1)
                if readable and not sock.recv(_HOLD_CHUNK):
                    return
            except (OSError, ValueError):
                return

    def _apply(self, decision: _Decision, request: Request, raw: bytes, keep_alive: bool) -> bool:
        kind, plan = decision.kind, decision.plan
        if kind in (FaultKind.HTTP_5XX_AFTER, FaultKind.HANG_AFTER):
            self._forward(request, raw, relay=False)  # the server has committed
            if kind is FaultKind.HANG_AFTER:
                self.proxy.pause(plan.hang_seconds)
                return False
            close = plan.close_on_5xx or not keep_alive
            self.client.send(_local_response(decision.status, kind, close))
            return not close
        if kind is FaultKind.RESET_BEFORE:
            self.client.reset()
            return False
        if kind is FaultKind.TIMEOUT:
            self.proxy.pause(plan.hang_seconds)
            return False
        if kind in (FaultKind.HTTP_5XX, FaultKind.BURST_5XX):
            close = plan.close_on_5xx or not keep_alive
            self.client.send(_local_response(decision.status, kind, close))
            return not close
        if kind is FaultKind.LOST_REPLY:
            self._forward(request, raw, relay=False)
            self.client.reset()
            return False
        if kind is FaultKind.DELAY and not self.proxy.pause(plan.delay_seconds):
            return False
        return self._forward(request, raw, relay=True) and keep_alive

    def _forward(self, request: Request, raw: bytes, *, relay: bool) -> bool:
        """Send one request upstream and read its complete response.

        With ``relay`` the response goes to the client, otherwise it is dropped (lost reply).
        Returns True if the client connection may stay open.
        """
        method = request.method
        upstream = self._upstream()
        head, interim = self._exchange(upstream, (method, request.target), raw)
        rewrite = self.proxy.rewriting.rewrite
        if relay and rewrite is not None:
            return self._rewritten(upstream, request, head, interim)
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

    def _rewritten(
        self, upstream: _Endpoint, request: Request, head: _Head, interim: bytes
    ) -> bool:
        """Read the whole reply, let the rewrite change it, send what it returns."""
        data, until_close = _response_data(upstream.rfile, head, request.method)
        version, status = _status_line(head)
        announced_close = until_close or not _keep_alive(version, head)
        if announced_close or upstream.is_dropped():
            self._drop_upstream()
            announced_close = True
        reason = head.start_line.split(None, 2)[2] if head.start_line.count(" ") >= 2 else ""
        original = Message(status, head.headers, data, reason)
        rewrite = self.proxy.rewriting.rewrite
        changed = rewrite(request, original) if rewrite is not None else None
        if changed is not None:
            self.proxy.rewriting.rewritten += 1
        keep = not announced_close
        self.client.send(interim)
        self._send_message(changed or original, keep)
        return keep

    def _exchange(
        self, upstream: _Endpoint, request: tuple[str, str], raw: bytes
    ) -> tuple[_Head, bytes]:
        try:
            upstream.send(raw)
            self.proxy.count_forwarded(*request)
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
