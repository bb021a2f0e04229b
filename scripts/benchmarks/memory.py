"""RSS measurement, and the child process P7 measures in (``python -m benchmarks.memory``).

It imports only the standard library and balsam_sync: whatever it imports counts in the
child's baseline and peak.
"""

from __future__ import annotations

import gc
import json
import os
import resource
import sys
import time
from pathlib import Path

import balsam_sync

# On Linux, ru_maxrss survives fork + exec: a child of the (large) benchmark process would start
# with its high-water mark. A small trampoline process in between starts the child from a
# ~10 MB address space, so the child's ru_maxrss is its own.
TRAMPOLINE = "import subprocess, sys; sys.exit(subprocess.run(sys.argv[1:]).returncode)"
MODULE = "benchmarks.memory"


def rss_mb() -> float:
    """Peak RSS of this process so far (ru_maxrss is in KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_mb(key: str) -> float:
    """VmRSS (now) or VmHWM (peak of this address space) from /proc/self/status, in MB."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_env(root: Path, extra: dict[str, str]) -> dict[str, str]:
    """The environment of a child run as ``-m benchmarks.memory``: this repository's
    ``scripts/`` (for the module) and root (for its balsam_sync) come first on its path."""
    paths = [str(root / "scripts"), str(root), os.environ.get("PYTHONPATH", "")]
    return {**os.environ, **extra, "PYTHONPATH": os.pathsep.join(p for p in paths if p)}


def open_mirror() -> None:
    """Open the mirror once (applying any pending migration), so P7 measures no migration."""
    client = balsam_sync.connect()
    _ = client.mirror
    client.close()


def iterate() -> None:
    """Iterate every cached job of the mirror in ``BALSAM_SYNC_HOME``; print what it took."""
    client = balsam_sync.connect()
    _ = client.mirror
    gc.collect()
    baseline = rss_mb()
    baseline_now = proc_status_mb("VmRSS")
    start = time.perf_counter()
    n = 0
    for job in client.Job.objects.offline().all().iterator():
        _ = job.state
        n += 1
    seconds = time.perf_counter() - start
    result = {
        "baseline_mb": baseline,
        "baseline_vmrss_mb": baseline_now,
        "peak_mb": rss_mb(),
        "peak_vmhwm_mb": proc_status_mb("VmHWM"),
        "rows": n,
        "seconds": seconds,
    }
    print(json.dumps(result))


def pull() -> None:
    """Pull into a fresh mirror in ``BALSAM_SYNC_HOME``; print what it took, peak RSS too."""
    client = balsam_sync.connect()
    _ = client.mirror
    gc.collect()
    baseline = rss_mb()
    start = time.perf_counter()
    report = client.pull()
    result = {
        "baseline_mb": baseline,
        "peak_mb": rss_mb(),
        "peak_vmhwm_mb": proc_status_mb("VmHWM"),
        "seconds": time.perf_counter() - start,
        "fetched": report.fetched,
        "bytes": report.bytes,
        "report": str(report),
    }
    print(json.dumps(result))


if __name__ == "__main__":
    {"open": open_mirror, "iterate": iterate, "pull": pull}[sys.argv[1]]()
