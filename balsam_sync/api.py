"""Drop-in for ``balsam.api``: the resource classes, bound to the default client.

``from balsam_sync.api import Job`` opens no file and no socket; the default client is built
from the environment or ``~/.balsam/client.yml`` the first time a class needs it.
"""

from __future__ import annotations

from .client import default_client
from .job import Job
from .objects import App, BatchJob, EventLog, Site, TransferItem
from .schemas import BatchJobState, JobMode, JobState, TransferItemState
from .sync.pull import PullReport


def pull(*, full: bool = False) -> PullReport:
    """Bring the default client's mirror up to the server's state."""
    return default_client().pull(full=full)


__all__ = [
    "App",
    "BatchJob",
    "BatchJobState",
    "EventLog",
    "Job",
    "JobMode",
    "JobState",
    "Site",
    "TransferItem",
    "TransferItemState",
    "default_client",
    "pull",
]
