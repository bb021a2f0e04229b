"""The ``balsam-sync`` command: log in, inspect and drive the sync of the local mirror.

One module per concern: ``app`` (the group, global options, error reporting), ``account``
(login), ``sync`` (status, push, pull, daemon), ``job`` (job ls/show/count), ``records``
(site, app, queue and event ls), ``jobs`` (the older listing), ``dead`` (refused changes) and
``mirror`` (check, salvage, rebuild). ``python -m balsam_sync.cli`` runs it too.
"""

from __future__ import annotations

from . import account, dead, job, jobs, mirror, records, sync  # noqa: F401  (each registers)
from .app import main
from .show import duration

__all__ = ["duration", "main"]
