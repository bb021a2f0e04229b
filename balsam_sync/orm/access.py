"""Pieces of a model instance that need no model: its state, its field and manager descriptors.

``ModelState`` values are upstream's ``obj._state`` strings; ``_Field`` reads convert and writes
validate through the instance; ``Model.objects`` finds the manager of the bound client.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .manager import Manager
    from .models import Model

_M = TypeVar("_M", bound="Model")
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


ManagerResolver = Callable[[type["Model"]], "Manager[Any]"]
_resolve_manager: ManagerResolver | None = None


def set_manager_resolver(resolver: ManagerResolver) -> None:
    """Tell unbound model classes how to find the default client's manager (done by client)."""
    global _resolve_manager
    _resolve_manager = resolver


class _Field:
    """Descriptor for one model field: reads convert, writes validate."""

    def __init__(self, name: str, doc: str | None) -> None:
        self.name = name
        self.__doc__ = doc

    def __get__(self, obj: Model | None, owner: type[Model]) -> Any:
        if obj is None:
            return self
        return obj._read(self.name)

    def __set__(self, obj: Model, value: Any) -> None:
        obj._write(self.name, value)


class _ManagerAccess:
    """``Model.objects``: the manager of the client this model class is bound to."""

    def __get__(self, obj: Model | None, owner: type[_M]) -> Manager[_M]:
        if obj is not None:
            raise AttributeError("the manager is reached through the class: use Model.objects")
        bound = owner.__dict__.get("_manager")
        if bound is not None:
            return bound  # type: ignore[no-any-return]
        if _resolve_manager is None:
            raise RuntimeError("balsam_sync.client was not imported")
        return _resolve_manager(owner)
