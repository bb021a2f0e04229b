"""P8: writes while the server is unreachable or busy, and the daemon's time to stop.

Writes tell a link that is down from a busy server by what the network says (see
``balsam_sync/remote/transport/waiting.py``):

* ``save()`` of one job, 100 times in a row, right after the link went away: a refused port
  (the proxy in front of the real server is stopped), a host that is gone (the proxy's
  listener answers no connect) and a silent peer (the proxy accepts and never answers). The
  first call pays for finding out: at most 3 s when nothing answers at the network level, at
  most ``write_wait`` + 1 s for a peer that took the request; the others return at once
  (median <= 5 ms). Afterwards every change must reach the server exactly once.
* A busy server (every reply 4 s late): an online ``create()`` must return the server's id.
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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import balsam_sync
from balsam_sync.testing.faultproxy import FaultPlan, FaultProxy

from .context import Context
from .harness import ROOT, Row, Stat
from .server import register_user

CALLS = 100
MEDIAN_TARGET = 0.005
MAX_TARGET = 3.0  # nothing answers at the network level
WRITE_WAIT = 10.0  # the default setting: a peer that took the request is waited for this long
STOP_TARGET = 5.0
BUSY_DELAY = 4.0
BUSY_CREATES = 3


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


def saves_while_unreachable(api_root: str, home: Path, how: str) -> list[float]:
    """Seconds of each of ``CALLS`` saves by a client started right after the link went away
    ``how`` ("refused", "gone" or "silent"; so it holds no open connection); then the link
    comes back and every change must reach the server exactly once."""
    token, app_id = new_user(api_root, home)
    proxy = FaultProxy(api_root).start()
    setup = balsam_sync.connect(proxy.url, token, home=str(home))
    job_id = setup.Job.objects.create(workdir="p8/0", app_id=app_id).id
    setup.close()
    port = proxy.port
    if how == "refused":
        proxy.stop()
    elif how == "gone":
        proxy.set_accepting(False)
    else:
        proxy.set_silent(True)
    client = balsam_sync.connect(proxy.url, token, home=str(home))
    job = client.Job.objects.offline().get(id=job_id)
    seconds = []
    for n in range(CALLS):
        job.num_nodes = n + 2
        started = time.perf_counter()
        job.save()
        seconds.append(time.perf_counter() - started)
    assert job.num_nodes == CALLS + 1 and (client.status(check_server=False).pending or 0) > 0
    proxy.stop()
    with FaultProxy(api_root, listen_port=port):  # the link is back
        client.transport.link.reset()
        client.push(lock_wait=30)
        delivered(client, job_id, CALLS + 1)
    client.close()
    return seconds


def delivered(client: balsam_sync.Client, job_id: int | None, num_nodes: int) -> None:
    """Raise unless the server holds the last change and the queue is empty."""
    row = client.Job.objects.online().get(id=job_id)
    left = client.status(check_server=False).pending or 0
    if row.num_nodes != num_nodes or left:
        raise RuntimeError(f"not delivered: num_nodes {row.num_nodes}, {left} still queued")


def creates_while_busy(api_root: str, home: Path) -> list[float]:
    """Seconds of each online ``create()`` through a proxy that delays every reply; each must
    return the server's id (not a provisional one)."""
    token, app_id = new_user(api_root, home)
    with FaultProxy(api_root) as proxy:
        client = balsam_sync.connect(proxy.url, token, home=str(home))
        client.Site.objects.online().count()  # connected before the server gets busy
        proxy.plan = FaultPlan(delay=1.0, delay_seconds=BUSY_DELAY)
        seconds = []
        for n in range(BUSY_CREATES):
            started = time.perf_counter()
            job = client.Job.objects.create(workdir=f"p8/busy/{n}", app_id=app_id)
            seconds.append(time.perf_counter() - started)
            if job.id is None or job.id < 0:
                raise RuntimeError(f"a busy server's create returned a provisional id {job.id}")
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
        how: saves_while_unreachable(api_root, workdir / how, how)
        for how in ("refused", "gone", "silent")
    }
    results["busy"] = creates_while_busy(api_root, workdir / "busy")
    for name, is_silent in (("stop_silent", True), ("stop_idle", False)):
        results[name] = [
            time_to_stop(api_root, workdir / f"{name}-{i}", is_silent) for i in range(reps)
        ]
    return results


UNREACHABLE = (
    ("refused", "a refused port", MAX_TARGET),
    ("gone", "a host that answers no connect", MAX_TARGET),
    ("silent", "a peer that accepts and never answers", WRITE_WAIT + 1.0),
)


def run(ctx: Context) -> None:
    """Add the P8 rows to the run."""
    found = measure(ctx.opts.api_root, ctx.home("p8"), ctx.opts.reps_slow)
    for key, what, first in UNREACHABLE:
        samples = found[key]
        r = Row(
            "P8",
            f"{CALLS} save() calls in a row, the server behind {what}",
            ours=Stat(samples),
            ours_label="per call",
            target=f"median ≤ {MEDIAN_TARGET * 1000:g} ms, first ≤ {first:g} s, then at once",
        )
        rest = samples[1:]
        r.met = (
            statistics.median(samples) <= MEDIAN_TARGET
            and samples[0] <= first
            and max(rest) <= MAX_TARGET
        )
        r.ratio_text = f"first {samples[0]:.2f} s, then max {max(rest) * 1000:.0f} ms"
        ctx.rows.append(r)
    samples = found["busy"]
    r = Row(
        "P8",
        f"online create() through a busy server (every reply {BUSY_DELAY:g} s late)",
        ours=Stat(samples),
        ours_label="per create",
        target=f"the server's id, within write_wait ({WRITE_WAIT:g} s)",
    )
    r.met = max(samples) <= WRITE_WAIT
    r.ratio_text = "server ids"
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
