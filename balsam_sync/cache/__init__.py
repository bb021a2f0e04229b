"""The local SQLite mirror and its queue: the only package that writes SQL.

Its front door is ``Mirror`` (``mirror.py``); everything else here is its parts. Other layers
import from this package only, never from its modules.
"""

from .coverage import Coverage, Evidence
from .failures import guard
from .filesystem import append_own
from .journal import SenderLock
from .lock import FileLock
from .mirror import Clock, Mirror, companion
from .neighbours import Neighbour, neighbours
from .opening import Identity, MirrorMissing, locate, open_mirror
from .outbox import Entry, EntryState, Op
from .pullplan import Cursor, PlanKind, PullPlan
from .pullstate import Unsynced
from .queue import QueueCounts, Queued
from .salvage import Recovered, check, move_aside, recover, restore
from .store import writing_here

__all__ = [
    "Clock",
    "append_own",
    "companion",
    "Coverage",
    "Cursor",
    "Entry",
    "EntryState",
    "Evidence",
    "FileLock",
    "Identity",
    "Mirror",
    "MirrorMissing",
    "Neighbour",
    "Op",
    "PlanKind",
    "PullPlan",
    "QueueCounts",
    "Queued",
    "SenderLock",
    "Recovered",
    "Unsynced",
    "check",
    "guard",
    "locate",
    "move_aside",
    "neighbours",
    "open_mirror",
    "recover",
    "restore",
    "writing_here",
]
