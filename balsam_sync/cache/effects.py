"""What each event does to the mirror's tables, for the front door (``mirror.py``) and the
user's queue (``queue.py``): server rows accepted (never over a newer copy, queued changes laid
back on top), the side effects the server applied unseen marked, the children it promotes
predicted, provisional ids resolved, the user's changes shown.

Every function runs inside the caller's transaction and takes the mirror's parts (``Parts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from ..resources import RESOURCES, Resource, Row
from ..spec import QuerySpec
from ..utc import now_text, utc_text
from .coverage import CoverageBook
from .outbox import Entry, Op, Outbox
from .pullstate import PullState, Unsynced
from .store import STAMP, Store


@dataclass(frozen=True)
class Parts:
    """The mirror's parts, one database connection."""

    store: Store
    outbox: Outbox
    coverage: CoverageBook
    pulls: PullState


def accept(
    p: Parts,
    resource: str,
    rows: list[Row],
    merge: bool,
    skip: int | None = None,
    read_at: datetime | None = None,
) -> list[int]:
    read = utc_text(read_at) if read_at is not None else None
    if merge:
        written = p.store.merge(resource, rows, read)
    else:
        written = p.store.upsert(resource, rows, newer_only=True, read_at=read)
    p.pulls.drop_unconfirmed(resource, written)
    p.outbox.overlay(resource, written, skip=skip)
    return written


def applied(p: Parts, res: Resource, rows: list[Row], read_at: datetime | None) -> None:
    accept(p, res.name, rows, merge=False, read_at=read_at)
    p.coverage.forget_windows()
    for other in res.side_effects:
        p.coverage.invalidate(other)


def mark_unconfirmed(p: Parts, res: Resource, rows: list[tuple[int, str]]) -> None:
    """These rows hold changes the server applied unseen, just now (each: id, the fields
    not known); what hangs off them (a job's transfer items and events) changed with them,
    so it is no longer known either."""
    p.pulls.mark_unconfirmed(res.name, rows, now_text())
    if res.cascade:
        p.pulls.drop_marks([obj_id for obj_id, _ in rows])


def children_unconfirmed(p: Parts, res: Resource, parents: list[int]) -> None:
    """The server may have promoted the waiting children of these jobs (balsam-api.md §4):
    the ones the mirror holds are re-read before it answers with them."""
    if parents and res.promotes_children:
        every = ",".join(res.server_set)
        children = p.pulls.waiting_children(parents)
        mark_unconfirmed(p, res, [(c, every) for c, _ in children])


def promote_children(p: Parts, res: Resource, finished: list[int], maybe: list[int]) -> None:
    """Lay on the mirror what the server does when jobs finish: a waiting child whose
    parents have all finished is asked for READY (stored as the server would, where the
    mirror can tell). Children of ``maybe`` finished jobs are marked unconfirmed."""
    children_unconfirmed(p, res, maybe)
    if not finished or res.waiting_state is None:
        return
    children = [i for i, _ in p.pulls.waiting_children(finished)]
    known = p.pulls.parent_states(children)
    parents = p.pulls.parent_states(sorted({p for ps, _ in known.values() for p in ps}))
    done = p.pulls.items_done(children)
    ready = [
        c
        for c, (ps, _) in known.items()
        if ps and all(parents.get(p, ([], None))[1] == res.finished_state for p in ps) and c in done
    ]
    rows = [r for r in current(p, res.name, ready) if r is not None]
    for row in rows:
        row["state"] = res.stored_state(res.promoted_state, done[row["id"]])
    p.store.upsert(res.name, rows)


def resolved(
    p: Parts, resource: str, items: list[tuple[int, Row]]
) -> tuple[list[int], list[tuple[int, Row]]]:
    """Items with every provisional id (the object's, and references) mapped to the
    server's where it is known — read in the caller's write transaction."""
    temps = [i for i, _ in items if i < 0]
    mapping = p.outbox.real_ids(temps)
    resolved = [
        (mapping.get(i, i), p.outbox.resolve_refs(resource, changes)) for i, changes in items
    ]
    return [i for i, _ in resolved], resolved


def current(p: Parts, resource: str, ids: list[int]) -> list[Row | None]:
    mapping = p.outbox.real_ids([i for i in ids if i < 0])
    ids = [mapping.get(i, i) for i in ids]
    spec = QuerySpec(resource).with_filters({"id": ids}) if ids else None
    store = p.store
    found = {r["id"]: store.decode(resource, r) for r in store.query(spec)} if spec else {}
    return [found.get(i) for i in ids]


def apply_change(
    p: Parts, res: Resource, op: Op, items: list[tuple[int, Row]], before: dict[int, Row | None]
) -> None:
    """Show the user's change on the rows (noting each object's row before it)."""
    name = res.name
    if op is Op.CREATE:
        p.store.upsert(name, [res.provisional_row(t, p) for t, p in items])
        before.update(dict.fromkeys(t for t, _ in items))
        return
    ids = [obj_id for obj_id, _ in items]
    rows = dict(zip(ids, current(p, name, ids), strict=True))
    for obj_id, row in rows.items():
        before.setdefault(obj_id, row)
    if op is Op.DELETE:
        p.store.delete_cascade(name, ids)
        return
    for obj_id, changes in items:
        row = rows.get(obj_id)
        if row is not None:
            rows[obj_id] = {**row, **changes}
    p.store.upsert(name, [r for r in rows.values() if r is not None])


def move(p: Parts, resource: str, pairs: list[tuple[int, int]]) -> None:
    """Provisional ids became these ids: the rows move, with everything naming them."""
    rows = current(p, resource, [temp for temp, _ in pairs])
    moved = [{**row, "id": new} for (_, new), row in zip(pairs, rows, strict=True) if row]
    p.outbox.remap(resource, pairs, moved)


def lay_back(p: Parts, entry: Entry) -> None:
    """Show a revived dead letter's change again."""
    res = RESOURCES[entry.resource]
    if entry.op is Op.CREATE:
        p.store.upsert(res.name, [res.provisional_row(entry.obj_id, entry.payload)])
    elif entry.op is Op.DELETE:
        p.store.delete_cascade(res.name, [entry.obj_id])
    else:
        p.outbox.overlay(res.name, [entry.obj_id])


def applied_unseen(p: Parts, res: Resource, sent: list[tuple[int, Row]]) -> None:
    """The server applied these changes (by object) and sent no rows back: the rows take
    them, with the state the server stores for a requested one where the mirror can tell (and
    the children it promotes), and are marked unconfirmed (see ``Mirror.applied``)."""
    resource = res.name
    ids = [obj_id for obj_id, _ in sent]
    rows_now = dict(zip(ids, current(p, resource, ids), strict=True))
    done = p.pulls.items_done(ids) if res.state_rewrites else {}
    finishing = []
    unknown: dict[int, set[str]] = {}
    for obj_id, changes in sent:
        row = rows_now.get(obj_id)
        if row is None:
            continue
        row = rows_now[obj_id] = {**row, **changes}
        unknown.setdefault(obj_id, {STAMP} & set(res.server_set))
        asked = changes.get("state")
        if asked is not None:
            stored = res.stored_state(asked, done.get(obj_id))
            row["state"] = stored or asked
            if stored is None:
                unknown[obj_id].add("state")
            if res.may_finish(asked):
                finishing.append(obj_id)
    rows = [row for row in rows_now.values() if row is not None]
    p.store.upsert(resource, rows)
    p.outbox.overlay(resource, [r["id"] for r in rows])  # later changes on top
    mark_unconfirmed(p, res, [(r["id"], ",".join(sorted(unknown[r["id"]]))) for r in rows])
    applied(p, res, [], None)
    if res.marked_creates:  # tags sent are the user's: the creation tag is gone
        p.pulls.unmarked([i for i, changes in sent if "tags" in changes])
    finished = [i for i in finishing if (rows_now[i] or {}).get("state") == res.finished_state]
    promote_children(p, res, finished, finishing)


def children_read(p: Parts, jobs: list[Unsynced], found: dict[str, list[Row]], at: str) -> None:
    """The server listed every child of ``jobs``: theirs become exactly these, the jobs
    (those still held) marked as read at their current stamp."""
    held = p.pulls.existing("Job", [u.id for u in jobs])
    kept = [u for u in jobs if u.id in held]
    ids = [u.id for u in kept]
    for name, listed in found.items():
        rows = [r for r in listed if r["job_id"] in held]
        written = p.pulls.replace_children(name, ids, rows)
        p.outbox.overlay(name, written)
    p.pulls.set_marks([(u.id, u.stamp) for u in kept], at)


def pull_done(
    p: Parts, at: datetime, watermark: str | None, full: bool, marks_checked: bool
) -> None:
    """What a finished pull proves (see ``Mirror.pull_done``)."""
    if marks_checked:
        p.pulls.drop_stray_marks()
    for name in ("Site", "App", "BatchJob"):
        p.coverage.mark_full_sync(name, at)
    p.coverage.mark_full_sync("Job", at, watermark=watermark)
    if p.pulls.count_unsynced() == 0:
        for name in ("TransferItem", "EventLog"):
            p.coverage.mark_full_sync(name, at)
    if full:
        p.coverage.mark_reconciled(at)
