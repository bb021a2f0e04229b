"""A5: A1 and an incremental pull after 100 changes through the fault proxy, with 50 ms added
to every round trip (information)."""

from __future__ import annotations

from balsam_sync.testing.faultproxy import FaultPlan, FaultProxy

from . import a1
from .account import AccountBench
from .harness import Row, Stat, log, timed

DELAY_SECONDS = 0.05


def run(ab: AccountBench) -> None:
    plan = FaultPlan(delay=1.0, delay_seconds=DELAY_SECONDS)
    with FaultProxy(ab.ctx.opts.api_root, plan=plan, io_timeout=600.0) as proxy:
        a1.run(ab, proxy.url, "A5")
        client = ab.client(proxy.url)
        client.pull(full=True)
        incr_t = []
        for _ in range(ab.ctx.opts.reps_slow):
            ab.change_100()
            seconds, report = timed(client.pull)
            incr_t.append(seconds)
            log(f"  A5 incremental: {report} in {seconds:.2f} s")
        ab.ctx.rows.append(
            Row(
                "A5",
                "incremental pull() after 100 changes, 50 ms added per round trip",
                Stat(incr_t),
                "incremental",
            )
        )
