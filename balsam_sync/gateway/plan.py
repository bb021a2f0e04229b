"""The read plan, pure: policy + what the mirror knows + the clock -> where a read goes.

No I/O here: the gateway looks the coverage up, asks this module, then reads (``reads.py``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from ..freshness import ReadMode, ReadPolicy


class Route(Enum):
    """Where a read goes first."""

    MIRROR = "mirror"  # .offline(): the mirror alone, as far as its evidence goes
    CACHED = "cached"  # the mirror holds a copy confirmed recently enough: it answers
    SERVER = "server"  # the server answers (the mirror, marked stale, if it cannot)


@dataclass(frozen=True)
class ReadPlan:
    route: Route
    as_of: datetime | None = None  # CACHED: when the server confirmed the mirror's copy


def coverage_kind(policy: ReadPolicy) -> str | None:
    """Which coverage the plan needs: "full" (AUTO: a full sync of the resource), "record"
    (FRESH: a recorded answer covering the query), or None (OFFLINE, ONLINE: none)."""
    if policy.mode is ReadMode.AUTO:
        return "full"
    if policy.mode is ReadMode.FRESH:
        return "record"
    return None


def fresh_enough(when: datetime | None, now: datetime, max_age: float) -> bool:
    """``when`` lies within ``max_age`` seconds before ``now`` (a stamp ahead of the clock,
    which was set back since, is never fresh)."""
    return when is not None and max_age > 0 and 0 <= (now - when).total_seconds() <= max_age


def plan_read(
    policy: ReadPolicy, covered_at: datetime | None, now: datetime, default_max_age: float
) -> ReadPlan:
    """The plan of one read under ``policy``, given when the needed coverage was confirmed."""
    if policy.mode is ReadMode.OFFLINE:
        return ReadPlan(Route.MIRROR)
    max_age = policy.max_age if policy.max_age is not None else default_max_age
    if coverage_kind(policy) is not None and fresh_enough(covered_at, now, max_age):
        return ReadPlan(Route.CACHED, covered_at)
    return ReadPlan(Route.SERVER)
