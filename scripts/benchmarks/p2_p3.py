"""P2 and P3, measured on the same jobs: ``n`` creates queued offline by ``bulk_create`` vs
sqlite-utils ``insert_all`` of the same rows (P2, target <= 3x); their replay by ``push()`` vs
a direct online ``bulk_create`` (P3, target <= 1.1x)."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from balsam_sync.client import Client

from .context import Context
from .harness import Row, Stat, fraction, log, timed
from .server import Api, User, register_user

P2_TARGET = 3.0
P3_TARGET = 1.1


def build(client: Client, app_id: int, tag: str, n: int) -> list[Any]:
    return [client.Job(workdir=f"{tag}/{i}", app_id=app_id, tags={"exp": tag}) for i in range(n)]


@dataclass
class Samples:
    offline: list[float] = field(default_factory=list)
    sqlite: list[float] = field(default_factory=list)
    push: list[float] = field(default_factory=list)
    direct: list[float] = field(default_factory=list)
    notes2: list[str] = field(default_factory=list)
    notes3: list[str] = field(default_factory=list)


class Creates:
    """One repetition of P2 and P3."""

    def __init__(self, ctx: Context, samples: Samples) -> None:
        self.ctx = ctx
        self.n = ctx.opts.creates
        self.s = samples
        self.sent: list[str] = []
        self.sqlite_utils: Any = importlib.import_module("sqlite_utils")

    def record(self, method: str, url: str) -> None:
        self.sent.append(f"{method} {url}")

    def rep(self, first: bool) -> None:
        user, api, home = self.queue(first)
        self.replay(user, api, home, first)
        self.direct(first)
        log(f"  P3: push {self.s.push[-1]:.2f} s, direct bulk_create {self.s.direct[-1]:.2f} s")

    def queue(self, first: bool) -> tuple[User, Api, Path]:
        """P2: queue ``n`` creates offline for a new user; then the same rows with
        sqlite-utils into a fresh file. Return the user and the queue's home."""
        ctx, s = self.ctx, self.s
        user = register_user(ctx.opts.api_root, "bench-p2")
        api = Api(user)
        _, app_id = api.site_and_app()
        home = ctx.home("p2")
        client = ctx.connect(user, home, offline=True)
        if not client.gateway.offline and first:
            s.notes2.append(
                "BUG: connect(..., offline=True) leaves client.gateway.offline False, so writes "
                "are sent at once; the bench sets client.gateway.offline = True to measure queueing"
            )
        client.gateway.offline = True
        self.sent.clear()
        client.transport.on_request.append(self.record)
        _ = client.mirror  # open (create, migrate) outside the timing
        jobs = build(client, app_id, "p2", self.n)
        rows = [dict(job._data) for job in jobs]
        seconds, _ = timed(partial(client.Job.objects.bulk_create, jobs))
        s.offline.append(seconds)
        provisional = all(job.id is not None and job.id < 0 for job in jobs)
        if first:
            s.notes2.append(
                f"requests sent during the offline bulk_create: {len(self.sent)}; "
                f"provisional negative ids: {'yes' if provisional else 'NO'}"
            )
        client.close()
        db = self.sqlite_utils.Database(str(ctx.home("sqlite-utils") / "raw.db"))
        seconds, _ = timed(partial(db["jobs"].insert_all, rows))
        s.sqlite.append(seconds)
        db.close()
        log(f"  P2: offline bulk_create {s.offline[-1]:.3f} s, sqlite-utils {s.sqlite[-1]:.3f} s")
        return user, api, home

    def replay(self, user: User, api: Api, home: Path, first: bool) -> None:
        """P3: replay the queued creates with the server reachable."""
        client = self.ctx.connect(user, home)
        _ = client.mirror
        seconds, report = timed(client.push)
        self.s.push.append(seconds)
        if first:
            on_server = api.count("/jobs/", [])
            self.s.notes3.append(
                f"push report: {report}; jobs on the server: {on_server} of {self.n}"
            )
        client.close()

    def direct(self, first: bool) -> None:
        """The reference of P3: a direct online bulk_create for a fresh user."""
        user = register_user(self.ctx.opts.api_root, "bench-p3")
        api = Api(user)
        _, app_id = api.site_and_app()
        client = self.ctx.connect(user, self.ctx.home("p3"))
        _ = client.mirror
        jobs = build(client, app_id, "p3", self.n)
        seconds, _ = timed(partial(client.Job.objects.bulk_create, jobs))
        self.s.direct.append(seconds)
        if first:
            real = all(job.id is not None and job.id > 0 for job in jobs)
            self.s.notes3.append(
                f"direct bulk_create: server ids on every instance: {'yes' if real else 'NO'};"
                f" jobs on the server: {api.count('/jobs/', [])} of {self.n}"
            )
        client.close()


def run(ctx: Context) -> None:
    n = ctx.opts.creates
    s = Samples()
    creates = Creates(ctx, s)
    for rep in range(ctx.opts.reps_slow):
        creates.rep(rep == 0)
    if ctx.wanted("P2"):
        what = f"offline Job.objects.bulk_create of {n:,} jobs vs sqlite-utils insert_all of the"
        row = Row(
            "P2",
            what + " same rows",
            Stat(s.offline),
            "offline bulk_create",
            Stat(s.sqlite),
            "sqlite-utils insert_all",
            notes=s.notes2,
        )
        ctx.rows.append(fraction(row, P2_TARGET))
    if ctx.wanted("P3"):
        what = f"replay of {n:,} queued creates (push()) vs direct online bulk_create"
        row = Row(
            "P3", what, Stat(s.push), "push()", Stat(s.direct), "direct bulk_create", notes=s.notes3
        )
        ctx.rows.append(fraction(row, P3_TARGET))
    ctx.profiles["P2"] = partial(prep_offline, ctx)
    ctx.profiles["P3"] = partial(prep_push, ctx)


def prep_offline(ctx: Context) -> Callable[[], object]:
    user = register_user(ctx.opts.api_root, "bench-prof")
    _, app_id = Api(user).site_and_app()
    client = ctx.connect(user, ctx.home("prof-p2"), offline=True)
    client.gateway.offline = True
    _ = client.mirror
    jobs = build(client, app_id, "p2", ctx.opts.creates)
    return lambda: client.Job.objects.bulk_create(jobs)


def prep_push(ctx: Context) -> Callable[[], object]:
    user = register_user(ctx.opts.api_root, "bench-prof")
    _, app_id = Api(user).site_and_app()
    home = ctx.home("prof-p3")
    client = ctx.connect(user, home, offline=True)
    client.gateway.offline = True
    client.Job.objects.bulk_create(build(client, app_id, "p2", ctx.opts.creates))
    client.close()
    online = ctx.connect(user, home)
    _ = online.mirror
    return online.push
