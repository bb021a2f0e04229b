"""How a pull reads long listings: jobs by ``last_update`` keys, others a few at a time.

Offset paging over a listing that changes while it is read skips rows: a row deleted before
the current offset moves every later row one place up, and the row that moves into the page
already read is never seen. The jobs changed since the watermark are therefore read in
``last_update`` order, each page asking for the rows from the last stamp seen onwards (keyset
paging): a deletion moves nothing, and a job changed meanwhile moves to the end, where a later
page or the next pull reads it.

A first (or full) pull lists every job, where keys would cost more than they save: bulk
creates and updates give thousands of jobs one stamp, and each page would end by reading such a
group again. It reads pages by offset instead, several at a time, and the count check that
follows (sync/deletions.py) finds any job a concurrent deletion made it skip.

Both check their pages against each other (``remote/listing.py``): a page repeated, an empty
page before the count is reached, keyset rows out of order, or more pages than the counts
allow stop the pull with a ``ProtocolError`` within a few requests, whatever the server claims.
"""

from __future__ import annotations

import itertools
import queue
import threading
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import Any, TypeVar

from ..remote.listing import Listing
from ..remote.rest import Remote
from ..resources import RESOURCES, Row
from ..spec import QuerySpec
from ..utc import canonical_time

T = TypeVar("T")
R = TypeVar("R")

JOB_PAGE = 10_000


def stamp_after(stamp: str) -> str:
    """The next representable stamp (the server keeps microseconds)."""
    moved = datetime.fromisoformat(stamp) + timedelta(microseconds=1)
    return canonical_time(moved.isoformat())


def stamp_before(stamp: str) -> str:
    moved = datetime.fromisoformat(stamp) - timedelta(microseconds=1)
    return canonical_time(moved.isoformat())


def job_spec(after: str | None = None, before: str | None = None) -> QuerySpec:
    """Jobs with ``after <= last_update <= before`` (either bound optional)."""
    filters: dict[str, Any] = {}
    if after is not None:
        filters["last_update_after"] = datetime.fromisoformat(after)
    if before is not None:
        filters["last_update_before"] = datetime.fromisoformat(before)
    return QuerySpec("Job").with_filters(filters) if filters else QuerySpec("Job")


def job_pages(
    remote: Remote,
    since: str | None,
    size: int = JOB_PAGE,
    on_count: Callable[[int], None] | None = None,
) -> Iterator[list[Row]]:
    """Yield every job with ``last_update >= since`` (all jobs when None), oldest first.

    A page ends before its last stamp (the next page starts at that stamp), so a group of jobs
    sharing one stamp (a bulk create or update) is read whole by one page; a group larger than a
    page is read on its own, unpaged. ``on_count`` is told the first page's count: how many
    jobs the listing holds.
    """
    res = RESOURCES["Job"]
    listing = Listing("Job", size, key=_stamped)
    after = since
    while True:
        spec = job_spec(after).with_ordering("last_update").with_window(0, size)
        rows, count = remote.select(res, spec)
        if on_count is not None:
            on_count(count)
            on_count = None
        where = f"GET {res.path} (jobs changed since {after}, by last_update)"
        listing.check(rows, count, 0, size, where)
        listing.ordered(rows, "last_update", after, where)
        if len(rows) < size or len(rows) == count:
            if rows:
                yield rows
            return
        last = rows[-1]["last_update"]
        head = [r for r in rows if r["last_update"] != last]
        if head:
            listing.remember(head)
            yield head
            after = last
            continue
        group, total = remote.select(res, job_spec(last, last))
        where = f"GET {res.path} (jobs stamped {last})"
        listing.take(group, total, 0, max(total, len(group)), where)
        listing.ordered(group, "last_update", last, where, until=last)
        yield group
        after = stamp_after(last)


def _stamped(row: Row) -> tuple[int, str]:
    """A row as a keyset listing tells it apart: a job changed meanwhile is listed again."""
    return row["id"], row["last_update"]


def id_pages(remote: Remote, size: int = JOB_PAGE, workers: int = 2) -> Iterator[list[Row]]:
    """Yield every job, by id, in pages of ``size`` read ``workers`` at a time. The first
    page's count fixes how many pages there are; jobs created since are the next pull's."""
    res = RESOURCES["Job"]
    listing = Listing("Job", size)

    def page(low: int) -> tuple[list[Row], int, int]:
        rows, count = remote.select(res, QuerySpec("Job").with_window(low, low + size))
        return rows, count, low

    def checked(rows: list[Row], count: int, low: int) -> list[Row]:
        listing.take(rows, count, low, size, f"GET {res.path}?limit={size}&offset={low}")
        return rows

    first, count = remote.select(res, QuerySpec("Job").with_window(0, size))
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="balsam-sync-pull") as pool:
        offsets = iter(range(size, count, size))
        pending = deque(pool.submit(page, low) for low in itertools.islice(offsets, workers))
        try:
            yield checked(first, count, 0)
            while pending:
                rows = checked(*pending.popleft().result())
                pending.extend(pool.submit(page, low) for low in itertools.islice(offsets, 1))
                yield rows
        finally:
            for future in pending:
                future.cancel()


def bounded_map(fn: Callable[[T], R], items: Iterable[T], workers: int) -> Iterator[R]:
    """``map(fn, items)`` on ``workers`` threads, in order, with few results held at a time."""
    if workers <= 1:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="balsam-sync-pull") as pool:
        pending: queue.SimpleQueue[Future[R]] = queue.SimpleQueue()
        in_flight = 0
        try:
            for item in items:
                pending.put(pool.submit(fn, item))
                in_flight += 1
                if in_flight > workers:
                    in_flight -= 1
                    yield pending.get().result()
            while in_flight:
                in_flight -= 1
                yield pending.get().result()
        finally:
            while not pending.empty():
                pending.get().cancel()


def prefetched(pages: Iterator[list[Row]]) -> Generator[list[Row], None, None]:
    """Fetch pages in a thread, starting now, handing them over one at a time: the next page
    is on the wire while the caller stores the current one.

    When the caller stops early (its write failed) or closes the generator without reading,
    the fetching thread is told to stop instead of waiting forever to hand over its next page.
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
    return _handed_over(slot, stop)


def _handed_over(
    slot: queue.Queue[tuple[str, Any]], stop: threading.Event
) -> Generator[list[Row], None, None]:
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
