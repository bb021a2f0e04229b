"""Where the mirror may live: private folders and files, and node-local storage for SQLite.

Everything balsam_sync writes is private: files 0600 (``private_file``) in folders 0700
(``private_dir``). A folder that already existed keeps its mode unless it is one of ours.

Is a folder on a network file system? SQLite's WAL needs node-local storage.

HPC home folders are often NFS, Lustre or GPFS, shared by every login node. SQLite's WAL mode
relies on shared memory between the processes using a file, which only works on one machine;
on a shared file system it can corrupt the mirror. So the mirror refuses such a folder when it
was chosen explicitly, and moves the default folder to node-local storage.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

from ..errors import MirrorError

log = logging.getLogger(__name__)

NETWORK_FS = frozenset(
    {
        "nfs",
        "nfs4",
        "lustre",
        "gpfs",
        "cifs",
        "smb3",
        "smbfs",
        "beegfs",
        "ceph",
        "glusterfs",
        "fuse.glusterfs",
        "fuse.sshfs",
        "panfs",
        "afs",
        "9p",
    }
)
ENV_ALLOW = "BALSAM_SYNC_ALLOW_NETWORK_FS"


def filesystem_type(path: Path, mountinfo: str = "/proc/self/mountinfo") -> str | None:
    """The type of the file system holding ``path`` (None when it cannot be told)."""
    target = path.resolve(strict=False)
    best, kind = -1, None
    try:
        with open(mountinfo) as fh:
            lines = fh.readlines()
    except OSError:
        return None
    for line in lines:
        fields = line.split()
        if "-" not in fields:
            continue
        point = fields[4].replace("\\040", " ")
        fstype = fields[fields.index("-") + 1]
        inside = str(target) == point or str(target).startswith(point.rstrip("/") + "/")
        if inside and len(point) > best:
            best, kind = len(point), fstype
    return kind


def on_network_fs(path: Path) -> bool:
    return (filesystem_type(path) or "") in NETWORK_FS


def choose_home(home: Path, explicit: bool) -> tuple[Path, bool]:
    """Return (folder for the mirror, whether WAL may be used there).

    Raises:
        MirrorError: an explicitly chosen folder is on a network file system (and
            ``BALSAM_SYNC_ALLOW_NETWORK_FS=1`` does not accept that without WAL).
    """
    if not on_network_fs(home):
        return home, True
    if os.environ.get(ENV_ALLOW) == "1":
        log.warning("%s is on a network file system: the mirror runs without WAL", home)
        return home, False
    if explicit:
        raise MirrorError(
            f"{home} is on a network file system ({filesystem_type(home)}); SQLite's WAL is not "
            f"safe there. Point BALSAM_SYNC_HOME at node-local storage (e.g. /var/tmp), or set "
            f"{ENV_ALLOW}=1 to use it without WAL (slower, one process at a time)"
        )
    local = Path("/var/tmp") / f"balsam-sync-{os.getuid()}"
    log.warning("%s is on a network file system: keeping the mirror in %s", home, local)
    return local, True


def private_dir(folder: Path) -> None:
    """Create ``folder`` (and missing parents) with mode 0700; make an existing one 0700.

    Raises:
        OSError: the folder cannot be made or used (mapped to ``MirrorError`` by callers).
    """
    missing = [p for p in [folder, *folder.parents] if not p.exists()]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for made in [folder, *missing]:
        if made.stat().st_uid == os.getuid() and stat.S_IMODE(made.stat().st_mode) != 0o700:
            os.chmod(made, stat.S_IRWXU)


def private_file(path: Path) -> None:
    """Make sure ``path`` exists with mode 0600 (in a 0700 folder when balsam_sync makes it)."""
    if not path.parent.exists():
        private_dir(path.parent)
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
    if path.stat().st_uid == os.getuid():
        os.chmod(path, stat.S_IRUSR | stat.S_IWUSR)
