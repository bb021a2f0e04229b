"""P4: the first ``pull()`` of the jobs data set into a fresh mirror vs listing every job online,
ours and upstream's (target <= 0.4x upstream ``list(Job.objects.all())``, from the anchors)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from functools import partial
from typing import Any

from balsam_sync.client import Client

from .context import Context
from .harness import Row, Stat, fraction, log, timed
from .upstream import run_upstream

TARGET = 0.4


def online_all(client: Client) -> list[Any]:
    return list(client.Job.objects.online().all())


def online_all_once(ctx: Context) -> float:
    """Seconds of our ``list(Job.objects.online().all())`` from a fresh client."""
    data = ctx.dataset()
    home = ctx.home("online-all")
    client = ctx.connect(data.user, home)
    seconds, jobs = timed(partial(online_all, client))
    log(f"  ours list(online().all()): {len(jobs)} jobs in {seconds:.2f} s")
    if len(jobs) != data.n_jobs:
        raise RuntimeError(f"online all() returned {len(jobs)} of {data.n_jobs} jobs")
    del jobs
    client.close()
    shutil.rmtree(home, ignore_errors=True)
    return seconds


def run(ctx: Context) -> None:
    data = ctx.dataset()
    ctx.synced()  # its pull is the first sample
    reps = ctx.opts.reps_slow
    online_t: list[float] = []
    for _ in range(reps):
        if len(ctx.pulls.seconds) < reps:
            home = ctx.home("pull")
            client = ctx.connect(data.user, home)
            ctx.first_pull(client)
            client.close()
            shutil.rmtree(home, ignore_errors=True)
        online_t.append(online_all_once(ctx))
    pulls = Stat(ctx.pulls.seconds)
    # Resources are read side by side: the jobs are listed from the pull's start.
    job_phase = Stat([u.get("Job", 0.0) for u in ctx.pulls.until])
    after_jobs = Stat(
        [s - u.get("Job", 0.0) for s, u in zip(ctx.pulls.seconds, ctx.pulls.until, strict=True)]
    )
    notes = [
        f"pull reports: {ctx.pulls.reports[0]}",
        f"time per phase (from the pull's progress callback): from the start up to the last "
        f"Job page {job_phase}, then the deletion check, transfer items and events "
        f"{after_jobs}",
    ]
    ctx.info["P4_pull_phases"] = ctx.pulls.phases
    what = (
        f"initial pull() of {data.n_jobs} jobs (+ their events) vs ours "
        "list(Job.objects.online().all())"
    )
    row = Row("P4", what, pulls, "pull()", Stat(online_t), "ours online all()", notes=notes)
    ctx.rows.append(fraction(row, None))
    if ctx.opts.upstream_all:
        upstream_rows(ctx, pulls, job_phase, Stat(online_t))

    def prep_pull() -> Callable[[], object]:
        return ctx.connect(data.user, ctx.home("profile-pull")).pull

    ctx.profiles["P4"] = prep_pull


def upstream_rows(ctx: Context, pulls: Stat, job_phase: Stat, online: Stat) -> None:
    log("  upstream list(Job.objects.all()) ...")
    try:
        up = run_upstream(ctx.dataset().user, ctx.opts.workdir, "all", ctx.opts.reps_slow)
    except Exception as exc:
        ctx.rows.append(Row("P4", "upstream list(all())", error=str(exc)))
        return
    upstream = Stat(up["times"])
    what = "initial pull() vs upstream list(Job.objects.all())"
    row = fraction(Row("P4", what, pulls, "pull()", upstream, "upstream all()"), TARGET)
    row.target += " (anchors)"
    ctx.rows.append(row)
    what = "Job phase of the initial pull() alone vs upstream list(all()) (info)"
    row = Row("P4", what, job_phase, "pull(), Job phase", upstream, "upstream all()")
    ctx.rows.append(fraction(row, None))
    what = "ours online all() vs upstream list(all()) (info)"
    row = Row("P4", what, online, "ours online all()", upstream, "upstream all()")
    ctx.rows.append(fraction(row, None))
