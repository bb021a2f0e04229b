"""Open (or create) the mirror file of one user on one server, safely.

One SQLite file per (server, user) under the home folder: folder 0700, file 0600 (its WAL and
shared-memory files inherit that mode), WAL journal, a busy timeout so concurrent processes
wait instead of failing. The file records whose it is; opening it for another server or user
raises ``MirrorError``. A schema older than this code is migrated on open.

A new mirror is built whole under a temporary name and then moved into place, so a complete
mirror is never empty: a zero-length file at the mirror's path was cut short or truncated (and
whatever it held is gone), and opening it raises ``MirrorDamaged`` instead of silently starting
over. Every SQLite or file-system error is mapped by ``cache/failures.py``.
"""

from __future__ import annotations

import hashlib
import marshal
import os
import re
import secrets
import socket
import sqlite3
import sys
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from sqlite_utils import Database

from ..config import server_key
from ..errors import MirrorBusy, MirrorDamaged, MirrorError
from .failures import SALVAGE, MirrorConnection, guard
from .filesystem import check_database, choose_home, private_dir, still_the_same
from .journal import Journal
from .lock import FileLock
from .mirror import Clock, Mirror
from .schema import SCHEMA_VERSION, clear_packed, migrations
from .store import Store

BUSY_TIMEOUT_MS = 60_000
PACKED_FORMAT = f"marshal {marshal.version}, python {sys.version_info[0]}.{sys.version_info[1]}"
"""Packed row copies are only read by the Python that wrote them (see cache/schema.py)."""
CACHE_KIB = 65_536
"""SQLite page cache per connection: index walks of large mirrors stay in memory."""


@dataclass(frozen=True)
class Identity:
    """Whose mirror a file is: the server and the user (from the token's claims)."""

    api_root: str
    user: str

    def __post_init__(self) -> None:
        # One server under any spelling of its URL (see config.server_key).
        object.__setattr__(self, "api_root", server_key(self.api_root))

    @property
    def file_name(self) -> str:
        parts = urlsplit(self.api_root)
        host = re.sub(r"[^A-Za-z0-9.-]+", "_", parts.netloc or "server")
        user = re.sub(r"[^A-Za-z0-9.-]+", "_", self.user)[:40]
        digest = hashlib.sha256(f"{self.api_root}\n{self.user}".encode()).hexdigest()[:10]
        return f"{host}-{user}-{digest}.sqlite3"


def queue_path(home: Path, identity: Identity) -> Path:
    """Where the user's queue of ``identity`` is kept under ``home`` (a folder of records)."""
    return home / "queues" / identity.file_name.removesuffix(".sqlite3")


def mirror_base(home: Path, identity: Identity) -> Path:
    """The mirror's name without its generation: its companions' (locks, log) start so."""
    return home / "mirrors" / identity.file_name.removesuffix(".sqlite3")


def mirror_path(home: Path, identity: Identity) -> Path:
    """The mirror file of ``identity`` under ``home``: the one there is (nothing is made).

    Each mirror file has a generation in its name (``<name>.<generation>.sqlite3``), so a
    process still holding a mirror whose folder was purged under it can never touch the files
    of the one made afterwards: SQLite deletes a closing database's ``-wal`` and ``-shm`` by
    name. Without one yet, this is the name of a mirror of the older layout.
    """
    base = mirror_base(home, identity)
    made = _generations(base)
    return made[-1] if made else base.with_name(identity.file_name)


def _generations(base: Path) -> list[Path]:
    """The mirror files of ``base`` there are, oldest first."""
    pattern = re.compile(re.escape(base.name) + r"\.[0-9a-f]{8}\.sqlite3")
    try:
        names = [n for n in os.listdir(base.parent) if pattern.fullmatch(n)]
    except FileNotFoundError:
        return []
    found = [base.parent / n for n in names]
    return sorted(found, key=lambda p: (p.stat().st_mtime_ns if p.exists() else 0, p.name))


def locate(home: Path, identity: Identity, explicit_home: bool = True) -> Path:
    """Where the mirror of ``identity`` is (or would be) kept; nothing is created."""
    return mirror_path(choose_home(home, explicit_home)[0], identity)


class MirrorMissing(MirrorError):
    """``open_mirror(create=False)`` found no mirror file."""


def open_mirror(
    home: Path,
    identity: Identity,
    explicit_home: bool = True,
    create: bool = True,
    clock: Clock | None = None,
    queue_home: Path | None = None,
    node: str | None = None,
) -> Mirror:
    """Open the mirror of ``identity`` under ``home``, creating and migrating it as needed.

    The user's queue lives in ``queue_home`` (default: ``home`` as given, before a network
    file system sends the mirror to node-local storage), where every login node sees it;
    ``node`` names this node in it (default: the host name).

    Raises:
        MirrorError: the folder cannot be used, the file belongs to another server or user,
            or was written by a newer balsam_sync (``MirrorDamaged``: the file is damaged;
            ``MirrorFull``: the disk is full; ``MirrorMissing``: none, and ``create`` is off).
    """
    shared = queue_home or home
    home, wal = choose_home(home, explicit_home)
    base = mirror_base(home, identity)
    with guard(home):
        private_dir(base.parent, home)
    with guard(shared):
        journal = Journal(queue_path(shared, identity), node or socket.gethostname(), shared)
    with guard(base):
        # Processes opening one new mirror together would race on its creation and the
        # migrations (SQLite answers "locked" at once there): one opens it at a time.
        opening = FileLock(base.with_name(base.name + ".open.lock"))
        if not opening.acquire(BUSY_TIMEOUT_MS / 1000):
            raise MirrorBusy(f"another process keeps {base} busy: try again")
        try:
            path = mirror_path(home, identity)
            if not path.exists():
                if not create:
                    raise MirrorMissing(f"there is no mirror at {path} yet")
                path = base.with_name(f"{base.name}.{secrets.token_hex(4)}.sqlite3")
                with guard(path):
                    _create(path, identity, wal)
            with guard(path):
                return _open(path, identity, wal, journal, clock)
        finally:
            opening.release()


def _connect(path: Path, wal: bool) -> sqlite3.Connection:
    conn = sqlite3.connect(
        str(path),
        timeout=BUSY_TIMEOUT_MS / 1000,
        isolation_level=None,
        check_same_thread=False,
        factory=MirrorConnection,
    )
    conn.path = path
    try:
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        conn.execute(f"PRAGMA journal_mode = {'WAL' if wal else 'DELETE'}")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    except BaseException:
        conn.close()
        raise
    return conn


def _create(path: Path, identity: Identity, wal: bool) -> None:
    """Build a new mirror under a temporary name, then move it into place whole."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.new")
    parts = [Path(f"{tmp}{suffix}") for suffix in ("", "-wal", "-shm", "-journal")]
    try:
        for part in parts:
            part.unlink(missing_ok=True)
        os.close(os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        conn = _connect(tmp, wal)
        try:
            _migrate_and_stamp(Store(Database(conn)), identity, {})
        finally:
            conn.close()  # the last close checkpoints the WAL into the file
        os.replace(tmp, path)
    finally:
        for part in parts:
            part.unlink(missing_ok=True)


def _open(
    path: Path, identity: Identity, wal: bool, journal: Journal, clock: Clock | None
) -> Mirror:
    checked = check_database(path)  # SQLite opens it by name: never a link, never another's
    if checked.st_size == 0:
        raise MirrorDamaged(
            f"the mirror {path} is empty (0 bytes): it was cut short or truncated, and whatever "
            f"it held is gone (a mirror is never created empty). {SALVAGE}"
        )
    conn = _connect(path, wal)
    try:
        still_the_same(path, checked)
        store = Store(Database(conn))
        meta = _check_identity(store.db, path, identity)
        if migrations.pending(store.db) or meta != _stamp_of(identity):
            _migrate_and_stamp(store, identity, meta)
    except BaseException:
        conn.close()
        raise
    return Mirror(path, store, journal, clock)


def _check_identity(db: Database, path: Path, identity: Identity) -> dict[str, str]:
    """Refuse a file of another user, server or newer schema; return its stamp."""
    if "meta" not in db.table_names():
        return {}
    meta = {row["key"]: row["value"] for row in db["meta"].rows}
    owner = (meta.get("api_root"), meta.get("user"))
    if owner != (None, None) and owner != (identity.api_root, identity.user):
        raise MirrorError(
            f"{path} is the mirror of user {owner[1]!r} on {owner[0]!r}, not of "
            f"{identity.user!r} on {identity.api_root!r}; a mirror never mixes users or servers"
        )
    version = int(meta.get("schema_version", "0") or 0)
    if version > SCHEMA_VERSION:
        raise MirrorError(
            f"{path} was written by a newer balsam_sync (schema {version} > {SCHEMA_VERSION}); "
            "upgrade balsam_sync or use another BALSAM_SYNC_HOME"
        )
    return meta


def _stamp_of(identity: Identity) -> dict[str, str]:
    return {
        "api_root": identity.api_root,
        "user": identity.user,
        "schema_version": str(SCHEMA_VERSION),
        "packed_format": PACKED_FORMAT,
    }


def _migrate_and_stamp(store: Store, identity: Identity, meta: dict[str, str]) -> None:
    """Migrate and stamp in one write transaction taken up front (``Store.write``).

    Other processes may be writing the mirror (a daemon, a script): a deferred transaction that
    reads the schema and then writes would fail at once with "locked" when they commit in
    between, while a write lock taken up front waits for the busy timeout instead.
    """
    db = store.db
    with store.write():
        migrations.apply(db)
        if meta.get("packed_format", PACKED_FORMAT) != PACKED_FORMAT:
            clear_packed(db)
        rows = [{"key": k, "value": v} for k, v in _stamp_of(identity).items()]
        db["meta"].upsert_all(rows, pk="key")  # type: ignore[union-attr]
