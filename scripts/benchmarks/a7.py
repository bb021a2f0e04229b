"""A7: peak RSS of a first ``pull()`` of a 200k-job account (the jobs data set's shape, about
300k events) in a fresh process, vs upstream listing its jobs, transfer items and events
(``list(X.objects.all())`` of each) in a fresh process (target <= 0.5x). Both processes start
through a small trampoline, so that each peak is its own (``memory.py``)."""

from __future__ import annotations

import sys

from .context import Context
from .data_jobs import create_dataset
from .harness import ROOT, Row, Stat, fraction, last_json, log, run_child
from .memory import MODULE, TRAMPOLINE, child_env
from .upstream import run_upstream

TARGET = 0.5


def run(ctx: Context) -> None:
    n = ctx.opts.rss_jobs
    log(f"creating {n} jobs through the real server for A7 ...")
    data = create_dataset(ctx.opts.api_root, n)
    env = child_env(
        ROOT,
        {
            "BALSAM_SYNC_API_ROOT": data.user.api_root,
            "BALSAM_SYNC_TOKEN": data.user.token,
            "BALSAM_SYNC_HOME": str(ctx.home("rss")),
        },
    )
    child = [sys.executable, "-c", TRAMPOLINE, sys.executable, "-m", MODULE, "pull"]
    ours = last_json(run_child(child, env, "A7 pull child", ROOT))
    log(f"  A7 ours: {ours}")
    up = run_upstream(data.user, ctx.opts.workdir, "account", 1, own_peak=True)
    log(f"  A7 upstream: {up}")
    row = Row(
        "A7",
        f"peak RSS of a first pull() of a {n:,}-job account ({sum(up['n'].values()):,} rows "
        "with its events) vs upstream list(X.objects.all()) of Job, TransferItem, EventLog",
        Stat([ours["peak_mb"]], "MB"),
        "pull() peak RSS",
        Stat([up["peak_mb"]], "MB"),
        "upstream peak RSS",
        notes=[
            f"rows: ours {ours['fetched']}, upstream {up['n']}",
            f"time: pull() {ours['seconds']:.1f} s, upstream {up['times'][0]:.1f} s "
            f"({ours['seconds'] / up['times'][0]:.2f}x); ours started at "
            f"{ours['baseline_mb']:.0f} MB",
        ],
    )
    ctx.rows.append(fraction(row, TARGET))
