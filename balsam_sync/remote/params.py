"""A ``QuerySpec`` as Balsam REST query parameters: the only filter → URL translation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from ..spec import TAG_FILTERS, QuerySpec

FILTER_CHUNK_SIZE = 500
"""Longest value list sent in one request (upstream's FILTER_CHUNK_SIZE)."""

Params = list[tuple[str, str]]
"""REST query parameters, in order (a name may repeat: ``id=1&id=2``)."""


def filter_params(spec: QuerySpec) -> Params:
    """Return the filters of ``spec`` as repeated ``(key, value)`` pairs."""
    out: Params = []
    for name, value in spec.filters:
        for item in _values(name, value):
            out.append((name, item))
    return out


def chunked_filter_params(spec: QuerySpec, size: int = FILTER_CHUNK_SIZE) -> Iterator[Params]:
    """Yield one parameter list per chunk of the long list filters.

    Every list filter longer than ``size`` is split; each combination of chunks is one request,
    and because chunks of one filter are disjoint, the union of the answers is the answer.
    """
    long_names = [n for n, v in spec.filters if isinstance(v, tuple) and len(v) > size]
    if not long_names:
        yield filter_params(spec)
        return
    name = long_names[0]
    values = spec.filter_dict[name]
    for start in range(0, len(values), size):
        chunk = spec.filter_dict | {name: values[start : start + size]}
        yield from chunked_filter_params(
            QuerySpec(spec.resource, tuple(sorted(chunk.items())), spec.ordering), size
        )


def _values(name: str, value: Any) -> list[str]:
    if name in TAG_FILTERS:
        return [f"{k}:{v}" for k, v in value]
    if isinstance(value, tuple):
        return [_scalar(v) for v in value]
    return [_scalar(value)]


def _scalar(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.isoformat()
    return str(value)
