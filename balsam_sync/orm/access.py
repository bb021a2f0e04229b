"""Pieces of a model instance that need no model: its state and its compiled field accessors.

``ModelState`` values are upstream's ``obj._state`` strings. ``field_property`` compiles, once
per model class and field, the property that reads and writes one field: the read of a cached
instance is straight-line code with the field's position in the packed row, its converter and
its JSON handling written in, as the fastest Python ORMs build their row readers.
(``Model.objects`` is ``manager.ManagerAccess``.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from enum import Enum
from typing import Any

from .fields import decode_json, immutable_result  # noqa: F401 - decode_json: the readers'

_SCALARS = frozenset({str, int, float, bool, type(None)})

Getter = Callable[[Any], Any]


def _snapshot(value: Any) -> Any:
    """A copy to compare with at save: shallow when nothing inside can change in place."""
    items = value.values() if type(value) is dict else value
    if all(type(v) in _SCALARS for v in items):
        return value.copy()
    return copy.deepcopy(value)


class ModelState(str, Enum):
    """Where an instance stands relative to the server.

    The values are upstream's ``obj._state`` strings, so ``obj._state == "clean"`` holds.
    """

    CREATING = "creating"  # built locally and never saved: holds the creation payload
    NEW = "creating"  # an alias of CREATING
    CLEAN = "clean"  # equal to what the server (or the mirror) last said
    DIRTY = "dirty"  # clean data plus assigned changes that are not saved yet
    DELETED = "deleted"  # deleted through this instance; its id reads None


def field_reader(
    name: str,
    at: int | None,
    conv: Callable[[Any], Any] | None = None,
    json: bool = False,
    ref: bool = False,
    hidden: str | None = None,
) -> Getter:
    """Compile the read of field ``name``, at position ``at`` of a packed mirror row.

    A clean cached instance (``Model._from_packed``) holds its row ``(id, blob)`` and, once
    any field but ``id`` was read, the blob's values as a list (``_vals``). The reader then
    indexes that list and keeps what it made in it: a JSON value still text is decoded on
    its first read (short ones come decoded from the blob; a ``hidden`` bookkeeping key is
    dropped), and a converter whose results cannot change in place (Path, datetime, UUID,
    enum, bool) runs once; other converters (``set``, nested models) run on every read, as
    they hand out new mutable objects. Every other instance (built from a dict, assigned
    to, created locally) reads through ``Model._read``.
    """
    key, drop = repr(name), repr(hidden)
    src = [f"def read_{name}(self, CONV=CONV):"]  # the converter: a local, not a global
    if name == "id":
        src += [
            "    if self._d is None:",
            "        raw = self._row[0]",
            "        return raw if raw > 0 else self._resolve_id('id', raw)",
            "    return self._read('id')",
        ]
    elif at is None:  # a field the server never returns (Job.transfers): never in a row
        src += [f"    return None if self._d is None else self._read({key})"]
    else:
        src += [
            "    vals = self._vals",
            "    if vals is None:",
            "        if self._d is not None:",
            f"            return self._read({key})",
            "        vals = self._prov.layout.unpack(self._row)",
            "        if vals.__class__ is not list:",
            "            vals = list(vals)",
            "        self._vals = vals",
            f"    raw = vals[{at}]",
        ]
        if json:  # short JSON values were unpacked decoded; longer ones are text until read
            src += ["    if raw.__class__ is str:", f"        raw = vals[{at}] = decode_json(raw)"]
            if hidden is not None:
                src += [
                    f"    if raw.__class__ is dict and {drop} in raw:",
                    f"        raw = {{k: v for k, v in raw.items() if k != {drop}}}",
                    f"        vals[{at}] = raw",
                ]
        if ref:
            src += ["    if raw.__class__ is int and raw < 0:"]
            src += [f"        return self._resolve_id({key}, raw)"]
        if conv is not None and not json and immutable_result(conv):
            kind = "int" if conv is bool else "str"  # what the mirror stores for the field
            src += [f"    if raw.__class__ is {kind}:", f"        raw = vals[{at}] = CONV(raw)"]
            src += ["    return raw"]
        elif conv is not None:
            src += ["    return None if raw is None else CONV(raw)"]
        else:
            src += ["    return raw"]
    # This module's globals (decode_json) are the reader's: tests can count calls through it.
    made: dict[str, Any] = {"CONV": conv}
    exec(compile("\n".join(src), f"<{name} reader>", "exec"), globals(), made)
    reader: Getter = made[f"read_{name}"]
    return reader


def field_property(name: str, reader: Getter, doc: str | None) -> property:
    """The property of field ``name``: ``reader`` reads it; assignments validate (``_write``)."""

    def write(self: Any, value: Any) -> None:
        self._write(name, value)

    return property(reader, write, doc=doc)
