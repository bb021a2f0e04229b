"""Find the jobs the server deleted: it keeps no tombstones, so counts are compared.

The server's job count is taken before the jobs are listed (a change of a job does not change
it, so the busy traffic of a site agent cannot disturb it). After the listing the mirror holds
every job counted then, plus jobs created meanwhile, plus jobs deleted but not yet noticed
(minus, after a listing by offsets, jobs a concurrent deletion made it skip): the two counts
are equal when there is nothing to find. Otherwise ``last_update`` ranges are bisected by count
until a range is small enough to compare id lists; finding a few deletions costs a few
requests. Jobs only the mirror holds are then asked for by id, and only those the server does
not return are deleted (a job that changed meanwhile is refreshed instead); jobs only the
server holds are read.
"""

from __future__ import annotations

from typing import Any

from ..remote.rest import Remote
from ..resources import RESOURCES
from ..spec import QuerySpec
from .pages import job_spec, stamp_after, stamp_before
from .small import SmallResources

COMPARE_IDS_BELOW = 500
"""A range holding fewer jobs than this is settled by listing the server's jobs in it."""
LIST_WHEN_APART = 0.25
"""...and so is a range whose two counts differ by more than this share."""


class DeletedJobs:
    """Deletes, from the mirror, the jobs the server no longer has."""

    def __init__(self, remote: Remote, small: SmallResources) -> None:
        self.remote = remote
        self.small = small
        self.mirror = small.mirror

    def find(self, server_count: int | None) -> int:
        """Compare with ``server_count`` (taken before the listing); return jobs deleted."""
        if server_count is not None and server_count == self.mirror.count_confirmed("Job"):
            return 0
        top = self.mirror.newest_job_update()
        if top is None:
            return 0
        only_here, only_there = self._bisect(None, top)
        if only_there:
            spec = QuerySpec("Job").with_filters({"id": sorted(only_there)})
            self.small.store(RESOURCES["Job"], self.remote.select(RESOURCES["Job"], spec)[0])
        return self.small.settle(RESOURCES["Job"], only_here)

    def _bisect(self, low: str | None, high: str) -> tuple[set[int], set[int]]:
        """Ids in ``[low, high]`` only the mirror holds, and only the server holds."""
        spec = job_spec(low, high)
        local = self.mirror.count(spec)
        remote = self.remote.count(RESOURCES["Job"], spec)
        if local == remote:
            return set(), set()
        apart = abs(local - remote) > LIST_WHEN_APART * max(local, remote)
        if max(local, remote) <= COMPARE_IDS_BELOW or low == high or apart:
            there = set(self.remote.ids(RESOURCES["Job"], spec))
            here = {i for i in self.mirror.ids(spec) if i > 0}
            return here - there, there - here
        middle = self._median(spec, local)
        if middle == high:
            halves = [(low, stamp_before(high)), (high, high)]
        else:
            halves = [(low, middle), (stamp_after(middle), high)]
        here, there = set(), set()
        for lo, hi in halves:
            a, b = self._bisect(lo, hi)
            here |= a
            there |= b
        return here, there

    def _median(self, spec: QuerySpec, n: int) -> str:
        rows = self.mirror.dicts(QuerySpec("Job", spec.filters, "last_update", n // 2, n // 2 + 1))
        value: Any = rows[0]["last_update"]
        return str(value)
