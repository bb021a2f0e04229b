"""An exclusive lock file shared by threads and processes on one node (``flock``).

Each ``acquire`` opens the file anew, so two threads of one process exclude each other as two
processes do. The lock dies with its holder: a killed replayer never leaves it stuck. The file
is opened as every file balsam_sync keeps is (``filesystem.open_own``): a link planted in its
place is never followed, so the pid written into it cannot land in someone else's file.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from .filesystem import open_own


class FileLock:
    """``with FileLock(path, wait=5):`` — raises ``TimeoutError`` when not acquired in time."""

    def __init__(self, path: Path, wait: float = 0.0) -> None:
        self.path = path
        self.wait = wait
        self._fd: int | None = None

    def acquire(self, wait: float | None = None, stopped: Callable[[], bool] | None = None) -> bool:
        """Try to take the lock within ``wait`` seconds (or until ``stopped()``); True if taken.

        Raises:
            UnsafeFile: a link, or another user's file, at the lock's path.
        """
        deadline = time.monotonic() + (self.wait if wait is None else wait)
        fd = open_own(self.path, os.O_RDWR | os.O_CREAT)
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if time.monotonic() >= deadline or (stopped is not None and stopped()):
                    os.close(fd)
                    return False
                time.sleep(0.02)
                continue
            with contextlib.suppress(OSError):  # the pid is a hint; a full disk must not matter
                os.ftruncate(fd, 0)
                os.write(fd, str(os.getpid()).encode())
            self._fd = fd
            return True

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        if not self.acquire():
            raise TimeoutError(f"{self.path} is held by another process")
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()
