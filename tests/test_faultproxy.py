"""Tests for balsam_sync.testing.faultproxy.

The upstream here is a tiny ``http.server`` test double used only to test the PROXY itself;
client tests put the proxy in front of a real Balsam server.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import requests

from balsam_sync.testing.faultproxy import FaultKind, FaultPlan, FaultProxy
from balsam_sync.testing.rewrite import Message, Request, redirect, reply

_CORK: int | None = getattr(socket, "TCP_CORK", None)


class _UpstreamServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.connections = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def total(self) -> int:
        with self.lock:
            return sum(self.counts.values())

    def note(self, key: str) -> None:
        with self.lock:
            self.counts[key] += 1

    def note_connection(self) -> None:
        with self.lock:
            self.connections += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 5
    disable_nagle_algorithm = True  # head and body are separate writes
    server: _UpstreamServer

    def setup(self) -> None:
        super().setup()
        self.server.note_connection()

    def log_message(self, format: str, *args: Any) -> None:
        return None

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self.server.note(f"GET {self.path}")
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for part in (b"hello ", b"chunked ", b"world"):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            self.wfile.write(b"0\r\n\r\n")
        elif self.path == "/eof":
            self.send_response(200)
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(b"until-close body")
        else:
            self._send(200, b'{"ok": true}')

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        self.server.note(f"POST {self.path}")
        self._send(201, body)

    def do_DELETE(self) -> None:
        # Like the real server: 204, then the connection is closed at once without a
        # Connection header.  Corking makes the FIN leave with the reply, as it does from a
        # separate server process (in-process, the GIL could otherwise delay it).
        self.server.note(f"DELETE {self.path}")
        if _CORK is not None:
            self.connection.setsockopt(socket.IPPROTO_TCP, _CORK, 1)
        self.send_response(204)
        self.end_headers()
        self.close_connection = True
        self.connection.shutdown(socket.SHUT_WR)


@pytest.fixture
def upstream() -> Iterator[_UpstreamServer]:
    server = _UpstreamServer()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


ProxyFactory = Callable[..., FaultProxy]


@pytest.fixture
def make_proxy(upstream: _UpstreamServer) -> Iterator[ProxyFactory]:
    proxies: list[FaultProxy] = []

    def factory(**kwargs: Any) -> FaultProxy:
        proxy = FaultProxy(upstream.url, **kwargs).start()
        proxies.append(proxy)
        return proxy

    yield factory
    for proxy in proxies:
        proxy.stop()


def _session() -> requests.Session:
    session = requests.Session()
    session.trust_env = False  # never route 127.0.0.1 through an environment proxy
    return session


@pytest.fixture
def http() -> Iterator[requests.Session]:
    session = _session()
    yield session
    session.close()


def _fresh_get(url: str, **kwargs: Any) -> requests.Response:
    with _session() as session:
        return session.get(url, **kwargs)


def _faults(proxy: FaultProxy) -> list[FaultKind]:
    return [entry.fault for entry in proxy.log]


def _wait_until(predicate: Callable[[], bool], timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.01)


# --------------------------------------------------------------------------- pass-through


def test_passthrough_reuses_one_keepalive_connection(
    upstream: _UpstreamServer, make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy()
    for _ in range(4):
        assert http.get(f"{proxy.url}/jobs/").json() == {"ok": True}
    reply = http.post(f"{proxy.url}/jobs/", data=b'{"n": 1}')
    assert (reply.status_code, reply.content) == (201, b'{"n": 1}')
    stats = proxy.stats
    assert (stats.connections, stats.requests, stats.forwarded) == (1, 5, 5)
    assert upstream.connections == 1 and upstream.total == 5
    assert set(_faults(proxy)) == {FaultKind.NONE}
    assert sum(stats.faults.values()) == 0


def test_chunked_and_until_close_responses(
    make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy()
    assert http.get(f"{proxy.url}/chunked").content == b"hello chunked world"
    assert http.get(f"{proxy.url}/eof").content == b"until-close body"
    assert http.get(f"{proxy.url}/x").status_code == 200


def test_server_closing_after_204_is_transparent(
    upstream: _UpstreamServer, make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy()
    for i in range(3):
        assert http.delete(f"{proxy.url}/jobs/{i}").status_code == 204
        assert http.get(f"{proxy.url}/jobs/").status_code == 200
    assert upstream.total == 6
    assert proxy.stats.upstream_errors == 0
    if _CORK is not None:  # the server's close was mirrored to the client each time
        assert upstream.connections == proxy.stats.connections == 4


# --------------------------------------------------------------------------- each fault


def test_refuse_never_reaches_server(
    upstream: _UpstreamServer, make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy(plan=FaultPlan(refuse=1.0))
    with pytest.raises(requests.ConnectionError):
        http.post(f"{proxy.url}/jobs/", data=b"{}")
    assert upstream.total == 0
    assert proxy.stats.faults["refuse"] == 1 and proxy.stats.forwarded == 0


def test_reset_before_never_reaches_server(
    upstream: _UpstreamServer, make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy(plan=FaultPlan(reset_before=1.0))
    with pytest.raises(requests.ConnectionError):
        http.post(f"{proxy.url}/jobs/", data=b'{"big": "' + b"x" * 100_000 + b'"}')
    assert upstream.total == 0
    assert proxy.log[-1].fault is FaultKind.RESET_BEFORE


def test_lost_reply_reaches_server_but_not_client(
    upstream: _UpstreamServer, make_proxy: ProxyFactory, http: requests.Session
) -> None:
    plan = FaultPlan(lost_reply=1.0, methods={"post"}, path_prefix="/jobs/")
    proxy = make_proxy(plan=plan)
    assert http.get(f"{proxy.url}/jobs/").status_code == 200  # filtered out
    assert http.post(f"{proxy.url}/other", data=b"{}").status_code == 201  # filtered out
    with pytest.raises(requests.ConnectionError):
        http.post(f"{proxy.url}/jobs/", data=b"{}")
    assert upstream.counts["POST /jobs/"] == 1  # the server committed it
    assert proxy.stats.forwarded == 3
    assert proxy.stats.faults["lost_reply"] == 1
    assert http.get(f"{proxy.url}/jobs/").status_code == 200  # session recovers


def test_http_5xx_answered_locally_on_keepalive(
    upstream: _UpstreamServer, make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy(plan=FaultPlan(http_5xx=1.0, status_codes=(503,), close_on_5xx=False))
    for _ in range(3):
        reply = http.get(f"{proxy.url}/jobs/")
        assert reply.status_code == 503
        assert reply.headers["X-Faultproxy-Fault"] == "http_5xx"
    assert upstream.total == 0
    assert proxy.stats.connections == 1  # kept alive across the 503s


def test_http_5xx_status_codes_and_close(
    upstream: _UpstreamServer, make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy(plan=FaultPlan(http_5xx=1.0, status_codes=(502, 504)), seed=3)
    codes = {http.get(f"{proxy.url}/x").status_code for _ in range(12)}
    assert codes == {502, 504}
    assert proxy.stats.connections == 12  # Connection: close by default
    assert upstream.total == 0


def test_delay_is_measurable(make_proxy: ProxyFactory, http: requests.Session) -> None:
    proxy = make_proxy(plan=FaultPlan(delay=1.0, delay_seconds=0.3))
    started = time.monotonic()
    assert http.get(f"{proxy.url}/x").status_code == 200
    assert time.monotonic() - started >= 0.3
    assert proxy.stats.faults["delay"] == 1 and proxy.stats.forwarded == 1


def test_timeout_hangs_then_stop_is_prompt(upstream: _UpstreamServer) -> None:
    with FaultProxy(upstream.url, plan=FaultPlan(timeout=1.0, hang_seconds=30)) as proxy:
        with _session() as session, pytest.raises(requests.ReadTimeout):
            session.get(f"{proxy.url}/x", timeout=0.3)
        started = time.monotonic()
    assert time.monotonic() - started < 1.0
    assert upstream.total == 0
    assert proxy.stats.faults["timeout"] == 1


def test_burst_5xx_then_recovers(
    upstream: _UpstreamServer, make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy()
    proxy.burst_5xx(3)
    codes = [http.get(f"{proxy.url}/jobs/").status_code for _ in range(5)]
    assert codes == [503, 503, 503, 200, 200]
    assert upstream.total == 2
    assert proxy.stats.faults["burst_5xx"] == 3


def test_set_down_resets_new_and_existing_connections(
    upstream: _UpstreamServer, make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy()
    assert http.get(f"{proxy.url}/x").status_code == 200
    proxy.set_down(True)
    assert proxy.is_down
    with pytest.raises(requests.ConnectionError):
        http.get(f"{proxy.url}/x")  # existing keep-alive connection
    with pytest.raises(requests.ConnectionError):
        _fresh_get(f"{proxy.url}/x")  # brand-new connection
    proxy.set_down(False)
    assert http.get(f"{proxy.url}/x").status_code == 200
    assert upstream.total == 2
    assert proxy.stats.faults["down"] == 2


def test_inject_targets_matching_requests(
    upstream: _UpstreamServer, make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy()
    proxy.inject("lost_reply", methods=["POST"], path_prefix="/jobs/")
    assert http.post(f"{proxy.url}/sites/", data=b"{}").status_code == 201
    with pytest.raises(requests.ConnectionError):
        http.post(f"{proxy.url}/jobs/", data=b"{}")
    assert http.post(f"{proxy.url}/jobs/", data=b"{}").status_code == 201  # consumed
    assert upstream.counts["POST /jobs/"] == 2
    with pytest.raises(ValueError):
        proxy.inject(FaultKind.DOWN)


def test_match_callable_and_runtime_plan_change(
    make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy()
    assert http.get(f"{proxy.url}/bad").status_code == 200
    proxy.update_plan(http_5xx=1.0, status_codes=(504,), match=lambda m, p: p.endswith("/bad"))
    assert http.get(f"{proxy.url}/bad").status_code == 504
    assert http.get(f"{proxy.url}/good").status_code == 200
    proxy.plan = FaultPlan()
    assert http.get(f"{proxy.url}/bad").status_code == 200


def test_http_5xx_after_reaches_server_then_answers_5xx(
    upstream: _UpstreamServer, make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy(plan=FaultPlan(http_5xx_after=1.0, after_status_codes=(500,)))
    reply = http.post(f"{proxy.url}/jobs/", data=b"{}")
    assert reply.status_code == 500
    assert reply.headers["X-Faultproxy-Fault"] == "http_5xx_after"
    assert upstream.counts["POST /jobs/"] == 1  # committed before the 5xx
    assert proxy.stats.faults["http_5xx_after"] == 1 and proxy.stats.forwarded == 1
    proxy.plan = FaultPlan()
    proxy.inject("http_5xx_after", methods=["DELETE"], status=504)
    assert http.delete(f"{proxy.url}/jobs/3").status_code == 504
    assert upstream.counts["DELETE /jobs/3"] == 1


def test_hang_after_reaches_server_then_says_nothing(
    upstream: _UpstreamServer, make_proxy: ProxyFactory
) -> None:
    proxy = make_proxy(plan=FaultPlan(hang_after=1.0, hang_seconds=30))
    with _session() as session, pytest.raises(requests.ReadTimeout):
        session.post(f"{proxy.url}/jobs/", data=b"{}", timeout=0.5)
    assert upstream.counts["POST /jobs/"] == 1
    assert proxy.stats.faults["hang_after"] == 1


def test_silent_link_accepts_and_never_answers(
    upstream: _UpstreamServer, make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy()
    assert http.get(f"{proxy.url}/x").status_code == 200
    proxy.set_silent(True)
    for session in (http, _session()):  # an open keep-alive connection and a new one
        with pytest.raises(requests.ReadTimeout):
            session.get(f"{proxy.url}/x", timeout=(2, 0.3))
    assert upstream.total == 1 and proxy.stats.forwarded == 1
    assert proxy.stats.faults["silent"] == 2
    proxy.set_silent(False)
    assert _fresh_get(f"{proxy.url}/x").status_code == 200
    started = time.monotonic()
    proxy.set_silent(True)
    with pytest.raises(requests.ReadTimeout):
        _fresh_get(f"{proxy.url}/x", timeout=(2, 0.2))
    proxy.stop()
    assert time.monotonic() - started < 3.0


def test_a_listener_that_stops_accepting_leaves_connects_unanswered(
    make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy()
    assert http.get(f"{proxy.url}/x").status_code == 200
    proxy.set_accepting(False)
    with pytest.raises(requests.ConnectTimeout):
        _fresh_get(f"{proxy.url}/x", timeout=(1.0, 1.0))  # the SYN is never answered
    assert http.get(f"{proxy.url}/x").status_code == 200  # an open connection goes on
    proxy.set_accepting(True)
    assert _fresh_get(f"{proxy.url}/x", timeout=(5.0, 5.0)).status_code == 200


def test_wait_forwarded_sees_requests_sent_upstream(
    make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy(plan=FaultPlan(refuse=1.0, methods={"GET"}))
    assert not proxy.wait_forwarded("POST", "/jobs/", timeout=0.05)
    with pytest.raises(requests.ConnectionError):
        http.get(f"{proxy.url}/jobs/")
    assert not proxy.wait_forwarded("GET", "/jobs/", timeout=0.05)  # refused: never forwarded
    threading.Timer(0.1, lambda: _session().post(f"{proxy.url}/jobs/?a=1", data=b"{}")).start()
    assert proxy.wait_forwarded("POST", "/jobs/", timeout=5)


# --------------------------------------------------------------------------- lies


def test_rewrite_changes_replies_and_keeps_the_connection(
    upstream: _UpstreamServer, make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy()
    seen: list[tuple[str, int]] = []

    def lie(request: Request, message: Message) -> Message | None:
        seen.append((request.target, request.index))
        if request.path == "/chunked":
            return message.with_body(message.body + b"!")  # type: ignore[operator]
        if request.path == "/same" or request.method == "POST":
            return None
        return message.with_header("Date", "Fri, 01 Jan 2100 00:00:00 GMT").with_json([1])

    proxy.rewrite(lie)
    answer = http.get(f"{proxy.url}/x?a=1")
    assert answer.json() == [1] and answer.headers["Date"].endswith("2100 00:00:00 GMT")
    assert http.get(f"{proxy.url}/chunked").content == b"hello chunked world!"
    assert http.get(f"{proxy.url}/same").json() == {"ok": True}
    assert http.post(f"{proxy.url}/p", data=b'{"a": 1}').json() == {"a": 1}
    assert seen[:3] == [("/x?a=1", 0), ("/chunked", 1), ("/same", 2)]
    assert upstream.connections == 1 and proxy.rewriting.rewritten == 2
    proxy.rewrite(None)
    assert http.get(f"{proxy.url}/x").json() == {"ok": True}


def test_intercept_answers_instead_of_the_server(
    upstream: _UpstreamServer, make_proxy: ProxyFactory, http: requests.Session
) -> None:
    proxy = make_proxy()

    def answer(request: Request) -> Message | None:
        if request.method == "POST":
            return redirect(302, "/login")
        if request.path == "/big":
            return reply(200, (b"x" * 65536 for _ in range(32)), "text/html")
        return None

    proxy.intercept(answer)
    moved = http.post(f"{proxy.url}/jobs/", data=b"{}", allow_redirects=False)
    assert (moved.status_code, moved.headers["Location"]) == (302, "/login")
    assert len(http.get(f"{proxy.url}/big").content) == 32 * 65536
    assert http.get(f"{proxy.url}/x").json() == {"ok": True}
    assert upstream.counts == Counter({"GET /x": 1})  # nothing intercepted was forwarded
    assert proxy.rewriting.intercepted == 2


# --------------------------------------------------------------------------- determinism


_MIXED = FaultPlan(
    refuse=0.15,
    reset_before=0.15,
    http_5xx=0.2,
    lost_reply=0.15,
    delay=0.1,
    delay_seconds=0.001,
)


def _run_sequence(proxy: FaultProxy, count: int) -> list[FaultKind]:
    with _session() as session:
        for i in range(count):
            try:
                if i % 2:
                    session.post(f"{proxy.url}/jobs/", data=b"{}")
                else:
                    session.get(f"{proxy.url}/jobs/?page={i}")
            except requests.ConnectionError:
                pass
    return _faults(proxy)


def test_same_seed_same_fault_sequence(upstream: _UpstreamServer, make_proxy: ProxyFactory) -> None:
    first = _run_sequence(make_proxy(plan=_MIXED, seed=7), 30)
    second = _run_sequence(make_proxy(plan=_MIXED, seed=7), 30)
    other = _run_sequence(make_proxy(plan=_MIXED, seed=8), 30)
    assert first == second
    assert first != other
    assert len(set(first)) >= 4
    reached = {FaultKind.NONE, FaultKind.DELAY, FaultKind.LOST_REPLY}
    assert upstream.total == sum(f in reached for f in first + second + other)


# --------------------------------------------------------------------------- safety / lifecycle


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.10", "::1", "example.com"])
def test_non_loopback_listen_refused(upstream: _UpstreamServer, host: str) -> None:
    with pytest.raises(ValueError):
        FaultProxy(upstream.url, listen_host=host)


@pytest.mark.parametrize(
    "target",
    [
        "http://10.0.0.1:8000",
        "http://example.com:8000",
        "https://127.0.0.1:8000",
        "http://127.0.0.1:8000/api",
        ("8.8.8.8", 80),
    ],
)
def test_non_loopback_upstream_refused(target: str | tuple[str, int]) -> None:
    with pytest.raises(ValueError):
        FaultProxy(target)


def test_plan_validation() -> None:
    with pytest.raises(ValueError):
        FaultPlan(refuse=0.6, lost_reply=0.6)
    with pytest.raises(ValueError):
        FaultPlan(delay=-0.1)
    with pytest.raises(ValueError):
        FaultPlan(status_codes=(200,))
    with pytest.raises(ValueError):
        FaultPlan(after_status_codes=())
    assert FaultPlan(methods="post").methods == frozenset({"POST"})


def test_stop_is_prompt_with_open_connections(upstream: _UpstreamServer) -> None:
    proxy = FaultProxy(upstream.url, plan=FaultPlan(timeout=0.5, hang_seconds=30)).start()
    idle = socket.create_connection(("127.0.0.1", proxy.port))
    sessions = [_session() for _ in range(4)]
    for session in sessions:
        with contextlib.suppress(requests.RequestException):
            session.get(f"{proxy.url}/x", timeout=0.2)
    started = time.monotonic()
    proxy.stop()
    assert time.monotonic() - started < 2.0
    assert not proxy.accepting
    alive = [t for t in threading.enumerate() if t.name.startswith(f"faultproxy-{proxy.port}-")]
    assert alive == []
    with pytest.raises(requests.ConnectionError):
        _fresh_get(f"{proxy.url}/x", timeout=0.5)
    idle.close()
    for session in sessions:
        session.close()


def test_max_connections_and_max_seconds(make_proxy: ProxyFactory) -> None:
    limited = make_proxy(max_connections=2)
    for _ in range(2):
        assert _fresh_get(f"{limited.url}/x").status_code == 200
    _wait_until(lambda: not limited.accepting)
    with pytest.raises(requests.ConnectionError):
        _fresh_get(f"{limited.url}/x", timeout=0.5)

    short = make_proxy(max_seconds=0.2)
    assert _fresh_get(f"{short.url}/x").status_code == 200
    _wait_until(lambda: not short.accepting)
    with pytest.raises(requests.ConnectionError):
        _fresh_get(f"{short.url}/x", timeout=0.5)


def test_unreachable_upstream_counts_error() -> None:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    with FaultProxy(f"http://127.0.0.1:{port}") as proxy:
        with pytest.raises(requests.ConnectionError):
            _fresh_get(f"{proxy.url}/x", timeout=1)
        assert proxy.stats.upstream_errors == 1


def test_log_is_bounded_and_stats_reset(make_proxy: ProxyFactory, http: requests.Session) -> None:
    proxy = make_proxy(log_size=3)
    for i in range(5):
        http.get(f"{proxy.url}/n/{i}")
    assert [entry.path for entry in proxy.log] == ["/n/2", "/n/3", "/n/4"]
    assert proxy.log[0].method == "GET"
    proxy.reset_stats()
    assert proxy.stats.requests == 0 and proxy.log == []


def test_start_twice_and_url_before_start(upstream: _UpstreamServer) -> None:
    proxy = FaultProxy(upstream.url)
    with pytest.raises(RuntimeError):
        _ = proxy.url
    with proxy:
        assert proxy.url == f"http://127.0.0.1:{proxy.port}"
        with pytest.raises(RuntimeError):
            proxy.start()
