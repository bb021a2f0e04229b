"""What a valid reply of the server looks like, checked before anything above sees it.

The checks are built from the generated wire models (``balsam_sync/schemas``): each resource's
``Out`` model becomes a ``TypedDict`` of JSON types, and pydantic checks the raw reply bytes
against it in one pass (strictly: ``"32"`` is not an int, ``true`` not a number), dropping keys
the schema does not know and writing every timestamp in the mirror's canonical form. That one
pass replaces ``json.loads`` plus per-row normalisation, so checking costs nothing extra.

Beyond the schema: an id the server assigned is positive (a negative id is a provisional one of
the mirror, and a server row must never overwrite it), and a page's ``count`` is not negative.

A reply that fails raises ``ProtocolError`` naming the resource, the field (``results[3].id``)
and the request. Nothing from such a reply is used.
"""

from __future__ import annotations

import functools
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal, Union
from uuid import UUID

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import NotRequired, Required, TypedDict

from ..errors import ProtocolError
from ..resources import RESOURCES, Resource
from ..utc import canonical_time

SERVER_IDS = frozenset({"id", "app_id", "site_id", "job_id", "batch_job_id", "parent_ids"})
"""Fields holding ids the server assigned: always positive. A negative id is a provisional one
of the mirror (an object created offline), which a server row must never name."""

SERVER_STAMPS = {"Job": "last_update"}
"""Fields the server stamps with its own clock (evidence of that clock: ``serverclock.py``)."""

STRICT = ConfigDict(extra="ignore", strict=True)
Stamp = Annotated[str, AfterValidator(canonical_time)]
"""A timestamp: ISO 8601 text, stored in the mirror's canonical form (aware UTC)."""
ServerId = Annotated[int, Field(gt=0)]


def wire_type(annotation: Any, *, server_id: bool = False) -> Any:
    """The JSON form of one annotation of a wire model (recursively)."""
    if annotation is Any:
        return Any
    if annotation is datetime:
        return Stamp
    if annotation in (Path, UUID):
        return str
    if annotation is int and server_id:
        return ServerId
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        return Literal[tuple(member.value for member in annotation)]
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return wire_dict(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (Union, types.UnionType):
        members = tuple(wire_type(a, server_id=server_id) for a in args)
        return functools.reduce(lambda a, b: a | b if a is not None else b, members)
    if origin in (list, set, frozenset, tuple):
        return _list_of(wire_type(args[0], server_id=server_id))
    if origin is dict:
        mapping: Any = dict
        return mapping[str, wire_type(args[1])]  # JSON keys are text
    return annotation


@functools.cache
def wire_dict(model: type[BaseModel]) -> Any:
    """A ``TypedDict`` of ``model``'s fields in JSON types (required where ``model`` has no
    default), for pydantic to check rows against."""
    fields: dict[str, Any] = {}
    for name, info in model.model_fields.items():
        kind = wire_type(info.annotation, server_id=name in SERVER_IDS)
        fields[name] = Required[kind] if info.is_required() else NotRequired[kind]
    return _typed_dict(f"{model.__name__}Wire", fields)


def _typed_dict(name: str, fields: dict[str, Any]) -> Any:
    make: Any = TypedDict  # built at run time from the models, so no static type
    shape = make(name, fields)
    shape.__pydantic_config__ = STRICT
    return shape


def _list_of(item: Any) -> Any:
    listed: Any = list
    return listed[item]


@dataclass(frozen=True)
class Expect:
    """What a reply's body must be, and how to name it when it is not."""

    what: str  # "a page of Job"
    resource: str
    check: Callable[[bytes], Any]

    def parse(self, content: bytes, method: str, url: str) -> Any:
        """The checked body (rows in canonical form), or ``ProtocolError``."""
        try:
            return self.check(content)
        except ValidationError as exc:
            raise self._error(exc, method, url) from None
        except ValueError as exc:  # a check of ours outside pydantic
            raise ProtocolError(
                f"{method} {_where(url)}: the reply is not {self.what}: {exc}",
                method=method,
                url=url,
                resource=self.resource,
            ) from None

    def _error(self, exc: ValidationError, method: str, url: str) -> ProtocolError:
        first = exc.errors(include_url=False, include_context=False)[0]
        field = _dotted(first["loc"])
        more = exc.error_count() - 1
        also = f" (and {more} more error{'s' * (more > 1)})" if more else ""
        where = f" at {field}" if field else ""
        return ProtocolError(
            f"{method} {_where(url)}: the reply is not {self.what}{where}: {first['msg']}{also}. "
            "The server (or something between it and this machine) broke the API's protocol; "
            "nothing from this reply was used",
            method=method,
            url=url,
            resource=self.resource,
            field=field,
        )


def _dotted(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _where(url: str) -> str:
    return "/" + url.split("://", 1)[-1].split("/", 1)[-1] if "://" in url else url


def _adapter(shape: Any) -> Callable[[bytes], Any]:
    adapter: TypeAdapter[Any] = TypeAdapter(shape)
    return functools.partial(adapter.validate_json, strict=True)


@functools.cache
def _shapes(name: str) -> tuple[Any, Any]:
    row = wire_dict(RESOURCES[name].out)
    page = _typed_dict(
        f"{name}Page", {"count": Annotated[int, Field(ge=0)], "results": _list_of(row)}
    )
    return row, page


@functools.cache
def page_of(name: str) -> Expect:
    """A listing: ``{"count": n, "results": [row, ...]}``."""
    return Expect(f"a page of {name}", name, _adapter(_shapes(name)[1]))


@functools.cache
def rows_of(name: str) -> Expect:
    """A JSON list of rows (a bulk create or update)."""
    return Expect(f"a list of {name}", name, _adapter(_list_of(_shapes(name)[0])))


@functools.cache
def row_of(name: str) -> Expect:
    """One row (a create or an update of one object)."""
    return Expect(f"one {name}", name, _adapter(_shapes(name)[0]))


@functools.cache
def number_for(name: str) -> Expect:
    """An integer (what Job updates answer: how many were changed)."""
    return Expect(f"a count of {name}", name, _adapter(int))


def reply_for(res: Resource, route: str) -> Expect:
    """What ``res``'s ``route`` ("object", "list" or "int") answers."""
    if route == "int":
        return number_for(res.name)
    return rows_of(res.name) if route == "list" else row_of(res.name)


def check_row(res: Resource, row: Any, where: str = "") -> dict[str, Any]:
    """Check one already decoded row (rows that reach us inside another reply)."""
    adapter = _python_adapter(res.name)
    try:
        checked: dict[str, Any] = adapter.validate_python(row, strict=True)
    except ValidationError as exc:
        raise row_of(res.name)._error(exc, "", where) from None
    return checked


@functools.cache
def _python_adapter(name: str) -> TypeAdapter[Any]:
    return TypeAdapter(_shapes(name)[0])


@functools.cache
def login_reply() -> Expect:
    """What a password login answers: at least the token."""
    shape = _typed_dict("LoginWire", {"access_token": Required[str]})
    return Expect("a login reply", "", _adapter(shape))
