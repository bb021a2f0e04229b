"""The gateway: where each read of the managers is answered, and how each write is queued and
sent — the one object managers talk to.

**Reads** follow the query's policy: the plan (``freshness.py``, pure) looks at what the mirror can
vouch for and says mirror or server; a server answer is handed to the mirror, which stores it
with every consequence (plan, fetch, then store: no request inside a mirror transaction). When
the server cannot be reached the mirror answers instead, marked stale, with one warning; when
the mirror cannot be used (damaged, disk full) the server answers alone, with one warning.
Every read logs one DEBUG line saying where it was answered and why.

**Writes** go to the mirror and its queue in one transaction (``Mirror.user_*``), then are sent
at once unless the link is known to be down: a write never waits on a bad link.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from ..cache import Mirror, Queued
from ..errors import (
    BalsamSyncError,
    MirrorError,
    NotAuthenticated,
    OfflineError,
    ServerUnreachable,
)
from ..freshness import (
    Answer,
    Needed,
    PolicyArg,
    ReadMode,
    ReadPlan,
    ReadPolicy,
    Route,
    choose,
    evidence_needed,
    plan_read,
)
from ..remote.params import FILTER_CHUNK_SIZE
from ..remote.rest import Remote
from ..resources import Resource, Row
from ..spec import QuerySpec
from ..sync.push import Replayer
from ..utc import now

__all__ = ["DEFAULT_MAX_AGE", "Gateway", "WriteResult"]

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE = 30.0
"""Seconds a full sync stays fresh enough to answer queries under the AUTO policy: a loop that
polls with default-policy queries sees a change the server committed after the pull within
this time (a pull's ``as_of`` is when it started)."""


@dataclass
class WriteResult:
    """Rows after a write (None where the object is gone), and rejections by item index."""

    rows: list[Row | None]
    errors: dict[int, BalsamSyncError]
    unknown: dict[int, frozenset[str]] = field(default_factory=dict)
    """Of the objects written, by id: fields the server set that it did not send back (read
    when first asked for, ``Gateway.confirm``)."""

    @property
    def count(self) -> int:
        return len(self.rows) - len(self.errors)

    def raise_first(self) -> None:
        """Raise the first rejection (saying how many items were refused)."""
        if self.errors:
            index = min(self.errors)
            exc = self.errors[index]
            if len(self.errors) > 1:
                exc.add_note(f"{len(self.errors)} of {len(self.rows)} items were refused")
            raise exc


class Gateway:
    """Routes the managers' reads and writes to the mirror and the server.

    Args:
        remote: the REST API.
        mirror: returns the open mirror (opened lazily, on first use).
        default_policy: the policy of queries that do not choose one.
        max_age: seconds a full sync stays fresh under AUTO.
        offline: never send a request (``BALSAM_SYNC_OFFLINE=1``).
        clock: the time now (default: the server's clock, as the transport estimates it).
        max_request_seconds: the longest the server may take to commit a request.
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
        self.clock = clock or remote.transport.server_clock.now
        self.offline = offline
        self.max_request_seconds = max_request_seconds
        self.default_policy = default_policy
        self.max_age = max_age
        self._mirror_factory = mirror
        self._mirror: Mirror | None = None
        self._replayer: Replayer | None = None
        self._warned: set[str] = set()

    # -- parts -----------------------------------------------------------------------------------

    @property
    def mirror(self) -> Mirror:
        if self._mirror is not None and self._mirror.replaced():
            log.warning("%s was removed or replaced (a purge?): opening it anew", self._mirror.path)
            self.close_mirror()  # the user's queue (not in that folder) refills the new one
        if self._mirror is None:
            self._mirror = self._mirror_factory()
        return self._mirror

    def close_mirror(self) -> None:
        """Close the mirror (and forget its replayer); the next use opens the file again."""
        if self._mirror is not None:
            self._mirror.close()
            self._mirror = None
        self._replayer = None

    def replayer(self) -> Replayer:
        """The replayer of this mirror's queue (built on first use)."""
        if self._replayer is None:
            self._replayer = Replayer(
                self.remote, self.mirror, max_request_seconds=self.max_request_seconds
            )
        return self._replayer

    def _policy(self, policy: PolicyArg, latest: bool = False) -> ReadPolicy:
        """The policy a read follows (``latest``: a read that names objects, see freshness)."""
        return choose(self.default_policy, policy, offline=self.offline, latest=latest)

    def _warn_once(self, key: str, text: str, *args: object) -> None:
        if key not in self._warned:
            self._warned.add(key)
            log.warning(text, *args)

    # -- reads -----------------------------------------------------------------------------------

    def fetch(
        self, res: Resource, spec: QuerySpec, policy: PolicyArg, latest: bool = False
    ) -> Answer:
        """Return the rows of ``spec`` from wherever the policy allows."""
        pol = self._policy(policy, latest)
        try:
            return self._read(res, spec, pol, count=False)
        except MirrorError as exc:
            return self._without_mirror(exc, res, spec, pol, count=False)

    def count(self, res: Resource, spec: QuerySpec, policy: PolicyArg) -> Answer:
        """Return how many objects match ``spec`` (rows are not fetched)."""
        pol = self._policy(policy)
        try:
            return self._read(res, spec, pol, count=True)
        except MirrorError as exc:
            return self._without_mirror(exc, res, spec, pol, count=True)

    def stream(
        self, res: Resource, spec: QuerySpec, policy: PolicyArg, chunk_size: int
    ) -> Iterator[Row]:
        """Yield the rows of ``spec`` without holding them all."""
        pol = self._policy(policy)
        started = False
        try:
            for row in self._stream(res, spec, pol, chunk_size):
                started = True
                yield row
        except MirrorError as exc:
            if started:  # rows were handed out already: a second answer would repeat them
                raise
            yield from self._without_mirror(exc, res, spec, pol, count=False).dicts()

    def _plan(self, spec: QuerySpec, pol: ReadPolicy, count: bool) -> ReadPlan:
        """Ask the mirror for the evidence the policy needs, then plan (``freshness.plan_read``)."""
        needed = evidence_needed(pol)
        when = None
        if needed is Needed.FULL_SYNC:
            when = self.mirror.full_sync_at(spec.resource)
        elif needed is Needed.RECORD:
            cov = self.mirror.covered(spec, count)
            when = cov.as_of if cov else None
        return plan_read(pol, when, self.clock(), self.max_age)

    def _read(self, res: Resource, spec: QuerySpec, pol: ReadPolicy, count: bool) -> Answer:
        """Answer from the mirror when the plan says so, else ask the server and hand its
        answer to the mirror; an unreachable server falls back to the mirror."""
        mirror = self.mirror
        plan = self._plan(spec, pol, count)
        if plan.route is not Route.SERVER:
            as_of, stale = plan.as_of, False
            if plan.route is Route.MIRROR:
                ev = mirror.evidence(spec, count)
                # Rows holding a change the server applied unseen make the answer stale.
                stale = ev.partial or bool(mirror.unconfirmed(res.name))
                as_of = self._capped(ev.as_of)
            else:
                stale = not self._confirm(res)
            _said(spec, count, "mirror", plan.why, as_of)
            return self._cached(spec, count, as_of, stale)
        try:
            self._reach(pol)
            asked, sent = self.clock(), now()
            if count:
                n = self.remote.count(res, spec)
            else:
                rows, n = self.remote.select(res, spec)
                rechecked = self._recheck(res, spec, rows)
            at = min(asked, self.clock())  # the reply may show that our clock runs ahead
        except ServerUnreachable as exc:
            return self._fallback(spec, pol, exc, count)
        _said(spec, count, "server", plan.why, at)
        if count:
            mirror.server_counted(spec, n, at)
            return Answer([], n, "server", at)
        rows = mirror.server_listed(spec, rows, n, at, rechecked, read_at=sent)
        return Answer(rows, n, "server", at)

    def _cached(self, spec: QuerySpec, count: bool, as_of: datetime | None, stale: bool) -> Answer:
        mirror = self.mirror
        if not count:
            layout, rows = mirror.rows(spec)
            return Answer(rows, None, "cache", as_of, stale, layout)
        cov = mirror.covered(spec, count=True)
        if cov is not None and cov.count is not None and not stale:
            return Answer([], cov.count, "cache", min(cov.as_of, self.clock()))
        return Answer([], mirror.count(spec), "cache", as_of, stale)

    def _confirm(self, res: Resource) -> bool:
        """Before the mirror answers: re-read the rows it holds that the server changed without
        sending them back (a job PATCH answers a count), in one request by id. False when the
        server could not be asked (the answer is then stale)."""
        ids = self.mirror.unconfirmed(res.name)
        return not ids or self._reread(res, ids)

    def _reread(self, res: Resource, ids: list[int]) -> bool:
        """Read these objects from the server into the mirror (those it no longer has leave);
        False when it cannot be reached."""
        try:
            sent = now()
            rows, _ = self.remote.select(res, QuerySpec(res.name).with_filters({"id": ids}))
        except ServerUnreachable:
            return False
        self.mirror.server_rows(res.name, rows, read_at=sent)
        self.mirror.server_gone(res.name, set(ids) - {r["id"] for r in rows})
        return True

    def _recheck(
        self, res: Resource, spec: QuerySpec, rows: list[Row]
    ) -> tuple[list[int], list[Row]] | None:
        """For an unsliced answer: the mirror's rows that match but were not listed (deleted
        or changed on the server), and what the server holds of them (asked by id); None
        when it could not say. A sliced answer leaves nothing to check."""
        if spec.is_sliced or spec.empty:
            return [], []
        seen = {r["id"] for r in rows}
        missing = [i for i in self.mirror.ids(spec) if i > 0 and i not in seen]
        if not missing:
            return [], []
        try:
            by_id = QuerySpec(res.name).with_filters({"id": missing})
            return missing, self.remote.select(res, by_id)[0]
        except ServerUnreachable:
            return None

    def _capped(self, when: datetime | None) -> datetime | None:
        return min(when, self.clock()) if when else None  # never ahead of the clock

    def _reach(self, pol: ReadPolicy) -> None:
        """An ``.online()`` read tries the server now, even while the link is backing off."""
        if pol.mode is ReadMode.ONLINE:
            self.remote.transport.ensure_reachable()

    def _fallback(
        self, spec: QuerySpec, pol: ReadPolicy, exc: ServerUnreachable, count: bool
    ) -> Answer:
        if pol.mode is ReadMode.ONLINE:
            raise OfflineError(
                f"the server cannot be reached and this query is .online(): {exc}"
            ) from exc
        self._warn_once("offline", "server unreachable (%s); answering from the local mirror", exc)
        as_of = self._capped(self.mirror.evidence(spec, count).as_of)
        _said(spec, count, "mirror, stale", f"the server could not be reached: {exc}", as_of)
        return self._cached(spec, count, as_of, True)

    def _stream(
        self, res: Resource, spec: QuerySpec, pol: ReadPolicy, chunk_size: int
    ) -> Iterator[Row]:
        mirror = self.mirror
        plan = self._plan(spec, pol, count=False)
        if plan.route is not Route.SERVER:
            mirror.evidence(spec, False)
            if plan.route is Route.CACHED:
                self._confirm(res)
            _said(spec, False, "mirror", plan.why, plan.as_of)
            yield from mirror.stream(spec, chunk_size)
            return
        if any(isinstance(v, tuple) and len(v) > FILTER_CHUNK_SIZE for _, v in spec.filters):
            yield from self.fetch(res, spec, pol).dicts()  # chunked: merged in memory anyway
            return
        pages = self.remote.pages(res, spec, chunk_size)
        sent = now()  # no page is asked for before this
        try:
            self._reach(pol)
            first = next(pages, None)
        except ServerUnreachable as exc:
            # Nothing was yielded yet: the mirror can still answer, as for any other read.
            self._fallback(spec, pol, exc, False)
            yield from mirror.stream(spec, chunk_size)
            return
        _said(spec, False, "server", plan.why, None)
        for page in [first] if first is not None else []:
            mirror.server_rows(res.name, page, read_at=sent)
            yield from page
        for page in pages:
            mirror.server_rows(res.name, page, read_at=sent)
            yield from page

    def _without_mirror(
        self, exc: MirrorError, res: Resource, spec: QuerySpec, pol: ReadPolicy, count: bool
    ) -> Answer:
        """The mirror cannot be used (damaged, disk full, unusable folder): the server answers
        alone, not stored; an ``.offline()`` read has nothing else to answer with."""
        if pol.mode is ReadMode.OFFLINE:
            raise exc
        self._warn_once("mirror", "%s; answering from the server meanwhile", exc)
        try:
            asked = self.clock()
            if count:
                rows: list[Row] = []
                n = self.remote.count(res, spec)
            else:
                rows, n = self.remote.select(res, spec)
        except ServerUnreachable as net:
            raise type(exc)(f"{exc}; the server cannot be reached either ({net})") from net
        at = min(asked, self.clock())
        _said(spec, count, "server, not stored", f"the mirror cannot be used: {exc}", at)
        return Answer(rows, n, "server", at)

    # -- writes ----------------------------------------------------------------------------------

    def _push_now(self, change: Queued) -> dict[int, BalsamSyncError]:
        """Send the queue (``change`` included) now; return rejections by item index.

        A write never waits: not offline, not while the server is known to be unreachable,
        not for another process's push (which sends these entries too), not for creates the
        server may still be running. The change stays queued and the call returns.

        Raises:
            NotAuthenticated: the server refused the token; the change was taken back, so
                calling again after logging in applies it once.
        """
        if self.offline or self.remote.transport.link.down():
            return {}
        with self.remote.transport.impatient():  # a silent server is given up on at once
            report = self.replayer().push(
                own=change.seqs, lock_wait=0.0, settle_wait=0.0, force=False
            )
        if report.paused_for_auth:
            self.mirror.withdraw(change)
            raise NotAuthenticated(
                f"{report.error}. Nothing was changed: log in again (`balsam-sync login`), "
                "then repeat the call",
                method="",
                url=self.remote.transport.api_root,
                status=401,
                body=None,
            )
        return {i: report.rejected[s] for i, s in enumerate(change.seqs) if s in report.rejected}

    def real_id(self, obj_id: int) -> int:
        """The server id of a provisional id once known (else the id itself)."""
        return self.mirror.real_id(obj_id)

    def create(self, res: Resource, payloads: list[Row]) -> WriteResult:
        """Create objects: provisional rows now, server rows once acknowledged."""
        mirror = self.mirror
        change = mirror.user_created(res.name, payloads)
        errors = self._push_now(change)
        rows = mirror.current(res.name, change.ids)
        # A created object keeps its id even if its row has left the mirror meanwhile (another
        # process deleted it): otherwise the next save() would create it a second time.
        for i, (temp, payload) in enumerate(zip(change.ids, payloads, strict=True)):
            if rows[i] is None and i not in errors:
                rows[i] = res.provisional_row(mirror.real_id(temp), payload)
        return WriteResult(rows, errors)

    def update(self, res: Resource, obj_id: int, changes: Row) -> WriteResult:
        return self.bulk_update(res, [(obj_id, changes)])

    def bulk_update(self, res: Resource, items: list[tuple[int, Row]]) -> WriteResult:
        """Apply per-object changes locally, queue them and send them."""
        mirror = self.mirror
        change = mirror.user_updated(res.name, items)
        errors = self._push_now(change)
        unknown = mirror.unknown_fields(res.name, change.ids) if res.server_set else {}
        return WriteResult(mirror.current(res.name, change.ids), errors, unknown)

    def confirm(self, res: Resource, ids: list[int]) -> dict[int, Row]:
        """The rows of these objects as the server holds them: those the server changed
        without sending them back are read now (one request); {} when it cannot be reached."""
        mirror = self.mirror
        if mirror.unknown_fields(res.name, ids) and (self.offline or not self._reread(res, ids)):
            return {}
        return {row["id"]: row for row in mirror.current(res.name, ids) if row is not None}

    def delete(self, res: Resource, obj_id: int) -> WriteResult:
        change = self.mirror.user_deleted(res.name, [obj_id])
        return WriteResult([], self._push_now(change))

    def query_update(self, res: Resource, spec: QuerySpec, changes: Row) -> WriteResult:
        ids = self._resolve_ids(res, spec)
        if not ids:
            return WriteResult([], {})
        return self.bulk_update(res, [(i, changes) for i in ids])

    def query_delete(self, res: Resource, spec: QuerySpec) -> WriteResult:
        ids = self._resolve_ids(res, spec)
        if not ids:
            return WriteResult([], {})
        change = self.mirror.user_deleted(res.name, ids)
        return WriteResult([{"id": i} for i in change.ids], self._push_now(change))

    def _resolve_ids(self, res: Resource, spec: QuerySpec) -> list[int]:
        """The ids a query update/delete means now: the server's answer, else the mirror's
        (NoEvidence when it cannot tell: nothing is changed rather than the wrong objects)."""
        every = spec.unsliced()
        if not self.offline:
            try:
                sent = now()
                rows, _ = self.remote.select(res, every)
            except ServerUnreachable:
                pass
            else:
                self.mirror.server_rows(res.name, rows, read_at=sent)
                return self.mirror.ids(every)
        self.mirror.evidence(every, False)
        return self.mirror.ids(every)

    def revive(self, seq: int) -> bool:
        """Queue a dead letter again and lay its change back on the mirror."""
        return self.mirror.revive(seq)


def _said(spec: QuerySpec, count: bool, where: str, why: str, as_of: datetime | None) -> None:
    """The DEBUG line of one read: what was asked, where it was answered, and why."""
    if log.isEnabledFor(logging.DEBUG):
        what = "count" if count else "rows"
        asked = dict(spec.filters) or "all"
        window = f" [{spec.low}:{spec.high}]" if spec.is_sliced else ""
        when = as_of.isoformat() if as_of else "unknown"
        log.debug(
            "read %s %s %s%s: %s (%s; as of %s)",
            spec.resource,
            what,
            asked,
            window,
            where,
            why,
            when,
        )
