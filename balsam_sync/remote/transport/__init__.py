"""HTTP to the Balsam server: the only package that imports ``requests``.

It adds the bearer token, applies timeouts, the retry policy and the circuit breaker
(``link.py``); ``replies.py`` maps every ``requests`` exception and error status onto
``balsam_sync.errors`` at one boundary. Nothing above this package sees a ``requests`` type.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import requests

from ...errors import (
    ConfigError,
    ConnectFailed,
    HTTPStatusError,
    Interrupted,
    NotAuthenticated,
    ReplyLost,
    SilentLink,
    TransportError,
)
from ..jwt import expiry
from ..link import Link
from ..outcomes import link_failed
from ..params import Params
from ..retry import RetryPolicy
from ..serverclock import Clock, ServerClock
from ..wire import Expect
from .network import Watch, first_on_connection, session_factory, watching
from .replies import MAX_REPLY_BYTES, decode, mapped, path_of, read_body
from .waiting import (
    PATIENT,
    PROBE_PATH,
    Exchange,
    Job,
    Patience,
    Pool,
    Prober,
    Received,
    Scopes,
    Wait,
)

__all__ = ["PATIENT", "PROBE_PATH", "Received", "Reply", "Transport"]

RequestHook = Callable[[str, str], None]
"""Called with (method, url) in the caller's thread before each attempt and probe (tests)."""


class Reply(NamedTuple):
    """One reply as ``on_response`` hooks see it (its ``Date`` header is the server's clock)."""

    method: str
    url: str
    status: int
    headers: Mapping[str, str]
    size: int  # body bytes
    seconds: float  # from sending the request until the reply's head arrived


ResponseHook = Callable[[Reply], None]
"""Called with every reply to a request (not to a probe), in the caller's thread."""
log = logging.getLogger(__name__)


class Transport:
    """A session with one Balsam server for one user.

    Each request runs in a worker thread while the caller waits, so the wait can end early,
    by what the network says (``waiting.py``): a connect never answered is a link that is
    down; a host that took the request is a live server, waited for (a write's push: up to
    ``write_wait``; other calls: while it answers probes); a requested stop (``stopping()``)
    ends the wait after ``stop_grace``. ``link`` keeps requests off a server that just failed.

    Args:
        api_root: base URL, e.g. ``http://127.0.0.1:8765``.
        token: bearer token (JWT); ``None`` for the auth routes only.
        retry: bounds for retrying transient failures within one call.
        connect_timeout: seconds to establish a connection.
        read_timeout: seconds to wait for a reply from a server that is alive.
        verify: TLS certificate verification (on unless explicitly turned off).
        link: the circuit breaker (a private one when not given).
        probe_after: seconds without a reply before the server is probed.
        probe_timeout: seconds a probe may take.
        stop_grace: seconds a request in flight may still finish after a stop was requested.
        clock: this machine's clock, for tests: it then also stands for the passage of time
            (``Transport.server_now`` estimates the server's from it).
        write_wait: seconds a write's push waits for a server whose host took the request.
        connect_wait: seconds a write's push waits for a connection to be accepted.
    """

    def __init__(
        self,
        api_root: str,
        token: str | None,
        *,
        retry: RetryPolicy | None = None,
        connect_timeout: float = 6.2,
        read_timeout: float = 120.0,
        verify: bool | str = True,
        link: Link | None = None,
        probe_after: float = 1.0,
        probe_timeout: float = 1.5,
        stop_grace: float = 3.0,
        clock: Clock | None = None,
        write_wait: float = 10.0,
        connect_wait: float = 2.0,
    ) -> None:
        if not api_root.startswith(("http://", "https://")):
            raise ConfigError(f"api_root must start with http:// or https://, got {api_root!r}")
        if "@" in urlsplit(api_root).netloc:
            raise ConfigError("the server URL holds a user name or password: remove it")
        # An injected clock (tests) stands for all of this machine's time, its passage too.
        ticks = (lambda: clock().timestamp()) if clock is not None else None
        self._clock = ServerClock(clock, ticks)
        self._warned_expiry = False
        self.api_root = api_root.rstrip("/")
        self.retry = retry or RetryPolicy()
        self.timeout = (connect_timeout, read_timeout)
        self.link = link or Link()
        self.probe_after = probe_after
        self.probe_timeout = probe_timeout
        self.stop_grace = stop_grace
        self.write_wait = write_wait
        self.connect_wait = connect_wait
        self.on_request: list[RequestHook] = []
        self.on_response: list[ResponseHook] = []
        self._token = token
        self._verify = verify
        self._sessions: Pool[requests.Session] = Pool(
            partial(session_factory, verify, self._note_date), requests.Session.close
        )
        self._scopes = Scopes()
        self._prober = Prober(self._sessions, self.api_root)
        self.max_reply_bytes = MAX_REPLY_BYTES

    # -- token ---------------------------------------------------------------------------------

    @property
    def token_expiry(self) -> datetime | None:
        """When the token stops being accepted, read from its ``exp`` claim (no I/O)."""
        return expiry(self._token) if self._token else None

    def set_token(self, token: str | None) -> None:
        """Use a new token from the next request on (after ``balsam-sync login``)."""
        self._token = token

    def _auth_headers(self, auth: bool) -> dict[str, str]:
        if not auth:
            return {}
        if not self._token:
            raise NotAuthenticated(
                "no token: log in with `balsam-sync login` or set BALSAM_SYNC_TOKEN",
                method="",
                url=self.api_root,
                status=401,
                body=None,
            )
        expiry = self.token_expiry
        if expiry is not None and expiry <= self.server_now() and not self._warned_expiry:
            # Only the server can tell: this machine's clock may be wrong. A refused token
            # comes back as a 401 (NotAuthenticated) from the server itself.
            self._warned_expiry = True
            log.warning(
                "the token seems to have expired at %s by this machine's clock; sending it "
                "anyway (the server decides; `balsam-sync login` renews it)",
                expiry.isoformat(),
            )
        return {"Authorization": f"Bearer {self._token}"}

    # -- clocks --------------------------------------------------------------------------------

    @property
    def clock(self) -> Clock:
        """This machine's clock (injectable)."""
        return self._clock.clock

    @property
    def clock_offset(self) -> float | None:
        """Seconds the server's clock is ahead of ours, as its last fresh ``Date`` showed
        (0: they agree; None: unknown yet)."""
        return self._clock.offset

    @property
    def server_clock(self) -> ServerClock:
        """Our estimate of the server's clock, fed by every reply (``serverclock.py``)."""
        return self._clock

    def server_now(self) -> datetime:
        """Our estimate of the server's clock (``serverclock.py``): a frozen, stale or absurd
        ``Date`` cannot move it back or into the future."""
        return self._clock.now()

    def witness(self, stamp: datetime) -> None:
        """The server stamped a row ``stamp`` by its own clock (evidence for the estimate)."""
        self._clock.witness(stamp)

    def _note_date(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        first = first_on_connection(response)
        self._clock.read(response.headers.get("Date"), response.elapsed.total_seconds(), first)

    def read_clock(self) -> None:
        """Read the server's clock now if it was never read (one probe on a new connection),
        so that what is stamped next (a pull's start) does not rest on this machine's clock
        alone. A probe that fails says nothing here: the request that follows will."""
        if self._clock.read_yet:
            return
        self._sessions.close()
        for hook in (*REQUEST_HOOKS, *self.on_request):
            hook("GET", self._prober.url)
        seconds = self.probe_timeout * 2
        self._prober.answers(self._prober.start(seconds), time.monotonic(), seconds)

    def _fresh_reading_if_due(self) -> None:
        """Close idle connections when the clock wants a reading: the next request then opens
        a new connection, whose first reply carries a fresh ``Date``."""
        if self._clock.wants_reading():
            self._sessions.close()

    # -- stopping and hurrying (see waiting.Scopes) ---------------------------------------

    def stopping(self, event: threading.Event) -> AbstractContextManager[None]:
        """While inside, setting ``event`` ends waits and retries (in every thread) promptly:
        a request not yet sent is not sent; one in flight gets ``stop_grace`` seconds, then is
        abandoned (``Interrupted``). Leaving the block leaves the transport as it was."""
        return self._scopes.stopping(event)

    def stop_requested(self) -> bool:
        return self._scopes.stop_requested()

    def impatient(self) -> AbstractContextManager[None]:
        """Inside (this thread), wait as a write's push does (``waiting.py``): a connect not
        accepted within ``connect_wait`` is a link that is down (nothing sent), a host that
        took the request gets ``write_wait`` to answer. Elsewhere, a server that answers
        probes is waited for, and two unanswered probes of 5 s make a silent link."""
        return self._scopes.hurrying()

    def _patience(self) -> Patience:
        return Patience(
            write_wait=self.write_wait,
            connect_wait=self.connect_wait,
            probe_after=self.probe_after,
            probe_timeout=self.probe_timeout,
            stop_grace=self.stop_grace,
        )

    # -- reachability --------------------------------------------------------------------------

    def ensure_reachable(self) -> None:
        """Probe now if the last attempt failed, even in the back-off (push, pull, status...).

        Raises ``ConnectFailed`` when the server does not answer the probe.
        """
        if self.link.state.doubtful:
            self._probe_or_raise()

    def _admit(self, method: str, url: str) -> None:
        """Refuse at once what would not be answered; probe first after a failure."""
        where = f"{method} {path_of(url)}"
        if self.stop_requested():
            raise ConnectFailed(f"{where}: not sent, a stop was requested", method=method, url=url)
        state = self.link.state
        if state.down():
            raise ConnectFailed(f"{where}: not sent, {state.describe()}", method=method, url=url)
        if state.doubtful:
            self._probe_or_raise()

    def _probe_or_raise(self) -> None:
        url = self.api_root + PROBE_PATH
        for hook in (*REQUEST_HOOKS, *self.on_request):
            hook("GET", url)
        seconds = self.probe_timeout * (1 if Scopes.hurried() else 2)
        if self._prober.answers(self._prober.start(seconds), time.monotonic(), seconds):
            self.link.mark_up()
            return
        state = self.link.mark_down("no answer to a probe")
        raise ConnectFailed(f"GET {PROBE_PATH}: {state.describe()}", method="GET", url=url)

    # -- requests ------------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Params | None = None,
        json_body: Any = None,
        form: Mapping[str, str] | None = None,
        idempotent: bool | None = None,
        auth: bool = True,
        retry: RetryPolicy | None = None,
        expect: Expect | None = None,
    ) -> Any:
        """Send one request (retrying transient failures) and return the decoded JSON body.

        ``idempotent`` defaults to True for every method but POST. A 204 or empty body returns
        ``None``. Error statuses raise the matching ``HTTPStatusError`` subclass at once;
        a reply that breaks the protocol (a redirect, not JSON, over ``max_reply_bytes``, or
        off the ``expect``-ed schema) raises ``ProtocolError``; ``outcomes.py`` says what each
        failure means.
        """
        if idempotent is None:
            idempotent = method != "POST"
        policy = retry or self.retry
        url = self.api_root + path
        headers = self._auth_headers(auth)
        if method == "DELETE":
            # The server closes the connection after every 204 DELETE; closing it on our side
            # too keeps a dead connection out of the pool (balsam-api.md, real-server pitfalls).
            headers["Connection"] = "close"
        options = {"params": params, "json": json_body, "data": form, "headers": headers}

        limit = self.max_reply_bytes

        def send(watch: Watch, session: requests.Session) -> Received:
            # Redirects are never followed: the API does not redirect, so a 3xx comes from
            # something in between and is a ProtocolError (for a write: outcome unknown).
            with watching(watch):
                response = session.request(
                    method, url, timeout=self.timeout, allow_redirects=False, stream=True, **options
                )
            with mapped(method, url):
                return response, read_body(method, url, response, limit)

        sent = False  # a request refused before sending says nothing new about the link

        def attempt() -> Any:
            nonlocal sent
            self._admit(method, url)
            self._fresh_reading_if_due()
            for hook in (*REQUEST_HOOKS, *self.on_request):
                hook(method, url)
            sent = True
            watch = Watch()
            with mapped(method, url):
                response, content = self._wait(
                    method, url, Job(self._sessions, partial(send, watch)), watch
                )
            self._tell(method, url, response, len(content))
            return decode(method, url, response, content, expect)

        try:
            body = policy.call(
                attempt, idempotent=idempotent, also=_retry_now, stopped=self.stop_requested
            )
        except TransportError as exc:
            if sent and link_failed(exc) and not self.stop_requested():
                self.link.mark_down(str(exc))
            raise
        self.link.mark_up()
        return body

    def _tell(self, method: str, url: str, response: requests.Response, size: int) -> None:
        if not self.on_response:
            return
        seconds = response.elapsed.total_seconds()
        reply = Reply(method, url, response.status_code, response.headers, size, seconds)
        for hook in list(self.on_response):
            hook(reply)

    def _wait(self, method: str, url: str, job: Exchange, watch: Watch) -> Received:
        """Wait for ``job`` as ``waiting.py`` says; honour a requested stop."""
        hurried = Scopes.hurried()
        waiting = Wait(method, url, self._patience(), self._prober, self.stop_requested, hurried)
        return waiting.until_done(job, watch)

    def close(self) -> None:
        """Close the pooled connections."""
        self._sessions.close()


REQUEST_HOOKS: list[RequestHook] = []
"""Hooks called for every request of every transport (tests install guards here)."""


def _retry_now(exc: BaseException) -> bool:
    """Retry within the call what the server answered, or a reply lost on a link that works;
    a refused connection or a silent link marks the link down instead."""
    if isinstance(exc, ReplyLost):
        return not isinstance(exc, SilentLink | Interrupted)
    return isinstance(exc, HTTPStatusError)
