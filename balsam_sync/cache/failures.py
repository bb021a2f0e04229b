"""The one place where SQLite's and the file system's errors become ``MirrorError``s.

Every error names the mirror file and says what to do: a damaged file is salvaged
(``balsam-sync salvage``), a full disk is freed, a locked file is retried, an unusable folder is
replaced (``BALSAM_SYNC_HOME``). ``open_mirror`` runs inside ``guard``, and every method of the
front door (``Mirror``) maps the errors of its parts, so no ``sqlite3`` exception ever leaves
``balsam_sync.cache``.
"""

from __future__ import annotations

import errno
import shutil
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import MirrorBusy, MirrorDamaged, MirrorError, MirrorFull

_DAMAGED = ("SQLITE_CORRUPT", "SQLITE_NOTADB")
_DAMAGED_TEXT = ("malformed", "not a database", "corrupt")
_FULL_TEXT = ("disk is full", "no space")
_BUSY_TEXT = ("locked", "busy")
SALVAGE = "`balsam-sync salvage` keeps its queued changes and rebuilds it"


class MirrorConnection(sqlite3.Connection):
    """A connection that knows which file it opened (for error messages)."""

    path: Path | None = None


def _name(exc: BaseException) -> str:
    return str(getattr(exc, "sqlite_errorname", "") or "")


def is_damage(exc: BaseException) -> bool:
    """Whether ``exc`` says the file's content is damaged (not merely unreadable)."""
    if isinstance(exc, MirrorDamaged):
        return True
    text = str(exc).lower()
    return _name(exc).startswith(_DAMAGED) or any(t in text for t in _DAMAGED_TEXT)


def _is_full(exc: BaseException, path: Path | None) -> bool:
    if isinstance(exc, OSError):
        return exc.errno in (errno.ENOSPC, errno.EDQUOT)
    if _name(exc).startswith("SQLITE_FULL") or any(t in str(exc).lower() for t in _FULL_TEXT):
        return True
    # An I/O error (e.g. growing the shared-memory file) on a disk with no room left.
    io_error = _name(exc).startswith("SQLITE_IOERR") or "disk i/o error" in str(exc).lower()
    return io_error and path is not None and _no_room(path)


def _no_room(path: Path) -> bool:
    folder = path if path.is_dir() else path.parent
    try:
        return shutil.disk_usage(folder).free < 65536
    except OSError:
        return False


def _is_busy(exc: BaseException) -> bool:
    name = _name(exc)
    if name:
        return name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED"))
    return any(t in str(exc).lower() for t in _BUSY_TEXT)


def mirror_error(path: Path | None, exc: BaseException) -> MirrorError:
    """Return the ``MirrorError`` that explains ``exc`` (from SQLite or the OS) for ``path``."""
    where = str(path) if path is not None else "the mirror"
    reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    if _is_full(exc, path):
        return MirrorFull(
            f"the disk holding {where} is full ({reason}): nothing was written. Free some "
            "space (or point BALSAM_SYNC_HOME at another disk) and try again"
        )
    if isinstance(exc, OSError):
        return MirrorError(
            f"cannot use {where} for the mirror ({reason}). Point BALSAM_SYNC_HOME (or "
            "connect(home=...)) at a folder you can write"
        )
    if is_damage(exc):
        return MirrorDamaged(
            f"the mirror {where} is damaged ({reason}): {SALVAGE} "
            "(`balsam-sync check` shows what is wrong)"
        )
    if _is_busy(exc):
        return MirrorBusy(
            f"the mirror {where} stayed locked by another process ({reason}); try again "
            "(`balsam-sync status` shows whether a push is running)"
        )
    if "readonly" in _name(exc).lower() or "readonly" in reason.lower():
        return MirrorError(f"cannot write the mirror {where} ({reason}): make it writable by you")
    return MirrorError(
        f"the mirror {where} failed ({reason}). `balsam-sync check` tells whether it is "
        f"damaged; {SALVAGE}"
    )


@contextmanager
def guard(path: Path | None, files: bool = True) -> Iterator[None]:
    """Turn ``sqlite3`` errors (and OS errors, with ``files``) raised inside into the
    ``MirrorError`` for ``path``."""
    kinds: tuple[type[Exception], ...] = (sqlite3.Error, OSError) if files else (sqlite3.Error,)
    try:
        yield
    except MirrorError:
        raise
    except kinds as exc:
        raise mirror_error(path, exc) from exc
