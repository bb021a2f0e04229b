"""P9: what an online write costs, ours (default policy) vs upstream ``balsam.api``.

On an account-shaped data set (``data_account.py``: ~20k jobs, 70 % finished, with their
transfer items, events and batch jobs), on a server holding at least 200k jobs of other users
(a filler user is made first when it holds fewer; counted in the server's database), both
clients do the same writes in interleaved rounds (which side goes first alternates), each on
jobs of its own:

* ``job.save()`` of a finished job (tags changed) and of an unfinished one (data changed);
* ``Job.objects.bulk_create`` of 100 jobs (with their two transfers each);
* a query ``update()`` of 100 jobs: ``filter(id=[...])`` and ``filter(tags=...)`` setting
  ``data``, and ``filter(id=[...])`` setting ``state``;
* the guide's loop ``for job in Job.objects.filter(state="FAILED"): job.state =
  "RESTART_READY"; job.save()`` over 30 jobs (its jobs are set FAILED, untimed, before).

Our client's mirror holds the account (one ``pull()`` first, no daemon: the default policy
answers a query from it only within 30 s of that pull). A write's set-up (reading the job,
building the instances) is not timed; the change and the call are. Requests are counted twice:
in-process in every timed round (ours: the transport's request hook; upstream: its
``requests`` session), and by the fault proxy (no faults: a counting relay) between a second
client of each side and the server for a few more rounds; the relay's count is the figure.
Where the time went is noted: the seconds each side waited for its replies, the CPU seconds
it used, and our fsync calls (the durable queue). Targets: requests per write no more than
upstream's, median time <= 1.2x upstream's for ``save()``, ``bulk_create`` and query
``update()`` (the loop's time is information).

``python scripts/bench.py --only P9`` runs it alone.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import statistics
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol
from urllib.parse import urlsplit

from balsam_sync.client import Client
from balsam_sync.remote.transport import Reply
from balsam_sync.testing.faultproxy import FaultProxy

from .context import Context
from .data_account import IN_SLOT, OUT_SLOT, STAGES, Account, Builder
from .data_jobs import POST_CHUNK, create_dataset
from .database import jobs_on_server
from .harness import Row, Stat, fraction, log, timed
from .p9_writes import writer
from .server import Api, User
from .upstream import UpstreamSession

if TYPE_CHECKING:
    from _typeshed import FileDescriptorLike

ROUNDS = 30
PROXY_ROUNDS = 3
TIME_TARGET = 1.2
OTHER_JOBS = 200_000
FINISHED_SHARE = 0.7
GROUP = 100
LOOP_JOBS = 30
STATES = ("RUN_DONE", "RUNNING")  # a state group flips between these, one per round
RUNNING_STOP = STAGES.index("RUNNING in its batch job")
SIDES = ("ours", "upstream")


@dataclass(frozen=True)
class Op:
    key: str
    what: str
    timed_target: bool  # the time target applies (else the time is information)


OPS = (
    Op("save_finished", "job.save() of a finished job (tags changed)", True),
    Op("save_unfinished", "job.save() of an unfinished job (data changed)", True),
    Op("bulk_create", f"Job.objects.bulk_create of {GROUP} jobs (2 transfers each)", True),
    Op("update_ids", f"filter(id=[{GROUP} ids]).update(data=...)", True),
    Op("update_tags", f"filter(tags=...).update(data=...) of {GROUP} jobs", True),
    Op("update_state", f"filter(id=[{GROUP} ids]).update(state=...)", True),
    Op(
        "loop",
        f"the guide's loop: for job in filter(state='FAILED'): job.state = 'RESTART_READY'; "
        f"job.save(), {LOOP_JOBS} jobs",
        False,
    ),
)


@dataclass
class Jobs:
    """The jobs one side writes: one per round for saves, fixed groups for the others."""

    finished: list[int]
    unfinished: list[int]
    by_ids: list[int]
    tagged: list[int]
    tags: dict[str, str]
    states: list[int]
    loop: list[int]


def command(op: str, jobs: Jobs, side: str, n: int, app_id: int) -> dict[str, Any]:
    """What round ``n`` of ``op`` does for ``side`` (the same for both clients)."""
    if op == "save_finished":
        return {"op": op, "id": jobs.finished[n], "round": n}
    if op == "save_unfinished":
        return {"op": op, "id": jobs.unfinished[n], "round": n}
    if op == "bulk_create":
        specs = [
            {
                "workdir": f"p9/{side}/{n}/{i}",
                "app_id": app_id,
                "tags": {"p9b": f"{side}-{n}"},
                "transfers": {
                    IN_SLOT: {"location_alias": "remote", "path": f"/data/in/p9-{n}-{i}.dat"},
                    OUT_SLOT: {"location_alias": "remote", "path": f"/data/out/p9-{n}-{i}.dat"},
                },
            }
            for i in range(GROUP)
        ]
        return {"op": op, "jobs": specs}
    if op == "update_ids":
        return {"op": op, "ids": jobs.by_ids, "round": n}
    if op == "update_tags":
        return {"op": op, "tags": jobs.tags, "round": n}
    if op == "update_state":
        return {"op": op, "ids": jobs.states, "state": STATES[n % 2]}
    return {"op": op, "ids": jobs.loop}


class Done(NamedTuple):
    """One timed write: its seconds, the requests it sent, what it returned, the seconds it
    waited for its replies' heads, the CPU seconds its process used meanwhile (every thread),
    and (ours) the fsync calls it made and their seconds."""

    seconds: float
    sent: list[str]
    result: Any
    waited: float
    cpu: float
    fsyncs: int = 0
    fsync_seconds: float = 0.0


class Side(Protocol):
    """One client: prepare a write (untimed), then do it (timed, with the requests sent)."""

    def prepare(self, op: str, **args: Any) -> list[str]: ...

    def act(self) -> Done: ...


class Upstream:
    """Upstream ``balsam.api`` in its child process (``p9_writes.writer``)."""

    def __init__(self, user: User, ctx: Context) -> None:
        self.session = UpstreamSession(user, ctx.opts.workdir)

    def prepare(self, op: str, **args: Any) -> list[str]:
        return self.session.prepare(op, **args)

    def act(self) -> Done:
        answer = self.session.act()
        return Done(
            answer["seconds"], answer["requests"], answer["result"], answer["waited"], answer["cpu"]
        )

    def close(self) -> None:
        self.session.close()


class FsyncMeter:
    """Counts and times ``os.fsync`` while on: what our durable queue costs a write (the
    mirror's SQLite commits make no fsync in WAL mode, so these are the queue's)."""

    def __init__(self) -> None:
        self.calls = 0
        self.seconds = 0.0
        self.on = False
        self.original = os.fsync
        os.fsync = self.fsync

    def fsync(self, fd: FileDescriptorLike) -> None:
        if not self.on:
            self.original(fd)
            return
        started = time.perf_counter()
        try:
            self.original(fd)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - started

    def close(self) -> None:
        os.fsync = self.original


class Ours:
    """Our client, online, default policy: the same writes (``p9_writes.writer``)."""

    def __init__(self, client: Client, fsyncs: FsyncMeter) -> None:
        self.client = client
        self.sent: list[str] = []
        self.waited = 0.0
        self.fsyncs = fsyncs
        self.write: Callable[[], Any] | None = None
        client.transport.on_request.append(self.record)
        client.transport.on_response.append(self.replied)

    def record(self, method: str, url: str) -> None:
        self.sent.append(f"{method} {urlsplit(url).path}")

    def replied(self, reply: Reply) -> None:
        self.waited += reply.seconds

    def prepare(self, op: str, **args: Any) -> list[str]:
        self.sent.clear()
        self.write = writer(self.client.Job, op, args)
        return list(self.sent)

    def act(self) -> Done:
        write, self.write = self.write, None
        if write is None:
            raise RuntimeError("nothing prepared")
        self.sent.clear()
        self.waited = 0.0
        meter = self.fsyncs
        meter.calls, meter.seconds, meter.on = 0, 0.0, True
        started: list[float] = []

        def clocked() -> Any:
            # The CPU clock starts after timed()'s garbage collection, as upstream's does: a
            # full collection of this process's heap would otherwise count as the write's.
            started.append(time.process_time())
            return write()

        try:
            seconds, result = timed(clocked)
        finally:
            meter.on = False
        cpu = time.process_time() - started[0]
        return Done(seconds, list(self.sent), result, self.waited, cpu, meter.calls, meter.seconds)


@dataclass
class Calls:
    """One side's calls of one write: seconds, the requests each sent (in-process) and what
    it returned in the timed rounds; the requests the proxy relayed in the counted rounds
    (and what the side counted itself there)."""

    seconds: list[float] = field(default_factory=list)
    sent: list[list[str]] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    waited: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    fsyncs: list[int] = field(default_factory=list)
    fsync_seconds: list[float] = field(default_factory=list)
    relayed: list[list[str]] = field(default_factory=list)
    relayed_self: list[list[str]] = field(default_factory=list)
    relayed_lines: list[list[str]] = field(default_factory=list)


Found = dict[str, dict[str, Calls]]
"""op -> side -> its calls."""


def fill_server(ctx: Context) -> tuple[int, int]:
    """Jobs of other users on the server (filled up to ``OTHER_JOBS`` by a filler user in
    POSTs of 5000 when fewer); return (jobs before, jobs the filler made)."""
    before = jobs_on_server()
    if before >= OTHER_JOBS:
        return before, 0
    missing = math.ceil((OTHER_JOBS - before) / POST_CHUNK) * POST_CHUNK
    log(f"  the server holds {before:,} jobs: a filler user makes {missing:,} more ...")
    create_dataset(ctx.opts.api_root, missing)
    return before, missing


def allocate(acct: Account, n: int) -> dict[str, Jobs]:
    """Each side's jobs: ``n`` finished and ``n`` unfinished to save, a group of finished
    jobs for each data update, RUNNING jobs for the state update, others for the loop."""
    last = len(STAGES) - 1
    finished = [j for j, stop in acct.stops.items() if stop == last]
    running = [j for j, stop in acct.stops.items() if stop == RUNNING_STOP]
    other = [j for j, stop in acct.stops.items() if stop not in (last, RUNNING_STOP)]
    per_f, per_o = n + 2 * GROUP, n + LOOP_JOBS
    need = {"finished": 2 * per_f, "running": 2 * GROUP, "other": 2 * per_o}
    have = {"finished": len(finished), "running": len(running), "other": len(other)}
    if any(have[k] < need[k] for k in need):
        raise RuntimeError(f"the account is too small for P9: needs {need}, has {have}")
    out = {}
    for k, side in enumerate(SIDES):
        f = finished[k * per_f : (k + 1) * per_f]
        o = other[k * per_o : (k + 1) * per_o]
        out[side] = Jobs(
            finished=f[:n],
            unfinished=o[:n],
            by_ids=f[n : n + GROUP],
            tagged=f[n + GROUP :],
            tags={"p9g": side},
            states=running[k * GROUP : (k + 1) * GROUP],
            loop=o[n:],
        )
    return out


def tag_groups(api: Api, jobs: dict[str, Jobs]) -> None:
    """Tag each side's tag group, so that ``filter(tags=...)`` finds exactly it."""
    for mine in jobs.values():
        patch = [{"id": j, "tags": {"exp": "acct", **mine.tags}} for j in mine.tagged]
        api.call("PATCH", "/jobs/", json=patch)
        if api.count("/jobs/", [("tags", f"{k}:{v}") for k, v in mine.tags.items()]) != GROUP:
            raise RuntimeError(f"the tag group {mine.tags} does not hold {GROUP} jobs")


class Relay:
    """The fault proxy without faults: every request it relays, as "METHOD /path"."""

    def __init__(self, api_root: str) -> None:
        self.proxy = FaultProxy(api_root, log_size=100_000).start()

    def clear(self) -> None:
        self.proxy.reset_stats()

    def seen(self) -> list[str]:
        return [f"{e.method} {urlsplit(e.path).path}" for e in self.proxy.log]

    def lines(self) -> list[str]:
        """The request lines, queries shortened (an id list is a few hundred ids)."""
        return [f"{e.method} {short(e.path)}" for e in self.proxy.log]

    def close(self) -> None:
        self.proxy.stop()


def short(target: str) -> str:
    """A request target with its repeated parameters counted: ``/jobs/?id=1&id=2&limit=5``
    -> ``/jobs/?id=(2 values)&limit=5``."""
    parts = urlsplit(target)
    if not parts.query:
        return parts.path
    pairs = [pair.partition("=") for pair in parts.query.split("&")]
    counts = Counter(name for name, _, _ in pairs)
    shown = {
        name: value if counts[name] == 1 else f"({counts[name]} values)" for name, _, value in pairs
    }
    return parts.path + "?" + "&".join(f"{k}={v}" for k, v in shown.items())


def one_round(
    sides: dict[str, Side],
    jobs: dict[str, Jobs],
    n: int,
    app_id: int,
    into: Found | None,
    relay: Relay | None = None,
) -> None:
    """Every write once for each side, the side going first alternating by round; with
    ``relay``, the requests it relayed are recorded, not the time."""
    order = SIDES if n % 2 == 0 else SIDES[::-1]
    for op in OPS:
        for side in order:
            sides[side].prepare(**command(op.key, jobs[side], side, n, app_id))
            if relay is not None:
                relay.clear()
            done = sides[side].act()
            check(op.key, side, done.result)
            if into is None:
                continue  # a warm-up
            calls = into[op.key][side]
            if relay is not None:
                calls.relayed.append(relay.seen())
                calls.relayed_self.append(done.sent)
                calls.relayed_lines.append(relay.lines())
                continue
            calls.seconds.append(done.seconds)
            calls.sent.append(done.sent)
            calls.results.append(done.result)
            calls.waited.append(done.waited)
            calls.cpu.append(done.cpu)
            calls.fsyncs.append(done.fsyncs)
            calls.fsync_seconds.append(done.fsync_seconds)


def check(op: str, side: str, result: Any) -> None:
    """Raise unless the write did what it should (so both sides are timed doing the same)."""
    want = {"loop": LOOP_JOBS, "save_finished": None, "save_unfinished": None}.get(op, GROUP)
    got = result[0] if op == "loop" else result
    if got != want:
        raise RuntimeError(f"{side} {op}: returned {result!r}, expected {want!r}")


@dataclass
class Setup:
    acct: Account
    jobs: dict[str, Jobs]
    jobs_before: int
    filler: int


def set_up(ctx: Context) -> Setup:
    before, filler = fill_server(ctx)
    n_jobs = max(3000, ctx.opts.jobs // 5)
    log(f"  building an account of {n_jobs} jobs ({FINISHED_SHARE:.0%} finished) ...")
    acct = Builder(ctx.opts.api_root, n_jobs, finished_share=FINISHED_SHARE).build()
    log(f"  built in {acct.seconds:.0f} s: {acct.counts}")
    jobs = allocate(acct, ROUNDS + PROXY_ROUNDS + 2)
    tag_groups(Api(acct.user), jobs)
    return Setup(acct, jobs, before, filler)


def pulled(ctx: Context, user: User, name: str) -> Client:
    """Our client with a mirror that holds the account (as the daemon keeps it)."""
    client = ctx.connect(user, ctx.home(name))
    seconds, report = timed(client.pull)
    log(f"  {name}: pull {report} in {seconds:.1f} s")
    return client


def measure(ctx: Context, setup: Setup) -> tuple[Found, dict[str, Any]]:
    """The timed rounds (direct), then the counted ones (through the relay)."""
    acct, jobs = setup.acct, setup.jobs
    into: Found = {op.key: {side: Calls() for side in SIDES} for op in OPS}
    extra: dict[str, Any] = {}
    fsyncs = FsyncMeter()
    try:
        ours = Ours(pulled(ctx, acct.user, "p9"), fsyncs)
        upstream = Upstream(acct.user, ctx)
        try:
            sides: dict[str, Side] = {"ours": ours, "upstream": upstream}
            one_round(sides, jobs, 0, acct.app_id, None)  # warm-up
            for n in range(1, ROUNDS + 1):
                one_round(sides, jobs, n, acct.app_id, into)
                if n % 10 == 0:
                    log(f"  {n}/{ROUNDS} rounds")
        finally:
            upstream.close()
        counted(ctx, setup, into, extra, fsyncs)
    finally:
        fsyncs.close()
    ours.client.push()  # takes the creation tags off the jobs the timed rounds made
    return into, extra


def counted(
    ctx: Context, setup: Setup, into: Found, extra: dict[str, Any], fsyncs: FsyncMeter
) -> None:
    """The rounds whose requests the relay counts (a second client of each side)."""
    acct, jobs = setup.acct, setup.jobs
    relay = Relay(ctx.opts.api_root)
    via = dataclasses.replace(acct.user, api_root=relay.proxy.url)
    ours_relayed = Ours(pulled(ctx, via, "p9-relayed"), fsyncs)
    upstream = Upstream(via, ctx)
    try:
        sides: dict[str, Side] = {"ours": ours_relayed, "upstream": upstream}
        first = ROUNDS + 1
        one_round(sides, jobs, first, acct.app_id, None, relay)  # warm-up
        for n in range(first + 1, first + 1 + PROXY_ROUNDS):
            one_round(sides, jobs, n, acct.app_id, into, relay)
        relay.clear()
        report = ours_relayed.client.push()
        extra["push_after"] = {"report": str(report), "requests": relay.seen()}
    finally:
        upstream.close()
        relay.close()


def shape(lines: list[str]) -> str:
    """Requests as "30 x PUT /jobs/{id} + GET /jobs/" (in the order first sent)."""
    counts: Counter[str] = Counter(re.sub(r"/\d+", "/{id}", line) for line in lines)
    return " + ".join(f"{n} x {k}" if n > 1 else k for k, n in counts.items()) or "none"


def shapes(calls: list[list[str]]) -> str:
    """The request shapes of several calls, with how many calls had each."""
    seen = Counter(shape(lines) for lines in calls)
    return "; ".join(f"{k} ({n} of {len(calls)})" for k, n in seen.most_common())


def ms(values: list[float]) -> str:
    return f"{statistics.median(values) * 1000:.1f} ms"


def breakdown(ours: Calls, up: Calls) -> str:
    """Where the time went (medians over the timed rounds)."""
    return (
        f"time (medians): ours {ms(ours.seconds)}, {ms(ours.waited)} of it awaiting replies, "
        f"{statistics.median(ours.fsyncs):g} fsync calls taking {ms(ours.fsync_seconds)}, "
        f"CPU {ms(ours.cpu)}; upstream {ms(up.seconds)}, {ms(up.waited)} of it awaiting "
        f"replies, CPU {ms(up.cpu)}"
    )


def add_rows(ctx: Context, setup: Setup, into: Found, extra: dict[str, Any]) -> None:
    others = setup.jobs_before + setup.filler
    r = Row("P9", "jobs of other users on the server while P9 measured", target="≥ 200,000")
    r.ratio_text = f"{others:,} (SELECT count(*) FROM jobs: {setup.jobs_before:,}" + (
        f", then a filler user made {setup.filler:,})" if setup.filler else ")"
    )
    r.met = others >= OTHER_JOBS
    ctx.rows.append(r)
    for op in OPS:
        ours, up = into[op.key]["ours"], into[op.key]["upstream"]
        n_ours = statistics.median(len(x) for x in ours.relayed)
        n_up = statistics.median(len(x) for x in up.relayed)
        row = Row(
            "P9",
            op.what,
            Stat(ours.seconds),
            "ours",
            Stat(up.seconds),
            "upstream balsam.api",
        )
        fraction(row, TIME_TARGET if op.timed_target else None)
        time_text = row.ratio_text
        row.ratio_text = f"{time_text}; requests {n_ours:g} vs {n_up:g}"
        row.target = (
            f"≤ {TIME_TARGET:g}x, requests ≤ upstream's"
            if op.timed_target
            else "requests ≤ upstream's (time: info)"
        )
        agree = all(a == b for a, b in zip(ours.relayed, ours.relayed_self, strict=True)) and all(
            a == b for a, b in zip(up.relayed, up.relayed_self, strict=True)
        )
        row.met = (row.met is not False) and n_ours <= n_up
        row.notes.append(f"requests, relayed: ours {shapes(ours.relayed)}")
        row.notes.append(f"requests, relayed: upstream {shapes(up.relayed)}")
        row.notes.append(
            f"requests in the timed rounds: ours {shapes(ours.sent)}; upstream {shapes(up.sent)}"
        )
        if not agree:
            row.notes.append("WARNING: a side's own count differs from the relay's")
        row.notes.append(breakdown(ours, up))
        if n_ours > n_up:
            row.notes.append(
                "more requests than upstream; the request lines of a relayed round: ours "
                + ", ".join(ours.relayed_lines[-1])
                + "; upstream "
                + ", ".join(up.relayed_lines[-1])
            )
        if op.key == "loop":
            sources = Counter(str(result[1]) for result in ours.results)
            row.notes.append(f"our loop's query answered from: {dict(sources)}")
        ctx.rows.append(row)
    push = extra.get("push_after", {})
    if push:
        ctx.rows[-1].notes.append(
            f"deferred: our next push() after the counted rounds sent {shape(push['requests'])}"
            f" ({push['report']}): the creation tags of the jobs bulk_create made"
        )


def run(ctx: Context) -> None:
    """Add the P9 rows to the run."""
    setup = set_up(ctx)
    into, extra = measure(ctx, setup)
    ctx.info["P9"] = {
        "jobs_on_server_before": setup.jobs_before,
        "filler_jobs": setup.filler,
        "jobs_on_server_after": jobs_on_server(),
        "account": {
            "user": setup.acct.user.username,
            "rows": setup.acct.counts,
            "finished_share": FINISHED_SHARE,
            "seconds_to_build": setup.acct.seconds,
        },
        "rounds": ROUNDS,
        "relayed_rounds": PROXY_ROUNDS,
        "push_after_relayed_rounds": extra.get("push_after"),
    }
    add_rows(ctx, setup, into, extra)
