"""P5: an incremental ``pull()`` after 100 job changes vs ``pull(full=True)`` (target <= 5 %)."""

from __future__ import annotations

import random
import time
from collections.abc import Callable

from .context import Context
from .harness import Row, Stat, fmt_phases, fraction, log, timed_pull
from .server import Api

TARGET = 0.05
CHANGES = 100
MARGIN = 10.0


def run(ctx: Context) -> None:
    data = ctx.dataset()
    client = ctx.synced()
    other = Api(data.user)
    rng = random.Random(5)
    incr_t: list[float] = []
    full_t: list[float] = []
    fetched: list[int] = []
    checks: list[bool] = []
    settle(data.last_write, client.settings.max_request_seconds)
    client.pull()
    for rep in range(ctx.opts.reps_slow):
        ids = rng.sample(data.ids["p2"], CHANGES)
        nodes = 2 + rep
        other.call("PATCH", "/jobs/", json=[{"id": i, "num_nodes": nodes} for i in ids])
        pull = timed_pull(client)
        incr_t.append(pull.seconds)
        fetched.append(pull.report.fetched.get("Job", 0))
        seen = client.Job.objects.filter(id=ids).offline()
        checks.append(sorted(j.num_nodes for j in seen) == [nodes] * CHANGES)
        log(f"  incremental: {pull.report} in {pull.seconds:.3f} s")
        pull = timed_pull(client, full=True)
        full_t.append(pull.seconds)
        log(f"  full: {pull.report} in {pull.seconds:.2f} s ({fmt_phases(pull.phases)})")
    row = Row(
        "P5",
        "incremental pull() after 100 job changes vs pull(full=True)",
        Stat(incr_t),
        "incremental",
        Stat(full_t),
        "full",
        notes=[
            f"jobs fetched by the incremental pulls: {fetched}",
            "changes visible in the mirror: " + ("yes" if all(checks) else "NO"),
        ],
    )
    ctx.rows.append(fraction(row, TARGET, percent=True))

    def prep_incremental() -> Callable[[], object]:
        ids = rng.sample(data.ids["p2"], CHANGES)
        other.call("PATCH", "/jobs/", json=[{"id": i, "num_nodes": 9} for i in ids])
        return client.pull

    ctx.profiles["P5"] = prep_incremental


def settle(last_write: float, overlap: float) -> None:
    """Wait until every row is older than a pull's overlap (``max_request_seconds``).

    A pull re-reads what changed within that time before the previous one, which right after
    the data set was made is all of it: the pull that P5 starts from is made once every row is
    older than that, as a daemon's would be. The margin: the server's ``Date`` (which a pull
    takes its watermark from) runs a few seconds behind its row stamps when it is busy."""
    wait = last_write + overlap + MARGIN - time.monotonic()
    if wait > 0:
        log(f"  waiting {wait:.0f} s until every row is older than the pull overlap")
        time.sleep(wait)
