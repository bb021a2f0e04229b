"""P1: the cached query vs the same query online vs upstream ``balsam.api`` (target 50x).

``Job.objects.filter(state="FAILED", tags={"exp": "p1"}).order_by("-last_update")[0:1000]``
on the jobs data set, after ``client.pull()``; and the same followed by reading ``id``,
``workdir``, ``state`` and ``tags`` of every job (the user's loop), against upstream doing
the same online (target 50x).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from balsam_sync.client import Client

from .context import Context
from .harness import Row, Stat, fraction, log, speedup, timed
from .upstream import run_upstream

P1_SLICE = 1000
TARGET = 50.0


def query(client: Client, policy: str) -> Any:
    q = client.Job.objects.filter(state="FAILED", tags={"exp": "p1"}).order_by("-last_update")
    if policy == "offline":
        q = q.offline()
    elif policy == "online":
        q = q.online()
    return q[0:P1_SLICE]


def evaluate(client: Client, policy: str) -> Callable[[], tuple[list[Any], Any]]:
    def run() -> tuple[list[Any], Any]:
        q = query(client, policy)
        return list(q), q

    return run


def evaluate_and_read(client: Client, policy: str) -> Callable[[], list[tuple[Any, ...]]]:
    # Rows are unpacked when a field is first read: this is what a loop over them costs.
    def run() -> list[tuple[Any, ...]]:
        return [(j.id, j.workdir, j.state, j.tags) for j in query(client, policy)]

    return run


@dataclass
class Samples:
    cached: list[float] = field(default_factory=list)
    online: list[float] = field(default_factory=list)
    default: list[float] = field(default_factory=list)
    read_cached: list[float] = field(default_factory=list)
    read_online: list[float] = field(default_factory=list)
    cached_ids: list[int] = field(default_factory=list)
    online_ids: list[int] = field(default_factory=list)
    same_reads: bool = False
    read_values: list[list[Any]] = field(default_factory=list)
    sources: str = ""
    default_source: Any = None


def measure(client: Client, n_fast: int, n_online: int) -> Samples:
    """Cached and online runs interleaved, so drift hits both sides alike; then the default
    policy right after a pull."""
    s = Samples()
    evaluate(client, "offline")()  # warm-up
    evaluate(client, "online")()
    cached_items: list[Any] = []
    online_items: list[Any] = []
    read_cached: list[tuple[Any, ...]] = []
    read_online: list[tuple[Any, ...]] = []
    q_cached: Any = None
    q_online: Any = None
    for i in range(n_fast):
        seconds, (cached_items, q_cached) = timed(evaluate(client, "offline"))
        s.cached.append(seconds)
        seconds, read_cached = timed(evaluate_and_read(client, "offline"))
        s.read_cached.append(seconds)
        if i < n_online:
            seconds, (online_items, q_online) = timed(evaluate(client, "online"))
            s.online.append(seconds)
            seconds, read_online = timed(evaluate_and_read(client, "online"))
            s.read_online.append(seconds)
    # Default policy right after a pull (fresh for max_age, 30 s): must answer from the
    # mirror. One more (incremental) pull, then the samples in one block within that time.
    client.pull()
    _, (_, q_default) = timed(evaluate(client, "default"))
    s.default_source = q_default.source
    s.default.extend(timed(evaluate(client, "default"))[0] for _ in range(n_fast))
    s.cached_ids = [j.id for j in cached_items]
    s.online_ids = [j.id for j in online_items]
    s.same_reads = read_cached == read_online
    s.read_values = [comparable(r) for r in read_cached]
    s.sources = (
        f"offline={q_cached.source}, online={q_online.source}, default policy={s.default_source}"
    )
    return s


def comparable(read: tuple[Any, ...]) -> list[Any]:
    """What one read of the loop says, as upstream's side reports it (upstream_child.py)."""
    job_id, workdir, state, tags = read
    return [job_id, str(workdir), getattr(state, "value", state), tags]


@dataclass
class Upstream:
    query: Stat
    reads: Stat
    same_reads: bool


def upstream(ctx: Context, s: Samples, notes: list[str]) -> Upstream | None:
    """The P1 query (and the loop) with upstream ``balsam.api``; keeps its count timings
    for P6."""
    log("  upstream balsam.api P1 ...")
    try:
        up = run_upstream(ctx.dataset().user, ctx.opts.workdir, "p1", ctx.opts.reps_upstream)
    except Exception as exc:
        notes.append(f"upstream failed: {exc}")
        return None
    ctx.upstream_count = Stat(up["count_times"])
    notes.append("upstream answer identical: " + ("yes" if up["ids"] == s.online_ids else "NO"))
    return Upstream(Stat(up["times"]), Stat(up["read_times"]), up["reads"] == s.read_values)


def run(ctx: Context) -> None:
    data = ctx.dataset()
    client = ctx.synced()
    s = measure(client, max(7, ctx.opts.reps_fast), max(7, ctx.opts.reps_slow))
    expected = min(P1_SLICE, data.failed_p1)
    notes = [
        f"{len(s.cached_ids)} jobs (expected {expected}); sources: {s.sources}",
        "same ids and order as the server: "
        + ("yes" if s.cached_ids == s.online_ids else "NO (cached answer differs!)"),
    ]
    up = upstream(ctx, s, notes)
    add_rows(ctx, s, up, notes)
    ctx.info["P1"] = {"cached_ids_equal_online": s.cached_ids == s.online_ids}
    # The loop (query, instances, reads): the stricter of the P1 targets.
    ctx.profiles["P1"] = lambda: lambda: [evaluate_and_read(client, "offline")() for _ in range(50)]
    ctx.profiles["P1-online"] = lambda: lambda: [list(query(client, "online")) for _ in range(5)]


def add_rows(ctx: Context, s: Samples, up: Upstream | None, notes: list[str]) -> None:
    cached, online = Stat(s.cached), Stat(s.online)
    what = f"cached query (.offline(), after pull) vs .online(), [0:{P1_SLICE}] of FAILED p1 jobs"
    ctx.rows.append(
        speedup(Row("P1", what, cached, "cached", online, "ours .online()", notes=notes), TARGET)
    )
    if up is not None:
        row = Row(
            "P1",
            "cached query vs upstream balsam.api",
            cached,
            "cached",
            up.query,
            "upstream balsam.api",
        )
        row = speedup(row, TARGET)
        row.target += " (anchors)"
        ctx.rows.append(row)
        what = "our .online() vs upstream balsam.api (info)"
        row = Row("P1", what, online, "ours .online()", up.query, "upstream balsam.api")
        ctx.rows.append(fraction(row, None))
    what = f"default policy right after pull (source={s.default_source}) vs .online()"
    row = Row("P1", what, Stat(s.default), "default policy", online, "ours .online()")
    ctx.rows.append(speedup(row, TARGET))
    if up is not None:
        row = Row(
            "P1",
            "the user's loop: the cached query, then id, workdir, state and tags of every job, "
            "vs upstream balsam.api doing the same",
            Stat(s.read_cached),
            "cached + reads",
            up.reads,
            "upstream balsam.api + reads",
            notes=["same values read as upstream: " + ("yes" if up.same_reads else "NO")],
        )
        ctx.rows.append(speedup(row, TARGET))
    row = Row(
        "P1",
        "the same loop vs our .online() doing it (info)",
        Stat(s.read_cached),
        "cached + reads",
        Stat(s.read_online),
        "ours .online() + reads",
        notes=["same values read: " + ("yes" if s.same_reads else "NO")],
    )
    ctx.rows.append(speedup(row, None))
