"""Reads: the mirror answers when the coverage book says it holds a fresh enough copy,
otherwise the server does, and every row the server returns is written through to the
mirror (plan, fetch, then store). When the server cannot be reached the mirror answers
instead, marked stale, with one warning."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from typing import TypeVar

from ..errors import OfflineError, ServerUnreachable
from ..freshness import Answer, PolicyArg, ReadMode, ReadPolicy
from ..remote.params import FILTER_CHUNK_SIZE
from ..resources import Resource, Row
from ..spec import QuerySpec
from .core import GatewayCore, log
from .plan import ReadPlan, Route, coverage_kind, plan_read
from .unmirrored import server_if_unmirrored

T = TypeVar("T")


class Reads(GatewayCore):
    """The read half of the gateway."""

    def _plan(self, spec: QuerySpec, pol: ReadPolicy, count: bool) -> ReadPlan:
        """Look up the coverage the policy needs, then plan (``plan.py``, pure)."""
        kind = coverage_kind(pol)
        book = self.mirror.coverage if kind is not None else None
        when = None
        if book is not None and kind == "full":
            when = book.full_sync_at(spec.resource)
        elif book is not None:
            cov = book.for_count(spec) if count else book.for_rows(spec)
            when = cov.as_of if cov else None
        return plan_read(pol, when, self.clock(), self.max_age)

    def _offline_as_of(self, spec: QuerySpec, count: bool) -> datetime | None:
        """When the server confirmed the mirror's answer; NoEvidence if it has none."""
        return self._capped(self.mirror.coverage.evidence(spec, count).as_of)

    def _capped(self, when: datetime | None) -> datetime | None:
        return min(when, self.clock()) if when else None  # never ahead of the clock

    @server_if_unmirrored()
    def fetch(
        self, res: Resource, spec: QuerySpec, policy: PolicyArg, latest: bool = False
    ) -> Answer:
        """Return the rows of ``spec`` from wherever the policy allows."""

        def stored(got: tuple[list[Row], int], now: datetime) -> Answer:
            rows, count = got
            self._write_through_list(res, spec, rows, count, now)
            if self.mirror.outbox.has_pending(res.name):
                # Queued local changes are part of the local view: answer with them on top.
                return Answer(self.mirror.store.query(spec), count, "server", now)
            return Answer(rows, count, "server", now)

        return self._route(
            spec,
            self._policy(policy, latest),
            False,
            lambda at, stale: self._mirror_rows(spec, at, stale),
            lambda: self.remote.select(res, spec),
            stored,
        )

    def _mirror_rows(self, spec: QuerySpec, as_of: datetime | None, stale: bool) -> Answer:
        layout, rows = self.mirror.store.query_packed(spec)
        return Answer(rows, None, "cache", as_of, stale, layout)

    @server_if_unmirrored(count=True)
    def count(self, res: Resource, spec: QuerySpec, policy: PolicyArg) -> Answer:
        """Return how many objects match ``spec`` (rows are not fetched)."""

        def recorded(n: int, now: datetime) -> Answer:
            self.mirror.coverage.record_fetch(spec, now, n, rows=False)
            return Answer([], n, "server", now)

        return self._route(
            spec,
            self._policy(policy),
            True,
            lambda at, stale: self._mirror_count(spec, at, stale),
            lambda: self.remote.count(res, spec),
            recorded,
        )

    def _route(
        self,
        spec: QuerySpec,
        pol: ReadPolicy,
        count: bool,
        local: Callable[[datetime | None, bool], Answer],
        ask: Callable[[], T],
        store: Callable[[T, datetime], Answer],
    ) -> Answer:
        """Answer from the mirror when the plan says so, else ask the server, then store
        (plan, fetch, then store); an unreachable server falls back to the mirror."""
        plan = self._plan(spec, pol, count=count)
        if plan.route is Route.MIRROR:
            ev = self.mirror.coverage.evidence(spec, count)
            return local(self._capped(ev.as_of), ev.partial)
        if plan.route is Route.CACHED:
            return local(plan.as_of, False)
        try:
            self._reach(pol)
            now = self.clock()
            got = ask()
            now = min(now, self.clock())  # the reply may show that our clock runs ahead
        except ServerUnreachable as exc:
            return self._fallback(spec, pol, exc, count, lambda at: local(at, True))
        return store(got, now)

    def _mirror_count(self, spec: QuerySpec, as_of: datetime | None, stale: bool) -> Answer:
        cov = self.mirror.coverage.for_count(spec)
        if cov is not None and cov.count is not None and not stale:
            return Answer([], cov.count, "cache", min(cov.as_of, self.clock()))
        return Answer([], self.mirror.store.count(spec), "cache", as_of, stale)

    def _reach(self, pol: ReadPolicy) -> None:
        """An ``.online()`` read tries the server now, even while the link is backing off."""
        if pol.mode is ReadMode.ONLINE:
            self.remote.transport.ensure_reachable()

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

    @server_if_unmirrored()
    def stream(
        self, res: Resource, spec: QuerySpec, policy: PolicyArg, chunk_size: int
    ) -> Iterator[Row]:
        """Yield the rows of ``spec`` without holding them all."""
        pol = self._policy(policy)
        if self._plan(spec, pol, count=False).route is not Route.SERVER:
            self.mirror.coverage.evidence(spec, False)
            yield from self.mirror.store.stream(spec, chunk_size)
            return
        if any(isinstance(v, tuple) and len(v) > FILTER_CHUNK_SIZE for _, v in spec.filters):
            yield from self.fetch(res, spec, pol).dicts()  # chunked: merged in memory anyway
            return
        pages = self.remote.pages(res, spec, chunk_size)
        try:
            self._reach(pol)
            first = next(pages, None)
        except ServerUnreachable as exc:
            # Nothing was yielded yet: the mirror can still answer, as for any other read.
            self._fallback(spec, pol, exc, False, lambda at: Answer([], None, "cache", at, True))
            yield from self.mirror.store.stream(spec, chunk_size)
            return
        for page in [first] if first is not None else []:
            yield from self._stored(res, page)
        for page in pages:
            yield from self._stored(res, page)

    def _stored(self, res: Resource, page: list[Row]) -> list[Row]:
        self.mirror.accept(res.name, page)
        return page

    def _write_through_list(
        self, res: Resource, spec: QuerySpec, rows: list[Row], count: int, at: datetime
    ) -> None:
        """Store a list answer; for an unsliced one, also settle mirror rows it left out.

        Plan, fetch, then store: the rows the answer left out are asked for before the one
        write transaction, so no request runs while the mirror is locked.
        """
        seen = {r["id"] for r in rows}
        found: tuple[list[int], list[Row]] | None = ([], [])
        if not spec.is_sliced and not spec.empty:
            found = self._missing(res, spec, seen)
        store = self.mirror.store
        with store.write():
            self.mirror.accept(res.name, rows)
            if found is not None:  # else: unknown which were deleted, so no coverage claimed
                missing, rows_now = found
                store.upsert(res.name, rows_now)
                gone = set(missing) - {r["id"] for r in rows_now}
                store.delete_cascade(res.name, sorted(gone))
                self.mirror.coverage.record_fetch(spec, at, count, rows=True)

    def _missing(
        self, res: Resource, spec: QuerySpec, seen: set[int]
    ) -> tuple[list[int], list[Row]] | None:
        """Mirror rows that match but were not returned (deleted or changed): ask for them.

        Returns (their ids, the rows the server still has), or None when it could not say.
        """
        store = self.mirror.store
        missing = [r["id"] for r in store.query(spec) if r["id"] > 0 and r["id"] not in seen]
        if not missing:
            return [], []
        try:
            return missing, self.remote.select(
                res, QuerySpec(res.name).with_filters({"id": missing})
            )[0]
        except ServerUnreachable:
            return None
