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
import os
import re
import sqlite3
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from ..freshness import RowLayout
from ..resources import MARKER_KEY, RESOURCES, Row
from ..spec import QuerySpec
from ..utc import now, utc_text
from . import effects
from .coverage import Coverage, CoverageBook, Evidence
from .effects import Parts
from .failures import guard, mirror_error
from .journal import Journal, SenderLock
from .lock import FileLock
from .outbox import Entry, EntryState, Op, Outbox
from .pullplan import Cursor, PullPlan, PullPlans
from .pullstate import PullState, Unsynced
from .queue import GLANCE_SECONDS, QueueCounts, Queued, SharedQueue
from .salvage import Recovered, restore
from .store import Store

log = logging.getLogger(__name__)

T = TypeVar("T")
Clock = Callable[[], datetime]
"""The time now, as the server's clock would say (stamps never run ahead of it)."""


def companion(path: Path, suffix: str) -> Path:
    """A file kept next to the mirror file ``path`` (a lock, the daemon's log), the same for
    all its generations (``opening.mirror_path``)."""
    base = re.sub(r"\.[0-9a-f]{8}(?=\.sqlite3$)", "", path.name)
    return path.with_name(base.removesuffix(".sqlite3") + suffix)


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

    def __init__(
        self, path: Path, store: Store, journal: Journal, clock: Clock | None = None
    ) -> None:
        self.path = path
        self._inode = os.stat(path).st_ino
        self._store = store
        self._journal = journal
        self._clock = clock or now
        self._coverage = CoverageBook(store, clock)
        self._outbox = Outbox(store)
        self._pulls = PullState(store)
        self._p = Parts(store, self._outbox, self._coverage, self._pulls)
        self._q = SharedQueue(self._p, journal)
        self._checked = time.monotonic()  # when the file was last seen in place
        self._q.publish_legacy()
        self._q.catch_up()
        self._plans = PullPlans(store)

    def close(self) -> None:
        self._store.conn.close()

    def companion(self, suffix: str) -> Path:
        """A file kept next to the mirror (``.daemon.log``, ``.link.json``, ...), shared by
        its generations (see ``opening.mirror_path``)."""
        return companion(self.path, suffix)

    def replaced(self) -> bool:
        """Whether the mirror file was removed or replaced since it was opened (its folder
        purged, say): it must be opened again (at most one look per ``GLANCE_SECONDS``)."""
        if time.monotonic() - self._checked < GLANCE_SECONDS:
            return False
        self._checked = time.monotonic()
        try:
            return os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            return True

    def lock(self, purpose: str) -> FileLock:
        """The lock one process of this node at a time holds for ``purpose`` ("daemon")."""
        return FileLock(self.companion(f".{purpose}.lock"))

    def sender(self) -> SenderLock:
        """What one sender at a time holds: one process of this node, and one node of the
        user's (the queue is shared by every login node, ``cache/journal.py``)."""
        return self._journal.sender(self.lock("replay"))

    @property
    def node(self) -> str:
        """This login node's name, as the user's queue records it."""
        return self._journal.node

    # -- reading ---------------------------------------------------------------------------------

    def full_sync_at(self, resource: str) -> datetime | None:
        """When every row of ``resource`` was last pulled (None: never, or since invalidated)."""
        self._q.glance()
        return self._coverage.full_sync_at(resource)

    def covered(self, spec: QuerySpec, count: bool = False) -> Coverage | None:
        """The newest evidence that the mirror holds the answer to ``spec`` (or its count)."""
        self._q.glance()
        return self._coverage.for_count(spec) if count else self._coverage.for_rows(spec)

    def evidence(self, spec: QuerySpec, count: bool = False) -> Evidence:
        """What entitles the mirror to answer ``spec`` on its own.

        Raises:
            NoEvidence: the mirror was never told what matches ``spec``.
        """
        self._q.glance()
        return self._coverage.evidence(spec, count)

    def rows(self, spec: QuerySpec) -> tuple[RowLayout, list[tuple[int, bytes]]]:
        """The rows of ``spec`` in the server's order, packed (cheapest to turn into objects)."""
        self._q.glance()
        return self._store.query_packed(spec)

    def dicts(self, spec: QuerySpec) -> list[Row]:
        """The rows of ``spec`` in the server's order, as dicts (JSON columns left as text)."""
        self._q.glance()
        return self._store.query(spec)

    def ids(self, spec: QuerySpec) -> list[int]:
        """The ids of the rows of ``spec``, in the server's order."""
        return [r["id"] for r in self._store.query(spec)]

    def count(self, spec: QuerySpec) -> int:
        """How many rows match the filters of ``spec`` (its window ignored)."""
        self._q.glance()
        return self._store.count(spec)

    def stream(self, spec: QuerySpec, chunk_size: int) -> Iterator[Row]:
        """The rows of ``spec`` a page at a time (memory does not grow with the result)."""
        self._q.glance()
        yield from self._store.stream(spec, chunk_size)

    def current(self, resource: str, ids: list[int]) -> list[Row | None]:
        """The decoded rows of these objects (provisional ids resolved), in order."""
        with self._store.reading():
            return effects.current(self._p, resource, ids)

    def real_id(self, obj_id: int) -> int:
        """The server's id of a provisional id once its creation is acknowledged."""
        if obj_id >= 0:
            return obj_id
        return self._outbox.real_ids([obj_id]).get(obj_id, obj_id)

    def has_queued(self, resource: str | None = None) -> bool:
        """Whether changes (of ``resource``) wait to be sent."""
        return self._outbox.has_pending(resource)

    # -- what the server said --------------------------------------------------------------------

    def server_rows(
        self,
        resource: str,
        rows: list[Row],
        *,
        merge: bool = False,
        read_at: datetime | None = None,
    ) -> list[int]:
        """The server holds these rows now: store them, queued changes laid back on top.

        ``merge``: write only rows that differ from the stored copy. ``read_at``: when the
        request that read them was sent (None: unknown); a row holding a change the server
        applied later than that is kept. Returns the ids written.
        """
        with self._store.write():
            return effects.accept(self._p, resource, rows, merge, read_at=read_at)

    def server_listed(
        self,
        spec: QuerySpec,
        rows: list[Row],
        count: int,
        at: datetime,
        rechecked: tuple[list[int], list[Row]] | None,
        read_at: datetime | None = None,
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
            effects.accept(self._p, name, rows, merge=False, read_at=read_at)
            if rechecked is not None:
                missing, still_there = rechecked
                effects.accept(self._p, name, still_there, merge=False, read_at=read_at)
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
        gone = sorted(set(ids))
        with self._store.write():
            self._store.delete_cascade(resource, gone)
            if RESOURCES[resource].marked_creates:
                self._pulls.unmarked(gone)

    def server_changed(self, *resources: str) -> None:
        """The server changed these resources in ways the mirror did not see: forget what it
        claimed to know of them (the next read asks the server)."""
        with self._store.write():
            for name in resources:
                self._coverage.invalidate(name)

    def jobs_acquired(self, rows: list[Row], read_at: datetime | None = None) -> None:
        """A session locked these jobs to itself (the server answered with their rows)."""
        with self._store.write():
            effects.accept(self._p, "Job", rows, merge=False, read_at=read_at)
            self._coverage.forget_windows()

    # -- what the user changed -------------------------------------------------------------------

    def user_created(self, resource: str, payloads: list[Row]) -> Queued:
        """The user created objects: provisional rows now (negative ids), creates queued."""
        temps = self._q.temp_ids(len(payloads))
        return self._q.queue(resource, Op.CREATE, list(zip(temps, payloads, strict=True)))

    def user_updated(self, resource: str, items: list[tuple[int, Row]]) -> Queued:
        """The user changed fields of objects: the rows show the changes, which are queued."""
        return self._q.queue(resource, Op.UPDATE, items)

    def user_deleted(self, resource: str, ids: list[int]) -> Queued:
        """The user deleted objects: they (and what cascades) leave the mirror; queued."""
        return self._q.queue(resource, Op.DELETE, [(i, {}) for i in ids])

    def withdraw(self, change: Queued) -> int:
        """Take back a change that was not sent: its entries, and its rows as they were.

        Entries already sent are kept (they may have been applied). Returns how many entries
        were taken back.
        """
        name = change.resource
        with self._store.reading():
            unsent = [e for e in self._outbox.by_seq(change.seqs) if e.state is EntryState.PENDING]
        if not unsent:
            return 0
        uids = {e.uid for e in unsent}
        record = self._q.publish("state", to="dropped", uids=sorted(u for u in uids if u))
        with self._store.write():
            entries = [e for e in self._outbox.by_seq(change.seqs) if e.uid in uids]
            self._q.forget(entries, record)
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
        self._q.glance()
        return self._outbox.entries(states, limit)

    def entry(self, seq: int) -> Entry | None:
        return self._outbox.get(seq)

    def queue_counts(self) -> QueueCounts:
        """How many changes are queued, in flight and dead (raises when the queue is damaged),
        in every node's queue."""
        self.catch_up()
        stats = self._outbox.stats()
        counts = stats["counts"]
        oldest = stats["oldest"]
        return QueueCounts(
            counts.get("pending", 0),
            counts.get("in_flight", 0),
            counts.get("dead", 0),
            datetime.fromisoformat(oldest) if oldest else None,
            self._outbox.by_node(),
        )

    def sending(self, seqs: list[int], marker: str | None = None) -> None:
        """These entries are about to reach the server (recorded before the request leaves).

        A create's marker is published to every node first: whoever sends next looks it up
        before anything else (a create is never sent twice)."""
        # The server's clock: every node that settles this entry reads it alike.
        self._q.in_flight(seqs, marker, utc_text(self._clock()))

    def answered(self, seqs: list[int]) -> None:
        """The server answered these entries' request: it can no longer be running it."""
        self._outbox.finished(seqs)

    def not_applied(self, seqs: list[int]) -> None:
        """These entries' earlier attempt cannot have been applied: send them from scratch."""
        with self._store.reading():
            marked = [e.uid for e in self._outbox.by_seq(seqs) if e.marker and e.uid]
        if not marked:
            self._outbox.reset(seqs)
            return
        name = self._q.publish("state", to="pending", uids=marked)
        with self._store.write():
            self._outbox.reset(seqs)
            self._outbox.mark_seen([name])

    def retry_later(self, seqs: list[int], seconds: float, status: int | None, error: str) -> None:
        """Do not try these entries again for ``seconds``; remember why."""
        self._outbox.defer(seqs, seconds, status, error)

    def confirmed(
        self, resource: str, seqs: list[int], rows: list[Row], read_at: datetime | None = None
    ) -> None:
        """The server applied these entries and holds ``rows`` now (none for deletes). The
        resources it changed as a side effect (events of a job) lose what the mirror claimed
        of them; waiting children of jobs that finished are re-read by the next read."""
        res = RESOURCES[resource]
        name = self._q.publish("state", to="done", uids=self._q.uids(seqs))
        with self._store.write():
            self._q.done(seqs, name)
            effects.applied(self._p, res, rows, read_at)
            if res.finished_state is not None:
                done = [r["id"] for r in rows if r.get("state") == res.finished_state]
                effects.children_unconfirmed(self._p, res, done)

    def applied(self, resource: str, seqs: list[int], sent: list[tuple[int, Row]]) -> None:
        """The server applied these entries (``sent``: the changes, by object) and answered
        without the rows (a job PATCH answers a count), so nothing more was read.

        The rows keep the changes, with the state the server stores for a requested one
        where the mirror knows enough to tell (STAGED_OUT is stored as JOB_FINISHED; READY as
        STAGED_IN when every stage-in item is done, ...), and the children the server
        promotes when the last of their parents finishes; all of them are marked
        unconfirmed: no server copy read before the change can replace them, and the next
        read the mirror answers asks the server for them first (one request, by id).
        """
        name = self._q.publish("state", to="done", uids=self._q.uids(seqs)) if seqs else None
        with self._store.write():
            if name is not None:
                self._q.done(seqs, name)
            effects.applied_unseen(self._p, RESOURCES[resource], sent)

    def tags_to_clear(self, limit: int) -> list[tuple[int, Row]]:
        """Jobs created here whose creation tag is still on the server, and nothing queued for
        them: each with the change that clears it (its tags, as the user set them)."""
        out, gone = [], []
        for obj_id, tags in self._pulls.still_marked(limit):
            stored = json.loads(tags or "{}")
            if MARKER_KEY not in stored:
                gone.append(obj_id)  # the server's copy shows it taken off already
                continue
            kept = {k: v for k, v in stored.items() if k != MARKER_KEY}
            out.append((obj_id, {"tags": kept}))
        if gone:
            with self._store.write():
                self._pulls.unmarked(gone)
        return out

    def tags_cleared(
        self, resource: str, items: list[tuple[int, Row]], *, refused: bool = False
    ) -> None:
        """The server took the creation tag off these jobs (``items``: ``tags_to_clear``'s),
        or refused to (a job deleted meanwhile, say: then it is left as it is). Only the
        hidden tag and the stamp changed, so the rows are not re-read for it."""
        with self._store.write():
            self._pulls.unmarked([obj_id for obj_id, _ in items])
            if not refused:
                rows = effects.current(self._p, resource, [obj_id for obj_id, _ in items])
                pairs = zip(rows, items, strict=True)
                self._store.upsert(resource, [{**row, **ch} for row, (_, ch) in pairs if row])

    def unconfirmed(self, resource: str) -> list[int]:
        """Ids of rows holding a change the server applied without sending them back."""
        return self._pulls.unconfirmed(resource)

    def unknown_fields(self, resource: str, ids: list[int]) -> dict[int, frozenset[str]]:
        """Of these rows, the fields the server set that the mirror does not know yet (rows
        it knows whole are left out)."""
        return self._pulls.unknown_fields(resource, ids)

    def created(
        self, resource: str, made: list[tuple[Entry, Row]], read_at: datetime | None = None
    ) -> None:
        """The server created these queued entries as these rows: their provisional ids
        become the server's everywhere (rows, references, queued changes, the id map)."""
        res = RESOURCES[resource]
        rows = [row for _, row in made]
        seqs = [e.seq for e, _ in made]
        ids = {uid: row["id"] for e, row in made if (uid := e.uid)}
        name = self._q.publish("state", to="done", uids=list(ids), made=ids)
        with self._store.write():
            self._q.done(seqs, name)
            self._outbox.remap(resource, [(e.obj_id, row["id"]) for e, row in made], rows)
            effects.applied(self._p, res, rows, read_at)
            if res.marked_creates:
                self._pulls.marked([r["id"] for r in rows])
            if res.state_rewrites:
                self._pulls.itemless([r["id"] for (e, r) in made if not e.payload.get("transfers")])

    def created_then_deleted(self, resource: str, entries: list[Entry]) -> None:
        """The server created these entries in a batch found applied, and they are gone since."""
        if entries:
            name = self._q.publish("state", to="done", uids=[e.uid for e in entries if e.uid])
            with self._store.write():
                self._q.done([e.seq for e in entries], name)
                self._store.delete(resource, [e.obj_id for e in entries])

    def refused(
        self,
        entry: Entry,
        status: int | None,
        reason: str,
        truth: list[Row] | None,
        *,
        own: bool,
        read_at: datetime | None = None,
    ) -> None:
        """The server refused ``entry`` for good; put its object back to the server's truth.

        ``truth``: the server's rows of the object, read just now (empty: it has none; None:
        it could not be read, so the mirror stops claiming to know the resource). ``own``: the
        caller is the write that made the change and raises the refusal to the user, so the
        entry is dropped; otherwise it becomes a dead letter with ``reason``.
        """
        name = entry.resource
        uids = [entry.uid] if entry.uid else []
        if own:
            record = self._q.publish("state", to="dropped", uids=uids)
        else:
            record = self._q.publish("state", to="dead", uids=uids, status=status, error=reason)
        with self._store.write():
            self._outbox.mark_seen([record])
            if entry.op is Op.CREATE or entry.obj_id < 0:
                self._store.delete(name, [entry.obj_id])
            elif truth is None:
                self._coverage.invalidate(name)
            elif truth:
                effects.accept(self._p, name, truth, merge=False, skip=entry.seq, read_at=read_at)
            else:
                self._store.delete_cascade(name, [entry.obj_id])
            if own:
                self._q.forget([entry], record)
            else:
                self._outbox.bury(entry.seq, status, reason)

    # -- dead letters ----------------------------------------------------------------------------

    def revive(self, seq: int) -> bool:
        """Queue dead letter ``seq`` again and lay its change back on the mirror."""
        entry = self._outbox.get(seq)
        if entry is None or entry.state is not EntryState.DEAD:
            return False
        name = self._q.publish("state", to="revived", uids=[entry.uid] if entry.uid else [])
        with self._store.write():
            entry = self._outbox.get(seq)
            if entry is None or entry.state is not EntryState.DEAD:
                return False
            self._outbox.mark_seen([name])
            self._outbox.revive(seq)
            effects.lay_back(self._p, entry)
        return True

    def edit(self, seq: int, payload: Row) -> None:
        """Replace the payload of dead letter ``seq`` (it stays dead until revived)."""
        uids = self._q.uids([seq])
        name = self._q.publish("state", to="edited", uids=uids, payload=payload)
        with self._store.write():
            self._outbox.set_payload(seq, payload)
            self._outbox.mark_seen([name])

    def discard(self, seq: int) -> bool:
        """Drop dead letter ``seq`` for good (the mirror already shows the server's truth)."""
        entry = self._outbox.get(seq)
        if entry is None or entry.state is not EntryState.DEAD:
            return False
        name = self._q.publish("state", to="dropped", uids=[entry.uid] if entry.uid else [])
        with self._store.write():
            self._q.forget([entry], name)
        return True

    def restore(self, found: Recovered) -> None:
        """Take in the queue recovered from a damaged mirror (``salvage``): its entries, id
        map, provisional-id counter and log; objects created offline show again, with their
        provisional ids and the updates queued for them on top."""
        with self._store.write():
            restore(self._store, found)
            creates: dict[str, list[int]] = {}
            for row in found.unshared:
                resource, op, obj_id, payload, state = row[1], row[2], row[3], row[4], row[6]
                if op == Op.CREATE.value and state != EntryState.DEAD.value:
                    res = RESOURCES[resource]
                    self._store.upsert(res.name, [res.provisional_row(obj_id, json.loads(payload))])
                    creates.setdefault(resource, []).append(obj_id)
            for resource, ids in creates.items():
                self._outbox.overlay(resource, ids)
        self._q.publish_legacy()  # what only the damaged file held goes to the user's queue too

    def catch_up(self) -> int:
        """Apply what other processes and nodes published to the user's queue since this
        mirror last looked; return how many records."""
        return self._q.catch_up()

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
            effects.children_read(self._p, jobs, found, at)

    def pull_plan(self) -> PullPlan | None:
        """The listings of a first or full pull that did not complete (None: there are none)."""
        return self._plans.read()

    def plan_pull(self, plan: PullPlan) -> None:
        """A first or full pull begins ``plan``'s listings (an unfinished plan is dropped)."""
        self._plans.begin(plan)

    def listed(self, resource: str, rows: list[Row], cursor: Cursor, read_at: datetime) -> None:
        """The server listed ``rows`` as the next page of a planned range: store those that
        differ from the mirror's, queued changes laid back on top, and the range stands at
        ``cursor`` from now on (both or neither: a pull killed afterwards keeps the page).
        ``read_at``: when the pull began (none of its requests was sent before), as for
        ``server_rows``."""
        with self._store.write():
            effects.accept(self._p, resource, rows, True, read_at=read_at)
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
            effects.pull_done(self._p, at, watermark, full, marks_checked)
