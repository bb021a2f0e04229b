"""Time zones, once: a naive datetime means UTC; the mirror and the wire hold aware UTC text.

Every model timestamp users read is naive UTC (upstream's guide compares with
``datetime.utcnow()``); everything stored or sent is ``YYYY-MM-DDTHH:MM:SS.ffffff+00:00``,
which sorts as time sorts.
"""

from __future__ import annotations

from datetime import datetime, timezone


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
