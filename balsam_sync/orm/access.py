"""Pieces of a model instance that need no model: its state and its field descriptor.

``ModelState`` values are upstream's ``obj._state`` strings; ``_Field`` reads convert and writes
validate through the instance. (``Model.objects`` is ``manager.ManagerAccess``.)
"""

from __future__ import annotations

import copy
from enum import Enum
from typing import Any, Protocol

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
    """Descriptor for one model field: reads convert, writes validate."""

    def __init__(self, name: str, doc: str | None) -> None:
        self.name = name
        self.__doc__ = doc

    def __get__(self, obj: _HasFields | None, owner: type) -> Any:
        if obj is None:
            return self
        return obj._read(self.name)

    def __set__(self, obj: _HasFields, value: Any) -> None:
        obj._write(self.name, value)
