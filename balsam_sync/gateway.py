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
from datetime import datetime
from typing import Any

from .cache.mirror import Mirror
from .cache.outbox import Op
from .errors import BalsamSyncError, NotAuthenticated, OfflineError, ServerUnreachable
from .freshness import Answer, PolicyArg, ReadMode, ReadPolicy, choose
from .params import FILTER_CHUNK_SIZE
from .remote import Remote
from .resources import Resource
from .spec import QuerySpec
from .sync.lock import FileLock
from .sync.replay import Replayer
from .sync.undo import revive, withdraw
from .unmirrored import server_if_unmirrored
from .writing import WriteResult, provisional_row

__all__ = ["Gateway", "WriteResult", "provisional_row"]

log = logging.getLogger(__name__)

Row = dict[str, Any]
DEFAULT_MAX_AGE = 30.0
"""Seconds a full sync stays fresh enough to answer queries under the AUTO policy: a loop that
polls with default-policy queries sees a change the server committed after the pull within
this time (a pull's ``as_of`` is when it started)."""


class Gateway:
    """The one object managers talk to.

    Args:
        remote: the REST API.
        mirror: returns the open mirror (opened lazily, on first use).
        default_policy: the policy of queries that do not choose one.
        max_age: seconds a full sync stays fresh under AUTO.
        clock: the time now (default: the server's clock, as the transport estimates it).
    """

    def __init__(
        self,
        remote: Remote,
        mirror: Callable[[], Mirror],
        default_policy: ReadPolicy,
        max_age: float = DEFAULT_MAX_AGE,
        offline: bool = False,
        clock: Callable[[], datetime] | None = None,
        max_request_seconds: float = 120.0,
    ) -> None:
        self.remote = remote
        self.clock = clock or remote.transport.server_now
        self.offline = offline
        self.max_request_seconds = max_request_seconds
        self._replayer: Replayer | None = None
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

    def replayer(self) -> Replayer:
        """The replayer of this mirror's outbox (built on first use)."""
        if self._replayer is None:
            mirror = self.mirror
            lock = FileLock(mirror.lock_path)
            self._replayer = Replayer(
                self.remote,
                mirror,
                mirror.outbox,
                lock,
                max_request_seconds=self.max_request_seconds,
            )
        return self._replayer

    def _policy(self, policy: PolicyArg, latest: bool = False) -> ReadPolicy:
        """The policy a read follows (``latest``: a read that names objects, see freshness)."""
        return choose(self.default_policy, policy, offline=self.offline, latest=latest)

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
        # A stamp ahead of the clock (it was set back since) is never fresh.
        if (
            when is not None
            and max_age > 0
            and 0 <= (self.clock() - when).total_seconds() <= max_age
        ):
            return when
        return None

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
        pol = self._policy(policy, latest)
        if pol.mode is ReadMode.OFFLINE:
            ev = self.mirror.coverage.evidence(spec, False)
            return self._mirror_rows(spec, self._capped(ev.as_of), stale=ev.partial)
        cached = self._cached_as_of(spec, pol, count=False)
        if cached is not None:
            return self._mirror_rows(spec, cached, stale=False)
        try:
            self._reach(pol)
            now = self.clock()
            rows, count = self.remote.select(res, spec)
            now = min(now, self.clock())  # the reply may show that our clock runs ahead
        except ServerUnreachable as exc:
            return self._fallback(
                spec, pol, exc, False, lambda at: self._mirror_rows(spec, at, True)
            )
        self._write_through_list(res, spec, rows, count, now)
        if self.mirror.outbox.has_pending(res.name):
            # Queued local changes are part of the local view: answer with them laid on top.
            return Answer(self.mirror.store.query(spec), count, "server", now)
        return Answer(rows, count, "server", now)

    def _mirror_rows(self, spec: QuerySpec, as_of: datetime | None, stale: bool) -> Answer:
        layout, rows = self.mirror.store.query_packed(spec)
        return Answer(rows, None, "cache", as_of, stale, layout)

    @server_if_unmirrored(count=True)
    def count(self, res: Resource, spec: QuerySpec, policy: PolicyArg) -> Answer:
        """Return how many objects match ``spec`` (rows are not fetched)."""
        pol = self._policy(policy)
        if pol.mode is ReadMode.OFFLINE:
            ev = self.mirror.coverage.evidence(spec, True)
            return self._mirror_count(spec, self._capped(ev.as_of), stale=ev.partial)
        cached = self._cached_as_of(spec, pol, count=True)
        if cached is not None:
            return self._mirror_count(spec, cached, stale=False)
        try:
            self._reach(pol)
            now = self.clock()
            n = self.remote.count(res, spec)
            now = min(now, self.clock())
        except ServerUnreachable as exc:
            return self._fallback(
                spec, pol, exc, True, lambda at: self._mirror_count(spec, at, True)
            )
        self.mirror.coverage.record_fetch(spec, now, n, rows=False)
        return Answer([], n, "server", now)

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
        if pol.mode is ReadMode.OFFLINE or self._cached_as_of(spec, pol, count=False):
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
        with self.mirror.store.write():
            self.mirror.store.upsert(res.name, page)
            self.mirror.outbox.overlay(res.name, [r["id"] for r in page])
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
            store.upsert(res.name, rows)
            self.mirror.outbox.overlay(res.name, list(seen))
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

    # -- writes --------------------------------------------------------------------------------

    def _queue(
        self, res: Resource, op: Op, items: list[tuple[int, Row]], rows: list[Row]
    ) -> list[int]:
        """Apply ``rows`` to the mirror and queue ``items``, in one transaction."""
        mirror = self.mirror
        with mirror.store.write():
            if op is Op.DELETE:
                mirror.store.delete_cascade(res.name, [obj_id for obj_id, _ in items])
            else:
                mirror.store.upsert(res.name, rows)
            seqs = mirror.outbox.enqueue(res.name, op, items)
            mirror.coverage.forget_windows()
        return seqs

    def _push_now(
        self, res: Resource, op: Op, seqs: list[int], before: dict[int, Row | None]
    ) -> dict[int, BalsamSyncError]:
        """Send the queue (``seqs`` included) now; return rejections by item index.

        A write never waits: not offline, not while the server is known to be unreachable,
        not for another process's push (which sends these entries too), not for creates the
        server may still be running. The change stays queued and the call returns.

        Raises:
            NotAuthenticated: the server refused the token; the change was taken back
                (``before`` holds the rows to restore), so calling again after logging in
                applies it once.
        """
        if self.offline or self.remote.transport.link.down():
            return {}
        with self.remote.transport.impatient():  # a silent server is given up on at once
            report = self.replayer().push(own=seqs, lock_wait=0.0, settle_wait=0.0, force=False)
        if report.paused_for_auth:
            withdraw(self.mirror, res.name, op, seqs, before)
            raise NotAuthenticated(
                f"{report.error}. Nothing was changed: log in again (`balsam-sync login`), "
                "then repeat the call",
                method="",
                url=self.remote.transport.api_root,
                status=401,
                body=None,
            )
        return {i: report.rejected[s] for i, s in enumerate(seqs) if s in report.rejected}

    def _current(self, res: Resource, ids: list[int]) -> list[Row | None]:
        """The mirror's rows for ``ids`` (provisional ids resolved), in order; None if gone."""
        mapping = self.mirror.outbox.real_ids([i for i in ids if i < 0])
        ids = [mapping.get(i, i) for i in ids]
        spec = QuerySpec(res.name).with_filters({"id": ids})
        store = self.mirror.store
        found = {r["id"]: store.decode(res.name, r) for r in store.query(spec)}
        return [found.get(i) for i in ids]

    def real_id(self, obj_id: int) -> int:
        """The server id of a provisional id once known (else the id itself)."""
        return self.mirror.outbox.real_ids([obj_id]).get(obj_id, obj_id) if obj_id < 0 else obj_id

    def create(self, res: Resource, payloads: list[Row]) -> WriteResult:
        """Create objects: provisional rows now, server rows once acknowledged."""
        temps = self.mirror.outbox.temp_ids(len(payloads))
        rows = [provisional_row(res, temp, p) for temp, p in zip(temps, payloads, strict=True)]
        seqs = self._queue(res, Op.CREATE, list(zip(temps, payloads, strict=True)), rows)
        errors = self._push_now(res, Op.CREATE, seqs, {})
        current = self._current(res, temps)
        # A created object keeps its id even if its row has left the mirror meanwhile (another
        # process deleted it): otherwise the next save() would create it a second time.
        for i, (temp, payload) in enumerate(zip(temps, payloads, strict=True)):
            if current[i] is None and i not in errors:
                current[i] = provisional_row(res, self.real_id(temp), payload)
        return WriteResult(current, errors)

    def update(self, res: Resource, obj_id: int, changes: Row) -> WriteResult:
        return self.bulk_update(res, [(obj_id, changes)])

    def bulk_update(self, res: Resource, items: list[tuple[int, Row]]) -> WriteResult:
        """Apply per-object changes locally and queue them."""
        items = [(self.real_id(obj_id), changes) for obj_id, changes in items]
        ids = [i for i, _ in items]
        before = dict(zip(ids, self._current(res, ids), strict=True))
        after = dict(before)
        rows = []
        for obj_id, changes in items:
            base = after.get(obj_id)
            if base is not None:
                base = {**base, **changes}
                after[obj_id] = base
                rows.append(base)
        seqs = self._queue(res, Op.UPDATE, items, rows)
        errors = self._push_now(res, Op.UPDATE, seqs, before)
        return WriteResult(self._current(res, [i for i, _ in items]), errors)

    def _resolve_ids(self, res: Resource, spec: QuerySpec) -> list[int]:
        """The ids a query update/delete means now: the server's answer, else the mirror's
        (NoEvidence when it cannot tell: nothing is changed rather than the wrong objects)."""
        if not self.offline:
            try:
                rows, _ = self.remote.select(res, spec.unsliced())
                with self.mirror.store.write():
                    self.mirror.store.upsert(res.name, rows)
                    self.mirror.outbox.overlay(res.name, [r["id"] for r in rows])
                return [r["id"] for r in self.mirror.store.query(spec.unsliced())]
            except ServerUnreachable:
                pass
        self.mirror.coverage.evidence(spec.unsliced(), False)
        return [r["id"] for r in self.mirror.store.query(spec.unsliced())]

    def query_update(self, res: Resource, spec: QuerySpec, changes: Row) -> WriteResult:
        ids = self._resolve_ids(res, spec)
        if not ids:
            return WriteResult([], {})
        return self.bulk_update(res, [(i, changes) for i in ids])

    def delete(self, res: Resource, obj_id: int) -> WriteResult:
        obj_id = self.real_id(obj_id)
        before = dict(zip([obj_id], self._current(res, [obj_id]), strict=True))
        seqs = self._queue(res, Op.DELETE, [(obj_id, {})], [])
        return WriteResult([], self._push_now(res, Op.DELETE, seqs, before))

    def revive(self, seq: int) -> bool:
        """Queue a dead letter again and lay its change back on the mirror."""
        return revive(self.mirror, seq)

    def query_delete(self, res: Resource, spec: QuerySpec) -> WriteResult:
        ids = self._resolve_ids(res, spec)
        if not ids:
            return WriteResult([], {})
        before = dict(zip(ids, self._current(res, ids), strict=True))
        seqs = self._queue(res, Op.DELETE, [(i, {}) for i in ids], [])
        errors = self._push_now(res, Op.DELETE, seqs, before)
        return WriteResult([{"id": i} for i in ids], errors)
