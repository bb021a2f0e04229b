"""A first or full pull: every job, then every transfer item and event, listed whole and kept.

The listings follow a plan kept in the mirror (cache/pullplan.py): the jobs are listed first
(by ``last_update``), then the transfer items (by id) and the events (by timestamp) side by
side, each page stored with its range's cursor as soon as it arrives, while the next page is
on the wire (sync/pages.py). A pull killed at any point keeps every page it stored; the next
pull continues each range where it stands instead of starting over.

Why the jobs first: when their listing ends, every job's state as listed was committed, so
the transfer items and events listed afterwards include every child of every job in that state
(a gap-free listing skips no row that existed when it began). Those jobs get their marks when
the children's listings end; a job that changed meanwhile (its stamp moved) is read by job.

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
from .pages import ORDER_OF, Page, SideBySide, read_range, stamp_before, start

CHILDREN = ("TransferItem", "EventLog")
TIMESTAMP = ORDER_OF["EventLog"]
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
    ) -> None:
        self.remote = remote
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
            since = canonical_time((plan.started - self.margin).isoformat())
            jobs = jobs.reopened(since)
        with ThreadPoolExecutor(1, thread_name_prefix="balsam-sync-pull") as side:
            # How to split the events (the longest listing) is asked while the jobs are read.
            split = None if plan.children else side.submit(self._events)
            self._list([jobs], done)
            if split is None:
                children = [c for c in plan.cursors if c.resource in CHILDREN]
            else:
                children = [start("TransferItem"), *split.result()]
                self.mirror.jobs_listed(tuple(children))
                for cursor in children:
                    self._totals[(cursor.resource, cursor.part)] = (0, cursor.total or 0)
        self._list([c for c in children if not c.done], done)
        self.mirror.children_listed(plan.started.isoformat())
        return done

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
        self.mirror.listed(name, page.rows, cursor)
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
