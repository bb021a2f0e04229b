"""Where the listings of an unfinished first or full pull stand, so that the next pull continues.

A first (or full) pull lists every job, transfer item and event, as ranges read page by page
(sync/pages.py). Each page is stored together with its range's cursor, in one transaction: a
pull killed at any point keeps every page it stored, and the next pull asks the server only for
what follows each cursor. The plan is dropped when a pull completes it, and replaced when a
full pull begins.

When the job listing ends, every job's ``last_update`` is recorded (the *pending marks*). Once
the listings of transfer items and events end, the mirror holds every child of a job in the
state so stamped if that state was committed before those listings began: when the jobs were
all listed first, or when the stamp is older than their beginning by more than the longest a
request may take to commit. Those jobs get their marks (cache/pullstate.py); the others (a job
that changed meanwhile) are read by job.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from enum import Enum
from typing import Any

from .schema import MARKS_TABLE
from .store import Store

PLAN_TABLE = "pull_plan"
CURSORS_TABLE = "pull_cursors"
PENDING_TABLE = "pull_marks"


class PlanKind(Enum):
    """Why a pull lists everything."""

    FIRST = "first"  # the mirror was never pulled (or a pull never completed)
    FULL = "full"  # a reconciliation: everything re-read, deletions compared by id


@dataclass(frozen=True)
class Cursor:
    """Where one range of a whole listing stands.

    Attributes:
        resource: the resource listed.
        part: which range of it (a long listing may be read as several ranges side by side).
        key: the field the range is ordered and bounded by (``last_update``, ``timestamp``);
            None: the server's id order, read by offset.
        lower, upper: the bounds of ``key`` (inclusive, canonical text); None: open.
        skip: rows at ``lower`` (without ``key``: from the start) already stored.
        last: ``(key value, id)`` of the last row stored; None: nothing stored yet.
        stored: rows stored so far; total: rows the range holds, as the server last said.
        done: the range was read to its end.
    """

    resource: str
    part: int = 0
    key: str | None = None
    lower: str | None = None
    upper: str | None = None
    skip: int = 0
    last: tuple[str | None, int] | None = None
    stored: int = 0
    total: int | None = None
    done: bool = False

    def reopened(self, since: str) -> Cursor:
        """The range to be read on, from where it stands or from ``since`` if that is before
        it (rows whose key moved past ``since`` meanwhile are read again)."""
        if self.key is None or self.lower is None or self.lower <= since:
            return replace(self, done=False)
        return replace(self, lower=since, skip=0, last=None, done=False)


@dataclass(frozen=True)
class PullPlan:
    """The listings of a first or full pull that has not completed yet.

    Attributes:
        kind: a first pull or a reconciliation.
        started: the server's clock when the plan began.
        cursors: every range, jobs first.
        children_from: the server's clock when the listings of transfer items and events
            began (None: not yet).
        jobs_first: the jobs were all listed before those listings began.
        recorded: the job listing ended and the jobs' stamps were recorded.
    """

    kind: PlanKind
    started: datetime
    cursors: tuple[Cursor, ...]
    children_from: datetime | None = None
    jobs_first: bool = False
    recorded: bool = False

    def of(self, resource: str) -> list[Cursor]:
        return [c for c in self.cursors if c.resource == resource]


class PullPlans:
    """Reads and writes the plan of one mirror (its three tables)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn

    def read(self) -> PullPlan | None:
        with self.store.reading():
            head = self.conn.execute(
                f"SELECT kind, started, children_from, jobs_first, recorded FROM [{PLAN_TABLE}]"
            )
            found = head.fetchone()
            if found is None:
                return None
            rows = self.conn.execute(
                "SELECT resource, part, key, lower, upper, skip, last_value, last_id, stored, "
                f"total, done FROM [{CURSORS_TABLE}] ORDER BY rowid"
            ).fetchall()
        cursors = tuple(_cursor(tuple(r)) for r in rows)
        kind, started, children_from, jobs_first, recorded = found
        return PullPlan(
            PlanKind(kind),
            datetime.fromisoformat(started),
            cursors,
            datetime.fromisoformat(children_from) if children_from else None,
            bool(jobs_first),
            bool(recorded),
        )

    def begin(self, plan: PullPlan) -> None:
        """Replace any plan with ``plan``."""
        with self.store.write():
            self.drop()
            self.conn.execute(
                f"INSERT INTO [{PLAN_TABLE}] (id, kind, started) VALUES (1, ?, ?)",
                [plan.kind.value, plan.started.isoformat()],
            )
            self._insert(plan.cursors)

    def advance(self, cursor: Cursor) -> None:
        """Record where one range stands now."""
        last_value, last_id = cursor.last if cursor.last is not None else (None, None)
        with self.store.write():
            self.conn.execute(
                f"UPDATE [{CURSORS_TABLE}] SET key = ?, lower = ?, upper = ?, skip = ?, "
                "last_value = ?, last_id = ?, stored = ?, total = ?, done = ? "
                "WHERE resource = ? AND part = ?",
                [
                    cursor.key,
                    cursor.lower,
                    cursor.upper,
                    cursor.skip,
                    last_value,
                    last_id,
                    cursor.stored,
                    cursor.total,
                    int(cursor.done),
                    cursor.resource,
                    cursor.part,
                ],
            )

    def children_begin(self, cursors: tuple[Cursor, ...], at: datetime, jobs_first: bool) -> None:
        """Begin the ranges of transfer items and events (``cursors``) at ``at``."""
        with self.store.write():
            self._insert(cursors)
            self.conn.execute(
                f"UPDATE [{PLAN_TABLE}] SET children_from = ?, jobs_first = ?",
                [at.isoformat(), int(jobs_first)],
            )

    def jobs_listed(self) -> None:
        """Record every job's stamp (the pending marks), once per plan."""
        with self.store.write():
            (done,) = self.conn.execute(f"SELECT recorded FROM [{PLAN_TABLE}]").fetchone()
            if done:
                return
            self.conn.execute(
                f"INSERT OR REPLACE INTO [{PENDING_TABLE}] (id, stamp) "
                "SELECT id, last_update FROM jobs WHERE id > 0 AND last_update IS NOT NULL"
            )
            self.conn.execute(f"UPDATE [{PLAN_TABLE}] SET recorded = 1")

    def children_listed(self, at: str, before: str | None) -> None:
        """Every child of the jobs at their pending stamps (those stamped at or ``before``, if
        given) is stored: mark those jobs, as of ``at``."""
        bound = "" if before is None else "AND p.stamp <= ?"
        with self.store.write():
            self.conn.execute(
                f"INSERT OR REPLACE INTO [{MARKS_TABLE}] (id, stamp, at) "
                f"SELECT p.id, p.stamp, ? FROM [{PENDING_TABLE}] p "
                f"JOIN jobs j ON j.id = p.id AND j.last_update = p.stamp {bound}",
                [at] if before is None else [at, before],
            )
            self.conn.execute(f"DELETE FROM [{PENDING_TABLE}]")

    def drop(self) -> None:
        with self.store.write():
            for table in (PLAN_TABLE, CURSORS_TABLE, PENDING_TABLE):
                self.conn.execute(f"DELETE FROM [{table}]")

    def _insert(self, cursors: tuple[Cursor, ...]) -> None:
        self.conn.executemany(
            f"INSERT OR REPLACE INTO [{CURSORS_TABLE}] (resource, part, key, lower, upper, "
            "skip, last_value, last_id, stored, total, done) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (
                    c.resource,
                    c.part,
                    c.key,
                    c.lower,
                    c.upper,
                    c.skip,
                    *(c.last if c.last is not None else (None, None)),
                    c.stored,
                    c.total,
                    int(c.done),
                )
                for c in cursors
            ],
        )


def _cursor(row: tuple[Any, ...]) -> Cursor:
    resource, part, key, lower, upper, skip, last_value, last_id, stored, total, done = row
    last = (last_value, int(last_id)) if last_id is not None else None
    return Cursor(
        resource, part, key, lower, upper, int(skip), last, int(stored), total, bool(done)
    )
