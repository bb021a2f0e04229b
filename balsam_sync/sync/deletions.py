"""Find the jobs the server deleted: it keeps no tombstones, so counts are compared.

The server's job count is taken before the jobs are listed (a change of a job does not change
it, so the busy traffic of a site agent cannot disturb it). After the listing the mirror holds
every job counted then, plus jobs created meanwhile, plus jobs deleted but not yet noticed: the
two counts are equal exactly when there is nothing to find. Otherwise ``last_update`` ranges
are bisected by count until a range is small enough to compare id lists; finding a few
deletions costs a few requests. Candidates are then asked for by id, and only those the
server does not return are deleted (a job that changed meanwhile is refreshed instead).
"""

from __future__ import annotations

from typing import Any

from ..cache.pullstate import PullState
from ..remote import Remote
from ..resources import RESOURCES
from ..spec import QuerySpec
from .pages import job_spec, stamp_after, stamp_before
from .small import SmallResources

COMPARE_IDS_BELOW = 500
"""A range holding fewer mirror jobs than this is settled by listing the server's jobs in it."""
LIST_WHEN_MISSING = 0.25
"""...and so is a range whose server count lacks more than this share of its mirror jobs."""


class DeletedJobs:
    """Deletes, from the mirror, the jobs the server no longer has."""

    def __init__(self, remote: Remote, small: SmallResources) -> None:
        self.remote = remote
        self.small = small
        self.store = small.mirror.store
        self.requests = 0

    def find(self, server_count: int | None) -> int:
        """Compare with ``server_count`` (taken before the listing); return jobs deleted."""
        if server_count is not None and server_count == self.store.count_confirmed("Job"):
            return 0
        top = PullState(self.store).newest_job_update()
        if top is None:
            return 0
        missing = set(self._bisect(None, top))
        return self.small.settle(RESOURCES["Job"], missing)

    def _count(self, spec: QuerySpec) -> int:
        self.requests += 1
        return self.remote.count(RESOURCES["Job"], spec)

    def _bisect(self, low: str | None, high: str) -> list[int]:
        spec = job_spec(low, high)
        local = self.store.count(spec)
        remote = self._count(spec)
        if local == remote:
            return []
        if local <= COMPARE_IDS_BELOW or low == high or remote < local * (1 - LIST_WHEN_MISSING):
            self.requests += 1
            remote_ids = set(self.remote.ids(RESOURCES["Job"], spec))
            return sorted({r["id"] for r in self.store.query(spec)} - remote_ids)
        middle = self._median(spec, local)
        if middle == high:
            halves = [(low, stamp_before(high)), (high, high)]
        else:
            halves = [(low, middle), (stamp_after(middle), high)]
        return [i for lo, hi in halves for i in self._bisect(lo, hi)]

    def _median(self, spec: QuerySpec, n: int) -> str:
        rows = self.store.query(QuerySpec("Job", spec.filters, "last_update", n // 2, n // 2 + 1))
        value: Any = rows[0]["last_update"]
        return str(value)
