"""Pieces of a model instance that need no model: its state and its field descriptor.

``ModelState`` values are upstream's ``obj._state`` strings; ``_Field`` reads convert and writes
validate through the instance. (``Model.objects`` is ``manager.ManagerAccess``.)
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ..freshness import RowLayout

_SCALARS = frozenset({str, int, float, bool, type(None)})


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


class _HasFields(Protocol):
    """An instance whose fields ``_Field`` reads and writes (a ``Model``)."""

    def _read(self, name: str) -> Any: ...

    def _write(self, name: str, value: Any) -> None: ...


class _Field:
    """Descriptor for one field of one model class: reads convert, writes validate.

    A clean instance on a packed mirror row (``Model._from_packed``) is read here directly:
    the id from the row, any other field from the row's values (unpacked once, by position),
    a JSON field decoded on its first read. Every other instance reads through ``_read``.
    """

    def __init__(
        self,
        name: str,
        doc: str | None,
        conv: Callable[[Any], Any] | None = None,
        json: bool = False,
        ref: bool = False,
    ) -> None:
        self.name = name
        self.__doc__ = doc
        self.conv = conv
        self.json = json
        self.ref = ref
        self.is_id = name == "id"
        self._where: tuple[RowLayout | None, int | None] = (None, None)
        """The last row layout seen and this field's position in it (one tuple: thread-safe)."""

    def __get__(self, obj: Any, owner: type) -> Any:
        if obj is None:
            return self
        if obj._d is not None or obj._changes is not None:
            return obj._read(self.name)
        if self.is_id:
            raw = obj._row[0]
        else:
            layout = obj._prov.layout
            where = self._where
            if where[0] is not layout:
                assert layout is not None
                where = self._where = (layout, layout.index.get(self.name))
            at = where[1]
            if at is None:
                return None
            vals = obj._vals
            if vals is None:
                vals = obj._vals = layout.unpack(obj._row)
            raw = vals[at]
            if raw.__class__ is str and self.json:
                raw = obj._decode_packed(self.name, at)
        if raw is None:
            return None
        if raw.__class__ is int and raw < 0 and self.ref:
            raw = obj._resolve_id(self.name, raw)
        conv = self.conv
        return raw if conv is None else conv(raw)

    def __set__(self, obj: _HasFields, value: Any) -> None:
        obj._write(self.name, value)
