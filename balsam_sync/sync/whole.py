"""A first or full pull: every job, transfer item and event, listed whole and kept.

The listings follow a plan kept in the mirror (cache/pullplan.py): the jobs (by
``last_update``), the transfer items (by id) and the events (by timestamp, in two halves when
there are many) are read side by side, each page stored with its range's cursor as soon as it
arrives, while the next page is on the wire (sync/pages.py). The server is the limit: the
slow listings (items and events, which the server serializes row by row) run alongside the
fast one (jobs). A pull killed at any point keeps every page it stored; the next pull
continues each range where it stands instead of starting over.

Which jobs the listed children are complete for: a gap-free listing holds every row that
existed when it began, so a job's children are all in once the listings end if the job's
state, as stored, was committed before they began. That is known of a job stamped more than
``max_request_seconds`` before they began; the others (jobs that changed meanwhile) are read by
job at the end. When many jobs changed that recently (an account just written to), the jobs
are listed first and the children after them, so that every listed state was committed.

A plan continued by a later pull also reads again the jobs stamped since it began (less the
overlap every watermark keeps, ``max_request_seconds``): the pages stored before cannot show
what changed since, and the jobs that changed are the ones read by job at the end.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta

from ..cache import Cursor, Mirror, PlanKind, PullPlan
from ..remote.rest import Remote
from ..resources import RESOURCES, Row
from ..spec import QuerySpec
from ..utc import canonical_time
from .pages import ORDER_OF, Page, SideBySide, job_spec, read_range, stamp_before, start

CHILDREN = ("TransferItem", "EventLog")
TIMESTAMP = ORDER_OF["EventLog"]
RECENT_SHARE = 10
"""The jobs are listed before their children when more than a tenth of them changed within
``max_request_seconds``: those would be read again by job."""
Progress = Callable[[str, int, int | None], None]


@dataclass
class Listed:
    """What the whole listings of this pull did."""

    plan: PullPlan | None
    """The plan listed (None: the jobs changed since the watermark alone)."""
    resumed: bool
    """The plan was begun by an earlier pull: the ids listed here are not all of them."""
    new: dict[str, int] = field(default_factory=dict)
    """Rows each listing added (its progress; overlaps and rows read again not counted)."""
    ids: dict[str, set[int]] = field(default_factory=dict)
    """Ids of the rows listed by this pull, per resource."""
    stamps: dict[int, str] = field(default_factory=dict)
    """The jobs this pull listed, and their ``last_update`` as listed."""
    waiting: float = 0.0
    """Seconds the pull waited for the server's pages (nothing else to store meanwhile)."""
    storing: float = 0.0
    """Seconds the pull spent storing pages."""


class WholeListings:
    """Runs the listings of a plan to their end, storing each page as it arrives."""

    def __init__(
        self,
        remote: Remote,
        mirror: Mirror,
        page_rows: int,
        max_request_seconds: float,
        progress: Progress,
        read_at: datetime,
    ) -> None:
        self.remote = remote
        self.read_at = read_at  # no request of the pull was sent before (this machine's clock)
        self.mirror = mirror
        self.page_rows = page_rows
        self.margin = timedelta(seconds=max_request_seconds)
        self.progress = progress
        self._totals: dict[tuple[str, int], tuple[int, int]] = {}
        """(resource, part) -> (rows stored, rows in all) of each range, for the progress."""

    def run(self, kind: PlanKind, started: datetime, plan: PullPlan | None) -> Listed:
        """List what ``plan`` has left (None: begin a new plan of ``kind`` at ``started``)."""
        resumed = plan is not None
        if plan is None:
            plan = PullPlan(kind, started, (start("Job"),))
            self.mirror.plan_pull(plan)
        done = Listed(plan, resumed)
        for cursor in plan.cursors:
            self._totals[(cursor.resource, cursor.part)] = (cursor.stored, cursor.total or 0)
        (jobs,) = plan.of("Job")
        if resumed:  # what changed since the plan began is read again (see the docstring)
            jobs = jobs.reopened(self._since(plan.started))
        children = [c for c in plan.cursors if c.resource in CHILDREN]
        before = None if plan.jobs_first else self._since(plan.children_from or started)
        with ThreadPoolExecutor(2, thread_name_prefix="balsam-sync-pull") as side:
            split = None
            if plan.children_from is None:
                # How to split the events (the longest listing) is asked meanwhile.
                split = side.submit(self._events)
                if not self._jobs_first(started, side):
                    children = self._begin(split.result(), started, jobs_first=False)
                    before, split = self._since(started), None
            self._list([jobs, *(c for c in children if not c.done)], done)
            if split is not None:
                children = self._begin(split.result(), started, jobs_first=True)
                before = None
                self._list(children, done)
        self.mirror.children_listed(plan.started.isoformat(), before)
        return done

    def _since(self, moment: datetime) -> str:
        """The stamp a request committed by ``moment`` cannot be newer than."""
        return canonical_time((moment - self.margin).isoformat())

    def _jobs_first(self, started: datetime, side: ThreadPoolExecutor) -> bool:
        """Whether to list the jobs before their children: when many jobs changed within
        ``max_request_seconds``, side by side would leave them to be read again by job."""
        res = RESOURCES["Job"]
        total = side.submit(self.remote.count, res, QuerySpec("Job"))
        recent = self.remote.count(res, job_spec(self._since(started)))
        return recent * RECENT_SHARE > total.result()

    def _begin(self, events: list[Cursor], at: datetime, jobs_first: bool) -> list[Cursor]:
        """Begin the listings of transfer items and events."""
        children = [start("TransferItem"), *events]
        self.mirror.children_begin(tuple(children), at, jobs_first)
        for cursor in children:
            self._totals[(cursor.resource, cursor.part)] = (0, cursor.total or 0)
        return children

    def _events(self) -> list[Cursor]:
        """The ranges the events are read in: two halves by timestamp, side by side, when
        there are more than two pages of them (the server serves them slowly)."""
        res = RESOURCES["EventLog"]
        count = self.remote.count(res, QuerySpec("EventLog"))
        if count < 2 * self.page_rows:
            return [replace(start("EventLog"), total=count)]
        half = count // 2
        middle = QuerySpec("EventLog").with_ordering(TIMESTAMP).with_window(half, half + 1)
        rows, _ = self.remote.select(res, middle)
        if not rows:
            return [replace(start("EventLog"), total=count)]
        at = str(rows[0][TIMESTAMP])
        return [
            Cursor("EventLog", 0, TIMESTAMP, None, stamp_before(at), total=half),
            Cursor("EventLog", 1, TIMESTAMP, at, None, total=count - half),
        ]

    def _list(self, cursors: list[Cursor], done: Listed) -> None:
        """Read ``cursors``' ranges side by side, storing each page as it arrives."""
        if not cursors:
            return
        readers = SideBySide([read_range(self.remote, c, self.page_rows) for c in cursors])
        try:
            for index, page in readers:
                began = time.perf_counter()
                self._store(cursors[index].resource, page, done)
                done.storing += time.perf_counter() - began
        finally:
            done.waiting += readers.waited

    def _store(self, name: str, page: Page, done: Listed) -> None:
        cursor = page.cursor
        before = self._count(name)
        self._totals[(name, cursor.part)] = (
            self._totals.get((name, cursor.part), (0, 0))[0],
            cursor.total or 0,
        )
        self.progress(name, before, self._total(name))  # the total first, then the rows
        self.mirror.listed(name, page.rows, cursor, self.read_at)
        if name == "Job" and cursor.done:
            self.mirror.jobs_listed()
        self._totals[(name, cursor.part)] = (cursor.stored, cursor.total or 0)
        done.new[name] = done.new.get(name, 0) + page.new
        done.ids.setdefault(name, set()).update(r["id"] for r in page.rows)
        if name == "Job":
            done.stamps.update(_stamps(page.rows))
        self.progress(name, self._count(name), self._total(name))

    def _count(self, name: str) -> int:
        return sum(stored for (n, _), (stored, _) in self._totals.items() if n == name)

    def _total(self, name: str) -> int:
        return sum(total for (n, _), (_, total) in self._totals.items() if n == name)


def _stamps(rows: list[Row]) -> Iterator[tuple[int, str]]:
    return ((r["id"], r["last_update"]) for r in rows)
