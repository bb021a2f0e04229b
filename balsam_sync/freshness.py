"""Read policies (where a query may be answered from), the read plan (where it goes, and
why), and provenance (where it was answered).

A policy is a small value: ``AUTO`` (the client default), ``fresh(max_age)``, ``OFFLINE`` or
``ONLINE``. ``USE_CLIENT_DEFAULT`` is an explicit sentinel, never ``None``. The plan is pure:
policy + the evidence the mirror holds + the clock -> mirror or server, with the reason in
words, which the gateway logs at DEBUG for every read.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import Enum
from typing import Any, Literal

from .errors import OfflineError

Source = Literal["server", "cache"]


class ReadMode(Enum):
    """Where a read may be answered from."""

    AUTO = "auto"  # mirror when the resource is fully synced within max_age, else the server;
    #                the mirror (marked stale) when the server is unreachable
    FRESH = "fresh"  # mirror when this answer was confirmed within max_age, else the server
    OFFLINE = "offline"  # mirror only: never touch the network
    ONLINE = "online"  # server only: fail when it is unreachable


@dataclass(frozen=True)
class ReadPolicy:
    """How one query (or the client by default) chooses between mirror and server."""

    mode: ReadMode
    max_age: float | None = None

    def __post_init__(self) -> None:
        if self.max_age is not None and self.max_age < 0:
            raise ValueError("max_age must not be negative")


class _UseClientDefault(Enum):
    USE_CLIENT_DEFAULT = "use-client-default"


USE_CLIENT_DEFAULT = _UseClientDefault.USE_CLIENT_DEFAULT
"""Marker: use the policy configured on the client."""

PolicyArg = ReadPolicy | _UseClientDefault

AUTO = ReadPolicy(ReadMode.AUTO)
OFFLINE = ReadPolicy(ReadMode.OFFLINE)
ONLINE = ReadPolicy(ReadMode.ONLINE)


def fresh(max_age: float) -> ReadPolicy:
    """Answer from the mirror when it was confirmed within ``max_age`` seconds."""
    return ReadPolicy(ReadMode.FRESH, max_age)


LATEST = fresh(0.0)
"""The server whenever it can be reached; the mirror, marked stale, when it cannot."""


def choose(default: ReadPolicy, policy: PolicyArg, *, offline: bool, latest: bool) -> ReadPolicy:
    """The policy a read follows; in offline mode every read is a mirror read.

    ``latest``: the read names objects (``get()``, ``refresh_from_db()``), which upstream
    always asks the server: unless the query chose a policy, so does this one when it can.
    """
    chosen = default if policy is USE_CLIENT_DEFAULT else policy
    if latest and policy is USE_CLIENT_DEFAULT and chosen.mode is ReadMode.AUTO:
        chosen = LATEST
    if offline and chosen.mode is not ReadMode.OFFLINE:
        if chosen.mode is ReadMode.ONLINE:
            raise OfflineError(
                "this query is .online(), but the client is offline (BALSAM_SYNC_OFFLINE=1)"
            )
        return OFFLINE
    return chosen


# -- the read plan ---------------------------------------------------------------------------


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


@dataclass(frozen=True)
class RowLayout:
    """The shape of packed mirror rows: their column names and how one row is unpacked.

    A packed row is ``(id, blob)``: the id is read without unpacking anything, and the blob
    is unpacked (into the column values, in ``columns`` order) when another field is first
    read, so turning 1000 cached rows into instances costs little more than fetching them.
    A JSON column's value unpacks as JSON text or already decoded (short values).
    """

    columns: tuple[str, ...]
    unpack: Callable[[Any], Sequence[Any]]
    index: dict[str, int] = field(init=False, compare=False)
    """Column name -> position in the unpacked values."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {name: i for i, name in enumerate(self.columns)})

    def as_dict(self, row: Any) -> dict[str, Any]:
        return self.zip(self.unpack(row))

    def zip(self, values: Sequence[Any]) -> dict[str, Any]:
        """The unpacked ``values`` of a row as a dict of its columns."""
        return dict(zip(self.columns, values, strict=True))


@dataclass(frozen=True)
class Answer:
    """Rows (or a count) plus where they came from and how old they are.

    Attributes:
        rows: the matching rows in order (empty for a count-only answer): dicts, or packed
            rows shaped by ``layout`` when they come straight from the mirror.
        count: total matches ignoring the window, when known.
        source: "server" or "cache".
        as_of: when the server last confirmed this data (None: never confirmed).
        stale: True when the server was wanted but unreachable and the mirror answered.
    """

    rows: list[Any]
    count: int | None
    source: Source
    as_of: datetime | None
    stale: bool = False
    layout: RowLayout | None = None  # set when rows are packed mirror rows, not dicts

    def dicts(self) -> list[dict[str, Any]]:
        """The rows as dicts, whatever form they came in."""
        if self.layout is None:
            return self.rows
        return [self.layout.as_dict(row) for row in self.rows]


class Provenanced:
    """Where the read that loaded an object came from (model instances carry this)."""

    __slots__ = ("_prov",)
    _prov: Answer

    @property
    def source(self) -> Source | None:
        """ "server" or "cache": where the read that loaded this object was answered."""
        prov: Answer | None = getattr(self, "_prov", None)
        return prov.source if prov is not None else None

    @property
    def as_of(self) -> datetime | None:
        """When the server last confirmed this object's values (None: unknown)."""
        prov: Answer | None = getattr(self, "_prov", None)
        return prov.as_of if prov is not None else None

    @property
    def stale(self) -> bool:
        """True when the server was wanted but could not be asked, and the mirror answered."""
        prov: Answer | None = getattr(self, "_prov", None)
        return prov.stale if prov is not None else False
