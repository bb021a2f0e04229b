"""Upstream's lax text: a number given for a text value becomes its ``str()``, as pydantic 1 does.

Upstream validates with pydantic 1, which turns ``tags={"step": 0}`` into ``{"step": "0"}``
(ints, floats, Decimals and bools alike: ``True`` becomes ``"True"``); pydantic 2 refuses
them. Code written for upstream passes numbers as tags, so every text field, and the keys and
values of a text mapping or list (``tags``, ``launch_params``, ``filter_tags``, ...), takes
them as upstream does. Anything else is left for validation to accept or refuse.
"""

from __future__ import annotations

import functools
import typing
from collections.abc import Callable
from decimal import Decimal
from types import NoneType, UnionType
from typing import Any

from pydantic import BaseModel

Coerce = Callable[[Any], Any]


def _text(value: Any) -> Any:
    if isinstance(value, int | float | Decimal) and not isinstance(value, str):
        return str(value)
    return value


def _mapping(value: Any) -> Any:
    if not isinstance(value, dict):
        return value
    return {_text(k): _text(v) for k, v in value.items()}


def _sequence(value: Any) -> Any:
    if isinstance(value, list | tuple | set | frozenset):
        return type(value)(_text(v) for v in value)
    return value


def _coercer(annotation: Any) -> Coerce | None:
    """How a value for ``annotation`` is made lax, or None when nothing is text."""
    if typing.get_origin(annotation) in (typing.Union, UnionType):
        present = [a for a in typing.get_args(annotation) if a is not NoneType]
        annotation = present[0] if len(present) == 1 else None
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if annotation is str:
        return _text
    if origin is dict and args == (str, str):
        return _mapping
    if origin in (list, set, frozenset) and args == (str,):
        return _sequence
    return None


@functools.cache
def _coercers(schema: type[BaseModel]) -> dict[str, Coerce]:
    found = {name: _coercer(info.annotation) for name, info in schema.model_fields.items()}
    return {name: conv for name, conv in found.items() if conv is not None}


def lax_value(schema: type[BaseModel], name: str, value: Any) -> Any:
    """``value`` of field ``name`` with numbers given for text turned into text."""
    conv = _coercers(schema).get(name)
    return value if conv is None else conv(value)


def lax_payload(schema: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """``data`` with numbers given for text fields turned into text (a copy when changed)."""
    coercers = _coercers(schema)
    if not coercers.keys() & data.keys():
        return data
    return {k: coercers[k](v) if k in coercers else v for k, v in data.items()}
