"""A2, A3 and A4, measured on one settled mirror of the account: an idle incremental pull
(A2: <= 8 requests and <= 200 KB), one idle daemon cycle and what 1,000 users' daemons cost the
server (A4, information), an incremental pull after 100 changes vs a full pull (A3: <= 5 %)."""

from __future__ import annotations

from balsam_sync.client import Client

from .account import KB, AccountBench, Meter, holds, metered
from .harness import Row, Stat, fraction, log, timed

A2_REQUESTS = 8
A2_KB = 200
A3_TARGET = 0.05
USERS = 1000
INTERVAL = 60


def run(ab: AccountBench) -> None:
    client = ab.settled()
    meter = metered(client)
    idle_t, idle_req, idle_bytes = [], [], []
    for _ in range(ab.ctx.opts.reps_slow):
        meter.reset()
        seconds, _ = timed(client.pull)
        idle_t.append(seconds)
        idle_req.append(meter.requests)
        idle_bytes.append(meter.bytes)
    idle_row(ab, idle_t, idle_req, idle_bytes)
    a4(ab, client, meter)
    a3(ab, client, meter)


def idle_row(ab: AccountBench, seconds: list[float], requests: list[int], sizes: list[int]) -> None:
    worst_req, worst_kb = max(requests), max(sizes) / KB
    row = Row(
        "A2",
        f"idle incremental pull of a {ab.n_jobs:,}-job account",
        Stat(seconds),
        "idle pull()",
        ratio_text=f"{worst_req} requests, {worst_kb:.0f} KB",
        target=f"≤ {A2_REQUESTS} requests and ≤ {A2_KB} KB",
        met=worst_req <= A2_REQUESTS and worst_kb <= A2_KB,
        notes=[f"requests per pull: {requests}; bytes per pull: {sizes}"],
    )
    ab.ctx.rows.append(row)


def a4(ab: AccountBench, client: Client, meter: Meter) -> None:
    daemon = client.daemon(interval=INTERVAL)
    meter.reset()
    seconds, _ = timed(daemon.round)
    per_s = USERS / INTERVAL
    ab.ctx.rows.append(
        Row(
            "A4",
            "one idle daemon cycle (push + pull): what it costs the server",
            Stat([seconds]),
            "cycle",
            ratio_text=(
                f"{meter.requests} requests, {meter.bytes / KB:.0f} KB, "
                f"{meter.seconds:.2f} server s"
            ),
            notes=[
                f"1,000 users' daemons at a 60 s interval: {meter.requests * per_s:.0f} "
                f"requests/s, {meter.bytes * per_s / 1e6:.1f} MB/s, "
                f"{meter.seconds * per_s:.1f} server seconds per second (busy cores), "
                "server seconds being the time from sending each request to its reply's "
                "head, on this machine's real server"
            ],
        )
    )


def a3(ab: AccountBench, client: Client, meter: Meter) -> None:
    incr_t: list[float] = []
    full_t: list[float] = []
    notes: list[str] = []
    for _ in range(ab.ctx.opts.reps_slow):
        expect = ab.change_100()
        meter.reset()
        seconds, report = timed(client.pull)
        incr_t.append(seconds)
        notes.append(f"{report} in {seconds:.2f} s, {meter.requests} requests")
        seen = holds(client, expect)
        notes.append("changes visible in the mirror: " + ("yes" if seen else "NO"))
        seconds, report = timed(lambda: client.pull(full=True))
        full_t.append(seconds)
        log(f"  A3: incremental {incr_t[-1]:.2f} s, full {seconds:.1f} s")
    row = Row(
        "A3",
        "incremental pull() after 100 changes (60 jobs, 39 transfer items, a batch "
        "job) vs pull(full=True)",
        Stat(incr_t),
        "incremental",
        Stat(full_t),
        "full",
        notes=notes,
    )
    ab.ctx.rows.append(fraction(row, A3_TARGET, percent=True))
