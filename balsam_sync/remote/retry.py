"""How often and how long a failed request is tried again within one call.

``RetryPolicy`` is a small value that builds a bounded, jittered tenacity policy. What may be
retried at all is decided by the outcome table (``outcomes.is_transient``): a request that
never left, or was refused as "not now" (429/503), is always safe to resend; one that may have
been applied is resent only when repeating it cannot change the outcome (GET, PUT, PATCH,
DELETE). A POST is never resent blindly.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import tenacity

from .outcomes import NOT_APPLIED_STATUSES, is_transient

__all__ = ["NOT_APPLIED_STATUSES", "RetryPolicy", "is_transient"]

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
