"""D1: a daemon on keep-alive connections keeps its mirror fresh, and idle rounds stay cheap.

The real server stack writes ``Date`` once per keep-alive connection, and a daemon's
connections never idle long enough to close. For ``MINUTES`` minutes a daemon runs a round
(push + pull) every ``INTERVAL`` s against the real server; during the first half a writer
changes 10 of 100 jobs every 2 s (a site agent at work), then all is idle. Right after each
round a default-policy query must be answered from the mirror (``source == "cache"``) with
``as_of`` within 30 s of real time, and the bytes of an idle round in the last minute must be
at most 1.2 times those of the first idle minute.

``python scripts/bench.py --only D1`` runs it alone (``--quick``: 2 minutes).
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import balsam_sync
from balsam_sync.remote.transport import Reply

from .context import Context
from .harness import Row, Stat, log
from .server import Api, register_user

MINUTES = 10.0
QUICK_MINUTES = 2.0
INTERVAL = 5.0
JOBS = 100
LAG_TARGET = 30.0
GROWTH_TARGET = 1.2


@dataclass
class Rounds:
    """What each round showed: where the query was answered, ``as_of``'s lag, the bytes."""

    sources: list[str] = field(default_factory=list)
    lags: list[float] = field(default_factory=list)
    idle_bytes: list[tuple[float, int]] = field(default_factory=list)  # (seconds in, bytes)

    def idle_minutes(self) -> tuple[float, float]:
        """Median bytes of the idle rounds in the first idle minute and in the last minute."""
        if not self.idle_bytes:
            return float("nan"), float("nan")
        start, end = self.idle_bytes[0][0], self.idle_bytes[-1][0]
        first = [b for t, b in self.idle_bytes if t < start + 60]
        last = [b for t, b in self.idle_bytes if t > end - 60]
        return statistics.median(first), statistics.median(last)


def measure(api_root: str, home: Path, minutes: float) -> Rounds:
    user = register_user(api_root, "d1")
    api = Api(user)
    _, app_id = api.site_and_app()
    jobs = [{"workdir": f"d1/{i}", "app_id": app_id} for i in range(JOBS)]
    ids = [int(r["id"]) for r in api.call("POST", "/jobs/", json=jobs)]
    client = balsam_sync.connect(api_root, user.token, home=str(home))
    sizes: list[int] = []

    def count(reply: Reply) -> None:
        sizes.append(reply.size)

    client.transport.on_response.append(count)
    started = time.monotonic()
    busy_until = started + minutes * 30  # the first half
    stop = threading.Event()

    def writer() -> None:
        rng, n = random.Random(1), 0
        while not stop.wait(2.0) and time.monotonic() < busy_until:
            n += 1
            changes = [{"id": i, "data": {"v": n}} for i in rng.sample(ids, 10)]
            api.call("PATCH", "/jobs/", json=changes)

    thread = threading.Thread(target=writer, daemon=True)
    thread.start()
    daemon = client.daemon(interval=INTERVAL)
    rounds = Rounds()
    try:
        while time.monotonic() < started + minutes * 60:
            sizes.clear()
            daemon.round()
            spent = sum(sizes)
            query = client.Job.objects.all()
            len(query)
            now = datetime.now(timezone.utc)
            rounds.sources.append(query.source or "none")
            as_of = query.as_of or datetime.min.replace(tzinfo=timezone.utc)
            rounds.lags.append((now - as_of).total_seconds())
            at = time.monotonic() - started
            if time.monotonic() > busy_until + 10:
                rounds.idle_bytes.append((at, spent))
            time.sleep(INTERVAL)
    finally:
        stop.set()
        thread.join()
        client.close()
    return rounds


def run(ctx: Context) -> None:
    """Add the D1 rows to the run."""
    minutes = QUICK_MINUTES if ctx.opts.jobs < 100_000 else MINUTES
    log(f"  a daemon's rounds every {INTERVAL:g} s for {minutes:g} minutes")
    rounds = measure(ctx.opts.api_root, ctx.home("d1"), minutes)
    cached = rounds.sources.count("cache") / max(1, len(rounds.sources))
    what = f"daemon every {INTERVAL:g} s on keep-alive connections, {minutes:g} min"
    r = Row("D1", f"{what}: default-policy query right after each round", target="all cache")
    r.ratio_text = f"{cached:.0%} from the mirror ({len(rounds.sources)} rounds)"
    r.met = cached == 1.0
    ctx.rows.append(r)
    r = Row(
        "D1",
        f"{what}: as_of behind real time",
        ours=Stat(rounds.lags),
        ours_label="lag",
        target=f"≤ {LAG_TARGET:g} s",
    )
    r.met = max(rounds.lags) <= LAG_TARGET
    ctx.rows.append(r)
    first, last = rounds.idle_minutes()
    growth = last / max(1.0, first)
    r = Row("D1", f"{what}: bytes per idle round, last minute / first", target="≤ 1.2x")
    r.ratio_text = f"{growth:.2f}x ({first / 1000:.1f} KB, then {last / 1000:.1f} KB)"
    r.met = growth <= GROWTH_TARGET
    ctx.rows.append(r)
