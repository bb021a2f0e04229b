"""A1: the first ``pull()`` of the account (every resource) vs upstream
``list(Job.objects.all())`` of its jobs alone (target <= 1.0x). A5 runs it through a slow link."""

from __future__ import annotations

from .account import AccountBench
from .harness import Row, Stat, fraction, log, timed
from .upstream import run_upstream

TARGET = 1.0


def run(ab: AccountBench, via: str | None = None, tag: str = "A1") -> None:
    """First pulls into fresh mirrors, reaching the server directly or through ``via``."""
    ctx = ab.ctx
    ab.account()
    samples, reports = [], []
    for _ in range(ctx.opts.reps_slow):
        client = ab.client(via)
        _ = client.mirror
        seconds, report = timed(client.pull)
        samples.append(seconds)
        reports.append(report)
        log(f"  {tag} first pull: {report} in {seconds:.2f} s")
        client.close()
    ours = Stat(samples)
    up = run_upstream(ab.user(via), ctx.opts.workdir, "all", ctx.opts.reps_slow)
    what = "first pull() of every resource vs upstream list(Job.objects.all()), jobs alone"
    if via:
        what += ", 50 ms added per round trip (both)"
    row = fraction(
        Row(tag, what, ours, "pull()", Stat(up["times"]), "upstream all()"),
        TARGET if via is None else None,
    )
    last = reports[-1]
    row.notes.append(
        f"{last.requests} requests, {last.bytes / 1e6:.1f} MB; history (transfer items "
        f"and events of {last.history_left} finished jobs) left to the following pulls"
    )
    ctx.rows.append(row)
