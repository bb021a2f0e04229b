"""P8: ``save()`` while the server cannot be reached, and the daemon's time to stop.

* ``save()`` of one job, 100 times in a row, right after the link went away: a refused port
  (the proxy in front of the real server is stopped) and a silent link (the proxy accepts and
  never answers). The first call pays for finding out; the others must return at once.
  Targets: median <= 5 ms, max <= 3 s (the first detection included).
* The daemon's time from SIGTERM to exit, mid-request on a silent link (its worst case) and
  idle between rounds. Target: <= 5 s.

``python scripts/bench.py --only P8`` runs it alone.
"""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import balsam_sync
from balsam_sync.testing.faultproxy import FaultProxy

from .context import Context
from .harness import ROOT, Row, Stat
from .server import register_user

CALLS = 100
MEDIAN_TARGET = 0.005
MAX_TARGET = 3.0
STOP_TARGET = 5.0


def new_user(api_root: str, home: Path) -> tuple[str, int]:
    """Register a user with one app (made through a client at ``home``-user, so the run's
    work folder holds it); return (token, app id)."""
    token = register_user(api_root, "p8").token
    client = balsam_sync.connect(api_root, token, home=str(home.with_name(home.name + "-user")))
    site = client.Site.objects.create(name=f"p8-{uuid.uuid4().hex[:6]}", path="/p8")
    app = client.App.objects.create(
        site_id=site.id, name="P8", serialized_class="txt", source_code="-"
    )
    client.close()
    return token, int(app.id or 0)


def saves_while_unreachable(
    api_root: str, home: Path, breaks: Callable[[FaultProxy], None]
) -> list[float]:
    """Seconds of each of ``CALLS`` saves, the first right after ``breaks`` cut the link."""
    token, app_id = new_user(api_root, home)
    with FaultProxy(api_root) as proxy:
        client = balsam_sync.connect(proxy.url, token, home=str(home))
        job = client.Job.objects.create(workdir="p8/0", app_id=app_id)
        breaks(proxy)
        seconds = []
        for n in range(CALLS):
            job.num_nodes = n + 2
            started = time.perf_counter()
            job.save()
            seconds.append(time.perf_counter() - started)
        assert job.num_nodes == CALLS + 1 and (client.status(check_server=False).pending or 0) > 0
        client.close()
    return seconds


@contextmanager
def daemon(proxy: FaultProxy, token: str, home: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALSAM_SYNC")}
    env.update(
        BALSAM_SYNC_API_ROOT=proxy.url,
        BALSAM_SYNC_TOKEN=token,
        BALSAM_SYNC_HOME=str(home),
        PYTHONPATH=str(ROOT),
    )
    log = home / "daemon.log"
    command = [sys.executable, "-m", "balsam_sync.cli", "daemon", "--interval", "0.5"]
    proc = subprocess.Popen([*command, "--log-file", str(log)], env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while not (log.exists() and "round 1:" in log.read_text()):
            if proxy.stats.faults["silent"] or time.monotonic() > deadline:
                break
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def time_to_stop(api_root: str, home: Path, silent: bool) -> float:
    """Seconds from SIGTERM to the daemon's exit (mid-request on a silent link, or idle)."""
    token, app_id = new_user(api_root, home)
    with FaultProxy(api_root) as proxy:
        queued = balsam_sync.connect(proxy.url, token, home=str(home), offline=True)
        jobs = [queued.Job(workdir=f"p8/{i}", app_id=app_id) for i in range(5)]
        queued.Job.objects.bulk_create(jobs)
        queued.close()
        proxy.set_silent(silent)
        with daemon(proxy, token, home) as proc:
            time.sleep(0.3)  # well inside its wait for a reply (silent) or for the next round
            started = time.perf_counter()
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(timeout=120)
            seconds = time.perf_counter() - started
    if code != 0:
        raise RuntimeError(f"the daemon exited with {code} after SIGTERM")
    return seconds


def measure(api_root: str, workdir: Path, reps: int = 3) -> dict[str, list[float]]:
    """Every P8 figure, in seconds."""
    results = {
        "refused": saves_while_unreachable(api_root, workdir / "refused", lambda p: p.stop()),
        "silent": saves_while_unreachable(
            api_root, workdir / "silent", lambda p: p.set_silent(True)
        ),
    }
    for name, silent in (("stop_silent", True), ("stop_idle", False)):
        results[name] = [
            time_to_stop(api_root, workdir / f"{name}-{i}", silent) for i in range(reps)
        ]
    return results


def run(ctx: Context) -> None:
    """Add the P8 rows to the run."""
    found = measure(ctx.opts.api_root, ctx.home("p8"), ctx.opts.reps_slow)
    for key, what in (("refused", "a refused port"), ("silent", "a silent link")):
        samples = found[key]
        r = Row(
            "P8",
            f"{CALLS} save() calls in a row, the server behind {what}",
            ours=Stat(samples),
            ours_label="per call",
            target=f"median ≤ {MEDIAN_TARGET * 1000:g} ms, max ≤ {MAX_TARGET:g} s",
        )
        r.met = statistics.median(samples) <= MEDIAN_TARGET and max(samples) <= MAX_TARGET
        r.ratio_text = f"max {max(samples):.2f} s (first call: {samples[0] * 1000:.0f} ms)"
        ctx.rows.append(r)
    for key, what in (("stop_silent", "mid-request, silent link"), ("stop_idle", "idle")):
        samples = found[key]
        r = Row(
            "P8",
            f"daemon: SIGTERM to exit, {what}",
            ours=Stat(samples),
            ours_label="stop",
            target=f"≤ {STOP_TARGET:g} s",
        )
        r.met = max(samples) <= STOP_TARGET
        ctx.rows.append(r)
