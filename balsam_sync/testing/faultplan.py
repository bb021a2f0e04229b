"""What the fault proxy breaks, and how often: fault kinds, plans, counters."""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    pass  # type-checking only: importable at runtime on 3.10 too

_MAX_LINE = 65536
_MAX_HEADER_LINES = 256
_CHUNK = 65536
_ACCEPT_POLL_SECONDS = 0.05


class FaultKind(str, enum.Enum):
    """What the proxy did to one request (``NONE`` = forwarded untouched).

    ``refuse`` (reset after the request head, nothing forwarded), ``reset_before`` (whole
    request read, then RST), ``delay``, ``timeout`` (silence for ``hang_seconds``),
    ``http_5xx`` (local 502/503/504), ``lost_reply`` (forwarded, complete reply read so the
    server has committed, then the client is reset), ``http_5xx_after`` (forwarded, complete
    reply read, then a local 500/502/504 instead of it: a 5xx after the commit), ``hang_after``
    (forwarded, complete reply read, then silence for ``hang_seconds``), ``burst_5xx`` (next N
    requests get a local 503), ``down`` (``FaultProxy.set_down``) and ``silent``
    (``FaultProxy.set_silent``: connections are accepted, requests read and never answered nor
    forwarded, like a link that black-holes replies).
    """

    NONE = "none"
    REFUSE = "refuse"
    RESET_BEFORE = "reset_before"
    DELAY = "delay"
    TIMEOUT = "timeout"
    HTTP_5XX = "http_5xx"
    LOST_REPLY = "lost_reply"
    BURST_5XX = "burst_5xx"
    DOWN = "down"
    HTTP_5XX_AFTER = "http_5xx_after"
    HANG_AFTER = "hang_after"
    SILENT = "silent"


# Order in which the random draw is mapped onto the plan's probabilities (part of the
# determinism contract: do not reorder).
_RANDOM_FAULTS = (
    FaultKind.REFUSE,
    FaultKind.RESET_BEFORE,
    FaultKind.TIMEOUT,
    FaultKind.HTTP_5XX,
    FaultKind.LOST_REPLY,
    FaultKind.DELAY,
    FaultKind.HTTP_5XX_AFTER,
    FaultKind.HANG_AFTER,
)
_INJECTABLE = frozenset(_RANDOM_FAULTS) | {FaultKind.BURST_5XX}


def _normalize_methods(methods: Collection[str] | None) -> frozenset[str] | None:
    if methods is None:
        return None
    if isinstance(methods, str):
        return frozenset({methods.upper()})
    return frozenset(m.upper() for m in methods)


def _target_matches(
    methods: Collection[str] | None, path_prefix: str | None, method: str, path: str
) -> bool:
    if methods is not None and method.upper() not in methods:
        return False
    return path_prefix is None or path.startswith(path_prefix)


def _check_status(status: int) -> None:
    if not 400 <= status <= 599:
        raise ValueError(f"injected status must be 4xx/5xx, got {status}")


@dataclass(frozen=True)
class FaultPlan:
    """Per-request fault probabilities (immutable; swap it on the proxy to change it).

    At most one fault is applied per request; the probabilities must sum to <= 1.  The filter
    fields (``methods``, ``path_prefix``, ``match``) restrict random faults to matching
    requests; ``path`` is the request target as sent (including any query string).
    """

    refuse: float = 0.0
    reset_before: float = 0.0
    delay: float = 0.0
    timeout: float = 0.0
    http_5xx: float = 0.0
    lost_reply: float = 0.0
    http_5xx_after: float = 0.0
    hang_after: float = 0.0
    delay_seconds: float = 0.1
    hang_seconds: float = 5.0
    status_codes: tuple[int, ...] = (502, 503, 504)
    after_status_codes: tuple[int, ...] = (500, 502, 504)
    close_on_5xx: bool = True
    methods: Collection[str] | None = None
    path_prefix: str | None = None
    match: Callable[[str, str], bool] | None = None

    def __post_init__(self) -> None:
        probabilities = [self.probability(kind) for kind in _RANDOM_FAULTS]
        if any(not 0.0 <= p <= 1.0 for p in probabilities):
            raise ValueError("fault probabilities must be within [0, 1]")
        if sum(probabilities) > 1.0 + 1e-9:
            raise ValueError("fault probabilities must sum to at most 1")
        if self.delay_seconds < 0 or self.hang_seconds < 0:
            raise ValueError("delay_seconds and hang_seconds must be >= 0")
        for name in ("status_codes", "after_status_codes"):
            codes = tuple(getattr(self, name))
            if not codes:
                raise ValueError(f"{name} must not be empty")
            for code in codes:
                _check_status(code)
            object.__setattr__(self, name, codes)
        object.__setattr__(self, "methods", _normalize_methods(self.methods))

    def probability(self, kind: FaultKind) -> float:
        """Probability of the random fault ``kind`` (0 for non-random kinds)."""
        table = {
            FaultKind.REFUSE: self.refuse,
            FaultKind.RESET_BEFORE: self.reset_before,
            FaultKind.DELAY: self.delay,
            FaultKind.TIMEOUT: self.timeout,
            FaultKind.HTTP_5XX: self.http_5xx,
            FaultKind.LOST_REPLY: self.lost_reply,
            FaultKind.HTTP_5XX_AFTER: self.http_5xx_after,
            FaultKind.HANG_AFTER: self.hang_after,
        }
        return table.get(kind, 0.0)

    def applies_to(self, method: str, path: str) -> bool:
        """True if random faults may be applied to this request."""
        if not _target_matches(self.methods, self.path_prefix, method, path):
            return False
        return self.match is None or self.match(method, path)

    def draw(self, rng: random.Random, method: str, path: str) -> tuple[FaultKind, int]:
        """Draw the random fault (and its status) for one request."""
        if not self.applies_to(method, path):
            return FaultKind.NONE, 0
        kind = self.pick(rng.random())
        if kind is FaultKind.HTTP_5XX:
            return kind, rng.choice(self.status_codes)
        if kind is FaultKind.HTTP_5XX_AFTER:
            return kind, rng.choice(self.after_status_codes)
        return kind, 0

    def pick(self, draw: float) -> FaultKind:
        """Map a uniform draw in [0, 1) onto a fault kind."""
        edge = 0.0
        for kind in _RANDOM_FAULTS:
            edge += self.probability(kind)
            if draw < edge:
                return kind
        return FaultKind.NONE


class LogEntry(NamedTuple):
    """One decision of the proxy: ``method``/``path`` are ``"-"`` for refused connections."""

    method: str
    path: str
    fault: FaultKind


@dataclass(frozen=True)
class ProxyStats:
    """Snapshot of the proxy counters.

    ``connections`` accepted, ``requests`` seen (heads read), ``forwarded`` to the server
    (including lost replies), ``upstream_errors`` (server unreachable or no response), and
    ``faults``: one count per :class:`FaultKind` value except ``"none"``.
    """

    connections: int = 0
    requests: int = 0
    forwarded: int = 0
    upstream_errors: int = 0
    faults: dict[str, int] = field(default_factory=dict)


@dataclass
class _Counters:
    connections: int = 0
    requests: int = 0
    forwarded: int = 0
    upstream_errors: int = 0
    faults: dict[str, int] = field(
        default_factory=lambda: {k.value: 0 for k in FaultKind if k is not FaultKind.NONE}
    )

    def snapshot(self) -> ProxyStats:
        return ProxyStats(
            self.connections,
            self.requests,
            self.forwarded,
            self.upstream_errors,
            dict(self.faults),
        )


@dataclass
class _Injection:
    kind: FaultKind
    remaining: int
    methods: frozenset[str] | None
    path_prefix: str | None
    status: int


def take_injection(injections: list[_Injection], method: str, path: str) -> _Injection | None:
    """The first injection matching the request, counted down (and dropped when used up)."""
    for index, injection in enumerate(injections):
        if _target_matches(injection.methods, injection.path_prefix, method, path):
            injection.remaining -= 1
            if injection.remaining == 0:
                del injections[index]
            return injection
    return None


class _Decision(NamedTuple):
    kind: FaultKind
    status: int
    plan: FaultPlan


# --------------------------------------------------------------------------- HTTP parsing
