"""What a query asks for, validated and normalised before any I/O; and what text the server
can take at all.

The server fails open: it ignores unknown parameters and falsy values and then matches every
row (balsam-api.md §7.9). ``normalize_filters`` therefore refuses, with a clear error, anything
the server would drop silently. A ``QuerySpec`` is frozen; every change returns a new one.

Text the server cannot take is refused here for filters and, through ``check_storable``, for
every value a write carries (``orm/fields.py``): a NUL character (PostgreSQL text cannot hold
one: the server answers 500), a lone surrogate (not UTF-8 at all: the request cannot be
encoded, or the server stores JSON it then fails to send, and every listing of the account
answers 500), and text longer than the server's column (``Resource.text_limits``).
"""

from __future__ import annotations

import difflib
import functools
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
        _check_filter_text(resource, name, out[name])
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


# -- text the server can take -----------------------------------------------------------------

Limits = Mapping[tuple[str, ...], int]
"""Most characters by path into a value (``()``: the value itself; ``"*"``: any key)."""


def text_problem(text: str) -> str | None:
    """Why the server cannot take ``text`` (None: it can)."""
    at = text.find("\x00")
    if at >= 0:
        return f"holds a NUL character (at position {at}), which the server cannot store"
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError as exc:
            return (
                f"is not valid UTF-8 text: it holds the lone surrogate {text[exc.start]!r} at "
                f"position {exc.start} (what a file name that is not UTF-8 decodes to), "
                "which the server cannot store"
            )
    return None


@functools.cache
def text_limits(resource: str) -> Mapping[str, Limits]:
    """The server's length limits of ``resource``: field -> limits by path below the field."""
    res = RESOURCES.get(resource)
    out: dict[str, dict[tuple[str, ...], int]] = {}
    for pattern, limit in res.text_limits if res is not None else ():
        head, *rest = pattern.split(".")
        out.setdefault(head, {})[tuple(rest)] = limit
    return out


def check_storable(where: str, value: Any, limits: Limits | None = None) -> None:
    """Refuse ``value`` (JSON: keys and nested values too) when the server cannot store it.

    Raises:
        UsageError: naming ``where`` and the path to the first bad text, and why.
    """
    problem = storable_problem(value, limits)
    if problem is not None:
        raise UsageError(f"{where}{problem}")


def storable_problem(value: Any, limits: Limits | None = None) -> str | None:
    """What ``check_storable`` would refuse, as the path and the reason (None: nothing)."""
    kind = type(value)
    if kind in _SCALARS:
        return None
    return _first_problem(value, (), limits or {})


_SCALARS = frozenset({int, float, bool, type(None)})


def _first_problem(value: Any, path: tuple[Any, ...], limits: Limits) -> str | None:
    kind = type(value)
    if kind is not str and isinstance(value, str):  # an enum member, say: its text
        value, kind = str.__str__(value), str
    if kind is str:
        problem = None if value.isascii() and "\x00" not in value else text_problem(value)
        limit = _limit_at(limits, path) if limits and problem is None else None
        if limit is not None and len(value) > limit:
            problem = f"is {len(value)} characters long; the server takes {limit}"
        return None if problem is None else f"{_shown(path)}: {problem}"
    if kind in _SCALARS:
        return None
    if kind is dict or isinstance(value, Mapping):
        for key, item in value.items():
            if type(key) is str and not (key.isascii() and "\x00" not in key):
                problem = text_problem(key)
                if problem is not None:
                    return f"{_shown(path)}: the key {_short(key)} {problem}"
            found = _first_problem(item, (*path, key), limits)
            if found is not None:
                return found
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            found = _first_problem(item, (*path, index), limits)
            if found is not None:
                return found
    return None


def _limit_at(limits: Limits, path: tuple[Any, ...]) -> int | None:
    for pattern, limit in limits.items():
        if len(pattern) != len(path):
            continue
        if all(part in ("*", key) for part, key in zip(pattern, path, strict=True)):
            return limit
    return None


def _shown(path: tuple[Any, ...]) -> str:
    return "".join(f"[{_short(key)}]" for key in path)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else f"{text[:40]}...{text[-10:]} ({len(value)} characters)"


def _check_filter_text(resource: str, name: str, value: Any) -> None:
    """Refuse text the server cannot take, or a value longer than its column can ever hold."""
    if name in TAG_FILTERS:
        texts, limit = [text for pair in value for text in pair], None
    else:
        texts = [v for v in (value if isinstance(value, tuple) else (value,)) if type(v) is str]
        column = text_limits(resource).get(name.removesuffix("__contains"), {})
        limit = column.get(())
    for text in texts:
        problem = text_problem(text)
        if problem is None and limit is not None and len(text) > limit:
            problem = (
                f"is {len(text)} characters long, longer than any the server holds ({limit}): "
                "it would match nothing"
            )
        if problem is not None:
            raise UsageError(f"{resource}.objects.filter({name}=...): {_short(text)} {problem}")
