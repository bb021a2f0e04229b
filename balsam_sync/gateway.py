"""Route every read and write of the managers to the mirror or the server.

Reads follow the query's policy (``freshness.py``): the mirror answers when the coverage book
says it holds a fresh enough copy, otherwise the server does, and every row the server returns
is written through to the mirror in the same call. When the server cannot be reached the mirror
answers instead, marked stale, with one warning. Writes go to the server and their results
(including what the server derived, and its cascades) go to the mirror.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

from .cache.mirror import Mirror
from .errors import OfflineError, Rejected, ServerUnreachable
from .freshness import USE_CLIENT_DEFAULT, Answer, PolicyArg, ReadMode, ReadPolicy
from .params import FILTER_CHUNK_SIZE
from .remote import Remote
from .resources import Resource
from .spec import QuerySpec

log = logging.getLogger(__name__)

Row = dict[str, Any]
DEFAULT_MAX_AGE = 300.0
"""Seconds a full sync stays fresh enough to answer queries under the AUTO policy."""

# Server-side effects a write has on other resources, which the mirror cannot replay exactly:
# creating or updating jobs writes events and transfer items the mirror has not seen.
SIDE_EFFECTS = {"Job": ("EventLog", "TransferItem"), "TransferItem": ("Job", "EventLog")}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Gateway:
    """The one object managers talk to.

    Args:
        remote: the REST API.
        mirror: returns the open mirror (opened lazily, on first use).
        default_policy: the policy of queries that do not choose one.
        max_age: seconds a full sync stays fresh under AUTO.
    """

    def __init__(
        self,
        remote: Remote,
        mirror: Callable[[], Mirror],
        default_policy: ReadPolicy,
        max_age: float = DEFAULT_MAX_AGE,
    ) -> None:
        self.remote = remote
        self._mirror_factory = mirror
        self._mirror: Mirror | None = None
        self.default_policy = default_policy
        self.max_age = max_age
        self._warned_offline = False

    @property
    def mirror(self) -> Mirror:
        if self._mirror is None:
            self._mirror = self._mirror_factory()
        return self._mirror

    def _policy(self, policy: PolicyArg) -> ReadPolicy:
        return self.default_policy if policy is USE_CLIENT_DEFAULT else policy

    # -- reads ---------------------------------------------------------------------------------

    def _cached_as_of(self, spec: QuerySpec, pol: ReadPolicy, count: bool) -> datetime | None:
        """Return the coverage time when ``pol`` lets the mirror answer ``spec``, else None."""
        if pol.mode in (ReadMode.ONLINE, ReadMode.OFFLINE):
            return None
        book = self.mirror.coverage
        if pol.mode is ReadMode.AUTO:
            when = book.full_sync_at(spec.resource)
        else:
            cov = book.for_count(spec) if count else book.for_rows(spec)
            when = cov.as_of if cov else None
        max_age = pol.max_age if pol.max_age is not None else self.max_age
        if when is not None and (utcnow() - when).total_seconds() <= max_age:
            return when
        return None

    def _offline_as_of(self, spec: QuerySpec, count: bool) -> datetime | None:
        book = self.mirror.coverage
        cov = book.for_count(spec) if count else book.for_rows(spec)
        return cov.as_of if cov else book.full_sync_at(spec.resource)

    def fetch(self, res: Resource, spec: QuerySpec, policy: PolicyArg) -> Answer:
        """Return the rows of ``spec`` from wherever the policy allows."""
        pol = self._policy(policy)
        if pol.mode is ReadMode.OFFLINE:
            return self._mirror_rows(spec, self._offline_as_of(spec, False), stale=False)
        cached = self._cached_as_of(spec, pol, count=False)
        if cached is not None:
            return self._mirror_rows(spec, cached, stale=False)
        try:
            now = utcnow()
            rows, count = self.remote.select(res, spec)
        except ServerUnreachable as exc:
            return self._fallback(
                spec, pol, exc, False, lambda at: self._mirror_rows(spec, at, True)
            )
        self._write_through_list(res, spec, rows, count, now)
        return Answer(rows, count, "server", now)

    def _mirror_rows(self, spec: QuerySpec, as_of: datetime | None, stale: bool) -> Answer:
        store = self.mirror.store
        return Answer(store.query(spec), None, "cache", as_of, stale)

    def count(self, res: Resource, spec: QuerySpec, policy: PolicyArg) -> Answer:
        """Return how many objects match ``spec`` (rows are not fetched)."""
        pol = self._policy(policy)
        if pol.mode is ReadMode.OFFLINE:
            return self._mirror_count(spec, self._offline_as_of(spec, True), stale=False)
        cached = self._cached_as_of(spec, pol, count=True)
        if cached is not None:
            return self._mirror_count(spec, cached, stale=False)
        try:
            now = utcnow()
            n = self.remote.count(res, spec)
        except ServerUnreachable as exc:
            return self._fallback(
                spec, pol, exc, True, lambda at: self._mirror_count(spec, at, True)
            )
        self.mirror.coverage.record_fetch(spec, now, n, rows=False)
        return Answer([], n, "server", now)

    def _mirror_count(self, spec: QuerySpec, as_of: datetime | None, stale: bool) -> Answer:
        cov = self.mirror.coverage.for_count(spec)
        if cov is not None and cov.count is not None and not stale:
            return Answer([], cov.count, "cache", cov.as_of)
        return Answer([], self.mirror.store.count(spec), "cache", as_of, stale)

    def _fallback(
        self,
        spec: QuerySpec,
        pol: ReadPolicy,
        exc: ServerUnreachable,
        count: bool,
        answer: Callable[[datetime | None], Answer],
    ) -> Answer:
        if pol.mode is ReadMode.ONLINE:
            raise OfflineError(
                f"the server cannot be reached and this query is .online(): {exc}"
            ) from exc
        if not self._warned_offline:
            log.warning("server unreachable (%s); answering from the local mirror", exc)
            self._warned_offline = True
        return answer(self._offline_as_of(spec, count))

    def stream(
        self, res: Resource, spec: QuerySpec, policy: PolicyArg, chunk_size: int
    ) -> Iterator[Row]:
        """Yield the rows of ``spec`` without holding them all."""
        pol = self._policy(policy)
        if pol.mode is ReadMode.OFFLINE or self._cached_as_of(spec, pol, count=False):
            yield from self.mirror.store.stream(spec, chunk_size)
            return
        if any(isinstance(v, tuple) and len(v) > FILTER_CHUNK_SIZE for _, v in spec.filters):
            yield from self.fetch(res, spec, pol).rows  # chunked: merged in memory anyway
            return
        for page in self.remote.pages(res, spec, chunk_size):
            self.mirror.store.upsert(res.name, page)
            yield from page

    def _write_through_list(
        self, res: Resource, spec: QuerySpec, rows: list[Row], count: int, at: datetime
    ) -> None:
        """Store a list answer; for an unsliced one, also settle mirror rows it left out."""
        store = self.mirror.store
        with store.write():
            store.upsert(res.name, rows)
            if not spec.is_sliced and not spec.empty:
                self._settle_missing(res, spec, {r["id"] for r in rows})
            self.mirror.coverage.record_fetch(spec, at, count, rows=True)

    def _settle_missing(self, res: Resource, spec: QuerySpec, seen: set[int]) -> None:
        """Mirror rows that match but were not returned were deleted or changed: ask which."""
        store = self.mirror.store
        missing = [r["id"] for r in store.query(spec) if r["id"] not in seen]
        if not missing:
            return
        found = self.remote.select(res, QuerySpec(res.name).with_filters({"id": missing}))[0]
        store.upsert(res.name, found)
        gone = set(missing) - {r["id"] for r in found}
        store.delete_cascade(res.name, sorted(gone))

    # -- writes --------------------------------------------------------------------------------

    def _after_write(self, res: Resource, rows: list[Row] | None = None) -> None:
        mirror = self.mirror
        with mirror.store.write():
            mirror.store.upsert(res.name, rows or [])
            mirror.coverage.forget_windows(res.name)
            for other in SIDE_EFFECTS.get(res.name, ()):
                mirror.coverage.invalidate(other)

    def create(self, res: Resource, payloads: list[Row]) -> list[Row]:
        rows = self.remote.create(res, payloads)
        self._after_write(res, rows)
        return rows

    def update(self, res: Resource, obj_id: int, changes: Row) -> Row:
        row = self.remote.update(res, obj_id, changes)
        self._after_write(res, [row])
        self._refresh_children(res, [row])
        return row

    def bulk_update(self, res: Resource, items: list[tuple[int, Row]]) -> list[Row]:
        rows = self.remote.bulk_update(res, items)
        self._after_write(res, rows)
        self._refresh_children(res, rows)
        return rows

    def query_update(self, res: Resource, spec: QuerySpec, changes: Row) -> int:
        rows = self.remote.query_update(res, spec, changes)
        self._after_write(res, rows)
        self._refresh_children(res, rows)
        return len(rows)

    def _refresh_children(self, res: Resource, rows: list[Row]) -> None:
        """A job that became JOB_FINISHED may have promoted its children on the server."""
        if res.name != "Job":
            return
        finished = [r["id"] for r in rows if r.get("state") == "JOB_FINISHED"]
        if finished:
            spec = QuerySpec(res.name).with_filters({"parent_id": finished})
            children = self.remote.select(res, spec)[0]
            self.mirror.store.upsert(res.name, children)

    def delete(self, res: Resource, obj_id: int) -> None:
        if not self.remote.delete(res, obj_id):
            raise Rejected(
                f"{res.name} {obj_id} is locked by a running session: the server kept it",
                method="DELETE",
                url=res.item_path(obj_id),
                status=409,
                body=None,
            )
        self.mirror.store.delete_cascade(res.name, [obj_id])
        self._after_write(res)

    def query_delete(self, res: Resource, spec: QuerySpec) -> int:
        deleted, kept = self.remote.query_delete(res, spec)
        self.mirror.store.delete_cascade(res.name, deleted)
        self._after_write(res, kept)
        return len(deleted)
