"""Run a blocking exchange in a daemon thread, so its caller can stop waiting for it.

The transport uses this to probe a server that keeps silent and to honour a requested stop
while a request is in flight: an abandoned exchange finishes (or times out) on its own thread
and never blocks the interpreter's exit.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Generic, TypeVar

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
