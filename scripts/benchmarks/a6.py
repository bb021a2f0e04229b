"""A6: a first ``balsam-sync pull`` of the account killed with SIGKILL half-way (once the mirror
shows half of the rows stored), then the pull that completes it: the bytes it reads vs a whole
first pull's (target <= 60 %), its time (information), and every resource answering offline
afterwards. Measured once the account is older than a pull's overlap (a resumed pull reads
again the jobs stamped within ``max_request_seconds`` of the killed one's start), with pages
of at most a twentieth of the account (the default for the full-size account)."""

from __future__ import annotations

import os

from balsam_sync.config import Settings
from balsam_sync.testing.killing import kill_pull_at

from .a1 import PATHS, answers_offline
from .account import AccountBench
from .harness import MB, Row, Stat, fraction, log, timed

SHARE = 0.5
TARGET = 0.6
PAGE_ROWS = Settings.page_rows


def run(ab: AccountBench) -> None:
    ctx = ab.ctx
    acct = ab.account()
    user = ab.user()
    rows = sum(acct.counts[path] for path in PATHS.values())
    page_rows = max(500, min(PAGE_ROWS, rows // 20))
    whole = ab.client(page_rows=page_rows)
    ab.aged(whole.settings.max_request_seconds)
    whole_seconds, whole_report = timed(whole.pull)
    whole.close()
    log(f"  A6 whole pull: {whole_report} in {whole_seconds:.1f} s")
    resumed_mb: list[float] = []
    resumed_s: list[float] = []
    shares: list[float] = []
    for _ in range(ctx.opts.reps_slow):
        home = ctx.home("acct-killed")
        env = {
            **os.environ,
            "BALSAM_SYNC_API_ROOT": user.api_root,
            "BALSAM_SYNC_TOKEN": user.token,
            "BALSAM_SYNC_HOME": str(home),
            "BALSAM_SYNC_PAGE_ROWS": str(page_rows),
        }
        watcher = ctx.connect(user, home, page_rows=page_rows)
        killed = kill_pull_at(env, watcher, SHARE, rows)
        if not killed.killed:
            raise RuntimeError(f"the pull ended before it was killed: {killed.stderr[-500:]}")
        client = ctx.connect(user, home, page_rows=page_rows)
        seconds, report = timed(client.pull)
        answers_offline(client, acct)
        client.close()
        watcher.close()
        log(f"  A6 killed at {killed.share:.0%}; the next: {report} in {seconds:.1f} s")
        resumed_mb.append(report.bytes / MB)
        resumed_s.append(seconds)
        shares.append(killed.share)
    row = Row(
        "A6",
        f"the pull after a first pull killed (SIGKILL) at ~{SHARE:.0%} of its rows: bytes it "
        "reads vs a whole first pull's",
        Stat(resumed_mb, "MB"),
        "resumed pull",
        Stat([whole_report.bytes / MB], "MB"),
        "whole first pull",
        notes=[
            f"killed at {', '.join(f'{s:.0%}' for s in shares)} of the rows stored; the "
            f"resumed pull took {Stat(resumed_s)} against {whole_seconds:.1f} s for a whole one; "
            f"pages of {page_rows} rows",
            f"bytes: whole {whole_report.bytes:,}; resumed "
            f"{', '.join(f'{mb * MB:,.0f}' for mb in resumed_mb)}",
        ],
    )
    ctx.rows.append(fraction(row, TARGET, percent=True))
