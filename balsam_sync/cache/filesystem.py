"""Is a folder on a network file system? SQLite's WAL needs node-local storage.

HPC home folders are often NFS, Lustre or GPFS, shared by every login node. SQLite's WAL mode
relies on shared memory between the processes using a file, which only works on one machine;
on a shared file system it can corrupt the mirror. So the mirror refuses such a folder when it
was chosen explicitly, and moves the default folder to node-local storage.
"""

from __future__ import annotations

import logging
import os
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
