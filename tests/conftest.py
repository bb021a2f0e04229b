"""Fixtures: the real Balsam server (started once), a fresh user per test, clients bound to it.

A test that needs the server fails, never skips, when the server cannot be started. Every test
whose fixtures reach ``balsam_server`` is marked ``server`` when collected, so the fast tier
(``pytest -m "not server"``) is exactly the tests that need no server; a test outside it whose
client sends a request to the real server anyway fails.
"""

from __future__ import annotations

import base64
import json
import os
import queue
import subprocess
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import requests

import balsam_sync
from balsam_sync.client import Client
from balsam_sync.remote import transport
from balsam_sync.remote.outcomes import RetryPolicy
from balsam_sync.testing.faultproxy import FaultProxy
from balsam_sync.testing.guards import no_requests_in_transactions

if TYPE_CHECKING:
    from tests.clienv import Run

ROOT = Path(__file__).resolve().parents[1]
SERVER_SCRIPT = ROOT / "scripts" / "real-balsam-server.sh"
PASSWORD = "test-password-0"


@pytest.hookimpl(tryfirst=True)  # before ``-m`` deselects by marker
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark ``server`` every test that reaches the real server through its fixtures."""
    for item in items:
        if "balsam_server" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.server)


def _server_url() -> str:
    url = os.environ.get("BALSAM_TEST_API_ROOT")
    if not url:
        url = subprocess.run(
            ["bash", str(SERVER_SCRIPT), "url"], capture_output=True, text=True, check=True
        ).stdout.strip()
    return url


def _answers(url: str) -> bool:
    try:
        return requests.get(f"{url}/auth/how", timeout=3).status_code == 200
    except requests.RequestException:
        return False


@pytest.fixture(scope="session")
def balsam_server() -> Iterator[str]:
    """Base URL of the real server on 127.0.0.1, started by scripts/real-balsam-server.sh."""
    global _POOL
    url = _server_url()
    if not _answers(url):
        run = subprocess.run(
            ["bash", str(SERVER_SCRIPT), "start"], capture_output=True, text=True, check=False
        )
        if run.returncode != 0 or not _answers(url):
            pytest.fail(
                f"the real Balsam server at {url} could not be started "
                f"(run scripts/setup.sh first):\n{run.stderr[-3000:]}",
                pytrace=False,
            )
    _POOL = _UserPool(url)
    try:
        yield url
    finally:
        _POOL.stop()
        _POOL = None


@pytest.fixture(autouse=True)
def _no_request_inside_a_mirror_transaction() -> Iterator[None]:
    """Every test fails if a request starts while a mirror write transaction is held."""
    with no_requests_in_transactions() as seen:
        yield
    assert seen == [], f"requests started inside a mirror write transaction: {seen}"


@pytest.fixture(scope="session")
def _real_server_url() -> str:
    return _server_url()


@pytest.fixture(autouse=True)
def _server_free_tests_stay_off_the_server(
    request: pytest.FixtureRequest, _real_server_url: str
) -> Iterator[None]:
    """A test not marked ``server`` fails if it sends a request to the real server: it could
    not pass without one, so it must not be in the fast tier."""
    if request.node.get_closest_marker("server") is not None:
        yield
        return
    seen: list[str] = []

    def guard(method: str, url: str) -> None:
        if url.startswith(_real_server_url):
            seen.append(f"{method} {url}")

    transport.REQUEST_HOOKS.append(guard)
    try:
        yield
    finally:
        transport.REQUEST_HOOKS.remove(guard)
    assert seen == [], (
        f"a test without the balsam_server fixture sent requests to the real server: {seen}"
    )


@dataclass(frozen=True)
class User:
    api_root: str
    username: str
    password: str
    token: str


def register_user(api_root: str, prefix: str = "t") -> User:
    """A brand-new user of the real server, logged in (users never see each other).

    The user comes from the users registered ahead for this server (``_UserPool``) when there
    is one; ``prefix`` then only names users registered here.
    """
    pool = _POOL
    if pool is not None and pool.api_root == api_root:
        return pool.take()
    return _register(api_root, prefix)


def _register(api_root: str, prefix: str) -> User:
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    reply = requests.post(
        f"{api_root}/auth/password/register",
        json={"username": name, "password": PASSWORD},
        timeout=30,
    )
    assert reply.status_code == 201, reply.text
    login = requests.post(
        f"{api_root}/auth/password/login",
        data={"username": name, "password": PASSWORD},
        timeout=30,
    )
    assert login.status_code == 200, login.text
    return User(api_root, name, PASSWORD, login.json()["access_token"])


class _UserPool:
    """Users of one server registered ahead, on a thread, while tests run.

    Every test still gets a user nobody else has seen, registered through the server's API;
    it just does not wait for it: a registration and its login cost the server two password
    hashes (bcrypt, about a second on a busy 2-core machine), which the server computes
    outside its event loop, so they overlap with the tests' own requests.
    """

    AHEAD = 3

    def __init__(self, api_root: str) -> None:
        self.api_root = api_root
        self._ready: queue.Queue[User | Exception] = queue.Queue(maxsize=self.AHEAD)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._fill, name="user-pool", daemon=True)
        self._thread.start()

    def _fill(self) -> None:
        while not self._stopping.is_set():
            try:
                found: User | Exception = _register(self.api_root, "t")
            except Exception as exc:  # handed to the test that takes the next user
                found = exc
            while not self._stopping.is_set():
                try:
                    self._ready.put(found, timeout=0.5)
                    break
                except queue.Full:
                    continue
            if isinstance(found, Exception):
                return

    def take(self) -> User:
        """The next fresh user (waits while one is being registered)."""
        try:
            found = self._ready.get(timeout=120)
        except queue.Empty:
            raise AssertionError(
                f"no user could be registered at {self.api_root} in 120 s"
            ) from None
        if isinstance(found, Exception):
            raise AssertionError(
                f"registering a user at {self.api_root} failed: {found!r}"
            ) from found
        return found

    def stop(self) -> None:
        self._stopping.set()


_POOL: _UserPool | None = None
"""The users registered ahead for the real server, while the session uses it."""


def server_jobs(user: User) -> list[dict[str, Any]]:
    """Every job of ``user`` as the server holds it (plain HTTP, not the client under test)."""
    reply = requests.get(
        f"{user.api_root}/jobs/",
        headers={"Authorization": f"Bearer {user.token}"},
        params={"limit": 100000},
        timeout=60,
    )
    reply.raise_for_status()
    rows: list[dict[str, Any]] = reply.json()["results"]
    return rows


@pytest.fixture
def user(balsam_server: str) -> User:
    return register_user(balsam_server)


FAST_RETRY = RetryPolicy(attempts=3, max_seconds=5.0, initial_wait=0.01, max_wait=0.05)


@pytest.fixture
def client(user: User, tmp_path: Path) -> Iterator[Client]:
    """A client of a fresh user, with its own mirror folder."""
    c = balsam_sync.connect(
        user.api_root, user.token, home=str(tmp_path / "home"), retry=FAST_RETRY
    )
    yield c
    c.close()


@dataclass
class RequestLog:
    """Every HTTP attempt a client made, as (method, url)."""

    calls: list[tuple[str, str]]

    def __len__(self) -> int:
        return len(self.calls)

    def clear(self) -> None:
        self.calls.clear()


def record_requests(client: Client) -> RequestLog:
    """Record every request ``client`` tries from now on, whether it reaches a server or not."""
    log = RequestLog([])
    client.transport.on_request.append(lambda method, url: log.calls.append((method, url)))
    return log


@pytest.fixture
def sent(client: Client) -> RequestLog:
    """Record the requests ``client`` sends (tests assert "nothing was sent")."""
    return record_requests(client)


def fake_jwt(**claims: Any) -> str:
    """A token that reads like the server's (its claims name the user); no server accepts it."""

    def part(data: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(data).encode()).decode().rstrip("=")

    return f"{part({'alg': 'HS256'})}.{part(claims)}.c2lnbmF0dXJl"


UNREACHABLE = "http://127.0.0.1:9"
"""A server URL where nothing listens (the discard port): every connection is refused."""


@pytest.fixture
def nobody() -> User:
    """A made-up user of a server that refuses every connection (``UNREACHABLE``); its token
    reads like the server's."""
    return User(UNREACHABLE, "nobody", PASSWORD, fake_jwt(sub=1, username="nobody"))


@pytest.fixture
def unreachable(nobody: User, tmp_path: Path) -> Iterator[Client]:
    """An online client of ``nobody``, with a throw-away home. Whatever would reach for the
    server tries to, and a fresh client's first try is always made (nothing has told it the
    link is down), so ``unreachable_sent`` proves that a call sent nothing. No server is
    needed."""
    c = balsam_sync.connect(
        nobody.api_root, nobody.token, home=str(tmp_path / "unreachable"), retry=FAST_RETRY
    )
    yield c
    c.close()


@pytest.fixture
def unreachable_sent(unreachable: Client) -> RequestLog:
    """Every request ``unreachable`` tries."""
    return record_requests(unreachable)


@pytest.fixture
def unreachable_api(unreachable: Client) -> Iterator[Client]:
    """Make ``unreachable`` the default client behind ``balsam_sync.api``."""
    balsam_sync.set_default_client(unreachable)
    yield unreachable
    balsam_sync.set_default_client(None)


@pytest.fixture
def api(client: Client) -> Iterator[Client]:
    """Make ``client`` the default client behind ``balsam_sync.api``."""
    balsam_sync.set_default_client(client)
    yield client
    balsam_sync.set_default_client(None)


# -- a bad network: the fault proxy in front of the real server ------------------------------


QUICK_RETRY = RetryPolicy(attempts=3, max_seconds=3, initial_wait=0.01, max_wait=0.05)
"""Retries for a client behind the fault proxy: few, and short."""


@pytest.fixture
def proxy(balsam_server: str, request: pytest.FixtureRequest) -> Iterator[FaultProxy]:
    """The fault-injecting proxy in front of the real server: no faults until a test plans
    them (``set_down``, ``set_silent``, ``plan``, ``inject``). A test module's ``PROXY_SEED``
    seeds its random faults (default 0), so a failure reproduces."""
    with FaultProxy(balsam_server, seed=getattr(request.module, "PROXY_SEED", 0)) as p:
        yield p


def via(
    proxy: FaultProxy, user: User, home: Path, max_request_seconds: float = 2.0, **settings: Any
) -> Client:
    """A client of ``user`` that reaches the server through ``proxy``, its mirror in ``home``
    (``QUICK_RETRY`` unless ``retry`` is given)."""
    settings.setdefault("retry", QUICK_RETRY)
    return balsam_sync.connect(
        proxy.url, user.token, home=str(home), max_request_seconds=max_request_seconds, **settings
    )


@pytest.fixture
def via_proxy(user: User, proxy: FaultProxy, tmp_path: Path) -> Iterator[Client]:
    """A client of ``user`` that reaches the server through ``proxy``, with its own mirror."""
    c = balsam_sync.connect(proxy.url, user.token, home=str(tmp_path / "proxied"), retry=FAST_RETRY)
    yield c
    c.close()


# -- a user as a shell has them: settings from the environment --------------------------------


@pytest.fixture
def env_home(tmp_path: Path) -> Path:
    """The mirror folder of ``env_user`` (``BALSAM_SYNC_HOME``); its client.yml is
    ``etc/client.yml`` in it."""
    return tmp_path / "home"


@pytest.fixture
def env_user(balsam_server: str, env_home: Path, monkeypatch: pytest.MonkeyPatch) -> User:
    """A fresh user whose server, token, mirror folder and client.yml come from the
    environment, as a user's shell has them: for the command and ``connect()`` without
    arguments."""
    from tests.clienv import use_env

    found = register_user(balsam_server, "env")
    use_env(monkeypatch, found, env_home)
    return found


@pytest.fixture
def run(env_user: User) -> Run:
    """Run ``balsam-sync`` as ``env_user`` (checks that no token or traceback is printed)."""
    from tests.clienv import Run

    return Run(env_user.token)


def _elsewhere(user: User, tmp_path: Path) -> Client:
    return balsam_sync.connect(user.api_root, user.token, home=str(tmp_path / "other"))


@pytest.fixture
def elsewhere(env_user: User, tmp_path: Path) -> Iterator[Client]:
    """A second client of ``env_user`` with a mirror of its own (another machine): what it
    writes goes straight to the server, unseen by the environment's mirror."""
    c = _elsewhere(env_user, tmp_path)
    yield c
    c.close()


@pytest.fixture
def env_app(env_user: User, tmp_path: Path) -> Any:
    """An App of ``env_user`` (and its Site), made on another machine: the environment's
    mirror has never seen it."""
    from tests.clienv import make_app

    c = _elsewhere(env_user, tmp_path)
    try:
        return make_app(c)
    finally:
        c.close()


# -- objects of ``user`` ----------------------------------------------------------------------


@pytest.fixture
def site(client: Client) -> Any:
    return client.Site.objects.create(name=f"site-{uuid.uuid4().hex[:6]}", path="/projects/demo")


@pytest.fixture
def app(client: Client, site: Any) -> Any:
    return client.App.objects.create(
        site_id=site.id, name="Hello", serialized_class="txt", source_code="print('hi')"
    )
