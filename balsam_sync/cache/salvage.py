"""Check a mirror file, and recover the queue of a damaged one into a fresh mirror.

``check`` runs SQLite's integrity check. ``recover`` reads a damaged copy (moved aside with
``move_aside``) as far as it can be read, and ``restore`` writes what it found into a fresh
mirror. What matters is what the server has not seen: the outbox (pending and in-flight
changes, and dead letters), the provisional-id map and counter (so ids stay consistent), and
the sync log. Rows the server has are pulled again instead.

Reading survives damage page by page: the outbox is read in rowid order, skipping a range
that cannot be read; its two indexes (which hold every entry's seq, state, resource and
object id) name the entries that exist, so each one is asked for by seq and whatever stays
unreadable is reported exactly. A damaged file header (the first 100 bytes) is rebuilt on a
copy before reading. Only losing the outbox's own pages (and both its index entries) can lose a
change without a trace.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..resources import RESOURCES
from ..utc import now
from .failures import guard
from .filesystem import check_database, new_own_file
from .store import Store

Record = tuple[Any, ...]
"""One raw row of a damaged file, as SQLite returns it (not a ``resources.Row``)."""
OUTBOX_COLUMNS = (
    "seq, resource, op, obj_id, payload, marker, state, attempts, status, error, "
    "created_at, updated_at"
)
_OPS = {"create", "update", "delete"}
_STATES = {"pending", "in_flight", "dead"}
_MAGIC = b"SQLite format 3\x00"
_FAR = 2**62


@dataclass
class Recovered:
    """What could be read from a damaged mirror, and what could not."""

    entries: list[Record] = field(default_factory=list)
    id_map: list[Record] = field(default_factory=list)
    temp_counter: int | None = None
    sync_log: dict[str, str] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    shared: bool | None = None
    """Whether the damaged file's queue was also the user's (``journal.py``): every change
    in it went to the user's queue first (None: it cannot be told, the file is unreadable)."""

    def count(self, state: str) -> int:
        return sum(1 for e in self.entries if e[6] == state)

    @property
    def unshared(self) -> list[Record]:
        """Entries queued before the queue was shared: the damaged file is their only copy
        (the others are in the user's queue, ``cache/journal.py``)."""
        return [e[:-1] for e in self.entries if e[-1] is None]


def check(path: Path) -> list[str]:
    """Return the problems SQLite's integrity check finds in ``path`` ([] when it is sound).

    Raises:
        UnsafeFile: a link, or another user's file, at the mirror's path (never opened).
    """
    if check_database(path).st_size == 0:
        return ["the file is empty (0 bytes)"]
    try:
        conn = sqlite3.connect(str(path), timeout=60)
    except sqlite3.Error as exc:
        return [str(exc)]
    try:
        found = [str(r[0]) for r in conn.execute("PRAGMA integrity_check(50)")]
        return [] if found == ["ok"] else found
    except sqlite3.Error as exc:
        return [str(exc)]
    finally:
        conn.close()


def move_aside(path: Path) -> Path:
    """Rename ``path`` (with its -wal and -shm files) to ``<name>.damaged-<time>``; return it."""
    stamp = now().strftime("%Y%m%dT%H%M%SZ")
    dest = path.with_name(f"{path.name}.damaged-{stamp}")
    with guard(path):
        for suffix in ("-wal", "-shm", ""):
            if Path(f"{path}{suffix}").exists():
                os.replace(f"{path}{suffix}", f"{dest}{suffix}")
    return dest


# -- reading a damaged file ------------------------------------------------------------------


@contextmanager
def _readable(path: Path, notes: list[str]) -> Iterator[sqlite3.Connection | None]:
    """A connection to ``path``, or to a copy with a rebuilt header if SQLite rejects it."""
    conn = _try_open(path)
    repaired: Path | None = None
    if conn is None and path.stat().st_size >= 512:
        repaired = _with_new_header(path)
        conn = _try_open(repaired) if repaired else None
        if conn is not None:
            notes.append("the file header was damaged: read through a rebuilt header")
    try:
        yield conn
    finally:
        if conn is not None:
            conn.close()
        for suffix in ("", "-wal", "-shm"):
            if repaired is not None:
                Path(f"{repaired}{suffix}").unlink(missing_ok=True)


def _try_open(path: Path) -> sqlite3.Connection | None:
    try:
        conn = sqlite3.connect(str(path), timeout=60)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn
    except sqlite3.Error:
        return None


_PAGE_SIZES = (4096, 1024, 2048, 8192, 16384, 32768, 65536, 512)
_BTREE_PAGES = (b"\x02", b"\x05", b"\x0a", b"\x0d")


def _page_size(path: Path, size: int) -> int | None:
    """Guess the page size: the header's if it is still plausible, else the first size at
    which page 1 (after the header) and page 2 both begin like b-tree pages."""
    with open(path, "rb") as fh:
        data = fh.read(65536 + 1)
    if data[100:101] not in (b"\x0d", b"\x05"):
        return None
    stored = int.from_bytes(data[16:18], "big")
    stored = 65536 if stored == 1 else stored
    for candidate in ((stored,) if stored in _PAGE_SIZES else ()) + _PAGE_SIZES:
        second = data[candidate : candidate + 1]
        if size % candidate == 0 and (size == candidate or second in _BTREE_PAGES):
            return candidate
    return None


def _header(page: int, pages: int, mode: int) -> bytes:
    """A plain database header (SQLite's file format, section 1.3): no freelist, UTF-8."""
    fields = (
        *(1 if page == 65536 else page, mode, mode, 0, 64, 32, 32),  # page size .. fractions
        *(1, pages, 0, 0),  # change counter, page count, freelist trunk and count (none)
        *(1, 4, 0, 0, 1, 0, 0, 0),  # schema cookie, format 4, cache, vacuum, UTF-8, ...
        *(1, 3040001),  # version-valid-for (= change counter: the page count holds), version
    )
    return _MAGIC + struct.pack(">HBBBBBBIIIIIIIIIIII20xII", *fields)


def _with_new_header(path: Path) -> Path | None:
    """Copy ``path`` with a rebuilt 100-byte header (and its WAL); None if it cannot be done."""
    size = path.stat().st_size
    page = _page_size(path, size)
    if page is None:
        return None
    wal = Path(f"{path}-wal")
    mode = 2 if wal.exists() and wal.stat().st_size > 0 else 1
    header = _header(page, size // page, mode)
    copy = path.with_name(path.name + ".repaired")
    with os.fdopen(new_own_file(copy), "r+b") as out, open(path, "rb") as source:
        shutil.copyfileobj(source, out)
        out.seek(0)
        out.write(header)
    if mode == 2:
        with os.fdopen(new_own_file(Path(f"{copy}-wal")), "r+b") as out, open(wal, "rb") as log:
            shutil.copyfileobj(log, out)
    return copy


def _scan(conn: sqlite3.Connection, table: str, columns: str) -> tuple[list[Record], int]:
    """Every readable row of ``table`` in rowid order, skipping damaged ranges; and how many
    damaged ranges were skipped."""
    sql = f"SELECT rowid, {columns} FROM [{table}] NOT INDEXED WHERE rowid > ? ORDER BY rowid"
    rows: list[Record] = []
    last, skipped, batch = -_FAR, 0, 500
    while True:
        try:
            page = conn.execute(f"{sql} LIMIT {batch}", [last]).fetchall()
        except sqlite3.DatabaseError:
            if batch > 1:  # read up to the damage one row at a time
                batch = 1
                continue
            skipped += 1
            found = _next_readable(conn, sql, last)
            if found is None:
                return rows, skipped
            last, batch = found - 1, 500
            continue
        if not page:
            return rows, skipped
        rows.extend(r[1:] for r in page)
        last, batch = page[-1][0], 500


def _probe(conn: sqlite3.Connection, sql: str, start: int) -> bool:
    try:
        conn.execute(sql + " LIMIT 1", [start - 1]).fetchall()
        return True
    except sqlite3.DatabaseError:
        return False


def _next_readable(conn: sqlite3.Connection, sql: str, last: int) -> int | None:
    """The smallest rowid after ``last`` from which reading works again (None: none)."""
    low, step = max(last, -_FAR), 1
    high = low + step
    while not _probe(conn, sql, high):
        low, step = high, step * 2
        high = low + step
        if high > _FAR:
            return None
    while high - low > 1:  # low fails, high works
        middle = (low + high) // 2
        low, high = (low, middle) if _probe(conn, sql, middle) else (middle, high)
    return high


def _index_entries(conn: sqlite3.Connection) -> dict[int, str]:
    """Seq -> what the outbox's indexes know of each entry (read in both directions)."""
    known: dict[int, str] = {}
    queries = [
        ("SELECT seq, state FROM outbox INDEXED BY idx_outbox_state ORDER BY state {}, seq {}"),
        (
            "SELECT seq, resource || ' ' || obj_id FROM outbox INDEXED BY idx_outbox_obj "
            "ORDER BY resource {}, obj_id {}"
        ),
    ]
    for sql in queries:
        for direction in ("ASC", "DESC"):
            try:
                for seq, text in conn.execute(sql.format(direction, direction)):
                    known[int(seq)] = f"{known[int(seq)]}, {text}" if seq in known else str(text)
            except sqlite3.DatabaseError:
                continue
    return known


def _valid(row: Record) -> bool:
    seq, resource, op, obj_id, payload, *_rest = row
    state = row[6]
    try:
        parsed = json.loads(payload)
    except (TypeError, ValueError):
        return False
    ok_ints = isinstance(seq, int) and isinstance(obj_id, int)
    return (
        ok_ints
        and resource in RESOURCES
        and op in _OPS
        and state in _STATES
        and (isinstance(parsed, dict))
    )


def _outbox(conn: sqlite3.Connection, found: Recovered) -> None:
    """Read the queue's entries; those the user's queue holds too (they have an id there)
    are taken from it instead (``Recovered.unshared``)."""
    try:
        names = {r[1] for r in conn.execute("PRAGMA table_info(outbox)")}
    except sqlite3.DatabaseError:
        names = set()
    found.shared = "uid" in names if names else None
    columns = OUTBOX_COLUMNS + (", uid" if "uid" in names else ", NULL")
    rows, skipped = _scan(conn, "outbox", columns)
    read = {int(r[0]): r for r in rows if _valid(r)}
    for row in rows:
        if not _valid(row):
            found.lost.append(f"outbox entry {row[0]}: its content is damaged")
    known = _index_entries(conn)
    point = f"SELECT {columns} FROM outbox WHERE seq = ?"
    for seq in sorted(set(known) - set(read)):
        try:
            got = conn.execute(point, [seq]).fetchall()
        except sqlite3.DatabaseError:
            got = []
        if got and _valid(got[0]):
            read[seq] = got[0]
        else:
            found.lost.append(f"outbox entry {seq} ({known[seq]}): its page cannot be read")
    if skipped and not known:
        found.lost.append(
            f"{skipped} damaged range(s) of the outbox, whose indexes cannot be read either: "
            "changes queued there cannot be named"
        )
    found.entries = [read[s] for s in sorted(read)]


def _small(conn: sqlite3.Connection, table: str, columns: str, found: Recovered) -> list[Record]:
    try:
        rows, skipped = _scan(conn, table, columns)
    except sqlite3.DatabaseError as exc:  # the table itself is gone from the schema
        found.notes.append(f"{table} cannot be read ({exc})")
        return []
    if skipped:
        found.notes.append(f"{table}: {skipped} damaged range(s) skipped")
    return rows


def recover(path: Path) -> Recovered:
    """Read what can be read of the damaged mirror at ``path`` (which is left unchanged).

    What the damaged file queued since the queue became the user's is in the user's queue
    too, so only changes queued before that (an older balsam_sync's) can be lost with it.
    """
    found = Recovered()
    with _readable(path, found.notes) as conn:
        if conn is None:
            found.notes.append(
                f"{path} cannot be read as a database at all: queued changes come back from "
                "the user's queue (only changes an older balsam_sync queued here are lost)"
            )
            return found
        try:
            _outbox(conn, found)
        except sqlite3.DatabaseError as exc:
            found.lost.append(f"the outbox cannot be read at all ({exc}): its changes are lost")
        if found.shared is not False and found.lost:
            found.notes.append(
                f"{len(found.lost)} part(s) of the damaged queue cannot be read; every change "
                "in it is in the user's queue too, and comes back from there"
            )
            found.lost = []
        found.id_map = _small(conn, "id_map", "temp_id, resource, real_id", found)
        counters: dict[Any, Any] = dict(_small(conn, "counters", "name, value", found))
        value = counters.get("temp_id")
        found.temp_counter = value if isinstance(value, int) else None
        log = _small(conn, "sync_log", "key, value", found)
        found.sync_log = {str(k): str(v) for k, v in log if k in ("last_push", "last_error")}
    return found


# -- writing into a fresh mirror ---------------------------------------------------------------


def restore(store: Store, found: Recovered) -> None:
    """Write the recovered outbox, id map, counter and log (inside the caller's transaction)."""
    conn = store.conn
    marks = ", ".join("?" for _ in OUTBOX_COLUMNS.split(","))
    with store.write():
        conn.executemany(f"INSERT INTO outbox ({OUTBOX_COLUMNS}) VALUES ({marks})", found.unshared)
        conn.executemany(
            "INSERT OR REPLACE INTO id_map (temp_id, resource, real_id) VALUES (?, ?, ?)",
            found.id_map,
        )
        conn.executemany(
            "INSERT OR REPLACE INTO sync_log (key, value) VALUES (?, ?)",
            list(found.sync_log.items()),
        )
