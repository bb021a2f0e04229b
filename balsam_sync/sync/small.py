"""Sites, apps, batch jobs and transfer items in motion: what an incremental pull re-reads.

* Sites and apps: re-read whole (one request each; an account holds a handful). Sites carry
  the scheduler's view and change every minute while a site agent runs; apps have no
  timestamp at all.
* Batch jobs: the unfinished ones (pending_submission, queued, running, pending_deletion) are
  re-read, plus, by id, those the mirror holds as unfinished that left that set; a count
  check catches the rest (a batch job created and finished between two pulls, a deleted one),
  and then all batch jobs are re-read.
* Transfer items: the ones a transfer service moves without their job (pending, active,
  inactive) are re-read, plus, by id, those the mirror holds in such a state that left it.
  Items waiting for their job, done or failed change only with their job on the server (they
  are re-read with it, sync/children.py); a direct edit of such an item through the API is
  found by the periodic full pull.

A row the mirror holds and a whole listing left out is deleted only after the server, asked
for it by id, does not return it: another process may have written it meanwhile.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from ..cache import Mirror
from ..remote.rest import Remote
from ..resources import BATCH_JOB, RESOURCES, TRANSFER_ITEM, Resource, Row
from ..spec import QuerySpec

WHOLE_PAGE = 20_000
"""Rows per request of a whole listing: a first pull's transfer items and events take the
server about 0.2 ms a row, so its progress moves every few seconds."""

Note = Callable[[str, int], None]
"""Called as (resource, rows fetched) after each listing, for the report and the progress."""


class SmallResources:
    """Brings sites, apps, batch jobs and moving transfer items up to date."""

    def __init__(self, remote: Remote, mirror: Mirror, note: Note, read_at: datetime) -> None:
        self.remote = remote
        self.mirror = mirror
        self.note = note
        self.read_at = read_at  # no request of the pull was sent before (this machine's clock)

    def store(self, res: Resource, rows: list[Row]) -> None:
        """Write the server's rows that changed; pending local changes are laid back on top."""
        self.mirror.server_rows(res.name, rows, merge=True, read_at=self.read_at)

    def whole(self, name: str) -> int:
        """Re-read every row of ``name``; return how many the server no longer has."""
        res = RESOURCES[name]
        rows: list[Row] = []
        last = 0
        for page in self.remote.pages(res, QuerySpec(name), WHOLE_PAGE):
            self.note(name, last)  # a long listing shows its progress page by page
            rows.extend(page)
            last = len(page)
        self.store(res, rows)
        self.note(name, last)  # the last page once everything is stored
        missing = self.mirror.confirmed_ids(name) - {r["id"] for r in rows}
        return self.settle(res, missing)

    def settle(self, res: Resource, ids: set[int]) -> int:
        """Ask for ``ids`` by id: store those found, delete those gone; return how many went."""
        if not ids:
            return 0
        spec = QuerySpec(res.name).with_filters({"id": sorted(ids)})
        found, _ = self.remote.select(res, spec)
        self.note(res.name, len(found))
        gone = ids - {r["id"] for r in found}
        self.store(res, found)
        self.mirror.server_gone(res.name, gone)
        return len(gone)

    def in_states(self, name: str, states: tuple[str, ...]) -> tuple[int, int]:
        """Re-read the rows in ``states`` and those that left them; return (gone, server count)."""
        res = RESOURCES[name]
        held = self.mirror.ids_in_states(name, states)
        rows, count = self.remote.select(res, QuerySpec(name).with_filters({"state": states}))
        self.store(res, rows)
        self.note(name, len(rows))
        return self.settle(res, held - {r["id"] for r in rows}), count

    def batch_jobs(self, full: bool) -> int:
        """Bring batch jobs up to date; return how many were deleted."""
        if full:
            return self.whole("BatchJob")
        gone, _ = self.in_states(BATCH_JOB.name, BATCH_JOB.moving_states)
        total = self.remote.count(BATCH_JOB, QuerySpec(BATCH_JOB.name))
        if total != self.mirror.count_confirmed(BATCH_JOB.name):
            gone += self.whole("BatchJob")
        return gone

    def moving_transfer_items(self) -> int:
        """Re-read the transfer items in motion; return how many were deleted."""
        return self.in_states(TRANSFER_ITEM.name, TRANSFER_ITEM.moving_states)[0]
