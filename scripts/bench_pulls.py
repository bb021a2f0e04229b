"""Pull figures on an account-shaped data set (scripts/bench_account.py), for scripts/bench.py.

  A1  first ``pull()`` (every resource: all jobs, sites, apps, batch jobs, and the transfer
      items and events of the unfinished jobs) vs upstream ``list(Job.objects.all())`` of the
      jobs alone                                                            target <= 1.0x
  A2  idle incremental pull          target <= 8 requests and <= 200 KB (and its time, info)
  A3  incremental pull after 100 changes (60 jobs, 39 transfer items, a batch job) vs
      ``pull(full=True)`` (everything, history included)                     target <= 5 %
  A4  one idle daemon cycle (push + pull): requests, bytes, server seconds; and 1,000 users'
      daemons at a 60 s interval (information)
  A5  A1 and A3 again through the fault proxy with 50 ms added to every round trip (info)

The account has ``--jobs / 5`` jobs (20,000 by default). Rows change only while it is built;
the idle and incremental figures are taken once ``max_request_seconds`` has passed since, so
every row is older than a pull's overlap ("rows last changed long before the measurement").
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import bench
import bench_account

from balsam_sync.client import Client
from balsam_sync.remote.transport import Reply
from balsam_sync.testing.faultproxy import FaultPlan, FaultProxy

IDS = ("A1", "A2", "A3", "A4", "A5")
KB = 1024


@dataclass
class Meter:
    """Requests, reply bytes and server seconds a client received (a transport hook)."""

    requests: int = 0
    bytes: int = 0
    seconds: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, reply: Reply) -> None:
        with self.lock:
            self.requests += 1
            self.bytes += reply.size
            self.seconds += reply.seconds

    def reset(self) -> None:
        self.requests, self.bytes, self.seconds = 0, 0, 0.0


def metered(client: Client) -> Meter:
    meter = Meter()
    client.transport.on_response.append(meter)
    return meter


class AccountBench:
    """Builds the account once and measures A1-A5 on it."""

    def __init__(self, b: bench.Bench) -> None:
        self.b = b
        self.n_jobs = max(500, b.opts.jobs // 5)
        self.acct: bench_account.Account | None = None
        self.rng = random.Random(11)
        self.failing: dict[int, bool] = {}

    def account(self) -> bench_account.Account:
        if self.acct is None:
            bench.log(f"building an account of {self.n_jobs} jobs through the real server ...")
            self.acct = bench_account.Builder(self.b.opts.api_root, self.n_jobs).build()
            bench.log(f"  built in {self.acct.seconds:.0f} s: {self.acct.counts}")
            self.b.info["account"] = {
                "user": self.acct.user.username,
                "rows": self.acct.counts,
                "seconds_to_build": self.acct.seconds,
                "in_flight_jobs": len(self.acct.in_flight),
            }
        return self.acct

    def client(self, api_root: str | None = None) -> Client:
        return self.b.connect(self.upstream_user(api_root), self.b.home("acct"))

    def settled(self) -> Client:
        """A client whose mirror holds everything, pulled after every row got older than
        ``max_request_seconds`` (so its watermark is past every row)."""
        acct = self.account()
        client = self.client()
        wait = acct.last_write + client.settings.max_request_seconds + 2 - time.monotonic()
        if wait > 0:
            bench.log(f"  waiting {wait:.0f} s until every row is older than the pull overlap")
            time.sleep(wait)
        seconds, report = bench.timed(lambda: client.pull(full=True))
        bench.log(f"  full pull: {report} in {seconds:.1f} s")
        return client

    # -- A1 ------------------------------------------------------------------------------------

    def a1(self, via: str | None = None, tag: str = "A1") -> bench.Stat:
        self.account()
        samples, reports = [], []
        for _ in range(self.b.opts.reps_slow):
            client = self.client(via)
            _ = client.mirror
            seconds, report = bench.timed(client.pull)
            samples.append(seconds)
            reports.append(report)
            bench.log(f"  {tag} first pull: {report} in {seconds:.2f} s")
            client.close()
        ours = bench.Stat(samples)
        up = bench.run_upstream(
            self.upstream_user(via), self.b.opts.workdir, "all", self.b.opts.reps_slow
        )
        what = "first pull() of every resource vs upstream list(Job.objects.all()), jobs alone"
        if via:
            what += ", 50 ms added per round trip (both)"
        row = bench.fraction(
            bench.Row(tag, what, ours, "pull()", bench.Stat(up["times"]), "upstream all()"),
            1.0 if via is None else None,
        )
        last = reports[-1]
        row.notes.append(
            f"{last.requests} requests, {last.bytes / 1e6:.1f} MB; history (transfer items "
            f"and events of {last.history_left} finished jobs) left to the following pulls"
        )
        self.b.rows.append(row)
        return ours

    def upstream_user(self, via: str | None) -> bench.User:
        """The account's user, reaching the server directly or through ``via``."""
        acct = self.account()
        return acct.user if via is None else dataclasses.replace(acct.user, api_root=via)

    # -- A2 / A3 / A4 --------------------------------------------------------------------------

    def a2_a3_a4(self) -> None:
        client = self.settled()
        meter = metered(client)
        self.history(client)
        idle_t, idle_req, idle_bytes = [], [], []
        for _ in range(self.b.opts.reps_slow):
            meter.reset()
            seconds, _ = bench.timed(client.pull)
            idle_t.append(seconds)
            idle_req.append(meter.requests)
            idle_bytes.append(meter.bytes)
        self.idle_rows(idle_t, idle_req, idle_bytes)
        self.a4(client, meter)
        self.a3(client, meter)

    def history(self, client: Client) -> None:
        """Pulls until the history is in (a full pull already read it all)."""
        for _ in range(1000):
            if client.pull().history_left == 0:
                return

    def idle_rows(self, seconds: list[float], requests: list[int], sizes: list[int]) -> None:
        worst_req, worst_kb = max(requests), max(sizes) / KB
        row = bench.Row(
            "A2",
            f"idle incremental pull of a {self.n_jobs:,}-job account",
            bench.Stat(seconds),
            "idle pull()",
            ratio_text=f"{worst_req} requests, {worst_kb:.0f} KB",
            target="≤ 8 requests and ≤ 200 KB",
            met=worst_req <= 8 and worst_kb <= 200,
            notes=[f"requests per pull: {requests}; bytes per pull: {sizes}"],
        )
        self.b.rows.append(row)

    def a4(self, client: Client, meter: Meter) -> None:
        daemon = client.daemon(interval=60)
        meter.reset()
        seconds, _ = bench.timed(daemon.round)
        per_s = 1000 / 60
        self.b.rows.append(
            bench.Row(
                "A4",
                "one idle daemon cycle (push + pull): what it costs the server",
                bench.Stat([seconds]),
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

    def a3(self, client: Client, meter: Meter, tag: str = "A3") -> None:
        incr_t, full_t, notes = [], [], []
        for _ in range(self.b.opts.reps_slow):
            expect = self.change_100()
            meter.reset()
            seconds, report = bench.timed(client.pull)
            incr_t.append(seconds)
            notes.append(f"{report} in {seconds:.2f} s, {meter.requests} requests")
            seen = self.check(client, expect)
            notes.append("changes visible in the mirror: " + ("yes" if seen else "NO"))
            seconds, report = bench.timed(lambda: client.pull(full=True))
            full_t.append(seconds)
            bench.log(f"  {tag}: incremental {incr_t[-1]:.2f} s, full {seconds:.1f} s")
        row = bench.fraction(
            bench.Row(
                tag,
                "incremental pull() after 100 changes (60 jobs, 39 transfer items, a batch "
                "job) vs pull(full=True)",
                bench.Stat(incr_t),
                "incremental",
                bench.Stat(full_t),
                "full",
                notes=notes,
            ),
            0.05,
            percent=True,
        )
        self.b.rows.append(row)

    def change_100(self) -> dict[str, dict[int, Any]]:
        """What a site agent does in a moment: 30 jobs change state (events), 30 jobs their
        data, 39 transfer items in motion move, a batch job reports; return what the mirror
        should then hold."""
        acct = self.account()
        api = bench.Api(acct.user)
        flying = self.rng.sample(acct.in_flight, min(60, len(acct.in_flight)))
        half = len(flying) // 2
        mark = self.rng.randint(1, 10**9)
        states = {}
        for j in flying[:half]:
            self.failing[j] = not self.failing.get(j, False)
            states[j] = "RUN_ERROR" if self.failing[j] else "RESTART_READY"
        api.call("PATCH", "/jobs/", json=[{"id": j, "state": s} for j, s in states.items()])
        api.call("PATCH", "/jobs/", json=[{"id": j, "data": {"m": mark}} for j in flying[half:]])
        moving = api.call("GET", "/transfers/", params=[("state", "pending"), ("state", "active")])[
            "results"
        ]
        items = {
            i["id"]: "active" if i["state"] == "pending" else "pending"
            for i in self.rng.sample(moving, min(39, len(moving)))
        }
        api.call(
            "PATCH",
            "/transfers/",
            json=[{"id": i, "state": st, "task_id": f"t{mark}"} for i, st in items.items()],
        )
        bj = acct.batch_jobs[-1]
        api.call("PUT", f"/batch-jobs/{bj}", json={"status_info": {"m": str(mark)}})
        return {
            "data": {j: {"m": mark} for j in flying[half:]},
            "states": states,
            "items": items,
            "bj": {bj: str(mark)},
        }

    def check(self, client: Client, expect: dict[str, dict[int, Any]]) -> bool:
        jobs = {j.id: j for j in client.Job.objects.filter(id=list(expect["data"])).offline()}
        moved = client.Job.objects.filter(id=list(expect["states"])).offline()
        items = client.TransferItem.objects.filter(id=list(expect["items"])).offline()
        bj_id, value = next(iter(expect["bj"].items()))
        bj = client.BatchJob.objects.offline().get(id=bj_id)
        return (
            {i: j.data for i, j in jobs.items()} == expect["data"]
            and {j.id: _text(j.state) for j in moved} == expect["states"]
            and {i.id: _text(i.state) for i in items} == expect["items"]
            and (bj.status_info or {}).get("m") == value
        )

    # -- A5 ------------------------------------------------------------------------------------

    def a5(self) -> None:
        plan = FaultPlan(delay=1.0, delay_seconds=0.05)
        with FaultProxy(self.b.opts.api_root, plan=plan, io_timeout=600.0) as proxy:
            self.a1(proxy.url, "A5")
            client = self.client(proxy.url)
            client.pull(full=True)
            incr_t = []
            for _ in range(self.b.opts.reps_slow):
                self.change_100()
                seconds, report = bench.timed(client.pull)
                incr_t.append(seconds)
                bench.log(f"  A5 incremental: {report} in {seconds:.2f} s")
            self.b.rows.append(
                bench.Row(
                    "A5",
                    "incremental pull() after 100 changes, 50 ms added per round trip",
                    bench.Stat(incr_t),
                    "incremental",
                )
            )


def _text(value: Any) -> str:
    return str(getattr(value, "value", value))


def steps(b: bench.Bench) -> list[tuple[tuple[str, ...], Callable[[], None]]]:
    """The steps bench.py runs for the account figures."""
    acct = AccountBench(b)

    def a1() -> None:
        acct.a1()

    return [(("A1",), a1), (("A2", "A3", "A4"), acct.a2_a3_a4), (("A5",), acct.a5)]
