"""A1: the first ``pull()`` of the account, until every query about it answers offline (jobs,
transfer items and events, the history of finished jobs included), vs upstream listing the
same: ``list(X.objects.all())`` of Job, TransferItem and EventLog (target <= 1.0x). Each
repetition runs both, one after the other, once every row is older than a pull's overlap
(``max_request_seconds``: an account's history, not rows being written). Information: the
same pull against upstream's listing of the jobs alone (what A1 compared before a pull read
the history), and how much of the pull's wall time it spent waiting for the server. A5 runs
it through a slow link."""

from __future__ import annotations

from typing import Any

from balsam_sync.client import Client
from balsam_sync.config import Settings

from .account import AccountBench
from .data_account import Account
from .harness import Row, Stat, fraction, log, timed
from .upstream import run_upstream

TARGET = 1.0
PATHS = {"Job": "/jobs/", "TransferItem": "/transfers/", "EventLog": "/events/"}


def run(ab: AccountBench, via: str | None = None, tag: str = "A1") -> None:
    """First pulls into fresh mirrors, reaching the server directly or through ``via``."""
    ctx = ab.ctx
    acct = ab.account()
    ab.aged(Settings.max_request_seconds)  # a history: no row changed within a pull's overlap
    ours: list[float] = []
    reports: list[Any] = []
    upstream: list[float] = []
    each: list[dict[str, float]] = []
    for _ in range(ctx.opts.reps_slow):
        client = ab.client(via)
        _ = client.mirror
        seconds, report = timed(client.pull)
        answers_offline(client, acct)
        ours.append(seconds)
        reports.append(report)
        log(f"  {tag} first pull: {report} in {seconds:.2f} s")
        client.close()
        up = run_upstream(ab.user(via), ctx.opts.workdir, "account", 1)
        upstream.append(up["times"][0])
        each.append(up["each"][0])
        log(f"  {tag} upstream: {up['each'][0]}")
    what = (
        f"first pull() of a {ab.n_jobs:,}-job account until everything answers offline vs "
        "upstream list(X.objects.all()) of Job, TransferItem and EventLog"
    )
    if via:
        what += ", 50 ms added per round trip (both)"
    row = fraction(
        Row(tag, what, Stat(ours), "pull()", Stat(upstream), "upstream all() x3"),
        TARGET if via is None else None,
    )
    last = reports[-1]
    waiting = [r.waiting / r.wall for r in reports if r.wall]
    storing = [r.storing / r.wall for r in reports if r.wall]
    row.notes += [
        f"{last.requests} requests, {last.bytes / 1e6:.1f} MB; rows {last.fetched}",
        f"waiting for the server's pages: {Stat(waiting).median:.0%} of the pull's wall time "
        f"(per run: {', '.join(f'{w:.0%}' for w in waiting)}); storing pages: "
        f"{Stat(storing).median:.0%}",
        "upstream per resource: "
        + "; ".join(f"{name} {Stat([e[name] for e in each])}" for name in PATHS),
    ]
    ctx.rows.append(row)
    ctx.info[f"{tag}_reports"] = [str(r) for r in reports]
    jobs_alone = Stat([e["Job"] for e in each])
    row = Row(
        tag,
        "(info) the same pull vs upstream list(Job.objects.all()) of the jobs alone",
        Stat(ours),
        "pull()",
        jobs_alone,
        "upstream Job all()",
    )
    ctx.rows.append(fraction(row, None))


def answers_offline(client: Client, acct: Account) -> None:
    """Every resource answers offline with the server's counts, a finished job's history too."""
    for name, path in PATHS.items():
        held = getattr(client, name).objects.offline().count()
        if held != acct.counts[path]:
            raise RuntimeError(
                f"after the pull the mirror counts {held} {name}, the server {acct.counts[path]}"
            )
    first = acct.job_ids[0]  # finished: seven events, two transfer items
    events = len(client.EventLog.objects.filter(job_id=[first]).offline())
    items = len(client.TransferItem.objects.filter(job_id=[first]).offline())
    if (events, items) != (7, 2):
        raise RuntimeError(f"job {first}: {events} events and {items} items offline")
