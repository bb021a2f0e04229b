"""Per-field validation and conversion between Python values and wire (JSON) values.

Instances keep the server's JSON values as they arrived; a field is converted to its Python
type only when read. Trusted rows from the server or the mirror are never re-validated, which
keeps turning 1000 mirror rows into instances in the low milliseconds. What users give is
made lax first, as upstream's pydantic 1 does (numbers given for text become text; see
``lax_value``).
"""

from __future__ import annotations

import functools
import json
import os
import sys
import typing
from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from enum import Enum
from pathlib import Path, PosixPath
from types import NoneType, UnionType
from typing import Annotated, Any
from uuid import UUID

from pydantic import BaseModel, TypeAdapter, ValidationError

from ..errors import UsageError
from ..resources import Row
from ..spec import check_storable, storable_problem, text_limits
from ..utc import NaiveUTC, naive_utc_value, utc_text

Converter = Callable[[Any], Any]


def parse_datetime(raw: Any) -> datetime:
    """Return a naive UTC datetime (``utc.NaiveUTC``) from ISO text.

    The server sends naive UTC text, except ``Job.last_update`` (``+00:00``); upstream code
    compares them with ``datetime.utcnow()`` and ``datetime.now(timezone.utc)`` alike, so
    every model timestamp reads naive UTC and also compares with aware values. The mirror
    keeps aware UTC text; only what users read is naive.
    """
    if type(raw) is str and raw.endswith("+00:00"):  # the mirror's (and last_update's) form
        return NaiveUTC.fromisoformat(raw[:-6])
    value = raw if isinstance(raw, datetime) else datetime.fromisoformat(raw)
    return naive_utc_value(value)


_SCAN: Callable[[str, int], tuple[Any, int]] = vars(json.JSONDecoder())["scan_once"]


def decode_json(text: str) -> Any:
    """``json.loads(text)`` for the compact text the mirror stores, with less overhead.

    Anything but one JSON value with no surrounding space is left to ``json.loads`` (which
    also gives its errors).
    """
    try:
        value, end = _SCAN(text, 0)
    except StopIteration:
        return json.loads(text)
    return value if end == len(text) else json.loads(text)


_IMMUTABLE: set[Converter] = set()
"""Converters whose results cannot change in place: a reader may keep what they made."""


def _enum(kind: type[Enum]) -> Converter:
    """``kind(raw)``, with the common case (a member's value) one dict lookup."""
    members = kind._value2member_map_

    def convert(raw: Any) -> Any:
        try:
            return members[raw]
        except (KeyError, TypeError):
            return kind(raw)

    _IMMUTABLE.add(convert)
    return convert


def immutable_result(conv: Converter) -> bool:
    """True when ``conv`` returns values that cannot change in place (kept once made)."""
    return conv in _IMMUTABLE


def _path_converter() -> Converter:
    """``Path(raw)``: on CPython 3.10 and 3.11 (POSIX), text is split here exactly as their
    ``pathlib`` splits it, in under half the time (later versions build paths lazily)."""
    from_parsed = getattr(PosixPath, "_from_parsed_parts", None)
    if sys.version_info >= (3, 12) or os.name != "posix" or from_parsed is None:
        return Path
    intern = sys.intern
    new = object.__new__

    def to_path(raw: Any) -> Any:
        if type(raw) is not str:
            return Path(raw)
        parts = raw.split("/")
        if "" not in parts and "." not in parts:  # relative, nothing to drop: the common case
            path: Any = new(PosixPath)  # what _from_parsed_parts("", "", parts) does, no call
            path._drv = path._root = ""
            path._parts = parts
            return path
        rel = raw.lstrip("/")
        parts = [intern(x) for x in rel.split("/") if x and x != "."]
        lead = len(raw) - len(rel)
        if not lead:
            return from_parsed("", "", parts)
        root = "//" if lead == 2 else "/"  # POSIX: two leading slashes are kept, more are one
        return from_parsed("", root, [root, *parts])

    return to_path


to_path = _path_converter()
_IMMUTABLE.update({parse_datetime, UUID, to_path, bool})


def wire_datetime(value: datetime) -> str:
    """Return the mirror's text of ``value``: ISO in UTC, microseconds, ``+00:00`` (naive: UTC)."""
    return utc_text(value)


def _strip_optional(annotation: Any) -> Any:
    if typing.get_origin(annotation) in (typing.Union, UnionType):
        args = [a for a in typing.get_args(annotation) if a is not NoneType]
        if len(args) == 1:
            return args[0]
    return annotation


def _converter_for(annotation: Any) -> Converter | None:
    """Return how to turn a wire value into the field's Python type (None: use as is)."""
    ann = _strip_optional(annotation)
    origin = typing.get_origin(ann)
    if ann is datetime:
        return parse_datetime
    if ann is UUID:
        return UUID
    if ann is Path:
        return to_path
    if ann is bool:
        return bool  # the mirror stores booleans as 0/1
    if isinstance(ann, type) and issubclass(ann, Enum):
        return _enum(ann)
    if origin is set:
        return set
    if ann in (int, float, str, bool, Any) or (origin in (dict, list) and _plain(ann)):
        return None
    adapter: TypeAdapter[Any] = TypeAdapter(ann)
    return adapter.validate_python


def _plain(annotation: Any) -> bool:
    """True when a dict/list annotation holds only JSON scalars (no nested models)."""
    for arg in typing.get_args(annotation):
        arg = _strip_optional(arg)
        if isinstance(arg, type) and issubclass(arg, BaseModel | Enum):
            return False
        if typing.get_args(arg) and not _plain(arg):
            return False
    return True


@functools.cache
def converters(schema: type[BaseModel]) -> dict[str, Converter]:
    """Return the wire → Python converter of every field of ``schema`` that needs one."""
    out: dict[str, Converter] = {}
    for name, info in schema.model_fields.items():
        conv = _converter_for(info.annotation)
        if conv is not None:
            out[name] = conv
    return out


@functools.cache
def json_fields(schema: type[BaseModel]) -> frozenset[str]:
    """Fields stored as JSON text in the mirror: dicts, lists, sets and nested models."""
    names = set()
    for name, info in schema.model_fields.items():
        ann = _strip_optional(info.annotation)
        origin = typing.get_origin(ann)
        nested = isinstance(ann, type) and issubclass(ann, BaseModel)
        if origin in (dict, list, set, frozenset) or nested:
            names.add(name)
    return frozenset(names)


@functools.cache
def _adapter(schema: type[BaseModel], name: str) -> TypeAdapter[Any]:
    info = schema.model_fields[name]
    annotation: Any = info.annotation
    if info.metadata:
        annotation = Annotated[(annotation, *info.metadata)]
    return TypeAdapter(annotation)


def validate_field(schema: type[BaseModel], model: str, name: str, value: Any) -> Any:
    """Validate one assigned value against ``schema`` and return its wire form.

    Raises:
        UsageError: the value does not fit the field's type, or the server cannot store it.
    """
    adapter = _adapter(schema, name)
    check_storable(f"{model}.{name}", value)  # first: pydantic mangles or chokes on a bad key
    try:
        checked = adapter.validate_python(lax_value(schema, name, value))
    except ValidationError as exc:
        raise UsageError(f"{model}.{name}: {_first_error(exc)}") from exc
    if isinstance(checked, datetime):  # naive means UTC; stored and sent with its offset
        return wire_datetime(checked)
    wire = adapter.dump_python(checked, mode="json")
    check_storable(f"{model}.{name}", wire, text_limits(model).get(name))
    return wire


def validate_payload(schema: type[BaseModel], model: str, data: dict[str, Any]) -> dict[str, Any]:
    """Validate a whole creation payload and return it in wire form, defaults filled in.

    Raises:
        UsageError: naming each bad or missing field, or a value the server cannot store.
    """
    check_text(model, data)  # first: pydantic mangles or chokes on a dict key that is not UTF-8
    try:
        wire = schema.model_validate(lax_payload(schema, data)).model_dump(mode="json")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()
        )
        raise UsageError(f"invalid {model}: {problems}") from exc
    check_lengths(model, wire)
    return wire


def check_wire(model: str, row: Row) -> None:
    """Refuse values the server cannot store: bad text anywhere, text over its limits.

    Raises:
        UsageError: naming the field and the path to the bad text inside it.
    """
    check_text(model, row)
    check_lengths(model, row)


def check_text(model: str, row: Row) -> None:
    """Refuse text the server cannot store (NUL, lone surrogates) anywhere in ``row``."""
    for name, value in row.items():
        _refuse(model, name, storable_problem(value))


def check_lengths(model: str, row: Row) -> None:
    """Refuse text in ``row`` longer than the server's columns (the wire form: a ``Path`` as
    the text it is sent as), and bad text in those fields."""
    limits = text_limits(model)
    for name in limits.keys() & row.keys():
        _refuse(model, name, storable_problem(row[name], limits[name]))


def _refuse(model: str, name: str, problem: str | None) -> None:
    if problem is not None:
        raise UsageError(f"{model}.{name}{problem}")


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"])
    return f"{loc}: {err['msg']}" if loc else str(err["msg"])


# Upstream's lax text: a number given for a text value becomes its ``str()``, as pydantic 1 does.
#
# Upstream validates with pydantic 1, which turns ``tags={"step": 0}`` into ``{"step": "0"}``
# (ints, floats, Decimals and bools alike: ``True`` becomes ``"True"``); pydantic 2 refuses
# them. Code written for upstream passes numbers as tags, so every text field, and the keys and
# values of a text mapping or list (``tags``, ``launch_params``, ``filter_tags``, ...), takes
# them as upstream does. Anything else is left for validation to accept or refuse.

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
