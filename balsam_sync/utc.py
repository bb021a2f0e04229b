"""Time zones, once: a naive datetime means UTC; the mirror and the wire hold aware UTC text.

Every model timestamp users read is naive UTC (upstream's guide compares with
``datetime.utcnow()``); everything stored or sent is ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``,
which sorts as time sorts.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any


def as_utc(value: datetime) -> datetime:
    """``value`` as an aware UTC datetime (a naive one is read as UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)


def naive_utc(value: datetime) -> datetime:
    """``value`` as a naive UTC datetime (a naive one is already UTC)."""
    if value.tzinfo is None:
        return value
    return value.astimezone(timezone.utc).replace(tzinfo=None)


def utc_text(value: datetime) -> str:
    """The stored and sent text of ``value``: ISO 8601 in UTC, microseconds, ``+00:00``."""
    return as_utc(value).isoformat(timespec="microseconds")


def now() -> datetime:
    """This machine's clock, as an aware UTC datetime (the one place it is read)."""
    return datetime.now(timezone.utc)


def now_text() -> str:
    """``now()`` as stored text."""
    return utc_text(now())


def later_text(seconds: float) -> str:
    """The stored text of ``seconds`` from now."""
    return utc_text(now() + timedelta(seconds=seconds))


class NaiveUTC(datetime):
    """A naive UTC datetime that also compares with, and subtracts, aware datetimes.

    Upstream's models give ``Job.last_update`` aware and every other timestamp naive, so code
    written for them compares model timestamps with ``datetime.utcnow()`` and with
    ``datetime.now(timezone.utc)`` alike. Every timestamp a model gives is this type: naive
    (``tzinfo is None``), and an aware operand of ``<``, ``<=``, ``>``, ``>=`` or ``-`` is
    taken in UTC instead of raising TypeError. Equality keeps ``datetime``'s rule (naive and
    aware values are never equal), so equal values always hash alike. It pickles as a plain
    ``datetime``, which upstream's side of a pickle can load.
    """

    __slots__ = ()

    def __lt__(self, other: Any) -> bool:
        return datetime.__lt__(self, _as_naive(other))

    def __le__(self, other: Any) -> bool:
        return datetime.__le__(self, _as_naive(other))

    def __gt__(self, other: Any) -> bool:
        return datetime.__gt__(self, _as_naive(other))

    def __ge__(self, other: Any) -> bool:
        return datetime.__ge__(self, _as_naive(other))

    def __sub__(self, other: Any) -> Any:
        return datetime.__sub__(self, _as_naive(other))

    def __rsub__(self, other: Any) -> Any:
        if isinstance(other, datetime):  # ``aware - self``: Python asks the subclass first
            return datetime.__sub__(naive_utc(other), self)
        return NotImplemented

    def __repr__(self) -> str:
        return repr(self._plain())

    def __reduce_ex__(self, protocol: Any) -> Any:
        return self._plain().__reduce_ex__(protocol)

    def _plain(self) -> datetime:
        return datetime(*self.timetuple()[:6], self.microsecond, fold=self.fold)


def _as_naive(value: Any) -> Any:
    """An aware datetime as naive UTC; anything else (timedelta, naive) unchanged."""
    if isinstance(value, datetime) and value.tzinfo is not None:
        return naive_utc(value)
    return value


def naive_utc_value(value: datetime) -> NaiveUTC:
    """``value`` as the naive UTC timestamp models give (see ``NaiveUTC``)."""
    plain = naive_utc(value)
    if type(plain) is NaiveUTC:
        return plain
    return NaiveUTC(*plain.timetuple()[:6], plain.microsecond, fold=plain.fold)


def canonical_time(text: str) -> str:
    """ISO 8601 ``text`` as stored (``utc_text``); the server's naive stamps are UTC.

    Raises:
        ValueError: ``text`` is not an ISO 8601 time.
    """
    if len(text) == 32 and text.endswith("+00:00") and text[10] == "T":
        return text
    if len(text) == 26 and text[10] == "T":
        return text + "+00:00"
    return utc_text(datetime.fromisoformat(text))
