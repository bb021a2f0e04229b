"""Whether the server can be reached: a circuit breaker shared by threads and processes.

One failed attempt to reach the server (refused, reset, silent, or a gateway's 429/502/503/504)
marks it *down* for a back-off period that doubles with each further failure. While it is down,
writes are queued without a request and reads answer from the mirror; the first request after
the period is preceded by a short probe. Any answer marks it up again.

Processes that share a mirror share this state through a small file next to it (written
atomically, read only when it changed), so a script does not wait out a timeout that the daemon
has just waited out.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from .outcomes import Backoff

MAX_ERROR_CHARS = 300


@dataclass(frozen=True)
class LinkState:
    """A snapshot: consecutive failures, until when the server counts as down, the last error."""

    failures: int = 0
    down_until: float = 0.0  # seconds since the epoch
    error: str = ""

    @property
    def doubtful(self) -> bool:
        """The last attempt failed: probe before trusting the link again."""
        return self.failures > 0

    def down(self, now: float | None = None) -> bool:
        """Still inside the back-off period after a failure."""
        return self.failures > 0 and (time.time() if now is None else now) < self.down_until

    def describe(self) -> str:
        until = datetime.fromtimestamp(self.down_until, timezone.utc).strftime("%H:%M:%S UTC")
        return f"the server could not be reached ({self.error}); next attempt after {until}"


class Link:
    """The reachability of one server, as this process (and others on the mirror) saw it."""

    def __init__(self, backoff: Backoff | None = None) -> None:
        self.backoff = backoff or Backoff()
        self._lock = threading.Lock()
        self._state = LinkState()
        self._path: Path | None = None
        self._seen: tuple[int, int, int] | None = None

    def share(self, path: Path) -> None:
        """Keep the state in ``path`` too (next to the mirror), for other processes."""
        with self._lock:
            self._path = path
            self._refresh()
            if self._state.failures and self._seen is None:
                self._write()

    @property
    def state(self) -> LinkState:
        with self._lock:
            self._refresh()
            return self._state

    def down(self) -> bool:
        """True while the server counts as unreachable (requests would not be sent)."""
        return self.state.down()

    def mark_down(self, reason: str) -> LinkState:
        """Record a failed attempt; the back-off period starts now."""
        with self._lock:
            self._refresh()
            failures = self._state.failures + 1
            until = time.time() + self.backoff.delay(failures)
            self._state = LinkState(failures, until, reason[:MAX_ERROR_CHARS])
            self._write()
            return self._state

    def mark_up(self) -> None:
        """Record that the server answered."""
        with self._lock:
            self._refresh()
            if self._state.failures:
                self._state = LinkState()
                self._write()

    def reset(self) -> None:
        """Forget every failure (tests, or a user who knows the server is back)."""
        with self._lock:
            self._state = LinkState()
            self._write()

    # -- the shared file (callers hold the lock) ------------------------------------------------

    def _refresh(self) -> None:
        if self._path is None:
            return
        try:
            st = os.lstat(self._path)
        except OSError:
            return
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        if key == self._seen or not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
            return  # a link or another user's file is never read (the next write replaces it)
        try:
            fd = os.open(self._path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with os.fdopen(fd) as fh:
                data = json.loads(fh.read())
            self._state = LinkState(
                int(data["failures"]), float(data["down_until"]), str(data.get("error", ""))
            )
        except (OSError, ValueError, KeyError, TypeError):
            return  # half-written or foreign: keep what this process knows
        self._seen = key

    def _write(self) -> None:
        if self._path is None:
            return
        state = self._state
        text = json.dumps(
            {"failures": state.failures, "down_until": state.down_until, "error": state.error}
        )
        tmp = self._path.with_name(f"{self._path.name}.{os.getpid()}.tmp")
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)  # never written through: whatever was there goes
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
            os.replace(tmp, self._path)
            st = os.lstat(self._path)
            self._seen = (st.st_ino, st.st_mtime_ns, st.st_size)
