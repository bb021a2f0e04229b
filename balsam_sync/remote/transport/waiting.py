"""How long a caller waits for a reply, and what a server's silence means.

Each request runs in a thread of its own while its caller waits here, watching what the
network itself says (``network.Watch``), because a busy server and a dead link look alike to
a caller that only waits for replies:

* **A connect never answered** (a host that is gone, a firewall that drops): a write's push
  gives up after ``connect_wait`` (2 s), other calls after the connect timeout. The request is
  stopped before it can leave, so the change is known never to have been sent.
* **Request segments never acknowledged** by the peer's kernel for ``ack_wait``: the host is
  gone after the connection was made (Linux tells; elsewhere this check is skipped). A live
  server too busy to read still acknowledges what its kernel received.
* Otherwise **the host is there**, and a busy server gets time: a write's push waits up to
  ``write_wait`` (10 s, a setting) for the reply; after that the change stays queued (it may
  still be applied: it is settled first) and the link counts as down for its back-off, so the
  writes that follow return at once. Other calls probe the server (``/auth/how`` on a new
  connection) after ``probe_after`` and give up once two probes of 5 s go unanswered;
  while probes are answered they wait up to the read timeout.
* A requested stop ends any wait after ``stop_grace``.

The exchange itself runs in a daemon thread (``Job``) with a pooled session, so its caller can
stop waiting: an abandoned exchange finishes (or times out) on its own thread and never blocks
the interpreter's exit.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Generic, NoReturn, TypeVar

import requests

from ...errors import UNAVAILABLE_STATUSES, ConnectFailed, Interrupted, SilentLink
from .network import Watch
from .replies import path_of

PROBE_PATH = "/auth/how"  # needs no token; any answer but 429/502/503/504 means "up"
TICK = 0.05  # seconds between checks of a request in flight (stop requested? probe due?)
REPROBE_SECONDS = 10.0  # while a live server is slow to answer, probe it again this often
PATIENT = (2, 5.0)  # unanswered probes (of seconds each) before a busy server counts as silent


S = TypeVar("S")
T = TypeVar("T")


class Pool(Generic[S]):
    """Reusable connections (sessions): one per exchange in flight, kept for the next."""

    def __init__(self, make: Callable[[], S], close: Callable[[S], None]) -> None:
        self._make = make
        self._close = close
        self._idle: list[S] = []
        self._lock = threading.Lock()

    def take(self) -> S:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        return self._make()

    def give(self, item: S) -> None:
        with self._lock:
            self._idle.append(item)

    def close(self) -> None:
        """Close the idle items (those in use are kept by their exchanges)."""
        with self._lock:
            idle, self._idle = self._idle, []
        for item in idle:
            self._close(item)


class Job(Generic[S, T]):
    """One exchange ``send(item)`` running in a daemon thread with an item of ``pool``."""

    def __init__(self, pool: Pool[S], send: Callable[[S], T]) -> None:
        self.value: T | None = None
        self.error: BaseException | None = None
        self._done = threading.Event()
        self._pool = pool
        self._send = send
        threading.Thread(target=self._run, name="balsam-sync-http", daemon=True).start()

    def _run(self) -> None:
        item = self._pool.take()
        try:
            self.value = self._send(item)
        except BaseException as exc:  # handed to the waiting caller by result()
            self.error = exc
        finally:
            self._pool.give(item)
            self._done.set()

    def wait(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds; True once the exchange has finished."""
        return self._done.wait(timeout)

    def result(self) -> T:
        """The exchange's value, or its exception raised again."""
        if self.error is not None:
            raise self.error
        if self.value is None:
            raise RuntimeError("the exchange has not finished")
        return self.value


_HURRIED: ContextVar[bool] = ContextVar("balsam_sync_hurried", default=False)


class Scopes:
    """Stops requested for a while (seen by every thread) and a thread's hurry."""

    def __init__(self) -> None:
        self._stops: list[threading.Event] = []

    @contextmanager
    def stopping(self, event: threading.Event) -> Iterator[None]:
        self._stops.append(event)
        try:
            yield
        finally:
            self._stops.remove(event)

    def stop_requested(self) -> bool:
        return any(event.is_set() for event in list(self._stops))

    @contextmanager
    def hurrying(self) -> Iterator[None]:
        token = _HURRIED.set(True)
        try:
            yield
        finally:
            _HURRIED.reset(token)

    @staticmethod
    def hurried() -> bool:
        """True inside ``hurrying()`` in this thread."""
        return _HURRIED.get()


Received = tuple[requests.Response, bytes]
"""A reply and its body, read whole (up to ``max_reply_bytes``) in the exchange's thread."""
Exchange = Job[requests.Session, Received]
Probe = Job[requests.Session, requests.Response]


@dataclass(frozen=True)
class Patience:
    """How long to wait, in seconds (see the module docstring)."""

    write_wait: float = 10.0
    connect_wait: float = 2.0
    ack_wait: float = 3.0
    probe_after: float = 1.0
    probe_timeout: float = 1.5
    stop_grace: float = 3.0


class Prober:
    """Short requests to ``/auth/how`` on the transport's sessions: is the server there?"""

    def __init__(self, sessions: Pool[requests.Session], api_root: str) -> None:
        self.sessions = sessions
        self.url = api_root + PROBE_PATH

    def start(self, seconds: float) -> Probe:
        url, timeout = self.url, (seconds, seconds)
        return Job(self.sessions, lambda s: s.get(url, timeout=timeout, allow_redirects=False))

    def answers(self, probe: Probe, started: float, seconds: float) -> bool:
        """Wait for a probe (at most ``seconds``); True if the server answered it."""
        while not probe.wait(TICK):
            if time.monotonic() - started > seconds + TICK:
                return False
        return probe.error is None and probe.result().status_code not in UNAVAILABLE_STATUSES


class Wait:
    """One caller waiting for one exchange (see the module docstring)."""

    def __init__(
        self,
        method: str,
        url: str,
        patience: Patience,
        prober: Prober,
        stop_requested: Callable[[], bool],
        hurried: bool,
    ) -> None:
        self.method, self.url = method, url
        self.where = f"{method} {path_of(url)}"
        self.patience = patience
        self.prober = prober
        self.stop_requested = stop_requested
        self.hurried = hurried
        self.started = time.monotonic()
        self._stop_at: float | None = None
        self._queued: tuple[int, float] | None = None  # (unacknowledged segments, since when)
        self._probe: tuple[Probe, float] | None = None
        self._next_probe = self.started + patience.probe_after
        self._tolerated, self._probe_seconds = self._probing()

    def until_done(self, job: Exchange, watch: Watch) -> Received:
        """The exchange's result, or the error its silence means."""
        while not job.wait(TICK):
            now = time.monotonic()
            self._check_stop(now, watch)
            if watch.connected_at is None:
                self._check_connect(now, watch)
                continue
            self._check_acknowledged(now, watch)
            if self.hurried:
                self._check_write_wait(now)
            else:
                self._check_probes(now)
        return job.result()

    def _fail(self, cls: type[ConnectFailed] | type[SilentLink], text: str) -> NoReturn:
        raise cls(f"{self.where}: {text}", method=self.method, url=self.url)

    def _check_stop(self, now: float, watch: Watch) -> None:
        if self._stop_at is None and self.stop_requested():
            self._stop_at = now + self.patience.stop_grace
        if self._stop_at is None or now < self._stop_at:
            return
        if watch.abandon_unconnected():
            self._fail(ConnectFailed, "not sent, a stop was requested")
        raise Interrupted(f"{self.where}: abandoned for a stop", method=self.method, url=self.url)

    def _check_connect(self, now: float, watch: Watch) -> None:
        """A write's push gives up on a connect left unanswered (requests' connect timeout
        ends it for other calls); giving up stops the request from ever leaving."""
        wait = self.patience.connect_wait
        if self.hurried and now - self.started >= wait and watch.abandon_unconnected():
            self._fail(ConnectFailed, f"not sent, no connection accepted within {wait:g} s")

    def _check_acknowledged(self, now: float, watch: Watch) -> None:
        if watch.sent_at is None:
            return
        queued = watch.unacknowledged()
        if not queued:
            self._queued = None
            return
        if self._queued is None or queued < self._queued[0]:  # progress: the peer acknowledges
            self._queued = (queued, now)
        elif now - self._queued[1] >= self.patience.ack_wait:
            self._fail(
                SilentLink,
                f"the server's host acknowledged nothing for {self.patience.ack_wait:g} s",
            )

    def _check_write_wait(self, now: float) -> None:
        wait = self.patience.write_wait
        if now - self.started >= wait:
            self._fail(
                SilentLink,
                f"no reply within {wait:g} s (write_wait), although the server's host took "
                "the request: it may be busy, and may still apply it",
            )

    def _probing(self) -> tuple[int, float]:  # (unanswered probes tolerated, probe seconds)
        return (1, self.patience.probe_timeout) if self.hurried else PATIENT

    def _check_probes(self, now: float) -> None:
        """Probe a server that keeps silent; two unanswered probes make it a silent link."""
        if self._probe is None:
            if now >= self._next_probe:
                self._probe = (self.prober.start(self._probe_seconds), now)
            return
        probe, since = self._probe
        if not probe.wait(0) and now - since <= self._probe_seconds:
            return
        answered = self.prober.answers(probe, since, self._probe_seconds)
        self._tolerated = self._probing()[0] if answered else self._tolerated - 1
        if not self._tolerated:
            self._fail(SilentLink, "no reply, and the server does not answer a probe either")
        self._probe = None
        self._next_probe = now + (REPROBE_SECONDS if answered else 0.0)
