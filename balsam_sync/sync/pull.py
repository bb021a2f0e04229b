"""Bring the mirror up to the server's state, reading only what can have changed.

**Jobs and the watermark.** The server stamps ``last_update`` when a request *starts* and
commits it later (a 5000-job PATCH takes seconds), so a pull must never take the newest stamp
it saw as its next starting point: a slower request may still commit an older stamp. Each pull
lists the jobs with ``last_update >=`` the watermark, and the next watermark is the server's
clock when the pull started (``serverclock.py``: an estimate no frozen, stale or absurd
``Date`` can move forward) minus ``max_request_seconds``: a request stamped before that started
more than ``max_request_seconds`` before the listing, so it had committed and was listed.
Re-reading that overlap costs bytes only: rows equal to the mirror's are not rewritten
(``Store.merge``).

**What a pull guarantees.** When ``pull()`` returns, the mirror holds every change the server
committed before the pull started, provided no request runs longer than
``max_request_seconds`` before it commits; a row changed again while the pull ran may show its
previous value until the next pull. That includes the transfer items and events of every job:
after any pull that returns, every query about the account can be answered offline.

**A first (or full) pull** lists everything whole and keeps each page as it arrives
(sync/whole.py): a pull killed part-way is continued by the next one, which reads only what
the first had not stored. Until a pull completes, the mirror claims nothing it was not shown.

**What an incremental pull reads** (see also sync/small.py, sync/children.py,
sync/deletions.py): the jobs stamped since the watermark; the job count (deletions); sites and
apps whole; unfinished batch jobs and the batch job count; transfer items in motion; and the
transfer items and events of the jobs that changed. An idle pull of an account is seven small
requests. Every ``reconcile_seconds`` (and on ``pull(full=True)``) a pull re-reads everything.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..cache import Mirror, PlanKind, PullPlan
from ..remote.rest import Remote
from ..remote.serverclock import Clock
from ..remote.transport import Reply
from ..resources import RESOURCES, Row
from ..spec import QuerySpec
from ..utc import canonical_time, now
from .children import JOBS_PHASE, ChildrenReader, changed_in
from .deletions import DeletedJobs
from .pages import prefetched, read_range, rows_of, start
from .small import SmallResources
from .whole import CHILDREN, Listed, WholeListings

__all__ = ["Progress", "PullOptions", "PullReport", "Puller", "prefetched"]

Progress = Callable[[str, int, int | None], None]
"""Called as (phase, done so far, total if known) while a pull runs. A phase is a resource, in
rows, or ``children.JOBS_PHASE``: the transfer items and events read by job, in jobs. Every
listing reports its total with its first page (the server's count)."""


@dataclass(frozen=True)
class PullOptions:
    """How a pull trades bytes for certainty (see ``balsam_sync.config.Settings``)."""

    max_request_seconds: float = 120.0
    reconcile_seconds: float = 86_400.0
    page_rows: int = 20_000
    """Rows per page of the listings a pull reads."""
    workers: int = 2


@dataclass
class PullReport:
    """What one pull did, per resource, and what it cost."""

    fetched: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    full: bool = False
    """Everything was listed (a first or full pull)."""
    resumed: bool = False
    """The listings continued where a pull that did not complete left them."""
    started_at: datetime | None = None
    requests: int = 0
    bytes: int = 0
    seconds: float = 0.0
    """Server time: from sending each request to its reply, summed (sync/cost.py)."""
    wall: float = 0.0
    """Seconds the pull took."""
    waiting: float = 0.0
    """Seconds the pull waited for the server's pages with nothing else to store."""
    storing: float = 0.0
    """Seconds the pull spent storing the pages of its listings."""

    def __str__(self) -> str:
        parts = [f"{r}: {n} fetched" for r, n in self.fetched.items()]
        parts += [f"{r}: {n} deleted" for r, n in self.deleted.items() if n]
        kind = "full" if self.full else "incremental"
        if self.resumed:
            kind += " (resumed)"
        return f"{kind} pull ({', '.join(parts)}; {self.requests} requests, {self.bytes} bytes)"


class _Meter:
    """Counts the requests and bytes of the replies received while a pull runs."""

    def __init__(self, report: PullReport) -> None:
        self.report = report
        self.lock = threading.Lock()

    def __call__(self, reply: Reply) -> None:
        with self.lock:
            self.report.requests += 1
            self.report.bytes += reply.size
            self.report.seconds += reply.seconds


class Puller:
    """Pulls from one server into one mirror."""

    def __init__(
        self,
        remote: Remote,
        mirror: Mirror,
        progress: Progress | None = None,
        options: PullOptions | None = None,
        clock: Clock | None = None,
    ) -> None:
        self.remote = remote
        self.clock = clock or remote.transport.server_now  # the server's clock, estimated
        self.mirror = mirror
        self.progress = progress or (lambda _r, _n, _t: None)
        self.totals: dict[str, int] = {}
        self.options = options or PullOptions()
        self.read_at = now()

    def pull(self, full: bool = False) -> PullReport:
        """Pull every resource; ``full`` re-reads everything instead of what can have changed."""
        began = time.perf_counter()
        self.remote.transport.read_clock()  # the start below is the server's time, not ours
        started = self.clock()
        self.read_at = now()  # this machine's clock: no request of this pull was sent before
        report = PullReport(started_at=started)
        meter = _Meter(report)
        hooks = self.remote.transport.on_response
        hooks.append(meter)
        try:
            self._pull(report, full or self._reconcile_due(started))
        finally:
            hooks.remove(meter)
            report.wall = time.perf_counter() - began
        return report

    def _reconcile_due(self, now: datetime) -> bool:
        """A full pull is due when the last one (or the first pull) is older than the setting."""
        last = self.mirror.reconciled_at()
        return last is not None and (now - last).total_seconds() >= self.options.reconcile_seconds

    def _note(self, report: PullReport) -> Callable[[str, int], None]:
        """Count the rows read outside the listings (sites, apps, batch jobs, rows asked for by
        id), with the total of each listing when known; a listing of its own is whole when
        noted."""
        lock = threading.Lock()

        def note(name: str, rows: int) -> None:
            with lock:
                report.fetched[name] = report.fetched.get(name, 0) + rows
                done = report.fetched[name]
            self.progress(name, done, max(done, self.totals.get(name, done)))

        return note

    def _pull(self, report: PullReport, full: bool) -> None:
        """``full``: re-read everything and compare ids; a pull with no watermark yet, or a
        plan left by one that did not complete, lists everything too (sync/whole.py)."""
        started = report.started_at or self.clock()
        plan = None if full else self.mirror.pull_plan()
        watermark = None if full else self.mirror.watermark("Job")
        kind = PlanKind.FULL if full else (plan.kind if plan else PlanKind.FIRST)
        report.full = whole = full or plan is not None or watermark is None
        report.resumed = plan is not None
        for name in ("Job", *CHILDREN):
            report.fetched.setdefault(name, 0)
        with self._children(report, started) as children, ThreadPoolExecutor(3) as side:
            # Requests that do not depend on the listings run meanwhile (the server answers
            # in parallel): the count behind the deletion check (taken before the listing or
            # after it, the two-way check holds), sites, apps, batch jobs, moving items.
            counted = side.submit(self._count, {})
            note = self._note(report)
            small = SmallResources(self.remote, self.mirror, note, self.read_at)
            moving = not whole or report.resumed  # stored pages may hold items since moved
            smalls = side.submit(self._pull_small, report, small, whole, moving)
            if whole:
                listed = self._whole(report, kind, started, plan)
            else:
                listed = self._listed_jobs(watermark, children)
                report.fetched["Job"] += listed.new.get("Job", 0)
            smalls.result()
            compare = kind is PlanKind.FULL and not report.resumed and whole
            gone = self._replace(small, listed) if compare else {}
            report.deleted["Job"] = gone.get("Job", 0)
            report.deleted["Job"] += DeletedJobs(self.remote, small).find(counted.result())
            for name in CHILDREN:
                report.deleted[name] = report.deleted.get(name, 0) + gone.get(name, 0)
            children.store_ready()
            children.submit([u for u in self.mirror.unsynced_jobs() if u.id not in children.queued])
            for name, rows in children.finish().items():
                report.fetched[name] += rows
        self.mirror.pull_done(
            started,
            self._next_watermark(started),
            full=whole,
            marks_checked=kind is PlanKind.FULL and whole,
            plan_done=whole,
        )

    def _count(self, filters: dict[str, Any]) -> int:
        return self.remote.count(RESOURCES["Job"], QuerySpec("Job").with_filters(filters))

    def _pull_small(
        self, report: PullReport, small: SmallResources, whole: bool, moving: bool
    ) -> None:
        for name in ("Site", "App"):
            report.deleted[name] = small.whole(name)
        report.deleted["BatchJob"] = small.batch_jobs(whole)
        report.deleted["TransferItem"] = small.moving_transfer_items() if moving else 0

    def _whole(
        self, report: PullReport, kind: PlanKind, started: datetime, plan: PullPlan | None
    ) -> Listed:
        listings = WholeListings(
            self.remote,
            self.mirror,
            self.options.page_rows,
            self.options.max_request_seconds,
            self.progress,
            self.read_at,
        )
        listed = listings.run(kind, started, plan)
        for name, rows in listed.new.items():
            report.fetched[name] = report.fetched.get(name, 0) + rows
        report.waiting += listed.waiting
        report.storing += listed.storing
        return listed

    def _children(self, report: PullReport, started: datetime) -> ChildrenReader:
        def progress(name: str, done: int, total: int | None) -> None:
            if name == JOBS_PHASE:
                self.progress(name, done, total)
            else:  # rows of the jobs read so far: their total is not known
                self.progress(name, report.fetched[name] + done, None)

        return ChildrenReader(
            self.remote, self.mirror, started.isoformat(), self.options.workers, progress
        )

    def _listed_jobs(self, since: str | None, children: ChildrenReader) -> Listed:
        """Store the jobs stamped since the watermark and queue the children of those that
        changed; return what was listed."""
        cursor = start("Job", lower=since)
        pages = prefetched(
            rows_of(read_range(self.remote, cursor, self.options.page_rows), self._total_of("Job"))
        )
        listed = Listed(None, resumed=False)
        note = self._note_listed(listed)
        try:
            for page in pages:
                children.submit(changed_in(page, self.mirror.marks([r["id"] for r in page])))
                began = time.perf_counter()
                self.mirror.server_rows("Job", page, merge=True, read_at=self.read_at)
                listed.storing += time.perf_counter() - began
                children.store_ready()
                note(page)
        finally:
            pages.close()
        return listed

    def _note_listed(self, listed: Listed) -> Callable[[list[Row]], None]:
        def note(page: list[Row]) -> None:
            listed.stamps.update((r["id"], r["last_update"]) for r in page)
            listed.new["Job"] = len(listed.stamps)
            done = len(listed.stamps)
            self.progress("Job", done, max(done, self.totals.get("Job", done)))

        return note

    def _total_of(self, name: str) -> Callable[[int], None]:
        """Record the total of ``name``'s listing (for the progress)."""
        return lambda total: self.totals.__setitem__(name, total)

    def _replace(self, small: SmallResources, listed: Listed) -> dict[str, int]:
        """A full pull compares ids: rows the mirror holds and the listings did not show are
        asked for by id, and deleted if the server no longer has them."""
        gone = {}
        for name in ("Job", *CHILDREN):
            missing = self.mirror.confirmed_ids(name) - listed.ids.get(name, set())
            gone[name] = small.settle(RESOURCES[name], missing)
        return gone

    def _next_watermark(self, started: datetime) -> str:
        """The server's clock when the pull started (so before the listing), minus the
        longest a request may run."""
        margin = timedelta(seconds=self.options.max_request_seconds)
        return canonical_time((started - margin).isoformat())
