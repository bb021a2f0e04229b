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
previous value until the next pull. Transfer items and events of never-read finished jobs
(history) are the exception: they are read ``history_per_pull`` jobs at a time, and until they
are all in, the mirror does not claim to hold these resources (their queries go to the server).

**What an incremental pull reads** (see also sync/small.py, sync/children.py,
sync/deletions.py): the jobs stamped since the watermark; the job count (deletions); sites and
apps whole; unfinished batch jobs and the batch job count; transfer items in motion; and the
transfer items and events of the jobs that changed. An idle pull of an account is seven small
requests. Every ``reconcile_seconds`` (and on ``pull(full=True)``) a pull re-reads everything.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from ..cache import Mirror
from ..remote.rest import Remote
from ..remote.serverclock import Clock
from ..remote.transport import Reply
from ..resources import JOB, RESOURCES, Row
from ..schemas import JobState
from ..spec import QuerySpec
from ..utc import canonical_time, now
from .children import JOBS_PHASE, ChildrenReader, plan, urgent_in
from .deletions import DeletedJobs
from .pages import id_pages, job_pages, prefetched
from .small import SmallResources

__all__ = ["Progress", "PullOptions", "PullReport", "Puller", "prefetched"]

UNFINISHED_JOB_STATES = tuple(s.value for s in JobState if s.value not in JOB.done_states)
WHOLE_WHEN_SHARE = 4
"""A first pull reads every transfer item and event at once when at least a quarter of the
jobs need theirs: by job, each 500 jobs cost two requests with a fixed cost on the server."""
Progress = Callable[[str, int, int | None], None]
"""Called as (phase, done so far, total if known) while a pull runs. A phase is a resource, in
rows, or ``children.JOBS_PHASE``: the transfer items and events read by job, in jobs. Given a
progress callback, a pull asks the server's count before listing every transfer item or event
(one cheap request each), so that every phase has a total."""


@dataclass(frozen=True)
class PullOptions:
    """How a pull trades bytes for certainty (see ``balsam_sync.config.Settings``)."""

    max_request_seconds: float = 120.0
    reconcile_seconds: float = 86_400.0
    history: int = 1000
    """Most never-read finished jobs whose children one pull reads (``history_per_pull``)."""
    workers: int = 2


@dataclass
class PullReport:
    """What one pull did, per resource, and what it cost."""

    fetched: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    full: bool = False
    started_at: datetime | None = None
    requests: int = 0
    bytes: int = 0
    seconds: float = 0.0
    """Server time: from sending each request to its reply, summed (sync/cost.py)."""
    history_left: int = 0
    """Finished jobs whose transfer items and events are still to be read by later pulls."""

    def __str__(self) -> str:
        parts = [f"{r}: {n} fetched" for r, n in self.fetched.items()]
        parts += [f"{r}: {n} deleted" for r, n in self.deleted.items() if n]
        if self.history_left:
            parts.append(f"history of {self.history_left} jobs still to read")
        kind = "full" if self.full else "incremental"
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
        self.counting = progress is not None
        """Ask the server's counts that only the progress needs (the totals of listings)."""
        self.totals: dict[str, int] = {}
        self.options = options or PullOptions()
        self.read_at = now()

    def pull(self, full: bool = False) -> PullReport:
        """Pull every resource; ``full`` re-reads everything instead of what can have changed."""
        self.remote.transport.read_clock()  # the start below is the server's time, not ours
        started = self.clock()
        self.read_at = now()  # this machine's clock: no request of this pull was sent before
        report = PullReport(started_at=started)
        meter = _Meter(report)
        hooks = self.remote.transport.on_response
        hooks.append(meter)
        try:
            self._pull(report, full or self._reconcile_due(started), meter)
        finally:
            hooks.remove(meter)
        return report

    def _reconcile_due(self, now: datetime) -> bool:
        """A full pull is due when the last one (or the first pull) is older than the setting."""
        last = self.mirror.reconciled_at()
        return last is not None and (now - last).total_seconds() >= self.options.reconcile_seconds

    def _note(self, report: PullReport, jobs: Future[int]) -> Callable[[str, int], None]:
        """Count the rows read, with the total of each listing: every job (``jobs``), the jobs
        stamped since the watermark (their first page's count), a counted listing; a listing
        of its own (sites, apps, batch jobs) is whole when noted."""
        lock = threading.Lock()

        def note(name: str, rows: int) -> None:
            with lock:
                report.fetched[name] = report.fetched.get(name, 0) + rows
                done = report.fetched[name]
            whole = name == "Job" and report.full
            total = jobs.result() if whole else self.totals.get(name, done)
            self.progress(name, done, total)

        return note

    def _pull(self, report: PullReport, full: bool, meter: _Meter) -> None:
        """``full``: re-read everything. A first pull lists everything too, but reads the
        history of finished jobs ``history_per_pull`` at a time, as incremental pulls do."""
        started = report.started_at or self.clock()
        watermark = None if full else self.mirror.watermark("Job")
        report.full = watermark is None
        for name in ("Job", "TransferItem", "EventLog"):
            report.fetched.setdefault(name, 0)
        with self._children(report, started) as children, ThreadPoolExecutor(3) as side:
            # Requests that do not depend on the job listing run meanwhile (the server answers
            # in parallel): the count behind the deletion check (taken before the listing or
            # after it, the two-way check holds), sites, apps, batch jobs, moving items.
            counted = side.submit(self._count, {})
            note = self._note(report, counted)
            small = SmallResources(self.remote, self.mirror, note, self.read_at)
            smalls = side.submit(self._pull_small, report, small)
            pages = self._job_pages(watermark)  # on the wire from now on
            try:
                whole = full or (report.full and self._most_need_children(counted))
                listed = self._pull_jobs(pages, note, None if whole else children)
            finally:
                pages.close()
            smalls.result()
            gone = self._replace_jobs(small, listed) if report.full else 0
            report.deleted["Job"] = gone + DeletedJobs(self.remote, small).find(counted.result())
            if whole:
                self._whole_children(report, small, listed, started)
            children.store_ready()
            unsynced = [u for u in self.mirror.unsynced_jobs() if u.id not in children.queued]
            budget = None if full else self.options.history
            rest, report.history_left = plan(unsynced, budget, first=report.full)
            children.submit(rest)
            for name, rows in children.finish().items():
                report.fetched[name] += rows
        self.mirror.pull_done(
            started, self._next_watermark(started), full=report.full, marks_checked=full
        )

    def _count(self, filters: dict[str, Any]) -> int:
        return self.remote.count(RESOURCES["Job"], QuerySpec("Job").with_filters(filters))

    def _most_need_children(self, total: Future[int]) -> bool:
        """Whether reading every transfer item and event beats reading them by job (a first
        pull of an account whose jobs are mostly unfinished: requests by job cost more)."""
        unfinished = self._count({"state": UNFINISHED_JOB_STATES})
        finished = total.result() - unfinished
        needed = unfinished + (finished if finished <= self.options.history else 0)
        return needed * WHOLE_WHEN_SHARE >= total.result()

    def _job_pages(self, since: str | None) -> Generator[list[Row], None, None]:
        """Every job when ``since`` is None, else those stamped since (sync/pages.py)."""
        if since is None:
            return prefetched(id_pages(self.remote, workers=self.options.workers))
        return prefetched(job_pages(self.remote, since, on_count=self._total_of("Job")))

    def _total_of(self, name: str) -> Callable[[int], None]:
        """Record the total of ``name``'s listing (for the progress)."""
        return lambda total: self.totals.__setitem__(name, total)

    def _pull_small(self, report: PullReport, small: SmallResources) -> None:
        for name in ("Site", "App"):
            report.deleted[name] = small.whole(name)
        report.deleted["BatchJob"] = small.batch_jobs(report.full)
        report.deleted["TransferItem"] = 0 if report.full else small.moving_transfer_items()

    def _whole_children(
        self, report: PullReport, small: SmallResources, listed: dict[int, str], at: datetime
    ) -> None:
        """Re-read every transfer item and event; the listed jobs are then in sync."""
        for name in ("TransferItem", "EventLog"):
            if self.counting:  # the total first, so that the bar is not an open-ended count
                total = self.remote.count(RESOURCES[name], QuerySpec(name))
                self.totals[name] = report.fetched[name] + total
                self.progress(name, report.fetched[name], self.totals[name])
            report.deleted[name] = report.deleted.get(name, 0) + small.whole(name)
        self.mirror.children_in_sync(listed, at.isoformat())

    def _children(self, report: PullReport, started: datetime) -> ChildrenReader:
        def progress(name: str, done: int, total: int | None) -> None:
            if name == JOBS_PHASE:
                self.progress(name, done, total)
            else:  # rows of the jobs read so far: their total is not known
                self.progress(name, report.fetched[name] + done, None)

        return ChildrenReader(
            self.remote, self.mirror, started.isoformat(), self.options.workers, progress
        )

    def _pull_jobs(
        self,
        pages: Iterator[list[Row]],
        note: Callable[[str, int], None],
        children: ChildrenReader | None,
    ) -> dict[int, str]:
        """Store the listed jobs and queue the children of those that need them (unless
        ``children`` is None); return the listed ids and stamps."""
        listed: dict[int, str] = {}
        for page in pages:
            if children is not None:
                children.submit(urgent_in(page, self.mirror.marks([r["id"] for r in page])))
            self.mirror.server_rows("Job", page, merge=True, read_at=self.read_at)
            if children is not None:
                children.store_ready()
            listed.update((r["id"], r["last_update"]) for r in page)
            note("Job", len(page))
        return listed

    def _replace_jobs(self, small: SmallResources, listed: dict[int, str]) -> int:
        missing = self.mirror.confirmed_ids("Job") - set(listed)
        return small.settle(RESOURCES["Job"], missing)

    def _next_watermark(self, started: datetime) -> str:
        """The server's clock when the pull started (so before the listing), minus the
        longest a request may run."""
        margin = timedelta(seconds=self.options.max_request_seconds)
        return canonical_time((started - margin).isoformat())
