"""The mirror: the one front door of ``balsam_sync.cache``.

Callers say what happened, in the domain's words — the server answered these rows for this
query, the user changed these objects, the server confirmed these queued changes, withdraw this
change, revive this dead letter — and the mirror applies every consequence in one transaction
of its own: the rows, the overlay of changes still queued, what it may claim to know
(coverage), and the mapping of provisional ids to the server's.

Rules it keeps, whoever calls:

* **Queued changes stay visible.** Rows written from the server are overlaid with the changes
  still queued for them, in the same transaction, so no read or pull erases a local change.
* **Never older.** A server row never replaces a stored copy whose ``last_update`` is newer: a
  pull that read a job before one of our writes committed cannot undo that write locally.
* **Ids are resolved where they are used.** A provisional id is translated to the server's id
  inside the transaction that queues the change naming it, so a process that sends the create
  meanwhile (the daemon, another script) can never leave a change pointing at an id that no
  longer exists.
* **No request inside a transaction.** Nothing here talks to the server: callers fetch first,
  then tell the mirror what they found (plan, fetch, then store).

The parts behind the door (``store``, ``outbox``, ``coverage``, ``pullstate``, ``pullplan``)
are this package's own; nothing outside ``balsam_sync.cache`` reaches them.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import sqlite3
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from ..freshness import RowLayout
from ..resources import RESOURCES, Resource, Row
from ..spec import QuerySpec
from .coverage import Coverage, CoverageBook, Evidence
from .failures import guard, mirror_error
from .lock import FileLock
from .outbox import Entry, EntryState, Op, Outbox
from .pullplan import Cursor, PullPlan, PullPlans
from .pullstate import PullState, Unsynced
from .salvage import Recovered, restore
from .store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], datetime]
"""The time now, as the server's clock would say (stamps never run ahead of it)."""


@dataclass(frozen=True)
class Queued:
    """A change the user made, as the mirror applied and queued it.

    Attributes:
        resource: the resource changed.
        op: what was asked.
        ids: the objects' ids, provisional ids resolved (for creates: the new provisional ids).
        seqs: the queued entries, one per object, in order.
        before: each object's row before the change (None: the mirror had none).
    """

    resource: str
    op: Op
    ids: list[int]
    seqs: list[int]
    before: dict[int, Row | None]


@dataclass(frozen=True)
class QueueCounts:
    """How many queued changes are in each state, and when the oldest unsent one was queued."""

    pending: int
    in_flight: int
    dead: int
    oldest: datetime | None


def _guard(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Map the SQLite errors of one door method to the ``MirrorError`` naming the file."""
    if inspect.isgeneratorfunction(fn):

        @functools.wraps(fn)
        def generator(self: Mirror, *args: Any, **kwargs: Any) -> Iterator[Any]:
            with guard(self.path, files=False):
                yield from fn(self, *args, **kwargs)

        return generator

    @functools.wraps(fn)
    def plain(self: Mirror, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except sqlite3.Error as exc:
            raise mirror_error(self.path, exc) from exc

    return plain


def _guarded(cls: type[T]) -> type[T]:
    """Guard every public method of the door (its parts are reached only through it)."""
    for name, member in list(vars(cls).items()):
        if not name.startswith("_") and inspect.isfunction(member):
            setattr(cls, name, _guard(member))
    return cls


@_guarded
class Mirror:
    """An open mirror of one user on one server (see the module docstring).

    Args:
        path: the mirror file.
        store: its rows (the database connection).
        clock: the server's clock as the client knows it; stamps are capped by it.
    """

    def __init__(self, path: Path, store: Store, clock: Clock | None = None) -> None:
        self.path = path
        self._store = store
        self._coverage = CoverageBook(store, clock)
        self._outbox = Outbox(store)
        self._pulls = PullState(store)
        self._plans = PullPlans(store)

    def close(self) -> None:
        self._store.conn.close()

    def companion(self, suffix: str) -> Path:
        """A file kept next to the mirror (``.daemon.log``, ``.link.json``, ...)."""
        return self.path.with_suffix(suffix)

    def lock(self, purpose: str) -> FileLock:
        """The lock one process at a time holds for ``purpose`` ("replay", "daemon")."""
        return FileLock(self.companion(f".{purpose}.lock"))

    # -- reading ---------------------------------------------------------------------------------

    def full_sync_at(self, resource: str) -> datetime | None:
        """When every row of ``resource`` was last pulled (None: never, or since invalidated)."""
        return self._coverage.full_sync_at(resource)

    def covered(self, spec: QuerySpec, count: bool = False) -> Coverage | None:
        """The newest evidence that the mirror holds the answer to ``spec`` (or its count)."""
        return self._coverage.for_count(spec) if count else self._coverage.for_rows(spec)

    def evidence(self, spec: QuerySpec, count: bool = False) -> Evidence:
        """What entitles the mirror to answer ``spec`` on its own.

        Raises:
            NoEvidence: the mirror was never told what matches ``spec``.
        """
        return self._coverage.evidence(spec, count)

    def rows(self, spec: QuerySpec) -> tuple[RowLayout, list[tuple[int, bytes]]]:
        """The rows of ``spec`` in the server's order, packed (cheapest to turn into objects)."""
        return self._store.query_packed(spec)

    def dicts(self, spec: QuerySpec) -> list[Row]:
        """The rows of ``spec`` in the server's order, as dicts (JSON columns left as text)."""
        return self._store.query(spec)

    def ids(self, spec: QuerySpec) -> list[int]:
        """The ids of the rows of ``spec``, in the server's order."""
        return [r["id"] for r in self._store.query(spec)]

    def count(self, spec: QuerySpec) -> int:
        """How many rows match the filters of ``spec`` (its window ignored)."""
        return self._store.count(spec)

    def stream(self, spec: QuerySpec, chunk_size: int) -> Iterator[Row]:
        """The rows of ``spec`` a page at a time (memory does not grow with the result)."""
        yield from self._store.stream(spec, chunk_size)

    def current(self, resource: str, ids: list[int]) -> list[Row | None]:
        """The decoded rows of these objects (provisional ids resolved), in order."""
        with self._store.reading():
            return self._current(resource, ids)

    def real_id(self, obj_id: int) -> int:
        """The server's id of a provisional id once its creation is acknowledged."""
        if obj_id >= 0:
            return obj_id
        return self._outbox.real_ids([obj_id]).get(obj_id, obj_id)

    def has_queued(self, resource: str | None = None) -> bool:
        """Whether changes (of ``resource``) wait to be sent."""
        return self._outbox.has_pending(resource)

    # -- what the server said --------------------------------------------------------------------

    def server_rows(self, resource: str, rows: list[Row], *, merge: bool = False) -> list[int]:
        """The server holds these rows now: store them, queued changes laid back on top.

        ``merge``: write only rows that differ from the stored copy. Returns the ids written.
        """
        with self._store.write():
            return self._accept(resource, rows, merge)

    def server_listed(
        self,
        spec: QuerySpec,
        rows: list[Row],
        count: int,
        at: datetime,
        rechecked: tuple[list[int], list[Row]] | None,
    ) -> list[Row]:
        """The server answered ``spec`` with ``rows`` (``count`` in all) at ``at``.

        ``rechecked``, for an unsliced answer: the stored rows that matched but were not
        listed (their ids) and what the server holds of them now (asked by id); those it no
        longer holds are gone. Then the answer covers ``spec`` from now on. None: the rest
        could not be checked, so nothing is claimed.

        Returns the rows to hand out: the server's, or, while changes of this resource are
        queued, the local view (the server's rows with those changes on top).
        """
        name = spec.resource
        with self._store.write():
            self._accept(name, rows, merge=False)
            if rechecked is not None:
                missing, still_there = rechecked
                self._accept(name, still_there, merge=False)
                gone = set(missing) - {r["id"] for r in still_there}
                self._store.delete_cascade(name, sorted(gone))
                self._coverage.record_fetch(spec, at, count, rows=True)
            if self._outbox.has_pending(name):
                return self._store.query(spec)
        return rows

    def server_counted(self, spec: QuerySpec, n: int, at: datetime) -> None:
        """The server counted ``n`` objects matching ``spec`` at ``at``."""
        self._coverage.record_fetch(spec, at, n, rows=False)

    def server_gone(self, resource: str, ids: Iterable[int]) -> None:
        """The server no longer holds these objects: remove them as its deletes cascade."""
        with self._store.write():
            self._store.delete_cascade(resource, sorted(set(ids)))

    def server_changed(self, *resources: str) -> None:
        """The server changed these resources in ways the mirror did not see: forget what it
        claimed to know of them (the next read asks the server)."""
        with self._store.write():
            for name in resources:
                self._coverage.invalidate(name)

    def jobs_acquired(self, rows: list[Row]) -> None:
        """A session locked these jobs to itself (the server answered with their rows)."""
        with self._store.write():
            self._accept("Job", rows, merge=False)
            self._coverage.forget_windows()

    # -- what the user changed -------------------------------------------------------------------

    def user_created(self, resource: str, payloads: list[Row]) -> Queued:
        """The user created objects: provisional rows now (negative ids), creates queued."""
        res = RESOURCES[resource]
        with self._store.write():
            temps = self._outbox.temp_ids(len(payloads))
            payloads = [self._outbox.resolve_refs(resource, p) for p in payloads]
            rows = [res.provisional_row(t, p) for t, p in zip(temps, payloads, strict=True)]
            self._store.upsert(resource, rows)
            seqs = self._outbox.enqueue(
                resource, Op.CREATE, list(zip(temps, payloads, strict=True))
            )
            self._coverage.forget_windows()
        return Queued(resource, Op.CREATE, temps, seqs, dict.fromkeys(temps))

    def user_updated(self, resource: str, items: list[tuple[int, Row]]) -> Queued:
        """The user changed fields of objects: the rows show the changes, which are queued."""
        with self._store.write():
            ids, items = self._resolved(resource, items)
            before = dict(zip(ids, self._current(resource, ids), strict=True))
            after = dict(before)
            for obj_id, changes in items:
                base = after.get(obj_id)
                if base is not None:
                    after[obj_id] = {**base, **changes}
            changed = [after[i] for i in dict.fromkeys(ids) if after[i] is not None]
            self._store.upsert(resource, changed)  # type: ignore[arg-type]
            seqs = self._outbox.enqueue(resource, Op.UPDATE, items)
            self._coverage.forget_windows()
        return Queued(resource, Op.UPDATE, ids, seqs, before)

    def user_deleted(self, resource: str, ids: list[int]) -> Queued:
        """The user deleted objects: they (and what cascades) leave the mirror; queued."""
        with self._store.write():
            ids, items = self._resolved(resource, [(i, {}) for i in ids])
            before = dict(zip(ids, self._current(resource, ids), strict=True))
            self._store.delete_cascade(resource, ids)
            seqs = self._outbox.enqueue(resource, Op.DELETE, items)
            self._coverage.forget_windows()
        return Queued(resource, Op.DELETE, ids, seqs, before)

    def withdraw(self, change: Queued) -> int:
        """Take back a change that was not sent: its entries, and its rows as they were.

        Entries already sent are kept (they may have been applied). Returns how many entries
        were taken back.
        """
        name = change.resource
        with self._store.write():
            entries = [
                e
                for s in change.seqs
                if (e := self._outbox.get(s)) and e.state is EntryState.PENDING
            ]
            for entry in entries:
                self._outbox.forget(entry.seq)
            ids = [e.obj_id for e in entries]
            if change.op is Op.CREATE:
                self._store.delete(name, ids)
                return len(entries)
            self._store.upsert(name, [row for i in ids if (row := change.before.get(i))])
            self._outbox.overlay(name, ids)
            if change.op is Op.DELETE:
                # The local delete cascaded (jobs of an app, events of a job, ...): what the
                # mirror knows of the other resources is incomplete now.
                for other in RESOURCES:
                    self._coverage.invalidate(other)
        return len(entries)

    # -- the queue, as the replayer sends it ----------------------------------------------------

    def queued(self, states: Iterable[EntryState], limit: int | None = None) -> list[Entry]:
        """Queued changes in these states, oldest first."""
        return self._outbox.entries(states, limit)

    def entry(self, seq: int) -> Entry | None:
        return self._outbox.get(seq)

    def queue_counts(self) -> QueueCounts:
        """How many changes are queued, in flight and dead (raises when the queue is damaged)."""
        stats = self._outbox.stats()
        counts = stats["counts"]
        oldest = stats["oldest"]
        return QueueCounts(
            counts.get("pending", 0),
            counts.get("in_flight", 0),
            counts.get("dead", 0),
            datetime.fromisoformat(oldest) if oldest else None,
        )

    def sending(self, seqs: list[int], marker: str | None = None) -> None:
        """These entries are about to reach the server (recorded before the request leaves)."""
        self._outbox.mark_in_flight(seqs, marker)

    def answered(self, seqs: list[int]) -> None:
        """The server answered these entries' request: it can no longer be running it."""
        self._outbox.finished(seqs)

    def not_applied(self, seqs: list[int]) -> None:
        """These entries' earlier attempt cannot have been applied: send them from scratch."""
        self._outbox.reset(seqs)

    def retry_later(self, seqs: list[int], seconds: float, status: int | None, error: str) -> None:
        """Do not try these entries again for ``seconds``; remember why."""
        self._outbox.defer(seqs, seconds, status, error)

    def confirmed(
        self,
        resource: str,
        seqs: list[int],
        rows: list[Row],
        promoted: list[Row] | None = None,
    ) -> None:
        """The server applied these entries and holds ``rows`` now (none for deletes).

        ``promoted``: jobs the write promoted on the server (children of a job that finished),
        as re-read; None when they could not be read. The resources the server changed as a
        side effect (events of a job) lose what the mirror claimed of them.
        """
        res = RESOURCES[resource]
        with self._store.write():
            self._outbox.ack(seqs)
            self._applied(res, rows, promoted)

    def created(
        self, resource: str, made: list[tuple[Entry, Row]], promoted: list[Row] | None = None
    ) -> None:
        """The server created these queued entries as these rows: their provisional ids
        become the server's everywhere (rows, references, queued changes, the id map)."""
        res = RESOURCES[resource]
        rows = [row for _, row in made]
        with self._store.write():
            self._outbox.ack([e.seq for e, _ in made])
            self._outbox.remap(resource, [(e.obj_id, row) for e, row in made])
            self._applied(res, rows, promoted)

    def created_then_deleted(self, resource: str, entries: list[Entry]) -> None:
        """The server created these entries in a batch found applied, and they are gone since."""
        if entries:
            with self._store.write():
                self._outbox.ack([e.seq for e in entries])
                self._store.delete(resource, [e.obj_id for e in entries])

    def refused(
        self,
        entry: Entry,
        status: int | None,
        reason: str,
        truth: list[Row] | None,
        *,
        own: bool,
    ) -> None:
        """The server refused ``entry`` for good; put its object back to the server's truth.

        ``truth``: the server's rows of the object, read just now (empty: it has none; None:
        it could not be read, so the mirror stops claiming to know the resource). ``own``: the
        caller is the write that made the change and raises the refusal to the user, so the
        entry is dropped; otherwise it becomes a dead letter with ``reason``.
        """
        name = entry.resource
        with self._store.write():
            if entry.op is Op.CREATE or entry.obj_id < 0:
                self._store.delete(name, [entry.obj_id])
            elif truth is None:
                self._coverage.invalidate(name)
            elif truth:
                self._accept(name, truth, merge=False, skip=entry.seq)
            else:
                self._store.delete_cascade(name, [entry.obj_id])
            if own:
                self._outbox.forget(entry.seq)
            else:
                self._outbox.bury(entry.seq, status, reason)

    # -- dead letters ----------------------------------------------------------------------------

    def revive(self, seq: int) -> bool:
        """Queue dead letter ``seq`` again and lay its change back on the mirror."""
        with self._store.write():
            entry = self._outbox.get(seq)
            if entry is None or entry.state is not EntryState.DEAD:
                return False
            res = RESOURCES[entry.resource]
            self._outbox.revive(seq)
            if entry.op is Op.CREATE:
                self._store.upsert(res.name, [res.provisional_row(entry.obj_id, entry.payload)])
            elif entry.op is Op.DELETE:
                self._store.delete_cascade(res.name, [entry.obj_id])
            else:
                self._outbox.overlay(res.name, [entry.obj_id])
        return True

    def edit(self, seq: int, payload: Row) -> None:
        """Replace the payload of dead letter ``seq`` (it stays dead until revived)."""
        self._outbox.set_payload(seq, payload)

    def discard(self, seq: int) -> bool:
        """Drop dead letter ``seq`` for good (the mirror already shows the server's truth)."""
        with self._store.write():
            entry = self._outbox.get(seq)
            if entry is None or entry.state is not EntryState.DEAD:
                return False
            return self._outbox.forget(seq)

    def restore(self, found: Recovered) -> None:
        """Take in the queue recovered from a damaged mirror (``salvage``): its entries, id
        map, provisional-id counter and log; objects created offline show again, with their
        provisional ids and the updates queued for them on top."""
        with self._store.write():
            restore(self._store, found)
            creates: dict[str, list[int]] = {}
            for row in found.entries:
                resource, op, obj_id, payload, state = row[1], row[2], row[3], row[4], row[6]
                if op == Op.CREATE.value and state != EntryState.DEAD.value:
                    res = RESOURCES[resource]
                    self._store.upsert(res.name, [res.provisional_row(obj_id, json.loads(payload))])
                    creates.setdefault(resource, []).append(obj_id)
            for resource, ids in creates.items():
                self._outbox.overlay(resource, ids)

    # -- the sync log ----------------------------------------------------------------------------

    def note(self, key: str, value: str) -> None:
        """Record a sync event (``last_push``, ``last_pull``, ``last_error``) for ``status``."""
        self._outbox.log(key, value)

    def noted(self) -> dict[str, str]:
        return self._outbox.read_log()

    # -- what a pull needs ----------------------------------------------------------------------

    def watermark(self, resource: str) -> str | None:
        """Where the next incremental pull of ``resource`` starts (None: a first pull)."""
        return self._coverage.watermark(resource)

    def reconciled_at(self) -> datetime | None:
        """When a pull last re-read everything (None: never)."""
        return self._coverage.reconciled_at()

    def confirmed_ids(self, resource: str) -> set[int]:
        """Ids of the rows the server confirmed (provisional rows have negative ids)."""
        return self._store.all_ids(resource)

    def count_confirmed(self, resource: str) -> int:
        return self._store.count_confirmed(resource)

    def held(self, resource: str, ids: list[int]) -> set[int]:
        """Which of ``ids`` the mirror holds."""
        return self._pulls.existing(resource, ids)

    def ids_in_states(self, resource: str, states: tuple[str, ...]) -> set[int]:
        return self._pulls.ids_in_states(resource, states)

    def newest_job_update(self) -> str | None:
        return self._pulls.newest_job_update()

    def marks(self, ids: list[int]) -> dict[int, str]:
        """When the children of these jobs were last read: each job's ``last_update`` then."""
        return self._pulls.marks(ids)

    def unsynced_jobs(self) -> list[Unsynced]:
        """Jobs whose transfer items and events are not known to match the server's."""
        return self._pulls.unsynced_jobs()

    def children_read(self, jobs: list[Unsynced], found: dict[str, list[Row]], at: str) -> None:
        """The server listed every transfer item and event of ``jobs`` (``found``, by
        resource): the mirror's children of those jobs become exactly these, and the jobs are
        marked as read at their current ``last_update`` (jobs gone meanwhile are skipped)."""
        with self._store.write():
            held = self._pulls.existing("Job", [u.id for u in jobs])
            kept = [u for u in jobs if u.id in held]
            ids = [u.id for u in kept]
            for name, listed in found.items():
                rows = [r for r in listed if r["job_id"] in held]
                written = self._pulls.replace_children(name, ids, rows)
                self._outbox.overlay(name, written)
            self._pulls.set_marks([(u.id, u.stamp) for u in kept], at)

    def pull_plan(self) -> PullPlan | None:
        """The listings of a first or full pull that did not complete (None: there are none)."""
        return self._plans.read()

    def plan_pull(self, plan: PullPlan) -> None:
        """A first or full pull begins ``plan``'s listings (an unfinished plan is dropped)."""
        self._plans.begin(plan)

    def listed(self, resource: str, rows: list[Row], cursor: Cursor) -> None:
        """The server listed ``rows`` as the next page of a planned range: store those that
        differ from the mirror's, queued changes laid back on top, and the range stands at
        ``cursor`` from now on (both or neither: a pull killed afterwards keeps the page)."""
        with self._store.write():
            self._accept(resource, rows, merge=True)
            self._plans.advance(cursor)

    def children_begin(self, cursors: tuple[Cursor, ...], at: datetime, jobs_first: bool) -> None:
        """The plan's listings of transfer items and events (``cursors``) begin at ``at`` (the
        server's clock); ``jobs_first``: every job was listed before."""
        self._plans.children_begin(cursors, at, jobs_first)

    def jobs_listed(self) -> None:
        """The plan's job listing ended: the jobs' stamps now are what the listings of their
        transfer items and events will be complete for (recorded once per plan)."""
        self._plans.jobs_listed()

    def children_listed(self, at: str, before: str | None) -> None:
        """The plan's listings of transfer items and events ended: every job still at the
        stamp recorded when the job listing ended has all of its children in the mirror, as
        of ``at``, if that state was committed before those listings began: when the jobs were
        listed first (``before`` None), or when it is stamped at or ``before``."""
        self._plans.children_listed(at, before)

    def pull_done(
        self,
        at: datetime,
        watermark: str | None,
        *,
        full: bool,
        marks_checked: bool,
        plan_done: bool = False,
    ) -> None:
        """A pull that started at ``at`` finished: the resources it read whole are fully
        synced as of then, the jobs' next pull starts at ``watermark``. Transfer items and
        events count as synced once no job's children are left to read. ``full``: everything
        was re-read and deletions reconciled; ``marks_checked``: marks of jobs gone dropped;
        ``plan_done``: the pull completed the plan of a first or full pull, which is dropped."""
        with self._store.write():
            if plan_done:
                self._plans.drop()
            if marks_checked:
                self._pulls.drop_stray_marks()
            for name in ("Site", "App", "BatchJob"):
                self._coverage.mark_full_sync(name, at)
            self._coverage.mark_full_sync("Job", at, watermark=watermark)
            if self._pulls.count_unsynced() == 0:
                for name in ("TransferItem", "EventLog"):
                    self._coverage.mark_full_sync(name, at)
            if full:
                self._coverage.mark_reconciled(at)

    # -- behind the door -------------------------------------------------------------------------

    def _accept(
        self, resource: str, rows: list[Row], merge: bool, skip: int | None = None
    ) -> list[int]:
        if merge:
            written = self._store.merge(resource, rows)
        else:
            self._store.upsert(resource, rows, newer_only=True)
            written = [row["id"] for row in rows]
        self._outbox.overlay(resource, written, skip=skip)
        return written

    def _applied(self, res: Resource, rows: list[Row], promoted: list[Row] | None) -> None:
        self._accept(res.name, rows, merge=False)
        self._coverage.forget_windows()
        for other in res.side_effects:
            self._coverage.invalidate(other)
        if promoted is None:
            self._coverage.invalidate("Job")
        elif promoted:
            self._accept("Job", promoted, merge=False)

    def _resolved(
        self, resource: str, items: list[tuple[int, Row]]
    ) -> tuple[list[int], list[tuple[int, Row]]]:
        """Items with every provisional id (the object's, and references) mapped to the
        server's where it is known — read in the caller's write transaction."""
        temps = [i for i, _ in items if i < 0]
        mapping = self._outbox.real_ids(temps)
        resolved = [
            (mapping.get(i, i), self._outbox.resolve_refs(resource, changes))
            for i, changes in items
        ]
        return [i for i, _ in resolved], resolved

    def _current(self, resource: str, ids: list[int]) -> list[Row | None]:
        mapping = self._outbox.real_ids([i for i in ids if i < 0])
        ids = [mapping.get(i, i) for i in ids]
        spec = QuerySpec(resource).with_filters({"id": ids}) if ids else None
        store = self._store
        found = {r["id"]: store.decode(resource, r) for r in store.query(spec)} if spec else {}
        return [found.get(i) for i in ids]
