"""Bring the mirror up to the server's state: full first pull, then incremental pulls.

* Jobs: the first pull pages through every job by id; later pulls ask only for jobs with
  ``last_update >= watermark`` (inclusive, so the boundary is re-read and deduplicated by id).
  The watermark is the newest ``last_update`` the server reported *before* the pull started,
  so a job changed during a pull is always seen again by the next one.
* Deletions leave no trace on the server (no tombstones). After upserting, the server's count
  is compared with the mirror's; when they differ, time ranges are bisected by count until the
  ranges are small enough to compare id sets, so finding a few deletions costs a few requests.
  The candidates are then asked for by id, and only those the server does not return are
  deleted: a row another process wrote meanwhile, or one that moved out of the range, stays.
* Events: every event is written together with a change of its job's ``last_update``, so the
  events of the jobs that changed are exactly the new events.
* Sites, apps, batch jobs and transfer items are small: they are re-read whole.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from ..cache.mirror import Mirror
from ..params import FILTER_CHUNK_SIZE
from ..remote import Remote, canonical_time
from ..resources import RESOURCES, Resource
from ..spec import QuerySpec

Row = dict[str, Any]
Progress = Callable[[str, int, int | None], None]
"""Called as (resource, rows so far, total if known) while a pull runs."""

PAGE_SIZE = 10_000
SMALL_RESOURCES = ("Site", "App", "BatchJob", "TransferItem")
COMPARE_IDS_BELOW = 5_000


@dataclass
class PullReport:
    """What one pull did, per resource."""

    fetched: dict[str, int] = field(default_factory=dict)
    deleted: dict[str, int] = field(default_factory=dict)
    full: bool = False
    started_at: datetime | None = None
    requests: int = 0

    def __str__(self) -> str:
        parts = [f"{r}: {n} fetched" for r, n in self.fetched.items()]
        parts += [f"{r}: {n} deleted" for r, n in self.deleted.items() if n]
        kind = "full" if self.full else "incremental"
        return f"{kind} pull ({', '.join(parts)})"


def _spec(resource: str, **filters: Any) -> QuerySpec:
    return QuerySpec(resource).with_filters(filters) if filters else QuerySpec(resource)


class Puller:
    """Pulls from one server into one mirror."""

    def __init__(
        self,
        remote: Remote,
        mirror: Mirror,
        progress: Progress | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.remote = remote
        self.mirror = mirror
        self.progress = progress or (lambda _r, _n, _t: None)
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._jobs_total: int | None = None

    def pull(self, full: bool = False) -> PullReport:
        """Pull every resource; ``full`` re-reads all jobs and events instead of the changes."""
        started = self.clock()
        report = PullReport(started_at=started)
        for name in SMALL_RESOURCES:
            self._replace_all(RESOURCES[name], report)
            self.mirror.coverage.mark_full_sync(name, started)
        top = self._newest_job_update()
        watermark = None if full else self.mirror.coverage.watermark("Job")
        report.full = watermark is None
        changed = self._pull_jobs(watermark, report)
        self._find_deleted_jobs(top, report)
        self.mirror.coverage.mark_full_sync("Job", started, watermark=top or watermark)
        self._pull_events(None if report.full else changed, report)
        self.mirror.coverage.mark_full_sync("EventLog", started)
        return report

    # -- small resources -----------------------------------------------------------------------

    def _replace_all(self, res: Resource, report: PullReport) -> None:
        rows = self._all_rows(res, QuerySpec(res.name), report)
        missing = self.mirror.store.all_ids(res.name) - {r["id"] for r in rows}
        report.deleted[res.name] = self._delete_gone(res, missing, report)

    def _delete_gone(self, res: Resource, missing: set[int], report: PullReport) -> int:
        """Delete the rows among ``missing`` that the server no longer has; return how many.

        A row absent from a listing is not necessarily gone: another process may have written
        it to the mirror after the listing was read, or the server may have moved it out of the
        listed range. Asking for the candidates by id settles it: a confirmed (positive) id the
        server does not return was deleted there.
        """
        if not missing:
            return 0
        report.requests += 1
        spec = QuerySpec(res.name).with_filters({"id": sorted(missing)})
        found, _ = self.remote.select(res, spec)
        gone = sorted(missing - {r["id"] for r in found})
        with self.mirror.store.write():
            self._store(res, found)
            self.mirror.store.delete_cascade(res.name, gone)
        return len(gone)

    def _store(self, res: Resource, rows: list[Row]) -> None:
        """Write the server's rows; a pull never erases a change that is still queued, so
        pending changes are laid back on top."""
        with self.mirror.store.write():
            self.mirror.store.upsert(res.name, rows)
            self.mirror.outbox.overlay(res.name, [r["id"] for r in rows])

    def _all_rows(
        self, res: Resource, spec: QuerySpec, report: PullReport, total: int | None = None
    ) -> list[Row]:
        rows: list[Row] = []
        before = report.fetched.get(res.name, 0)  # progress counts on across listings
        for page in prefetched(self.remote.pages(res, spec, PAGE_SIZE)):
            report.requests += 1
            self._store(res, page)
            rows.extend(page)
            self.progress(res.name, before + len(rows), None if total is None else before + total)
        report.fetched[res.name] = report.fetched.get(res.name, 0) + len(rows)
        return rows

    # -- jobs ----------------------------------------------------------------------------------

    def _newest_job_update(self) -> str | None:
        rows, self._jobs_total = self.remote.select(
            RESOURCES["Job"], QuerySpec("Job", ordering="-last_update", high=1)
        )
        return rows[0]["last_update"] if rows else None

    def _pull_jobs(self, watermark: str | None, report: PullReport) -> list[int]:
        res = RESOURCES["Job"]
        total = None
        if watermark is None:
            spec, total = QuerySpec("Job"), self._jobs_total  # known: shown as a total
        else:
            spec = _spec("Job", last_update_after=datetime.fromisoformat(watermark))
        return [row["id"] for row in self._all_rows(res, spec, report, total)]

    def _find_deleted_jobs(self, top: str | None, report: PullReport) -> None:
        """Delete mirror jobs the server no longer has (see the module docstring)."""
        store = self.mirror.store
        if top is None:
            missing = store.all_ids("Job")
        elif store.count_confirmed("Job") == self.remote.count(RESOURCES["Job"], QuerySpec("Job")):
            missing = set()
        else:
            missing = set(self._bisect(None, top, report))
        report.deleted["Job"] = self._delete_gone(RESOURCES["Job"], missing, report)

    def _bisect(self, low: str | None, high: str, report: PullReport) -> list[int]:
        filters: dict[str, Any] = {"last_update_before": datetime.fromisoformat(high)}
        if low is not None:
            filters["last_update_after"] = datetime.fromisoformat(low)
        spec = _spec("Job", **filters)
        store = self.mirror.store
        local = store.count(spec)
        report.requests += 1
        if local == self.remote.count(RESOURCES["Job"], spec):
            return []
        if local <= COMPARE_IDS_BELOW or low == high:
            report.requests += 1
            remote_ids: set[int] = set(self.remote.ids(RESOURCES["Job"], spec))
            return sorted({r["id"] for r in store.query(spec)} - remote_ids)
        middle = self._median_update(spec, local)
        if middle == high:
            halves = [(low, _before(high)), (high, high)]
        else:
            halves = [(low, middle), (_after(middle), high)]
        return [i for lo, hi in halves for i in self._bisect(lo, hi, report)]

    def _median_update(self, spec: QuerySpec, n: int) -> str:
        rows = self.mirror.store.query(
            QuerySpec("Job", spec.filters, "last_update", n // 2, n // 2 + 1)
        )
        value: str = rows[0]["last_update"]
        return value

    # -- events --------------------------------------------------------------------------------

    def _pull_events(self, changed_jobs: list[int] | None, report: PullReport) -> None:
        res = RESOURCES["EventLog"]
        if changed_jobs is None:
            self._replace_all(res, report)
            return
        report.fetched.setdefault("EventLog", 0)
        for start in range(0, len(changed_jobs), FILTER_CHUNK_SIZE):
            chunk = changed_jobs[start : start + FILTER_CHUNK_SIZE]
            self._all_rows(res, _spec("EventLog", job_id=chunk), report)


def prefetched(pages: Iterator[list[Row]]) -> Generator[list[Row], None, None]:
    """Fetch the next page while the caller stores the current one (a thread and a slot).

    When the caller stops early (its write failed), the fetching thread is told to stop
    instead of waiting forever to hand over its next page.
    """
    slot: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=1)
    stop = threading.Event()

    def hand_over(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                slot.put(item, timeout=0.5)
                return True
            except queue.Full:
                continue
        return False

    def fetch() -> None:
        try:
            for page in pages:
                if not hand_over(("page", page)):
                    return
        except BaseException as exc:  # handed over to the consumer, who raises it
            hand_over(("error", exc))
            return
        hand_over(("end", None))

    threading.Thread(target=fetch, name="balsam-sync-prefetch", daemon=True).start()
    try:
        while True:
            kind, item = slot.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()


def _after(stamp: str) -> str:
    return canonical_time((datetime.fromisoformat(stamp) + timedelta(microseconds=1)).isoformat())


def _before(stamp: str) -> str:
    return canonical_time((datetime.fromisoformat(stamp) - timedelta(microseconds=1)).isoformat())
