"""Where the mirror may live: private folders and files, and node-local storage for SQLite.

Everything balsam_sync writes is private: files 0600 (``open_own``) in folders 0700
(``private_dir``). A folder that already existed keeps its mode unless it is one of ours.

A shared home is not trusted (other users may be able to write to it, as on many login nodes):
every file balsam_sync keeps is opened without following a symbolic link (``O_NOFOLLOW``) and
checked with ``fstat``; SQLite, which opens files by name, gets its files checked with
``lstat`` right before it connects and again after (``own_or_missing``, ``still_the_same``).
A link, or a file or folder of another user, where balsam_sync keeps its own raises
``UnsafeFile`` naming the path; a folder above the mirror that others can write to, or that
another user owns, is warned about once, as OpenSSH's ``StrictModes`` does.

Is a folder on a network file system? SQLite's WAL needs node-local storage.

HPC home folders are often NFS, Lustre or GPFS, shared by every login node. SQLite's WAL mode
relies on shared memory between the processes using a file, which only works on one machine;
on a shared file system it can corrupt the mirror. So the mirror refuses such a folder when it
was chosen explicitly, and moves the default folder to node-local storage.
"""

from __future__ import annotations

import errno
import fcntl
import grp
import logging
import os
import stat
from pathlib import Path
from typing import TextIO

from ..errors import MirrorError, UnsafeFile

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


def private_dir(folder: Path, home: Path | None = None) -> None:
    """Create ``folder`` (and missing parents) with mode 0700, or check the existing one.

    ``folder`` is balsam_sync's own: never a link, always ours, made 0700. ``home``, a folder
    above it (the mirrors' home folder), must be ours too, though it may be a link of ours.
    The folders above are warned about when others can write to them.

    Raises:
        UnsafeFile: a link, or another user's folder, where ours belongs.
        OSError: the folder cannot be made or used (mapped to ``MirrorError`` by callers).
    """
    if home is not None and os.path.lexists(home):
        _own_folder(home, link_ok=True)  # before anything is made in it
    missing = [p for p in [folder, *folder.parents] if not os.path.lexists(p)]
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    for made in missing:  # made now: 0700 whatever the umask
        if os.lstat(made).st_uid == os.geteuid():
            os.chmod(made, stat.S_IRWXU, follow_symlinks=False)
    if home is not None:
        _own_folder(home, link_ok=True)
    _own_folder(folder, link_ok=False)
    warn_loose_folders(folder.parent)


def _own_folder(folder: Path, *, link_ok: bool) -> None:
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode):
        if not link_ok or st.st_uid not in (os.geteuid(), 0):
            raise UnsafeFile(
                f"{folder} is a symbolic link{_made_by(st)}, where balsam_sync keeps its own "
                "folder: it is never followed. Remove it (or choose another BALSAM_SYNC_HOME)"
            )
        st = os.stat(folder)
    if not stat.S_ISDIR(st.st_mode):  # not a threat, merely unusable
        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(folder))
    if st.st_uid != os.geteuid():
        raise UnsafeFile(
            f"the folder {folder} belongs to another user (uid {st.st_uid}): balsam_sync keeps "
            "its files only in folders of yours. Choose another BALSAM_SYNC_HOME"
        )
    if not link_ok and stat.S_IMODE(st.st_mode) != 0o700:
        os.chmod(folder, stat.S_IRWXU, follow_symlinks=False)


def _made_by(st: os.stat_result) -> str:
    return "" if st.st_uid == os.geteuid() else f" made by another user (uid {st.st_uid})"


_warned: set[tuple[str, int, int]] = set()


def warn_loose_folders(folder: Path) -> None:
    """Warn (once per folder and mode) when others can write to ``folder`` or a folder above
    it, or another user owns one: they could replace what balsam_sync keeps below."""
    here = Path(os.path.realpath(folder))
    for current in [here, *here.parents]:
        try:
            st = os.stat(current)
        except OSError:
            return
        mode = stat.S_IMODE(st.st_mode)
        problem = None
        if st.st_uid not in (os.geteuid(), 0):
            problem = f"{current} belongs to another user (uid {st.st_uid})"
        elif _others_can_write(st):
            problem = f"others can write to {current} (mode {mode:04o}; `chmod go-w {current}`)"
        key = (str(current), mode, st.st_uid)
        if problem and key not in _warned:
            _warned.add(key)
            log.warning(
                "%s holds balsam_sync's files, but %s: they could replace what is kept there",
                folder,
                problem,
            )


def _others_can_write(st: os.stat_result) -> bool:
    """Writable by others, as OpenSSH's StrictModes judges it: a sticky folder (``/tmp``) is
    safe enough, and so is a group that is only the user (a user private group)."""
    if st.st_mode & stat.S_ISVTX:
        return False
    if st.st_mode & stat.S_IWOTH:
        return True
    return bool(st.st_mode & stat.S_IWGRP) and not _private_group(st.st_gid)


def _private_group(gid: int) -> bool:
    try:
        return gid == os.getegid() and not grp.getgrgid(gid).gr_mem
    except KeyError:
        return False


def open_own(path: Path, flags: int, mode: int = 0o600) -> int:
    """Open a file balsam_sync keeps (``O_NOFOLLOW``), check it and make it 0600; return the
    descriptor.

    Raises:
        UnsafeFile: ``path`` is a symbolic link, not a regular file, or another user's.
        OSError: it cannot be opened.
    """
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafeFile(_link_text(path)) from exc
        raise
    try:
        st = os.fstat(fd)
        _own_file(path, st)
        if stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
        # O_NONBLOCK only kept a planted FIFO from blocking the open; a file needs no such flag.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def new_own_file(path: Path) -> int:
    """Create ``path`` afresh as a file of ours (0600) and return it open for reading and
    writing; whatever was there, a planted link included, is removed, never written through.

    Raises:
        OSError: it cannot be made.
    """
    path.unlink(missing_ok=True)
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def own_or_missing(path: Path) -> os.stat_result | None:
    """``lstat`` of a file balsam_sync keeps, checked (None when there is none).

    Raises:
        UnsafeFile: a symbolic link, not a regular file, or another user's.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if stat.S_ISLNK(st.st_mode):
        raise UnsafeFile(_link_text(path))
    _own_file(path, st)
    return st


SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")
"""The files SQLite keeps beside a database, and opens by name (following links)."""


def check_database(path: Path) -> os.stat_result:
    """Check a SQLite database of ours, and its companions, before SQLite opens them by name;
    make the database 0600. Returns what was checked (for ``still_the_same``).

    Raises:
        UnsafeFile: a link, or another user's file, at the database or a companion.
        OSError: the database cannot be opened.
    """
    for suffix in SQLITE_COMPANIONS:
        own_or_missing(Path(f"{path}{suffix}"))
    # Never opened here: closing any descriptor of a file drops every POSIX lock this process
    # holds on it, and SQLite's locks of another connection of this process would go with it.
    checked = own_or_missing(path)
    if checked is None:
        raise FileNotFoundError(errno.ENOENT, "no such mirror file", str(path))
    if stat.S_IMODE(checked.st_mode) != 0o600:
        os.chmod(path, 0o600)  # a regular file of ours (checked just now, and after opening)
    return checked


def still_the_same(path: Path, before: os.stat_result | None) -> None:
    """Check, after SQLite opened ``path`` by name, that it opened the file checked before.

    Raises:
        UnsafeFile: the name now holds another file, a link, or another user's file.
    """
    now = own_or_missing(path)
    if before is not None and (
        now is None or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino)
    ):
        raise UnsafeFile(
            f"{path} was replaced while it was being opened: another process "
            "(or user) changes the mirror folder. Check who can write to it"
        )


def _own_file(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise UnsafeFile(f"{path} is not a regular file: remove it")
    if st.st_uid != os.geteuid():
        raise UnsafeFile(
            f"{path} belongs to another user (uid {st.st_uid}), where balsam_sync keeps its own "
            "file: it is never used (that user could read or change it). Remove it"
        )


def _link_text(path: Path) -> str:
    return (
        f"{path} is a symbolic link where balsam_sync keeps its own file: it is never followed "
        "(it may point into someone else's file). Remove it"
    )


def append_own(path: Path) -> TextIO:
    """Open ``path`` for appending text: a file of ours (0600, in a 0700 folder when
    balsam_sync makes the folder), never reached through a link.

    Raises:
        UnsafeFile: a link, or another user's file, at ``path``.
        OSError: it cannot be opened.
    """
    if not path.parent.exists():
        private_dir(path.parent)
    return os.fdopen(open_own(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND), "a")
