"""How a pull reads long listings: ranges of a key, page by page, each page anchored on the last.

A range is read in the order of a key the server filters on (jobs by ``last_update``, events
by ``timestamp``; transfer items, which have none, by id): each page asks for the rows from
the key's value where the previous page ended (``<key>_after``), skipping those of that value
already read. Rows deleted or moved behind the cursor meanwhile therefore move nothing in
front of it, except within one value; a page is asked for a few rows *before* where the cursor
stands (the overlap), and the cursor moves on only if the page reaches back to the last row
read (it is *anchored*). A page that does not (more rows left the range behind the cursor than
the overlap) is asked again further back. So a listing skips no row that stayed in its range,
whatever is deleted or changed while it runs, and a row changed meanwhile (a job's
``last_update``) moves to the end, where a later page reads it.

The cursor after each page is a value (``pullplan.Cursor``): a first or full pull stores it
with the page (a killed pull continues there); an incremental pull keeps it in memory.

The pages of a listing are also checked against each other (``remote/listing.py``): out of
order, an empty page before the count is reached, or more pages than the counts allow stop the
pull with a ``ProtocolError`` within a few requests, whatever the server claims.

Ranges are read side by side (``side_by_side``), each in its own thread with its next page on
the wire while the caller stores the one before: the server is the limit, not the client.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any, NoReturn

from ..cache import Cursor
from ..errors import ProtocolError
from ..remote.listing import Listing
from ..remote.params import filter_params
from ..remote.rest import Remote
from ..resources import RESOURCES, Row
from ..spec import QuerySpec
from ..utc import canonical_time

OVERLAP = 100
"""Rows a page reaches back before its cursor (those behind it that may leave meanwhile)."""
ORDER_OF = {"Job": "last_update", "EventLog": "timestamp"}
"""The key a resource's whole listing is read by (the others: id, by offset)."""
Key = tuple[Any, int]


def stamp_after(stamp: str) -> str:
    """The next representable stamp (the server keeps microseconds)."""
    moved = datetime.fromisoformat(stamp) + timedelta(microseconds=1)
    return canonical_time(moved.isoformat())


def stamp_before(stamp: str) -> str:
    moved = datetime.fromisoformat(stamp) - timedelta(microseconds=1)
    return canonical_time(moved.isoformat())


def job_spec(after: str | None = None, before: str | None = None) -> QuerySpec:
    """Jobs with ``after <= last_update <= before`` (either bound optional)."""
    return range_spec("Job", "last_update", after, before)


def range_spec(resource: str, key: str | None, lower: str | None, upper: str | None) -> QuerySpec:
    """Rows of ``resource`` with ``lower <= key <= upper`` (either bound optional), in key
    order (the server adds id)."""
    spec = QuerySpec(resource)
    if key is None:
        return spec
    filters: dict[str, Any] = {}
    if lower is not None:
        filters[f"{key}_after"] = datetime.fromisoformat(lower)
    if upper is not None:
        filters[f"{key}_before"] = datetime.fromisoformat(upper)
    return (spec.with_filters(filters) if filters else spec).with_ordering(key)


def start(resource: str, part: int = 0, lower: str | None = None) -> Cursor:
    """A range at its start: every row of ``resource`` (from ``lower`` on)."""
    return Cursor(resource, part, ORDER_OF.get(resource), lower)


@dataclass(frozen=True)
class Page:
    """One anchored page of a range.

    Attributes:
        rows: what the server listed (the overlap with the previous page included).
        cursor: where the range stands once these rows are stored.
        new: rows past the previous cursor (what the page adds).
        remaining: rows of the range after this page, as the server counts them now.
    """

    rows: list[Row]
    cursor: Cursor
    new: int
    remaining: int


STALE_PAGES = 2
"""Pages in a row that may bring nothing new while the count says rows remain (rows written
before the cursor meanwhile push old ones forward); one more is a server repeating itself."""


def read_range(remote: Remote, cursor: Cursor, size: int, overlap: int = OVERLAP) -> Iterator[Page]:
    """Yield the pages of ``cursor``'s range from where it stands to its end."""
    res = RESOURCES[cursor.resource]
    size = max(2, size)
    overlap = max(1, min(overlap, size // 4))  # at least the last row read: the anchor
    listing = Listing(cursor.resource, max(1, size - overlap), stable=False)
    back = 0  # how much further back than the overlap a page is asked (after a gap)
    stale = 0  # pages in a row that brought no row past the cursor while more were claimed
    while not cursor.done:
        spec = range_spec(cursor.resource, cursor.key, cursor.lower, cursor.upper)
        offset = max(0, cursor.skip - overlap - back) if cursor.last is not None else cursor.skip
        params = filter_params(spec) + ([("ordering", spec.ordering)] if spec.ordering else [])
        rows, count = remote.page(res, params, offset, size, listing)
        _check_order(rows, cursor, f"GET {res.path} ({cursor.resource} by {cursor.key or 'id'})")
        if offset > 0 and (not rows or _key(rows[0], cursor.key) > _last(cursor)):
            back = max(size, 2 * back)  # rows left the range behind the cursor: step back
            continue
        back = 0
        new = sum(1 for r in rows if cursor.last is None or _key(r, cursor.key) > cursor.last)
        remaining = max(0, count - offset - len(rows))
        stale = stale + 1 if remaining and not new else 0
        if stale > STALE_PAGES:
            _contradiction(cursor, f"GET {res.path}", "the same rows again (a repeated page)")
        # A short page ends the range unless the reply's own count says rows remain: then the
        # next page is asked, and the listing's checks tell a lie (the same page again, an
        # empty one) from rows that arrived meanwhile.
        cursor = _advanced(cursor, rows, offset, new, done=len(rows) < size and not remaining)
        cursor = replace(cursor, total=cursor.stored + remaining)
        yield Page(rows, cursor, new, remaining)


def _key(row: Row, key: str | None) -> Key:
    return (row[key] if key is not None else None, row["id"])


def _last(cursor: Cursor) -> Key:
    if cursor.last is None:
        raise ValueError("a cursor that stored nothing has no last row")
    return cursor.last


def _advanced(cursor: Cursor, rows: list[Row], offset: int, new: int, done: bool) -> Cursor:
    """Where the range stands after storing ``rows`` (asked at ``offset`` within its value)."""
    stored = cursor.stored + new
    if not rows:
        return replace(cursor, stored=stored, done=done)
    last = _key(rows[-1], cursor.key)
    if cursor.key is None:
        return replace(cursor, skip=offset + len(rows), last=last, stored=stored, done=done)
    value = last[0]
    same = sum(1 for r in rows if r[cursor.key] == value)
    # Rows of the last value before this page were skipped by the offset only if the whole
    # page holds that one value (otherwise the page starts before it).
    skip = same + (offset if rows[0][cursor.key] == value else 0)
    return replace(cursor, lower=value, skip=skip, last=last, stored=stored, done=done)


def _check_order(rows: list[Row], cursor: Cursor, where: str) -> None:
    """Rows must come in key order, then id, within the range's bounds."""
    keys = [_key(r, cursor.key) for r in rows]
    wrong = next((i for i in range(1, len(keys)) if not keys[i - 1] < keys[i]), None)
    if wrong is None and keys and cursor.key is not None:
        if cursor.lower is not None and keys[0][0] < cursor.lower:
            wrong = 0
        elif cursor.upper is not None and keys[-1][0] > cursor.upper:
            wrong = len(keys) - 1
    if wrong is not None:
        _contradiction(cursor, where, f"row {keys[wrong]} out of the order or range asked")


def _contradiction(cursor: Cursor, where: str, what: str) -> NoReturn:
    raise ProtocolError(
        f"{where}: the server's pages of {cursor.resource} contradict each other: {what}. "
        "The listing was stopped and nothing from this page was used",
        method="GET",
        url=where.split(" ", 2)[1],
        resource=cursor.resource,
        field="results",
    )


# -- reading ranges side by side ---------------------------------------------------------------


class SideBySide:
    """Reads several ranges at once, one thread each, handing their pages to one caller.

    Each range has at most one page waiting for the caller and its next on the wire; a
    caller that stops (its write failed, or it closed the generator) stops every thread.
    ``waited`` is how long the caller waited for a page: the pull's time blocked on the
    server.
    """

    def __init__(self, ranges: list[Iterator[Page]]) -> None:
        self.ranges = ranges
        self.waited = 0.0
        self._queue: queue.Queue[tuple[int, str, Any]] = queue.Queue()
        self._slots = [threading.Semaphore(1) for _ in ranges]
        self._stop = threading.Event()

    def __iter__(self) -> Generator[tuple[int, Page], None, None]:
        for index, pages in enumerate(self.ranges):
            threading.Thread(
                target=self._read, args=(index, pages), name="balsam-sync-range", daemon=True
            ).start()
        running = len(self.ranges)
        try:
            while running:
                began = time.perf_counter()
                index, kind, item = self._queue.get()
                self.waited += time.perf_counter() - began
                if kind == "error":
                    raise item
                if kind == "end":
                    running -= 1
                    continue
                yield index, item
                self._slots[index].release()
        finally:
            self._stop.set()

    def _read(self, index: int, pages: Iterator[Page]) -> None:
        try:
            for page in pages:
                if not self._wait_turn(index):
                    return
                self._queue.put((index, "page", page))
        except BaseException as exc:  # handed over to the caller, who raises it
            self._queue.put((index, "error", exc))
            return
        self._queue.put((index, "end", None))

    def _wait_turn(self, index: int) -> bool:
        """Wait until the caller took this range's previous page (False: it stopped)."""
        while not self._stop.is_set():
            if self._slots[index].acquire(timeout=0.5):
                return True
        return False


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


def rows_of(
    pages: Iterator[Page], on_total: Callable[[int], None] | None = None
) -> Iterator[list[Row]]:
    """The rows of each page (``on_total`` told the first page's total, for the progress)."""
    for page in pages:
        if on_total is not None:
            on_total(page.cursor.total or 0)
            on_total = None
        yield page.rows
