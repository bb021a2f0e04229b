"""The server's clock as this machine can know it: ours, corrected by a clear skew.

Every reply's ``Date`` header bounds the difference between the two clocks; only a clear
difference (``SKEW_TOLERANCE``) is taken for skew, so a slow reply never moves our estimate.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime (injectable, for tests of skewed clocks)."""
SKEW_TOLERANCE = 60.0
"""Seconds of difference from the server's clock taken for no skew: a Date header has 1 s
resolution, and a busy server stamps it late (uvicorn refreshes it once per loop tick), so
only a clock that is clearly off, by minutes or days, is corrected."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class ServerClock:
    """Our clock plus the skew the server's replies show (``offset``: None until a reply)."""

    def __init__(self, clock: Clock | None = None) -> None:
        self.clock = clock or utcnow
        self.offset: float | None = None

    def now(self) -> datetime:
        """Our best guess of the server's clock."""
        now = self.clock()
        offset = self.offset
        if offset is None or abs(offset) <= SKEW_TOLERANCE:
            return now
        return now + timedelta(seconds=offset)

    def note(self, date_header: str | None, elapsed: timedelta) -> None:
        """Measure the skew from a reply's ``Date`` header that took ``elapsed`` to arrive."""
        try:
            server = parsedate_to_datetime(date_header) if date_header else None
        except (TypeError, ValueError):
            server = None
        if server is None or server.tzinfo is None:
            return
        # The server's clock read ``server`` (less than 1 s before, as the header drops the
        # fraction) somewhere between our sending and our receiving: that bounds the skew. A
        # slow reply is no skew; a clear one is taken at its lower bound, so the estimate of
        # the server's clock never runs ahead of it.
        received = self.clock()
        low = (server - received).total_seconds()
        high = (server - (received - elapsed)).total_seconds() + 1.0
        clear = high < -SKEW_TOLERANCE or low > SKEW_TOLERANCE
        self.offset = low if clear else 0.0
