"""What the mirror can honestly answer, and as of when.

Two kinds of evidence let the mirror stand in for the server:

* a **full sync** of a resource at time T (every row pulled and deletions reconciled): any
  query on that resource is answered as of T;
* a **fetch record**: the server answered these exact filters at time T. An unsliced answer
  holds every matching row, so it covers any ordering and window of the same filters; a sliced
  answer covers only the same ordering and a window inside it, and a count-only answer covers
  only ``count()``.

Our own writes go through to the mirror rows, so unsliced records stay true after them; sliced
and count records of a resource are dropped whenever we write to it (a changed row may move in
or out of a window, or change a count). A mirror that only holds the rows of a narrow query
therefore never answers a broader one.

Stamps never lie ahead of the server: each is capped, when written, by ``clock`` (the client
sets it to its best guess of the server's clock), and a stamp that is still in the future when
read (this machine's clock was set back since) is never fresh (``Gateway``).

When the server cannot be asked, a query with neither kind of evidence is refused
(``NoEvidence``) rather than answered with whatever rows happen to be in the mirror; the one
exception is a lookup by ids the mirror holds every one of (``refresh_from_db()``, ``get(id=)``
of an object written or read earlier): those rows are the mirror's last word on them, so they
are answered, marked stale.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..errors import NoEvidence
from ..resources import JOB
from ..spec import QuerySpec
from ..utc import now
from .schema import MARKS_TABLE
from .store import Store

NO_HIGH = -1


@dataclass(frozen=True)
class Coverage:
    """Evidence that the mirror answers a query: as of when, and the count if known."""

    as_of: datetime
    count: int | None = None


@dataclass(frozen=True)
class Evidence:
    """What entitles the mirror to answer a query the server cannot be asked.

    ``as_of``: when the server confirmed it (None: unknown); ``partial``: only the rows of the
    ids asked for are known (a lookup by id), so the answer is stale.
    """

    as_of: datetime | None
    partial: bool = False


def _filters_key(spec: QuerySpec) -> str:
    return json.dumps(spec.filters, default=str, separators=(",", ":"))


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text)


class CoverageBook:
    """Reads and writes the ``sync_state`` and ``fetches`` tables of a mirror."""

    def __init__(self, store: Store, clock: Callable[[], datetime] | None = None) -> None:
        self.store = store
        self.conn = store.conn
        self.clock = clock or now

    def _capped(self, at: datetime) -> str:
        """``at`` as stored: never later than the clock (the server's, when the client knows)."""
        return min(at, self.clock()).isoformat()

    # -- full syncs ----------------------------------------------------------------------------

    def full_sync_at(self, resource: str) -> datetime | None:
        row = self._one("SELECT full_at FROM sync_state WHERE resource = ?", [resource])
        return _at(row[0]) if row and row[0] else None

    def mark_full_sync(self, resource: str, at: datetime, watermark: str | None = None) -> None:
        with self.store.write():
            self.conn.execute(
                "INSERT INTO sync_state (resource, full_at, watermark, pulled_at) "
                "VALUES (?, ?, ?, ?) ON CONFLICT(resource) DO UPDATE SET "
                "full_at = excluded.full_at, pulled_at = excluded.pulled_at, "
                "watermark = coalesce(excluded.watermark, watermark)",
                [resource, self._capped(at), watermark, self._capped(at)],
            )

    def watermark(self, resource: str) -> str | None:
        row = self._one("SELECT watermark FROM sync_state WHERE resource = ?", [resource])
        return row[0] if row else None

    def reconciled_at(self) -> datetime | None:
        """When a pull last re-read everything (None: never)."""
        row = self._one("SELECT reconciled_at FROM sync_state WHERE resource = 'Job'", [])
        return _at(row[0]) if row and row[0] else None

    def mark_reconciled(self, at: datetime) -> None:
        with self.store.write():
            self.conn.execute(
                "UPDATE sync_state SET reconciled_at = ? WHERE resource = 'Job'", [at.isoformat()]
            )

    # -- fetch records -------------------------------------------------------------------------

    def record_fetch(self, spec: QuerySpec, at: datetime, count: int | None, rows: bool) -> None:
        """Remember that the server answered ``spec`` at ``at`` (``rows``: rows were stored)."""
        if rows:
            # Rows are counted in the mirror, which our writes keep current: no number stored.
            ordering, low, count = spec.ordering or "", spec.low, None
            high = NO_HIGH if spec.high is None else spec.high
        else:
            ordering, low, high = "#count", 0, NO_HIGH
        with self.store.write():
            self.conn.execute(
                "INSERT OR REPLACE INTO fetches "
                "(resource, filters, ordering, low, high, count, fetched_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                [spec.resource, _filters_key(spec), ordering, low, high, count, self._capped(at)],
            )

    def for_rows(self, spec: QuerySpec) -> Coverage | None:
        """Return the newest evidence that the mirror holds every row of ``spec``'s window."""
        full = self.full_sync_at(spec.resource)
        high = NO_HIGH if spec.high is None else spec.high
        row = self._one(
            "SELECT max(fetched_at) FROM fetches WHERE resource = ? AND filters = ? AND ("
            f"(low = 0 AND high = {NO_HIGH} AND ordering != '#count') OR "
            f"(ordering = ? AND low <= ? AND high != {NO_HIGH} AND ? != {NO_HIGH} AND high >= ?))",
            [spec.resource, _filters_key(spec), spec.ordering or "", spec.low, high, high],
        )
        return _newest(full, row[0] if row else None)

    def for_count(self, spec: QuerySpec) -> Coverage | None:
        """Return evidence for ``count()``: a full sync, an unsliced fetch, or a server count."""
        full = self.full_sync_at(spec.resource)
        row = self._one(
            "SELECT fetched_at, count FROM fetches WHERE resource = ? AND filters = ? AND "
            f"low = 0 AND high = {NO_HIGH} ORDER BY fetched_at DESC LIMIT 1",
            [spec.resource, _filters_key(spec)],
        )
        best = _newest(full, row[0] if row else None)
        if best is None:
            return None
        if row and row[0] and best.as_of == _at(row[0]) and row[1] is not None:
            # A count-only record has no rows behind it: its number is the answer.
            return Coverage(best.as_of, int(row[1]))
        return best

    def evidence(self, spec: QuerySpec, count: bool) -> Evidence:
        """Return what lets the mirror answer ``spec`` on its own.

        Raises:
            NoEvidence: the mirror was never told what matches ``spec``.
        """
        cov = self.for_count(spec) if count else self.for_rows(spec)
        if cov is not None:
            return Evidence(cov.as_of)
        if spec.empty:
            return Evidence(None)
        by_job = self._children_of_synced_jobs(spec)
        if by_job is not None:
            return by_job
        ids = spec.filter_dict.get("id")
        if len(spec.filters) == 1 and ids and self.store.count(spec.unsliced()) == len(set(ids)):
            return Evidence(None, partial=True)
        raise NoEvidence(
            f"the server cannot be asked and the mirror has no evidence for "
            f"{spec.resource} {dict(spec.filters) or 'all'}: it was never pulled "
            "(client.pull() / balsam-sync pull) nor asked online with these filters. "
            "Pull while the server is reachable, or ask it with .online()"
        )

    def _children_of_synced_jobs(self, spec: QuerySpec) -> Evidence | None:
        """Transfer items or events of given jobs, all read since the jobs last changed (their
        marks, see cache/pullstate.py): the mirror holds exactly theirs, as of that read."""
        jobs = spec.filter_dict.get("job_id")
        children = {name for name, _ in JOB.cascade}  # what hangs off a job: items, events
        if spec.resource not in children or not jobs or len(spec.filters) > 1:
            return None
        row = self._one(
            f"SELECT count(*), min(m.at) FROM [{MARKS_TABLE}] m JOIN jobs j ON j.id = m.id "
            "WHERE m.stamp = j.last_update AND m.id IN (SELECT value FROM json_each(?))",
            [json.dumps(sorted(set(jobs)))],
        )
        if row is None or row[0] != len(set(jobs)):
            return None
        return Evidence(_at(row[1]))

    def forget_windows(self) -> None:
        """Drop every sliced and count-only record (called on every local write).

        All resources, not only the written one: deletes cascade across resources (an App's
        jobs, a Job's events), which moves windows and counts there too.
        """
        with self.store.write():
            self.conn.execute(
                f"DELETE FROM fetches WHERE high != {NO_HIGH} OR low != 0 OR ordering = '#count'"
            )

    def invalidate(self, resource: str) -> None:
        """Forget every piece of evidence about ``resource`` (the server changed it unseen)."""
        with self.store.write():
            self.conn.execute("DELETE FROM fetches WHERE resource = ?", [resource])
            self.conn.execute("UPDATE sync_state SET full_at = NULL WHERE resource = ?", [resource])

    def _one(self, sql: str, args: list[Any]) -> tuple[Any, ...] | None:
        with self.store.reading():
            row = self.conn.execute(sql, args).fetchone()
        return tuple(row) if row is not None else None


def _newest(full: datetime | None, fetched: str | None) -> Coverage | None:
    candidates = [t for t in (full, _at(fetched) if fetched else None) if t is not None]
    return Coverage(max(candidates)) if candidates else None
