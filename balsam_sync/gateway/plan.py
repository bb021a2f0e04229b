"""The read plan, pure: policy + what the mirror knows + the clock -> where a read goes, and why.

No I/O here: the gateway asks the mirror what it knows, asks this module, then reads. The plan
says why in words, which the gateway logs at DEBUG for every read.
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


class Needed(Enum):
    """Which evidence a policy asks of the mirror before it may answer."""

    NONE = "none"  # OFFLINE (the mirror answers whatever it may), ONLINE (never the mirror)
    FULL_SYNC = "full sync"  # AUTO: the resource was pulled whole within max_age
    RECORD = "recorded answer"  # FRESH: this very answer was confirmed within max_age


@dataclass(frozen=True)
class ReadPlan:
    route: Route
    why: str
    as_of: datetime | None = None  # CACHED: when the server confirmed the mirror's copy


def evidence_needed(policy: ReadPolicy) -> Needed:
    """The evidence the plan needs to let the mirror answer under ``policy``."""
    if policy.mode is ReadMode.AUTO:
        return Needed.FULL_SYNC
    if policy.mode is ReadMode.FRESH:
        return Needed.RECORD
    return Needed.NONE


def fresh_enough(when: datetime | None, now: datetime, max_age: float) -> bool:
    """``when`` lies within ``max_age`` seconds before ``now`` (a stamp ahead of the clock,
    which was set back since, is never fresh)."""
    return when is not None and max_age > 0 and 0 <= (now - when).total_seconds() <= max_age


def plan_read(
    policy: ReadPolicy, covered_at: datetime | None, now: datetime, default_max_age: float
) -> ReadPlan:
    """The plan of one read under ``policy``, given when the needed evidence was confirmed."""
    mode = policy.mode.value
    if policy.mode is ReadMode.OFFLINE:
        return ReadPlan(Route.MIRROR, f"policy {mode}: the mirror alone")
    if policy.mode is ReadMode.ONLINE:
        return ReadPlan(Route.SERVER, f"policy {mode}: the server alone")
    max_age = policy.max_age if policy.max_age is not None else default_max_age
    needed = evidence_needed(policy).value
    if covered_at is None:
        return ReadPlan(Route.SERVER, f"policy {mode}: the mirror has no {needed}")
    age = (now - covered_at).total_seconds()
    if fresh_enough(covered_at, now, max_age):
        why = f"policy {mode}: {needed} {age:.1f} s old (max_age {max_age:g} s)"
        return ReadPlan(Route.CACHED, why, covered_at)
    return ReadPlan(
        Route.SERVER, f"policy {mode}: {needed} {age:.1f} s old > max_age {max_age:g} s"
    )
