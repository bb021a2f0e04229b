"""Other mirrors in the same folder that hold queued changes of the same user.

A user who reached one server under two URLs (or before URLs were normalised) may have
changes waiting in a mirror the current settings do not open; ``status`` and ``push`` say so.
The other files are only read (``mode=ro``); one that cannot be read is skipped.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Neighbour:
    """Another mirror of the same user, with changes still queued in it."""

    path: str
    api_root: str
    pending: int


def _read(path: Path) -> tuple[dict[str, str], int] | None:
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1.0)
    except sqlite3.Error:
        return None
    try:
        meta = dict(conn.execute("SELECT key, value FROM meta"))
        (pending,) = conn.execute("SELECT count(*) FROM outbox WHERE state != 'dead'").fetchone()
        return meta, int(pending)
    except sqlite3.Error:
        return None
    finally:
        conn.close()


def neighbours(folder: Path, own: Path, user: str) -> list[Neighbour]:
    """Mirrors in ``folder`` other than ``own`` whose user is ``user`` and that hold changes."""
    found = []
    try:
        candidates = sorted(folder.glob("*.sqlite3"))
    except OSError:
        return []
    for path in candidates:
        if path == own or not path.is_file() or path.stat().st_size == 0:
            continue
        read = _read(path)
        if read is not None and read[0].get("user") == user and read[1] > 0:
            found.append(Neighbour(str(path), read[0].get("api_root", "?"), read[1]))
    return found
