"""The user's queue as files in a folder every login node sees, written once, never in place.

The mirror (SQLite, on node-local storage) can be rebuilt from the server; what the user queued
cannot. So every change a user makes, and every step of its delivery, is also published here,
in the user's home folder (NFS, Lustre or GPFS on most facilities), the Maildir way: a record
is one small JSON file, written whole under a temporary name, flushed to disk, and published
by an atomic rename into ``new/``. No file is ever rewritten; reading and writing records needs
no lock and no shared memory, and a reader never sees half a record.

**Order.** A record is named ``<time>-<node>-<pid>-<counter>.json``, where the time is the
larger of the writer's clock and one past the newest record it has read (a Lamport clock): a
change made after another was seen sorts after it, whatever the nodes' clocks say.

**One sender.** Sending needs one sender at a time across nodes (two would reorder an object's
changes, or send a create twice). The sender holds a lease: a file made with an atomic
``link`` (two nodes can never both make it), renewed while it sends, and taken over only once
it has gone stale by the file server's own clock (the lease's modification time against a
fresh probe file's), so nodes whose clocks disagree still agree on staleness.

**Provisional ids** are unique across nodes: a mirror takes a block of them by making the
block's file with an atomic ``link``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .filesystem import private_dir
from .lock import FileLock

log = logging.getLogger(__name__)

ID_BLOCK = 4096
"""Provisional ids per block: block k holds -(k * ID_BLOCK + 1) .. -((k + 1) * ID_BLOCK)."""
LEASE_SECONDS = 60.0
"""A sender's lease not renewed for this long (by the file server's clock) may be taken over
by another node (on the lease's own node, as soon as its process is gone); the environment's
``BALSAM_SYNC_LEASE_SECONDS`` changes it. The holder renews it six times as often."""


def lease_seconds() -> float:
    return float(os.environ.get("BALSAM_SYNC_LEASE_SECONDS") or LEASE_SECONDS)


_NAME = re.compile(r"^(\d{20})-([A-Za-z0-9_.-]{1,64})-(\d+)-(\d+)\.json$")


@dataclass(frozen=True)
class Record:
    """One published record: its name (the order) and what it says."""

    name: str
    kind: str
    node: str
    body: dict[str, Any]


def safe_node(name: str) -> str:
    """A node name as it may appear in a file name."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)[:64] or "node"


class Journal:
    """The queue folder of one user on one server.

    Args:
        folder: the folder (created private, 0700).
        home: the folder above it that must be the user's own (never another user's).
        node: this node's name (the host name by default, see ``config``).
    """

    def __init__(self, folder: Path, node: str, home: Path | None = None) -> None:
        self.folder = folder
        self.node = safe_node(node)
        self.new = folder / "new"
        self.tmp = folder / "tmp"
        self.ids = folder / "ids"
        private_dir(folder, home)  # 0700, never through a link, never another user's
        for part in (self.new, self.tmp, self.ids):
            private_dir(part)
        self._clock = 0
        self._counter = 0
        self._lock = threading.Lock()
        self._lease: _Lease | None = None

    # -- records -----------------------------------------------------------------------------

    def publish(self, kind: str, body: dict[str, Any]) -> str:
        """Write one record, durably, and return its name (once this returns, every node can
        read it)."""
        with self._lock:
            self._clock = max(time.time_ns(), self._clock + 1)
            self._counter += 1
            name = f"{self._clock:020d}-{self.node}-{os.getpid()}-{self._counter}.json"
        data = json.dumps({"kind": kind, "node": self.node, **body}).encode()
        tmp = self.tmp / f"{name}.{uuid.uuid4().hex[:8]}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, self.new / name)
        _sync_folder(self.new)
        return name

    def names(self) -> list[str]:
        """The published records, in order."""
        try:
            found = [n for n in os.listdir(self.new) if _NAME.match(n)]
        except FileNotFoundError:
            return []
        return sorted(found)

    def read(self, name: str) -> Record | None:
        """A published record (None: it was removed since, or cannot be read)."""
        self.observe(name)
        try:
            fd = os.open(self.new / name, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            return None
        try:
            with os.fdopen(fd, "rb") as fh:
                body = json.loads(fh.read())
        except (OSError, ValueError) as exc:
            log.warning("queue record %s cannot be read (%s): skipped", name, exc)
            return None
        if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
            log.warning("queue record %s is not a record: skipped", name)
            return None
        return Record(name, body.pop("kind"), str(body.pop("node", "?")), body)

    def observe(self, name: str) -> None:
        """A record was seen: later records of this process sort after it."""
        found = _NAME.match(name)
        if found:
            with self._lock:
                self._clock = max(self._clock, int(found.group(1)))

    def remove(self, names: list[str]) -> None:
        """Delete settled records (compaction); a missing one is no error."""
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.new / name)

    # -- provisional ids ---------------------------------------------------------------------

    def take_id_block(self) -> int:
        """Claim a block of provisional ids no other mirror of this user will use."""
        taken = [int(n) for n in os.listdir(self.ids) if n.isdigit()]
        block = max(taken, default=-1) + 1
        while not _make_once(self.ids / str(block), self.tmp, self.node):
            block += 1
        return block

    # -- the sender's lease ------------------------------------------------------------------

    def sender(self, local: FileLock) -> SenderLock:
        """The lock a sender holds: ``local`` (one process of this node) and the lease (one
        node)."""
        return SenderLock(local, _Lease(self))


class SenderLock:
    """One sender at a time: a lock of this node's processes, then the lease of the nodes."""

    def __init__(self, local: FileLock, lease: _Lease) -> None:
        self.local = local
        self.lease = lease

    def acquire(self, wait: float, stopped: Callable[[], bool] | None = None) -> bool:
        """Take both within ``wait`` seconds (or until ``stopped()``); True if taken."""
        deadline = time.monotonic() + wait
        never: Callable[[], bool] = lambda: False  # noqa: E731
        stop = stopped or never
        if not self.local.acquire(wait, stop):
            return False
        if self.lease.acquire(max(0.0, deadline - time.monotonic()), stop):
            return True
        self.local.release()
        return False

    def release(self) -> None:
        self.lease.release()
        self.local.release()

    @property
    def held(self) -> bool:
        return self.local.held

    def still_held(self) -> bool:
        """Whether no other node took the lease over (a sender checks before each request)."""
        return self.lease.held()


class _Lease:
    """The sender's lease: ``lease`` in the queue folder, renewed by a thread while held."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self.path = journal.folder / "lease"
        self.token = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait: float, stopped: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + wait
        self.token = f"{self.journal.node} {os.getpid()} {uuid.uuid4().hex}"
        self._stop = threading.Event()
        while True:
            # Not flushed to disk: a lease never outlives a crash of its node (its holder is
            # gone then, so it is stale), and an fsync here would cost every online write.
            if _make_once(self.path, self.journal.tmp, self.token, durable=False):
                self._thread = threading.Thread(
                    target=self._renew, name="balsam-sync-lease", daemon=True
                )
                self._thread.start()
                return True
            stale = self._stale()
            if stale is not None:
                self._take_over(stale)
                continue
            if time.monotonic() >= deadline or stopped():
                return False
            time.sleep(0.05)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._holder() == self.token:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    def _renew(self) -> None:
        while not self._stop.wait(max(0.05, lease_seconds() / 6)):
            if self._holder() != self.token:
                log.error("the sending lease %s was taken over: this sender stops", self.path)
                return
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def _holder(self) -> str | None:
        try:
            return self.path.read_text()
        except OSError:
            return None

    def held(self) -> bool:
        """Whether this lease is still ours (not taken over meanwhile)."""
        return bool(self.token) and self._holder() == self.token

    def _stale(self) -> str | None:
        """The token of a lease whose holder is gone (a process of this node that no longer
        runs, or any holder that has not renewed it for ``LEASE_SECONDS``); None if none."""
        token = self._holder()
        try:
            held = os.stat(self.path, follow_symlinks=False).st_mtime
        except FileNotFoundError:
            return None
        if token is None:
            return None
        parts = token.split()
        if len(parts) == 3 and parts[0] == self.journal.node and parts[1].isdigit():
            try:
                os.kill(int(parts[1]), 0)
            except ProcessLookupError:
                return token
            except PermissionError:
                pass
        now = _server_time(self.journal.tmp)
        return token if now - held > lease_seconds() else None

    def _take_over(self, stale: str) -> None:
        """Move the stale lease aside (one taker succeeds: the rename is atomic). A taker that
        moved a fresh lease instead (another taker's, made meanwhile) puts it back."""
        aside = self.journal.tmp / f"stale-lease.{uuid.uuid4().hex}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        try:
            moved = aside.read_text()
        except OSError:
            moved = stale
        if moved != stale:
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
        else:
            log.warning("took over a sending lease whose holder is gone (%s)", stale)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(aside)


def _make_once(path: Path, tmp_folder: Path, content: str, durable: bool = True) -> bool:
    """Make ``path`` holding ``content`` unless it exists; True when this call made it
    (``durable``: its content is flushed to disk first).

    ``link`` is atomic on every file system (NFS included) and fails when the target exists;
    the link count tells the truth even if the server answered a retransmitted request.
    """
    tmp = tmp_folder / f"claim.{uuid.uuid4().hex}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, content.encode())
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)
        made = True
    except FileExistsError:
        made = os.stat(tmp).st_nlink == 2
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return made


def _server_time(folder: Path) -> float:
    """The file server's clock now: the modification time of a file written just now."""
    probe = folder / f"probe.{uuid.uuid4().hex}"
    fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)


def _sync_folder(folder: Path) -> None:
    """Make a rename into ``folder`` durable (where the file system allows it)."""
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
