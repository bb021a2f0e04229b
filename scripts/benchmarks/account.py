"""The account-shaped data set in a run (``data_account.py``), and what its figures share.

The figures (``A`` rows of ``results/bench.md``; a1.py, a2_a3_a4.py, a5.py):

  A1  first ``pull()`` until everything answers offline (every job, transfer item and event,
      sites, apps, batch jobs) vs upstream ``list(X.objects.all())`` of Job, TransferItem and
      EventLog                                                              target <= 1.0x
  A2  idle incremental pull          target <= 8 requests and <= 200 KB (and its time, info)
  A3  incremental pull after 100 changes (60 jobs, 39 transfer items, a batch job) vs
      ``pull(full=True)`` (everything, history included)                     target <= 5 %
  A4  one idle daemon cycle (push + pull): requests, bytes, server seconds; and 1,000 users'
      daemons at a 60 s interval (information)
  A5  A1 and A3 again through the fault proxy with 50 ms added to every round trip (info)
  A6  a first ``balsam-sync pull`` killed half-way, then the pull that completes it: its bytes
      vs a whole first pull's                                               target <= 60 %

The account has ``--jobs / 5`` jobs (20,000 by default). Rows change only while it is built;
the idle and incremental figures are taken once ``max_request_seconds`` has passed since, so
every row is older than a pull's overlap ("rows last changed long before the measurement").
"""

from __future__ import annotations

import dataclasses
import random
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from balsam_sync.client import Client
from balsam_sync.remote.transport import Reply

from .context import Context
from .data_account import Account, Builder
from .harness import log, timed
from .server import Api, User

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
    """Builds the account once; the A figures measure on it."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.n_jobs = max(500, ctx.opts.jobs // 5)
        self.acct: Account | None = None
        self.rng = random.Random(11)
        self.failing: dict[int, bool] = {}

    def account(self) -> Account:
        if self.acct is None:
            log(f"building an account of {self.n_jobs} jobs through the real server ...")
            self.acct = Builder(self.ctx.opts.api_root, self.n_jobs).build()
            log(f"  built in {self.acct.seconds:.0f} s: {self.acct.counts}")
            self.ctx.info["account"] = {
                "user": self.acct.user.username,
                "rows": self.acct.counts,
                "seconds_to_build": self.acct.seconds,
                "in_flight_jobs": len(self.acct.in_flight),
            }
        return self.acct

    def user(self, via: str | None = None) -> User:
        """The account's user, reaching the server directly or through ``via``."""
        acct = self.account()
        return acct.user if via is None else dataclasses.replace(acct.user, api_root=via)

    def client(self, api_root: str | None = None, **settings: Any) -> Client:
        return self.ctx.connect(self.user(api_root), self.ctx.home("acct"), **settings)

    def aged(self, max_request_seconds: float) -> None:
        """Wait until every row of the account is older than a pull's overlap."""
        acct = self.account()
        wait = acct.last_write + max_request_seconds + 2 - time.monotonic()
        if wait > 0:
            log(f"  waiting {wait:.0f} s until every row is older than the pull overlap")
            time.sleep(wait)

    def settled(self) -> Client:
        """A client whose mirror holds everything, pulled after every row got older than
        ``max_request_seconds`` (so its watermark is past every row)."""
        client = self.client()
        self.aged(client.settings.max_request_seconds)
        seconds, report = timed(lambda: client.pull(full=True))
        log(f"  full pull: {report} in {seconds:.1f} s")
        return client

    def change_100(self) -> dict[str, dict[int, Any]]:
        """What a site agent does in a moment: 30 jobs change state (events), 30 jobs their
        data, 39 transfer items in motion move, a batch job reports; return what the mirror
        should then hold."""
        acct = self.account()
        api = Api(acct.user)
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


def holds(client: Client, expect: dict[str, dict[int, Any]]) -> bool:
    """Whether the mirror of ``client`` holds what ``AccountBench.change_100`` made."""
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


def _text(value: Any) -> str:
    return str(getattr(value, "value", value))
