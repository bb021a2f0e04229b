"""HTTP behaviour against the real server, with faults injected by the loopback proxy."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import balsam_sync
from balsam_sync import errors
from balsam_sync.client import Client
from balsam_sync.remote.link import Link
from balsam_sync.remote.outcomes import Backoff, Outcome, outcome
from balsam_sync.remote.retry import RetryPolicy, is_transient
from balsam_sync.remote.transport import PATIENT, Transport
from balsam_sync.testing.faultproxy import FaultKind, FaultProxy
from tests.conftest import User

NO_WAIT = RetryPolicy(attempts=4, max_seconds=10, initial_wait=0, max_wait=0)


@pytest.fixture
def proxied(user: User, proxy: FaultProxy, tmp_path: Path) -> Iterator[Client]:
    c = balsam_sync.connect(proxy.url, user.token, home=str(tmp_path), retry=NO_WAIT)
    yield c
    c.close()


def test_idempotent_requests_retry_through_a_5xx_burst(proxied: Client, proxy: FaultProxy) -> None:
    proxy.burst_5xx(2)
    assert proxied.Site.objects.online().count() == 0
    assert proxy.stats.requests == 3
    assert proxy.stats.faults["burst_5xx"] == 2


def test_a_4xx_is_raised_at_once_with_the_servers_message(
    proxied: Client, proxy: FaultProxy
) -> None:
    proxied.Site.objects.create(name="dup", path="/a")
    before = proxy.stats.requests
    with pytest.raises(errors.Rejected, match="already exists") as caught:
        proxied.Site.objects.create(name="dup", path="/b")
    assert caught.value.status == 400
    assert proxy.stats.requests - before == 1  # one POST, never repeated


def test_a_lost_create_reply_is_never_resent_blindly(user: User, proxy: FaultProxy) -> None:
    transport = Transport(proxy.url, user.token, retry=NO_WAIT)
    name = f"lost-{uuid.uuid4().hex[:6]}"
    proxy.inject(FaultKind.LOST_REPLY, 1, methods=("POST",))
    with pytest.raises(errors.ReplyLost):
        transport.request("POST", "/sites/", json_body={"name": name, "path": "/x"})
    transport.ensure_reachable()  # the link was marked down: an explicit look probes first
    sites = transport.request("GET", "/sites/", params=[("name", name)])
    assert sites["count"] == 1  # the server did commit, and nothing was sent twice
    assert proxy.stats.faults["lost_reply"] == 1


def test_a_refused_connection_is_resent_because_it_never_arrived(
    user: User, proxy: FaultProxy
) -> None:
    transport = Transport(proxy.url, user.token, retry=NO_WAIT)
    proxy.inject(FaultKind.REFUSE, 1, methods=("POST",))
    name = f"ref-{uuid.uuid4().hex[:6]}"
    with pytest.raises(errors.ServerUnreachable):
        # REFUSE resets after reading the headers: the client cannot know it never arrived,
        # so a POST is not resent ...
        transport.request("POST", "/sites/", json_body={"name": name, "path": "/x"})
    transport.ensure_reachable()
    assert transport.request("GET", "/sites/", params=[("name", name)])["count"] == 0


def test_a_dead_port_fails_once_then_is_not_tried_until_its_back_off_ends(user: User) -> None:
    slept: list[float] = []
    policy = RetryPolicy(attempts=3, max_seconds=5, initial_wait=0.01, sleep=slept.append)
    transport = Transport(
        "http://127.0.0.1:9", user.token, retry=policy, link=Link(Backoff(initial=0.3))
    )
    tried: list[str] = []
    transport.on_request.append(lambda method, url: tried.append(url))
    with pytest.raises(errors.ConnectFailed):
        transport.request("GET", "/sites/")
    assert (len(tried), slept) == (1, [])  # one attempt: a failed link is not hammered
    with pytest.raises(errors.ConnectFailed, match="could not be reached"):
        transport.request("GET", "/sites/")
    assert len(tried) == 1  # within the back-off: not even tried
    time.sleep(0.35)
    with pytest.raises(errors.ConnectFailed):
        transport.request("GET", "/sites/")
    assert tried[1:] == ["http://127.0.0.1:9/auth/how"]  # after it: a short probe first
    assert transport.link.state.failures == 2


def test_the_connection_closed_after_a_delete_does_not_break_the_next_request(
    client: Client, app: object
) -> None:
    for i in range(5):
        job = client.Job.objects.create(workdir=f"d/{i}", app_id=app.id)  # type: ignore[attr-defined]
        job.delete()
        assert client.Site.objects.online().count() == 1


def test_a_bad_token_is_not_authenticated_and_never_echoed(
    balsam_server: str, tmp_path: Path
) -> None:
    token = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOjEsInVzZXJuYW1lIjoieCJ9.c2VjcmV0LXNpZ25hdHVyZQ"
    c = balsam_sync.connect(balsam_server, token, home=str(tmp_path), retry=NO_WAIT)
    with pytest.raises(errors.NotAuthenticated) as caught:
        c.Site.objects.online().count()
    assert token not in str(caught.value) and token not in repr(caught.value)
    assert token not in repr(c.settings)


def status(code: int) -> errors.HTTPStatusError:
    cls = errors.status_error_class(code)
    return cls("x", method="GET", url="u", status=code, body=None)


def test_the_outcome_table() -> None:
    never, maybe = Outcome.NEVER_SENT, Outcome.MAYBE_APPLIED
    table = {
        errors.ConnectFailed("x"): never,
        status(429): never,
        status(503): never,
        errors.ReplyLost("x"): maybe,
        errors.Interrupted("x"): maybe,
        errors.TransportError("x"): maybe,
        status(401): Outcome.NOT_AUTHENTICATED,
    }
    table |= {status(code): maybe for code in (500, 501, 502, 504, 599)}
    table |= {status(code): Outcome.REFUSED for code in (400, 403, 404, 405, 409, 422)}
    assert {exc: outcome(exc) for exc in table} == table
    for code in (429, 502, 503, 504):  # a gateway's "not now": reads use the mirror
        assert isinstance(status(code), errors.ServerUnreachable)
    assert isinstance(status(502), errors.ServerError)


def test_transient_classification() -> None:
    assert is_transient(errors.ConnectFailed("x"), idempotent=False)
    assert not is_transient(errors.ReplyLost("x"), idempotent=False)
    assert is_transient(errors.ReplyLost("x"), idempotent=True)
    assert is_transient(status(503), idempotent=False)
    assert is_transient(status(429), idempotent=False)
    for code in (500, 502, 504):  # maybe applied: resent only when repeating is harmless
        assert not is_transient(status(code), idempotent=False)
        assert is_transient(status(code), idempotent=True)
    for code in (400, 401, 404, 405, 409, 422):
        assert not is_transient(status(code), idempotent=True)


def test_the_link_state_is_shared_through_a_file(tmp_path: Path) -> None:
    one, two = Link(Backoff(initial=30)), Link(Backoff(initial=30))
    one.share(tmp_path / "m.link.json")
    two.share(tmp_path / "m.link.json")
    assert not two.down()
    one.mark_down("refused")
    assert two.down() and "refused" in two.state.describe()
    assert two.mark_down("again").failures == 2  # builds on what the other process saw
    one.mark_up()
    assert not two.down() and not two.state.doubtful
    (tmp_path / "m.link.json").write_text("{half-writ")
    assert not two.down()  # unreadable: each keeps what it knows


def test_a_silent_server_costs_write_wait_or_probes_not_the_read_timeout(
    user: User, proxy: FaultProxy
) -> None:
    transport = Transport(proxy.url, user.token, retry=NO_WAIT, read_timeout=120, write_wait=2)
    assert transport.request("GET", "/sites/")["count"] == 0
    proxy.set_silent(True)
    started = time.monotonic()
    with transport.impatient(), pytest.raises(errors.SilentLink, match="write_wait"):
        transport.request("GET", "/sites/")  # as a write's push: the host took it, waited for
    assert time.monotonic() - started < transport.write_wait + 1.5
    assert transport.link.down()
    transport.link.reset()
    started = time.monotonic()
    with pytest.raises(errors.SilentLink, match="probe"):
        transport.request("GET", "/sites/")  # others allow a busy server two longer probes
    tries, seconds = PATIENT
    assert time.monotonic() - started < transport.probe_after + tries * seconds + 1
    assert transport.link.down()
    started = time.monotonic()
    with pytest.raises(errors.ConnectFailed):
        transport.ensure_reachable()  # an explicit probe: a few seconds
    assert time.monotonic() - started < 2 * transport.probe_timeout + 0.5
    proxy.set_silent(False)
    transport.ensure_reachable()
    assert transport.request("GET", "/sites/")["count"] == 0


def test_a_requested_stop_abandons_a_request_in_flight(user: User, proxy: FaultProxy) -> None:
    transport = Transport(proxy.url, user.token, retry=NO_WAIT, probe_after=60, stop_grace=0.3)
    stop = threading.Event()
    proxy.set_silent(True)
    threading.Timer(0.2, stop.set).start()
    started = time.monotonic()
    with transport.stopping(stop), pytest.raises(errors.Interrupted):
        transport.request("POST", "/sites/", json_body={"name": "x", "path": "/x"})
    assert time.monotonic() - started < 1.5
    with transport.stopping(stop), pytest.raises(errors.ConnectFailed, match="stop"):
        transport.request("GET", "/sites/")  # not even sent
    assert not transport.stop_requested()  # leaving the scope leaves the transport as it was
    assert not transport.link.down()  # a stop says nothing about the link


def test_tls_verification_is_on_by_default() -> None:
    assert Transport("https://example.invalid", None)._verify is True
    settings = balsam_sync.Settings(api_root="https://example.invalid")
    assert settings.verify_tls is True
