"""``balsam-sync salvage`` and ``rebuild``: replace a mirror, keeping (or not) its queue.

Salvage moves the damaged file aside (kept, mode 0600, for inspection), recovers every
readable queued change, dead letter and provisional id into a fresh mirror, lays the local
view back (objects created offline reappear with their provisional ids), and pulls again.
The report says exactly what could not be recovered. Both hold the daemon and replay locks,
so no other process of this machine uses the mirror meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from ..cache import FileLock, Mirror, companion, guard, move_aside, recover
from ..config import Settings
from ..errors import BalsamSyncError, MirrorError
from .daemon import DaemonAlreadyRunning
from .pull import PullReport


class MirrorHost(Protocol):
    """What salvage needs of its owner (a ``Client``): the mirror file, reopening it, a pull."""

    settings: Settings

    @property
    def mirror_file(self) -> Path: ...

    @property
    def mirror(self) -> Mirror: ...

    def drop_mirror(self) -> None: ...

    def pull(self) -> PullReport: ...


@dataclass
class SalvageReport:
    """What a salvage did.

    Attributes:
        damaged: where the damaged file was moved.
        pending / in_flight / dead: recovered entries by state.
        lost: what could not be recovered, one line each (empty: nothing was lost).
        notes: other things worth knowing (a rebuilt header, skipped bookkeeping rows).
        pulled: the pull that refilled the mirror (None: offline, or it failed).
        pull_error: why the pull failed, if it did.
    """

    damaged: Path
    pending: int = 0
    in_flight: int = 0
    dead: int = 0
    lost: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    pulled: PullReport | None = None
    pull_error: str | None = None


@contextmanager
def exclusive(path: Path) -> Iterator[None]:
    """Hold the daemon and replay locks of the mirror at ``path``.

    Raises:
        DaemonAlreadyRunning: a daemon or a push is using the mirror.
    """
    locks = [FileLock(companion(path, ".daemon.lock")), FileLock(companion(path, ".replay.lock"))]
    try:
        with guard(path):
            taken = all(lock.acquire(0) for lock in locks)
        if not taken:
            raise DaemonAlreadyRunning(f"a daemon or a push is using {path}: stop it first")
        yield
    finally:
        for lock in locks:
            lock.release()


def salvage(client: MirrorHost, *, pull: bool = True) -> SalvageReport:
    """Move the mirror aside, rebuild it with every readable queued change, and pull again.

    Raises:
        MirrorError: there is no mirror file, or the fresh mirror cannot be written.
        DaemonAlreadyRunning: a daemon or a push is using the mirror.
    """
    path = client.mirror_file
    if not path.exists():
        raise MirrorError(f"there is no mirror at {path}: nothing to salvage")
    with exclusive(path):
        client.drop_mirror()
        damaged = move_aside(path)
        found = recover(damaged)
        client.mirror.restore(found)
        counts = client.mirror.queue_counts()  # the user's queue, and what only the file held
    report = SalvageReport(damaged, lost=found.lost, notes=found.notes)
    report.pending, report.in_flight, report.dead = counts.pending, counts.in_flight, counts.dead
    if pull and not client.settings.offline:
        try:
            report.pulled = client.pull()
        except BalsamSyncError as exc:
            report.pull_error = str(exc)
    return report


def delete_mirror(client: MirrorHost) -> Path:
    """Delete the mirror file (and its WAL) for good; return where it was."""
    path = client.mirror_file
    with exclusive(path):
        client.drop_mirror()
        with guard(path):
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
    return path
