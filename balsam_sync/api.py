"""Drop-in for ``balsam.api``: every name upstream exports, bound to the default client.

``from balsam_sync.api import Job`` opens no file and no socket; the default client is built
from the environment or ``~/.balsam/client.yml`` the first time a class needs it, and
``site_config`` is looked up on first access (None outside a Balsam site, as upstream).
"""

from __future__ import annotations

from typing import Any

from .client import default_client
from .compat.appdef import ApplicationDefinition
from .compat.session import Session
from .compat.siteconfig import SiteConfig, load_site_config
from .orm.job import Job
from .orm.records import App, BatchJob, EventLog, Site, TransferItem
from .schemas import (
    AppParameter,
    BatchJobPartition,
    BatchJobState,
    JobMode,
    JobState,
    JobTransferItem,
    TransferDirection,
    TransferItemState,
    TransferSlot,
)
from .sync.pull import PullReport
from .sync.push import PushReport

_UNSET = object()
_site_config: Any = _UNSET
site_config: SiteConfig | None  # set on first access, by __getattr__ below


def pull(*, full: bool = False) -> PullReport:
    """Bring the default client's mirror up to the server's state."""
    return default_client().pull(full=full)


def push() -> PushReport:
    """Send the default client's queued changes now (what was sent, failed, parked)."""
    return default_client().push()


def __getattr__(name: str) -> Any:
    """``site_config``: found on first use, so importing this module reads no file."""
    global _site_config
    if name == "site_config":
        if _site_config is _UNSET:
            _site_config = load_site_config()
        return _site_config
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "App",
    "AppParameter",
    "ApplicationDefinition",
    "BatchJob",
    "BatchJobPartition",
    "BatchJobState",
    "EventLog",
    "Job",
    "JobMode",
    "JobState",
    "JobTransferItem",
    "Session",
    "Site",
    "SiteConfig",
    "TransferDirection",
    "TransferItem",
    "TransferItemState",
    "TransferSlot",
    "default_client",
    "pull",
    "push",
    "site_config",
]
