"""The pages of one listing, checked against each other: a listing ends, whatever the server says.

Each page alone is checked by ``wire.py``; together they must also make sense. A page that
brings nothing new (the same rows again), an empty page although the reply's own ``count`` says
rows remain at that offset, more rows than asked, rows out of the order or range asked for
(keyset pages), or more pages than the counts allow: each stops the listing at once with a
``ProtocolError``, so a server that claims ``count = 10**9`` and repeats one page costs two or
three requests, not an endless loop.

What a listing tolerates: rows deleted or changed while it is read (an offset page may then be
short or empty, or overlap the previous one in part), and a listing that grows a little. A page
made only of rows already read is an error where the order makes it impossible (ascending ids,
keyset pages); under an order that writes can shuffle (``-id`` while jobs are created, or a
mutable field) offset pages may honestly repeat rows, so there only the page count bounds it.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Hashable, Iterable
from typing import NoReturn

from ..errors import ProtocolError
from ..resources import Row

SLACK_PAGES = 2
"""Pages a listing may take beyond what its first count allows."""
GROWTH = 2.0
"""A listing may read up to this many times its first count (rows added while it is read,
or changed: keyset pages list a row again at the end), never more: counts that grow with every
page cannot keep it going."""


class Listing:
    """Checks the pages of one listing of ``resource`` as they arrive (thread-safe).

    Args:
        resource: the resource listed ("Job"), for messages.
        size: rows asked per page.
        growth: how many times its first count the listing may read in all.
        stable: the order keeps rows in place while others are written (ascending ids, keyset
            pages), so a page of rows already read cannot be honest.
        key: what makes a row "already read" (keyset pages: its id and stamp, since a row
            changed meanwhile is honestly listed again).
    """

    def __init__(
        self,
        resource: str,
        size: int,
        *,
        growth: float = GROWTH,
        stable: bool = True,
        key: Callable[[Row], Hashable] | None = None,
    ) -> None:
        self.resource = resource
        self.size = max(1, size)
        self.growth = growth
        self.stable = stable
        self.key = key or _id
        self.pages = 0
        self.first: int | None = None
        self._seen: set[Hashable] = set()
        self._lock = threading.Lock()

    def take(self, rows: list[Row], count: int, offset: int, asked: int, where: str) -> None:
        """Check one page and remember its rows (see ``check``)."""
        self.check(rows, count, offset, asked, where)
        self.remember(rows)

    def remember(self, rows: Iterable[Row]) -> None:
        """Count ``rows`` as read (a later page made only of them is a repeated page)."""
        with self._lock:
            self._seen.update(self.key(row) for row in rows)

    def check(self, rows: list[Row], count: int, offset: int, asked: int, where: str) -> None:
        """Check one page: ``rows`` asked as ``asked`` rows at ``offset`` of a listing whose
        reply said ``count``. ``where`` names the request ("GET /jobs/?...")."""
        with self._lock:
            self.pages += 1
            if self.first is None:
                self.first = count
            if len(rows) > asked:
                self._fail(where, f"{len(rows)} rows where at most {asked} were asked")
            if not rows and count > offset and asked > 0:
                self._fail(
                    where,
                    f"an empty page at offset {offset}, although its count ({count}) says rows "
                    "remain there",
                )
            keys = [self.key(row) for row in rows]
            if self.stable and keys and self._seen.issuperset(keys):
                self._fail(where, f"the same {len(keys)} rows again (a repeated page)")
            allowed = math.ceil(self.first * self.growth / self.size) + SLACK_PAGES
            if self.pages > allowed:
                self._fail(
                    where,
                    f"page {self.pages} of a listing whose first count ({self.first}) allows "
                    f"{allowed} pages of {self.size}",
                )

    def ordered(
        self, rows: Iterable[Row], key: str, since: str | None, where: str, until: str | None = None
    ) -> None:
        """Check that ``rows`` come in ``key`` order, within ``since`` and ``until`` (keyset
        pages: ISO timestamps compare as text)."""
        last = since
        for row in rows:
            value = row[key]
            if (last is not None and value < last) or (until is not None and value > until):
                self._fail(where, f"{key} {value} out of the order or range asked")
            last = value

    def _fail(self, where: str, what: str) -> NoReturn:
        raise ProtocolError(
            f"{where}: the server's pages of {self.resource} contradict each other: {what}. "
            "The listing was stopped and nothing from this page was used",
            method=where.split(" ", 1)[0],
            url=where.split(" ", 1)[-1],
            resource=self.resource,
            field="results",
        )


def _id(row: Row) -> Hashable:
    key: Hashable = row["id"]
    return key
