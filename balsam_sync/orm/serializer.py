"""Upstream's payload format: base64 of a ``dill`` pickle (``recurse=True``), both ways.

Apps, job parameters, return values and exceptions travel as such payloads, and the upstream
site agent unpickles them with upstream ``balsam`` importable and ``balsam_sync`` not. So a
pickle written here names upstream's classes wherever it refers to one of ours that upstream
has (``ApplicationDefinition``, ``JobState``, ``Job``, ...), and a pickle read here maps
upstream's names back to ours. Everything else is plain ``dill``.

Unpickling runs code: only deserialize payloads from your own server account.
"""

from __future__ import annotations

import base64
import importlib
import io
import pickle
from collections.abc import Callable
from types import ModuleType
from typing import Any

import dill
import dill.source

from ..errors import UsageError
from ..schemas import _enums

Target = tuple[str, str]
_PLAIN = (str, int, float, bool, type(None))

# Our object -> (upstream module, name): filled by register_upstream_names(), by the modules
# that define the objects (so this module imports none of them).
_TO_UPSTREAM: dict[int, tuple[Any, Target]] = {}
# (upstream module, name) -> our object, for reading upstream's payloads.
_FROM_UPSTREAM: dict[Target, Any] = {}
_MODULES = {"balsam_sync.api": "balsam.api", "balsam_sync": "balsam"}


class SerializeError(UsageError):
    """An object could not be serialized the way upstream's site agent reads it."""


class DeserializeError(UsageError):
    """A payload could not be unpickled (corrupt, or it names something not importable)."""


def register_upstream_names(module: str, objects: dict[str, Any]) -> None:
    """Tell the serializer that each of ``objects`` is ``module.name`` in upstream balsam."""
    for name, obj in objects.items():
        _TO_UPSTREAM[id(obj)] = (obj, (module, name))
        _FROM_UPSTREAM[module, name] = obj


def _upstream_target(obj: Any) -> Target | None:
    found = _TO_UPSTREAM.get(id(obj))
    if found is not None and found[0] is obj:
        return found[1]
    if isinstance(obj, type) and len(obj.__bases__) == 1:
        # A client-bound model class (client.Job) stands for the class it binds.
        (base,) = obj.__bases__
        hit = _TO_UPSTREAM.get(id(base))
        if hit is not None and hit[0] is base and base.__qualname__ == obj.__qualname__:
            return hit[1]
    return None


class _Pickler(dill.Pickler):  # type: ignore[misc]
    """dill's pickler, writing upstream's global names for our registered objects."""

    def save(self, obj: Any, save_persistent_id: bool = True) -> None:
        target = None if isinstance(obj, _PLAIN) else _upstream_target(obj)
        if target is None and isinstance(obj, ModuleType) and obj.__name__ in _MODULES:
            self.save_reduce(_import, (_MODULES[obj.__name__],), obj=obj)
            return
        if target is None:
            super().save(obj, save_persistent_id)
            return
        memo = self.memo.get(id(obj))
        if memo is not None:
            self.write(self.get(memo[0]))
            return
        module, name = target
        self.write(pickle.GLOBAL + module.encode() + b"\n" + name.encode() + b"\n")
        self.memoize(obj)


class _Unpickler(dill.Unpickler):  # type: ignore[misc]
    """dill's unpickler, mapping upstream's names to ours."""

    def find_class(self, module: str, name: str) -> Any:
        found = _FROM_UPSTREAM.get((module, name))
        if found is not None:
            return found
        if (module, name) == ("importlib", "import_module"):
            return _import
        if module == "tblib" or module.startswith("tblib."):
            return RemoteTraceback
        if module == "balsam" or module.startswith("balsam."):
            raise DeserializeError(
                f"the payload needs upstream's {module}.{name}, which balsam_sync does not have"
            )
        return super().find_class(module, name)


class RemoteTraceback:
    """Stands for the traceback (``tblib``) that upstream pickles beside a job's exception.

    The exception itself is re-raised; the remote frames are not rebuilt here.
    """

    def as_traceback(self) -> None:
        return None


def _import(name: str) -> ModuleType:
    """``importlib.import_module``, with upstream's API modules read as ours."""
    ours = {v: k for k, v in _MODULES.items()}.get(name, name)
    try:
        return importlib.import_module(ours)
    except ImportError as exc:
        raise DeserializeError(f"cannot import {name}: {exc}") from exc


def dumps(obj: Any) -> bytes:
    """Pickle ``obj`` as upstream does (``dill.dumps(obj, recurse=True)``), upstream names."""
    buf = io.BytesIO()
    try:
        _Pickler(buf, recurse=True).dump(obj)
    except Exception as exc:  # dill raises whatever the object's reduction raised
        raise SerializeError(f"cannot serialize {obj!r}: {exc}") from exc
    return buf.getvalue()


def serialize(obj: Any) -> str:
    """Return the base64 text of ``dumps(obj)``."""
    return base64.b64encode(dumps(obj)).decode("utf-8")


def serialize_plain(obj: Any) -> str:
    """Like ``serialize``, with the (much faster) standard pickle for plain data.

    Builtin scalars, lists, tuples, sets and dicts of them unpickle the same with dill.
    """
    if _is_plain(obj):
        return base64.b64encode(pickle.dumps(obj, protocol=4)).decode("utf-8")
    return serialize(obj)


def _is_plain(value: Any, depth: int = 0) -> bool:
    if isinstance(value, _PLAIN):
        return type(value) in _PLAIN
    if depth > 20:
        return False
    kind = type(value)
    if kind is dict:
        return all(_is_plain(k, depth + 1) and _is_plain(v, depth + 1) for k, v in value.items())
    if kind in (list, tuple, set, frozenset):
        return all(_is_plain(v, depth + 1) for v in value)
    return False


def deserialize(payload: str) -> Any:
    """Unpickle a base64 payload written by upstream or by ``serialize``.

    Raises:
        DeserializeError: empty, not base64, or not loadable here.
    """
    if not payload:
        raise DeserializeError("empty payload")
    try:
        raw = base64.b64decode(payload)
        return _Unpickler(io.BytesIO(raw)).load()
    except DeserializeError:
        raise
    except Exception as exc:  # unpickling raises whatever the payload's code raises
        raise DeserializeError(f"cannot deserialize the payload: {exc}") from exc


def get_source(obj: Any) -> str:
    """The source text of a class or function, as upstream records it (``dill.source``)."""
    getsource: Callable[..., str] = dill.source.getsource
    try:
        return getsource(obj, lstrip=True)
    except (OSError, TypeError, IndentationError):
        return ""


register_upstream_names(
    "balsam.schemas",
    {
        name: getattr(_enums, name)
        for name in (
            "JobState",
            "BatchJobState",
            "JobMode",
            "TransferItemState",
            "TransferDirection",
            "JobOrdering",
            "BatchJobOrdering",
            "EventOrdering",
        )
    },
)
