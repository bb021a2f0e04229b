"""The resource classes users import: Site, App, BatchJob, TransferItem, EventLog.

Field names, types and docs come from the generated schemas (``schemas/attrs.py``); the rules
below are the server's own checks, made here first so bad input fails before it is sent.
"""

from __future__ import annotations

import posixpath
from collections.abc import Callable
from typing import Any, ClassVar

from .. import resources
from ..schemas.attrs import (
    AppAttrs,
    BatchJobAttrs,
    EventLogAttrs,
    SiteAttrs,
    TransferItemAttrs,
)
from .manager import ManagerAccess
from .models import Model
from .serializer import register_upstream_names


def max_length(limit: int) -> Callable[[Any], str | None]:
    """A rule for text columns: the server's database refuses longer values with a 500."""

    def rule(value: Any) -> str | None:
        size = len(str(value))
        return None if size <= limit else f"is {size} characters long; the server takes {limit}"

    return rule


def all_of(*rules: Callable[[Any], str | None]) -> Callable[[Any], str | None]:
    def rule(value: Any) -> str | None:
        return next((p for p in (r(value) for r in rules) if p), None)

    return rule


def _absolute(value: Any) -> str | None:
    return None if posixpath.isabs(str(value)) else f"must be an absolute path, got {value!r}"


def _identifier(value: Any) -> str | None:
    ok = isinstance(value, str) and value.isidentifier()
    return None if ok else f"must be a valid Python identifier, got {value!r}"


class Site(Model, SiteAttrs):
    """A Balsam site: a working directory on one HPC system, owned by one user."""

    __slots__ = ()
    _resource = resources.SITE
    objects: ClassVar[ManagerAccess] = ManagerAccess()
    _rules: ClassVar[dict[str, Any]] = {
        "name": max_length(100),
        "path": all_of(_absolute, max_length(512)),
    }


class App(Model, AppAttrs):
    """An application registered at a site (its name must be a Python identifier)."""

    __slots__ = ()
    _resource = resources.APP
    objects: ClassVar[ManagerAccess] = ManagerAccess()
    _rules: ClassVar[dict[str, Any]] = {
        "name": all_of(_identifier, max_length(200)),
        "serialized_class": max_length(262144),
    }


class BatchJob(Model, BatchJobAttrs):
    """An allocation request sent to a site's HPC scheduler."""

    __slots__ = ()
    _resource = resources.BATCH_JOB
    objects: ClassVar[ManagerAccess] = ManagerAccess()
    # Upstream's BatchJob schema uses its enums' values: ``bj.state == "queued"`` is a str.
    _as_text: ClassVar[frozenset[str]] = frozenset({"state", "job_mode"})
    _rules: ClassVar[dict[str, Any]] = {"project": max_length(64), "queue": max_length(64)}


class TransferItem(Model, TransferItemAttrs):
    """A stage-in or stage-out file transfer of a job (created by the server)."""

    __slots__ = ()
    _resource = resources.TRANSFER_ITEM
    objects: ClassVar[ManagerAccess] = ManagerAccess()


class EventLog(Model, EventLogAttrs):
    """A state change of a job, as logged by the server (read-only)."""

    __slots__ = ()
    _resource = resources.EVENT_LOG
    objects: ClassVar[ManagerAccess] = ManagerAccess()


register_upstream_names(
    "balsam._api.models",
    {"Site": Site, "App": App, "BatchJob": BatchJob, "TransferItem": TransferItem},
)
register_upstream_names("balsam._api.models", {"EventLog": EventLog})
