"""When a failed request may be tried again, and how long to keep trying.

One predicate (``is_transient``) classifies failures; ``RetryPolicy`` is a small value that
builds a bounded, jittered tenacity policy. The split between "never sent" and "maybe applied"
is what keeps a non-idempotent POST from ever being resent blindly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import tenacity

from .errors import ConnectFailed, HTTPStatusError, ReplyLost

T = TypeVar("T")

# 503 and 429 mean "not processed"; 502/504 come from a gateway that may have forwarded the
# request, so the server may have applied it.
NOT_APPLIED_STATUSES = frozenset({429, 503})
MAYBE_APPLIED_STATUSES = frozenset({502, 504})


def is_transient(exc: BaseException, *, idempotent: bool) -> bool:
    """Return True when ``exc`` is worth retrying for a request of this kind.

    A request that never left (``ConnectFailed``) or was refused as "not now" (429/503) is
    always safe to resend. One that may have been applied (lost reply, 502/504) is resent only
    when repeating it cannot change the outcome (GET, PUT, PATCH, DELETE).
    """
    if isinstance(exc, ConnectFailed):
        return True
    if isinstance(exc, ReplyLost):
        return idempotent
    if isinstance(exc, HTTPStatusError):
        if exc.status in NOT_APPLIED_STATUSES:
            return True
        return idempotent and exc.status in MAYBE_APPLIED_STATUSES
    return False


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds for retrying transient failures: whichever limit is hit first stops.

    Attributes:
        attempts: total tries, the first one included.
        max_seconds: give up once this much time has passed since the first try.
        initial_wait: base of the jittered exponential backoff, in seconds.
        max_wait: cap of a single wait.
        sleep: how to wait (tests pass a function that does not sleep).
        stop_event: set it to abandon retrying at once (daemon shutdown).
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

    def call(self, fn: Callable[[], T], *, idempotent: bool) -> T:
        """Run ``fn`` and retry it while it fails transiently, within the bounds."""
        stop: tenacity.stop.stop_base = tenacity.stop_after_attempt(
            self.attempts
        ) | tenacity.stop_after_delay(self.max_seconds)
        if self.stop_event is not None:
            event = self.stop_event
            stop = stop | tenacity.stop_when_event_set(event)
        retrying = tenacity.Retrying(
            retry=tenacity.retry_if_exception(lambda e: is_transient(e, idempotent=idempotent)),
            stop=stop,
            wait=tenacity.wait_random_exponential(multiplier=self.initial_wait, max=self.max_wait),
            sleep=self.sleep,
            reraise=True,
        )
        return retrying(fn)


NO_RETRY = RetryPolicy(attempts=1)
