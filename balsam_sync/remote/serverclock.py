"""The server's clock as this machine can know it: an estimate no single ``Date`` can move.

**Readings.** Only the ``Date`` of the first reply on a new connection is read: the real server
stack (uvicorn behind gunicorn) writes ``Date`` once per connection, so on a keep-alive
connection it stays frozen at the moment the connection was opened. A first reply's ``Date``
bounds the server's clock when the reply arrived: at least ``Date``, at most ``Date`` plus
``DATE_SLACK`` (the header drops the fraction; uvicorn renews it once a second) plus the time
the exchange took.

**The estimate** is carried forward with the monotonic clock from an anchor, so setting this
machine's clock does not move it; before any reading it is this machine's clock. A reading that
agrees with the estimate (within ``TOLERANCE``) renews the anchor. One that disagrees is a
claim: the first reading of all may put the server behind this machine at once (``as_of`` and
the sync times must never run ahead of the server's clock), any other claim counts only once a
second reading, ``CONFIRM_SECONDS`` or more later on another connection, agrees with it: a
frozen or stale ``Date`` cannot, since the server's clock must have moved on meanwhile, and a
random one will not.

**Bounds.** The estimate is never later than this machine's clock plus ``TOLERANCE``, unless
the server's own stamps on rows it returned (``witness``: a job's ``last_update``) show that
its clock is ahead; and never earlier than the newest such stamp, carried forward. So an
absurd ``Date`` (year 2100) cannot move it into the future, and a stale one cannot move it
behind what the rows prove.

This is the one place that parses ``Date``.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

Clock = Callable[[], datetime]
"""Returns the current time as an aware UTC datetime (injectable, for tests of skewed clocks)."""
Monotonic = Callable[[], float]

TOLERANCE = 2.0
"""Seconds by which a reading may miss the estimate and still agree with it."""
SKEW_TOLERANCE = TOLERANCE
"""A difference from this machine's clock shown as skew (``balsam-sync status``) above this."""
DATE_SLACK = 2.0
"""How far ``Date`` may lag the server's clock: the dropped fraction plus uvicorn's 1 s tick."""
CONFIRM_SECONDS = 5.0
"""A claim of a new server clock is confirmed by a reading at least this much later."""
REFRESH_SECONDS = 600.0
"""A new reading is wanted this long after the last one (a new connection is then opened)."""


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


def parse_date(header: str | None) -> datetime | None:
    """An HTTP ``Date`` header as an aware UTC datetime, or None when absent or unreadable."""
    if not header:
        return None
    try:
        moment = parsedate_to_datetime(header)
    except (TypeError, ValueError, IndexError):
        return None
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment


@dataclass(frozen=True)
class Reading:
    """What one reply on a new connection says: the server's clock lay within
    [``low``, ``high``] when it arrived (``at``, monotonic seconds)."""

    low: datetime
    high: datetime
    at: float

    def moved(self, at: float) -> Reading:
        """This reading carried forward to ``at``."""
        step = timedelta(seconds=at - self.at)
        return Reading(self.low + step, self.high + step, at)

    def holds(self, moment: datetime, slack: float = TOLERANCE) -> bool:
        margin = timedelta(seconds=slack)
        return self.low - margin <= moment <= self.high + margin

    def meets(self, other: Reading) -> bool:
        """The two agree (``other`` carried to this one's time)."""
        there = other.moved(self.at)
        margin = timedelta(seconds=TOLERANCE)
        return there.low - margin <= self.high and self.low <= there.high + margin


class ServerClock:
    """This machine's best estimate of the server's clock (thread-safe)."""

    def __init__(self, clock: Clock | None = None, monotonic: Monotonic | None = None) -> None:
        self.clock = clock or utcnow
        self._monotonic = monotonic or time.monotonic
        self._lock = threading.Lock()
        self._anchor: tuple[datetime, float] | None = None  # (server's time, monotonic)
        self._claim: Reading | None = None
        self._witness: tuple[datetime, float] | None = None
        self._measured: float | None = None
        self._readings = 0
        self._last_reading: float | None = None

    # -- the estimate --------------------------------------------------------------------------

    def now(self) -> datetime:
        """Our best estimate of the server's clock (see the module docstring)."""
        with self._lock:
            return self._estimate(self._monotonic(), self.clock())

    def _estimate(self, at: float, wall: datetime) -> datetime:
        carried = self._carried(at, wall)
        witness = self._witnessed(at)
        ceiling = wall + timedelta(seconds=TOLERANCE)
        if witness is not None:
            ceiling = max(ceiling, witness)
            return max(min(carried, ceiling), witness)
        return min(carried, ceiling)

    def _carried(self, at: float, wall: datetime) -> datetime:
        if self._anchor is None:
            return wall
        server, then = self._anchor
        return server + timedelta(seconds=at - then)

    def _witnessed(self, at: float) -> datetime | None:
        if self._witness is None:
            return None
        stamp, then = self._witness
        return stamp + timedelta(seconds=at - then)

    @property
    def offset(self) -> float | None:
        """Seconds the server's clock is ahead of this machine's, as the last reading showed
        (0 when they agree; None before any reading): for ``balsam-sync status``."""
        return self._measured

    @property
    def read_yet(self) -> bool:
        """Whether any reply on a new connection has been read."""
        return self._readings > 0

    def wants_reading(self) -> bool:
        """True when a reading on a new connection is due (a claim to confirm, or a long time
        since the last one)."""
        with self._lock:
            now = self._monotonic()
            if self._claim is not None:
                return now - self._claim.at >= CONFIRM_SECONDS
            last = self._last_reading
            return last is not None and now - last >= REFRESH_SECONDS

    # -- evidence ------------------------------------------------------------------------------

    def read(self, date_header: str | None, elapsed: float, first_on_connection: bool) -> None:
        """Take the ``Date`` of a reply that took ``elapsed`` seconds into account, if it is
        the first reply on its connection (later ones repeat a frozen ``Date``)."""
        date = parse_date(date_header)
        if date is None or not first_on_connection:
            return
        with self._lock:
            at, wall = self._monotonic(), self.clock()
            slack = timedelta(seconds=DATE_SLACK + max(0.0, elapsed))
            self._take(Reading(date, date + slack, at), wall)

    def witness(self, stamp: datetime) -> None:
        """The server stamped something ``stamp`` by its clock, which has passed it since."""
        with self._lock:
            at = self._monotonic()
            current = self._witnessed(at)
            if current is None or stamp > current:
                self._witness = (stamp, at)

    def _take(self, reading: Reading, wall: datetime) -> None:
        first = self._readings == 0
        self._readings += 1
        self._last_reading = reading.at
        wall_agrees = reading.holds(wall)
        self._measured = 0.0 if wall_agrees else (reading.low - wall).total_seconds()
        carried = self._carried(reading.at, wall)
        if reading.holds(carried):
            self._claim = None
            self._anchor = (wall if wall_agrees else carried, reading.at)
            return
        if first and reading.high + timedelta(seconds=TOLERANCE) < wall:
            # The server is behind this machine: believe it at once, at its lower bound,
            # so that nothing stamped by the estimate runs ahead of the server's clock.
            self._anchor = (reading.low, reading.at)
            return
        claim = self._claim
        if claim is not None and reading.at - claim.at >= CONFIRM_SECONDS and reading.meets(claim):
            self._anchor = (max(reading.low, claim.moved(reading.at).low), reading.at)
            self._claim = None
        elif claim is None or reading.at - claim.at >= CONFIRM_SECONDS:
            self._claim = reading
