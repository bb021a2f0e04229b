"""What a query asks for, validated and normalised before any I/O.

The server fails open: it ignores unknown parameters and falsy values and then matches every
row (balsam-api.md §7.9). ``normalize_filters`` therefore refuses, with a clear error, anything
the server would drop silently. A ``QuerySpec`` is frozen; every change returns a new one.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from typing import Any

from .errors import UsageError, UsageTypeError
from .resources import RESOURCES
from .schemas.routes import FILTERS, ORDERINGS, FilterParam
from .utc import as_utc

TAG_FILTERS = frozenset({"tags", "filter_tags", "data"})
"""Filters whose values are ``key:value`` pairs matched by JSON containment."""

FilterValue = Any
Filters = tuple[tuple[str, FilterValue], ...]
EMPTY = object()
"""Marker returned by ``normalize_filter`` for an empty id list: the query matches nothing."""


@dataclass(frozen=True)
class QuerySpec:
    """A resource query: filters, ordering and a ``[low:high]`` window, all normalised.

    ``filters`` is sorted by name, so two specs that ask the same thing compare equal.
    """

    resource: str
    filters: Filters = ()
    ordering: str | None = None
    low: int = 0
    high: int | None = None
    empty: bool = False

    @property
    def limit(self) -> int | None:
        """How many rows the window admits (None: no upper bound)."""
        return None if self.high is None else self.high - self.low

    @property
    def is_sliced(self) -> bool:
        return self.low != 0 or self.high is not None

    @property
    def filter_dict(self) -> dict[str, FilterValue]:
        return dict(self.filters)

    def with_filters(self, raw: Mapping[str, Any]) -> QuerySpec:
        """Return a spec with ``raw`` merged in (a later value for a key replaces the earlier)."""
        merged = dict(self.filters)
        empty = self.empty
        for name, value in normalize_filters(self.resource, raw).items():
            if value is EMPTY:
                empty = True
                merged.pop(name, None)
            else:
                merged[name] = value
        return replace(self, filters=tuple(sorted(merged.items())), empty=empty)

    def with_ordering(self, field: str | None) -> QuerySpec:
        return replace(self, ordering=validate_ordering(self.resource, field))

    def with_window(self, start: int | None, stop: int | None) -> QuerySpec:
        """Compose a slice with the current window, as ``list(q)[a:b][c:d]`` would."""
        low, high = self.low, self.high
        if stop is not None:
            high = min(high, low + stop) if high is not None else low + stop
        if start is not None:
            low = min(high, low + start) if high is not None else low + start
        return replace(self, low=low, high=high)

    def unsliced(self) -> QuerySpec:
        return replace(self, low=0, high=None)


def normalize_filters(resource: str, raw: Mapping[str, Any]) -> dict[str, FilterValue]:
    """Validate each filter of ``resource`` and return its normalised value.

    Raises:
        UsageError: unknown name, a value the server would ignore, or an invalid enum value.
        UsageTypeError: a value of the wrong type.
    """
    known = FILTERS[resource]
    checked = dict(RESOURCES[resource].enum_filters) if resource in RESOURCES else {}
    out: dict[str, FilterValue] = {}
    for name, value in raw.items():
        param = known.get(name)
        if param is None:
            raise UsageError(_unknown(resource, "filter", name, sorted(known)))
        if name in checked:  # the server takes any string here; a typo would match nothing
            param = replace(param, kind="enum", enum=checked[name])
        out[name] = normalize_filter(resource, param, value)
    return out


def normalize_filter(resource: str, param: FilterParam, value: Any) -> FilterValue:
    """Return the canonical form of one filter value (see module docstring for the rules)."""
    where = f"{resource}.objects.filter({param.name}=...)"
    if value is None:
        raise UsageTypeError(f"{where}: None is not a filter value (the server would ignore it)")
    if param.name in TAG_FILTERS:
        return _tag_pairs(where, value)
    if param.many:
        items = _as_items(where, value)
        if isinstance(value, list | tuple) and not items:
            return EMPTY
        if not items:
            raise UsageError(
                f"{where}: an empty {type(value).__name__} would be ignored by the server and "
                "match everything; pass [] for a query that matches nothing"
            )
        return tuple(dict.fromkeys(_scalar(where, param, v, in_list=True) for v in items))
    if isinstance(value, set | frozenset | list | tuple):
        raise UsageTypeError(f"{where}: takes a single value, not a {type(value).__name__}")
    return _scalar(where, param, value, in_list=False)


def validate_ordering(resource: str, field: str | None) -> str | None:
    """Return ``field`` when the server can order ``resource`` by it."""
    if field is None:
        return None
    allowed = ORDERINGS[resource]
    if not allowed:
        raise UsageError(f"{resource} has no ordering on the server (results are by id)")
    if not isinstance(field, str) or field not in allowed:
        raise UsageError(_unknown(resource, "ordering", str(field), list(allowed)))
    return field


def _scalar(where: str, param: FilterParam, value: Any, *, in_list: bool) -> Any:
    if param.kind == "bool":
        if value is not True:
            raise UsageError(
                f"{where}: only True filters anything; the server ignores {value!r} "
                "and would match everything"
            )
        return True
    if param.kind == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise UsageTypeError(f"{where}: expected an int, got {value!r}")
        if value == 0 and not in_list:
            raise UsageError(f"{where}: 0 is ignored by the server and would match everything")
        return value
    if param.kind == "datetime":
        return to_utc(where, value)
    if param.kind == "enum" and param.enum is not None:
        return _enum_value(where, param.enum, value)
    if isinstance(value, Enum):
        value = value.value
    if not isinstance(value, str):
        raise UsageTypeError(f"{where}: expected a string, got {value!r}")
    if not value:
        raise UsageError(f"{where}: '' is ignored by the server and would match everything")
    return value


def _enum_value(where: str, enum: type[Enum], value: Any) -> str:
    raw = value.value if isinstance(value, Enum) else value
    allowed = [str(m.value) for m in enum]
    if raw not in allowed:
        hint = difflib.get_close_matches(str(raw), allowed, n=1)
        extra = f" (did you mean {hint[0]!r}?)" if hint else ""
        raise UsageError(f"{where}: {value!r} is not a valid {enum.__name__}{extra}")
    return str(raw)


def _tag_pairs(where: str, value: Any) -> tuple[tuple[str, str], ...]:
    if isinstance(value, Mapping):
        # Sent as "key:value" and split by the server at the FIRST colon: a key holding ":"
        # means what the server will make of it.
        pairs = [_split_pair(f"{k}:{v}") for k, v in value.items()]
    else:
        pairs = []
        for item in [value] if isinstance(value, str) else _as_items(where, value):
            if not isinstance(item, str) or ":" not in item:
                raise UsageError(
                    f"{where}: {item!r} is not a 'key:value' string (the server drops it)"
                )
            pairs.append(_split_pair(item))
    if not pairs:
        raise UsageError(f"{where}: an empty value is ignored by the server and matches everything")
    # The server builds a dict from the pairs: for a repeated key the last value wins.
    return tuple(sorted(dict(pairs).items()))


def _split_pair(text: str) -> tuple[str, str]:
    key, _, val = text.partition(":")
    return key, val


def _as_items(where: str, value: Any) -> list[Any]:
    if isinstance(value, str | bytes | Mapping) or not isinstance(value, Iterable):
        return [value]
    return list(value)


def to_utc(where: str, value: Any) -> datetime:
    """Return ``value`` as an aware UTC datetime (a naive one is taken to be UTC)."""
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError as exc:
            raise UsageError(f"{where}: {value!r} is not an ISO 8601 datetime") from exc
    if not isinstance(value, datetime):
        raise UsageTypeError(f"{where}: expected a datetime, got {value!r}")
    return as_utc(value)


def _unknown(resource: str, what: str, name: str, allowed: list[str]) -> str:
    hint = difflib.get_close_matches(name, allowed, n=1)
    extra = f"; did you mean {hint[0]!r}?" if hint else ""
    listing = ", ".join(allowed) or "none"
    return (
        f"{resource} has no {what} {name!r}{extra} (the server would ignore it and match "
        f"everything). Allowed: {listing}"
    )
