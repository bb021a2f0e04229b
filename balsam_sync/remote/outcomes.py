"""What a failed request means for the change it carried: the one table of outcomes, and the
retry policy that follows it within one call.

Both the transport's retry policy (``RetryPolicy`` below) and the replayer (``sync/push.py``)
decide from this table, so a failure never means one thing on the wire and another in the outbox.

=====================================  =============  ================  =======================
failure                                outcome        same call         the outbox entry
=====================================  =============  ================  =======================
connection refused, DNS, connect       never sent     not retried: the  sent again when the
timeout; stopped before sending                       link is marked    link's back-off is over
                                                      down
429, 503                               never sent     retried           sent again
read timeout, reset after sending,     maybe applied  retried only if   settled before anything
reply cut off; kill -9 in flight                      idempotent, then  else (below)
                                                      the link is
                                                      marked down
silent link (no answer to a probe      maybe applied  not retried: the  settled before anything
either), stopped while waiting                        link is marked    else (below)
                                                      down
502, 504 (a gateway answered: the      maybe applied  retried only if   settled before anything
server may still be running it)                       idempotent        else (below)
500 and other 5xx (the server          maybe applied  retried only if   settled at once: it has
answered: it has finished)                            idempotent        finished; a batch of
                                                                        updates or deletes is
                                                                        split and resent
3xx, or a reply off the protocol       maybe applied  not retried       settled before anything
(not JSON, off the schema, too                                          else, like a lost reply
large): something in between                                            (never a dead letter)
answered, or the server misbehaved
401                                    not            no                the call raises and
                                       authenticated                    takes its change back;
                                                                        queued ones wait for a
                                                                        new login
400, 403, 404, 405, 409, 422, other    refused        no                dead letter (or raised
4xx                                                                     to the caller)
=====================================  =============  ================  =======================

Settling a maybe-applied entry: a job create is looked up by its marker tag (sites and apps by
their unique names); rows found are adopted. "Not found" counts only once the server can no
longer be running the request: it answered (a 500), or the request was sent longer ago than
``max_request_seconds``; until then nothing else is sent, and the entries are never sent again
under a new marker. Updates (PUT/PATCH set fields to values) and deletes (an id already gone
counts as deleted) are idempotent and are simply sent again. A transient failure is retried
with a capped back-off kept in the outbox (across pushes and processes) and is never a dead
letter.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import tenacity

from ..errors import (
    ConnectFailed,
    HTTPStatusError,
    NotAuthenticated,
    ProtocolError,
    ServerUnreachable,
    TransportError,
)

NOT_APPLIED_STATUSES = frozenset({429, 503})
"""Statuses that say the request was not processed."""


class Outcome(enum.Enum):
    """What became of a request that failed."""

    NEVER_SENT = "never sent"  # safe to send again as it is
    MAYBE_APPLIED = "maybe applied"  # settle (look up, or resend if idempotent) first
    NOT_AUTHENTICATED = "not authenticated"  # nothing is sent until a new login
    REFUSED = "refused"  # the server said no for good: a dead letter


def outcome(exc: BaseException) -> Outcome:
    """Classify a failure of a request (see the table in the module docstring)."""
    if isinstance(exc, NotAuthenticated):
        return Outcome.NOT_AUTHENTICATED
    if isinstance(exc, ConnectFailed):
        return Outcome.NEVER_SENT
    if isinstance(exc, ProtocolError):
        # A redirect or a reply that is not the API's: whether the request reached the
        # server, and what it did, is unknown (a 3xx is never a refusal of the change).
        return Outcome.MAYBE_APPLIED
    if isinstance(exc, HTTPStatusError):
        if exc.status in NOT_APPLIED_STATUSES:
            return Outcome.NEVER_SENT
        return Outcome.MAYBE_APPLIED if exc.status >= 500 else Outcome.REFUSED
    if isinstance(exc, TransportError):
        return Outcome.MAYBE_APPLIED  # lost replies, timeouts, TLS or decoding trouble
    return Outcome.MAYBE_APPLIED  # anything else (a crash mid-request): assume the worst


def is_transient(exc: BaseException, *, idempotent: bool) -> bool:
    """True when sending the same request again may succeed and cannot do harm."""
    found = outcome(exc)
    if found is Outcome.NEVER_SENT:
        return True
    return found is Outcome.MAYBE_APPLIED and idempotent and isinstance(exc, TransportError)


def link_failed(exc: BaseException) -> bool:
    """True when ``exc`` says the server cannot be used now (not that it refused a request).

    ``Unavailable`` (429/502/503/504) is a ``ServerUnreachable`` too.
    """
    return isinstance(exc, ServerUnreachable)


@dataclass(frozen=True)
class Backoff:
    """Capped exponential back-off: ``initial`` seconds, doubled per failure, ``cap`` at most."""

    initial: float = 2.0
    cap: float = 60.0

    def delay(self, failures: int) -> float:
        """Seconds to wait after the ``failures``-th failure in a row (1 = the first)."""
        if failures <= 0 or self.initial <= 0:
            return 0.0
        return float(min(self.cap, self.initial * 2 ** min(failures - 1, 30)))


# -- retrying within one call ----------------------------------------------------------------
# A request that never left, or was refused as "not now" (429/503), is always safe to resend;
# one that may have been applied is resent only when repeating it cannot change the outcome
# (GET, PUT, PATCH, DELETE). A POST is never resent blindly.

T = TypeVar("T")
_SLICE = 0.05


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for retrying transient failures: whichever limit is hit first stops.

    Attributes:
        attempts: total tries, the first one included.
        max_seconds: give up once this much time has passed since the first try.
        initial_wait: base of the jittered exponential backoff, in seconds.
        max_wait: cap of a single wait.
        sleep: how to wait (tests pass a function that does not sleep).
        stop_event: set it to abandon retrying at once.
    """

    attempts: int = 4
    max_seconds: float = 20.0
    initial_wait: float = 0.2
    max_wait: float = 5.0
    sleep: Callable[[float], None] = time.sleep
    stop_event: threading.Event | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("RetryPolicy.attempts must be at least 1")
        if self.max_seconds < 0 or self.initial_wait < 0 or self.max_wait < 0:
            raise ValueError("RetryPolicy durations must not be negative")

    def call(
        self,
        fn: Callable[[], T],
        *,
        idempotent: bool,
        also: Callable[[BaseException], bool] | None = None,
        stopped: Callable[[], bool] | None = None,
    ) -> T:
        """Run ``fn`` and retry it while it fails transiently, within the bounds.

        ``also`` narrows what is retried (the transport does not retry a failed link: it marks
        it down instead); ``stopped`` ends the retrying, and any wait, as soon as it says so.
        """

        def halted() -> bool:
            event = self.stop_event
            return (event is not None and event.is_set()) or (stopped is not None and stopped())

        def worth_it(exc: BaseException) -> bool:
            wanted = is_transient(exc, idempotent=idempotent) and (also is None or also(exc))
            return wanted and not halted()

        def pause(seconds: float) -> None:
            if stopped is None or self.sleep is not time.sleep:
                self.sleep(seconds)
                return
            end = time.monotonic() + seconds
            while not halted() and (left := end - time.monotonic()) > 0:
                self.sleep(min(_SLICE, left))

        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(worth_it),
            stop=tenacity.stop_after_attempt(self.attempts)
            | tenacity.stop_after_delay(self.max_seconds),
            wait=tenacity.wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait),
            sleep=pause,
            reraise=True,
        )
        return retrying(fn)
