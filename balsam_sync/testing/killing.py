"""A pull killed part-way: ``balsam-sync pull`` in a subprocess, killed with SIGKILL once the
mirror shows it stored a given share of the rows (for tests and benchmarks of a resumed pull).

The moment is chosen by what the pull did, not by the clock: the mirror is watched through a
client of its own (the plan of the first pull says how many rows each listing stored).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass

from ..client import Client

POLL_SECONDS = 0.02


@dataclass(frozen=True)
class KilledPull:
    """What the killed pull had done.

    Attributes:
        stored: rows its listings had stored when it was killed (as far as the watcher saw).
        share: ``stored`` over the rows it was to store.
        killed: it was killed; False: it ended on its own first (``returncode`` says how).
        returncode: the process's exit status (``-SIGKILL`` when killed).
        stderr: what it wrote there.
    """

    stored: int
    share: float
    killed: bool
    returncode: int
    stderr: str


def stored_rows(watcher: Client) -> int:
    """Rows the listings of the mirror's unfinished first or full pull stored (0: none)."""
    if not watcher.mirror_file.exists():
        return 0
    plan = watcher.mirror.pull_plan()
    return 0 if plan is None else sum(c.stored for c in plan.cursors)


def kill_pull_at(
    env: Mapping[str, str],
    watcher: Client,
    share: float,
    rows: int,
    timeout: float = 600.0,
) -> KilledPull:
    """Run ``balsam-sync pull`` with ``env`` and kill it with SIGKILL once ``watcher`` (a
    client of the same mirror) sees ``share`` of ``rows`` stored.

    Raises:
        TimeoutError: the pull neither reached the share nor ended within ``timeout``.
    """
    argv = [sys.executable, "-m", "balsam_sync.cli", "pull"]
    proc = subprocess.Popen(
        argv, env=dict(env), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + timeout
    stored = 0
    try:
        while proc.poll() is None:
            stored = stored_rows(watcher)
            if stored >= share * rows:
                os.kill(proc.pid, signal.SIGKILL)
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"the pull stored {stored} of {rows} rows in {timeout} s")
            time.sleep(POLL_SECONDS)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    killed = proc.returncode == -signal.SIGKILL
    if killed:  # what it stored between the last look and its end counts too
        stored = stored_rows(watcher)
    return KilledPull(stored, stored / max(1, rows), killed, proc.returncode, err)
