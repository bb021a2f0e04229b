"""The ``balsam-sync`` command: log in, inspect and drive the sync of the local mirror.

One module per concern: ``app`` (the group, global options, error reporting), ``account``
(login), ``sync`` (status, push, pull, daemon), ``jobs``, ``dead`` (refused changes) and
``mirror`` (check, salvage, rebuild). ``python -m balsam_sync.cli`` runs it too.
"""

from __future__ import annotations

from . import account, dead, jobs, mirror, sync  # noqa: F401  (each registers its commands)
from .app import main
from .show import duration

__all__ = ["duration", "main"]
