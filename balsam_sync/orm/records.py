"""The resource classes users import: Site, App, BatchJob, TransferItem, EventLog.

Field names, types and docs come from the generated schemas (``schemas/attrs.py``); the rules
below are the server's own checks, made here first so bad input fails before it is sent (the
lengths its columns take are ``Resource.text_limits``, checked with every value).
"""

from __future__ import annotations

import posixpath
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
    _rules: ClassVar[dict[str, Any]] = {"path": _absolute}


class App(Model, AppAttrs):
    """An application registered at a site (its name must be a Python identifier)."""

    __slots__ = ()
    _resource = resources.APP
    objects: ClassVar[ManagerAccess] = ManagerAccess()
    _rules: ClassVar[dict[str, Any]] = {"name": _identifier}


class BatchJob(Model, BatchJobAttrs):
    """An allocation request sent to a site's HPC scheduler."""

    __slots__ = ()
    _resource = resources.BATCH_JOB
    objects: ClassVar[ManagerAccess] = ManagerAccess()
    # Upstream's BatchJob schema uses its enums' values: ``bj.state == "queued"`` is a str.
    _as_text: ClassVar[frozenset[str]] = frozenset({"state", "job_mode"})


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
