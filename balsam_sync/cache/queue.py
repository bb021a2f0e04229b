"""The user's queue, shared by every login node: each change is published to the queue
folder (``journal.py``) before the mirror applies it, and what other processes and nodes
published is applied here (``catch_up``): their changes show, and what they sent is not sent
again.

``SharedQueue`` is a part of the mirror's front door (``mirror.py``); its methods run on the
door's connection, publishing outside transactions (the folder may be a network file system)
and applying inside them.
"""

from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..resources import RESOURCES, Row
from . import effects
from .effects import Parts
from .journal import Journal, Record
from .outbox import Entry, EntryState, Op
from .store import STAMP

log = logging.getLogger(__name__)

GLANCE_SECONDS = 1.0
"""Reads look at the user's queue for other nodes' changes at most this often."""


def renumbered(resource: str, payload: Row, mapping: dict[int, int]) -> Row:
    """``payload`` with the provisional ids of ``mapping`` replaced in its reference fields."""
    out = dict(payload)
    for name in RESOURCES[resource].reference_fields:
        value = out.get(name)
        if isinstance(value, list):
            out[name] = [mapping.get(v, v) for v in value]
        elif type(value) is int:
            out[name] = mapping.get(value, value)
    return out


@dataclass(frozen=True)
class QueueCounts:
    """How many queued changes are in each state, and when the oldest unsent one was queued."""

    pending: int
    in_flight: int
    dead: int
    oldest: datetime | None
    by_node: dict[str, int]
    """Changes waiting to be sent, by the login node that queued them."""


@dataclass(frozen=True)
class Queued:
    """A change the user made, as the mirror applied and queued it.

    Attributes:
        resource: the resource changed.
        op: what was asked.
        ids: the objects' ids, provisional ids resolved (for creates: the new provisional ids).
        seqs: the queued entries, one per object, in order (-1: delivered already, by another
            process that read the change from the user's queue first).
        before: each object's row before the change (None: the mirror had none).
    """

    resource: str
    op: Op
    ids: list[int]
    seqs: list[int]
    before: dict[int, Row | None]


class SharedQueue:
    """The user's queue as this mirror publishes and applies it.

    Args:
        parts: the mirror's parts.
        journal: the queue folder.
    """

    def __init__(self, parts: Parts, journal: Journal) -> None:
        self.p = parts
        self.journal = journal
        self.looked = 0.0  # when the folder was last looked at (time.monotonic)

    def catch_up(self) -> int:
        """Apply what other processes and nodes published to the user's queue since this
        mirror last looked; return how many records. Changes they queued show here (offline
        queries too), and what they sent is not sent again."""
        self.looked = time.monotonic()
        seen = self.p.outbox.seen()
        unseen = [n for n in self.journal.names() if n not in seen]
        records = [rec for n in unseen if (rec := self.journal.read(n)) is not None]
        if not unseen:
            return 0
        with self.p.store.write():
            for rec in records:
                self.apply_record(rec)
            self.p.outbox.mark_seen(unseen)
        return len(records)

    def glance(self) -> None:
        """Catch up before a read, at most once per ``GLANCE_SECONDS``."""
        if time.monotonic() - self.looked >= GLANCE_SECONDS:
            self.catch_up()

    def in_flight(self, seqs: list[int], marker: str | None, sent_at: str | None) -> None:
        """These entries are about to reach the server, sent at ``sent_at`` (the server's
        clock). A create's marker is published first: whoever sends next looks it up before
        anything else, on any node, so a create is never sent twice."""
        if marker is None:
            self.p.outbox.mark_in_flight(seqs, marker, sent_at)
            return
        name = self.publish(
            "state", to="in_flight", uids=self.uids(seqs), marker=marker, sent_at=sent_at
        )
        with self.p.store.write():
            self.p.outbox.mark_in_flight(seqs, marker, sent_at)
            self.p.outbox.mark_seen([name])

    def publish(self, kind: str, **body: Any) -> str:
        """Publish one record of the user's queue (before the mirror applies it; never inside
        a transaction: the folder may be a network file system)."""
        return self.journal.publish(kind, body)

    def uids(self, seqs: list[int]) -> list[str]:
        with self.p.store.reading():
            return self.p.outbox.uids(seqs)

    def temp_ids(self, n: int) -> list[int]:
        """``n`` provisional ids no process or node of this user uses."""
        ids: list[int] = []
        while len(ids) < n:
            ids += self.p.outbox.temp_ids(n - len(ids))
            if len(ids) < n:
                self.p.outbox.use_block(self.journal.take_id_block())
        return ids

    def queue(self, resource: str, op: Op, items: list[tuple[int, Row]]) -> Queued:
        """Publish the user's change, then apply and queue it in one transaction."""
        entries = [
            {"resource": resource, "op": op.value, "obj": obj, "payload": payload}
            for obj, payload in items
        ]
        name = self.publish("queued", entries=entries)
        with self.p.store.write():
            seqs, ids, before = self.take_queued(name, self.journal.node, entries)
            self.p.outbox.mark_seen([name])
        return Queued(resource, op, ids, seqs, before)

    def take_queued(
        self, name: str, node: str, entries: list[dict[str, Any]]
    ) -> tuple[list[int], list[int], dict[int, Row | None]]:
        """Apply the changes of a ``queued`` record to the rows and queue them. Provisional
        ids are resolved here, in the transaction that queues them. An entry another process
        of this node applied already (it read the record first) is not applied again, and
        one already delivered or dropped not at all.

        Returns, one per entry: its seq (-1 when it is settled), its object's id (resolved;
        for a create, its provisional id); and each object's row before the change.
        """
        uids = [f"{name}#{i}" for i in range(len(entries))]
        settled = self.p.outbox.settled(uids)
        present = {e.uid: e for e in self.p.outbox.by_uid(uids)}
        seqs: list[int] = []
        ids: list[int] = []
        before: dict[int, Row | None] = {}
        kinds = itertools.groupby(
            range(len(entries)), key=lambda i: (entries[i]["resource"], entries[i]["op"])
        )
        for (resource, op_text), grouped in kinds:
            group = list(grouped)
            op, res = Op(op_text), RESOURCES[resource]
            items = [(int(entries[i]["obj"]), dict(entries[i]["payload"])) for i in group]
            if op is Op.CREATE:
                items = [(t, self.p.outbox.resolve_refs(resource, p)) for t, p in items]
                group_ids = [t for t, _ in items]
            else:
                group_ids, items = effects.resolved(self.p, resource, items)
            new = [k for k, i in enumerate(group) if uids[i] not in settled | set(present)]
            if new:
                effects.apply_change(self.p, res, op, [items[k] for k in new], before)
                made = self.p.outbox.enqueue(
                    resource, op, [items[k] for k in new], [uids[group[k]] for k in new], node
                )
            made_at = dict(zip(new, made, strict=True)) if new else {}
            for k, i in enumerate(group):
                known = present.get(uids[i])
                seqs.append(made_at.get(k, known.seq if known else -1))
            ids += group_ids
        self.p.coverage.forget_windows()
        return seqs, ids, before

    def done(self, seqs: list[int], name: str) -> None:
        """These entries were delivered (their record is ``name``)."""
        self.p.outbox.settle(self.p.outbox.uids(seqs))
        self.p.outbox.ack(seqs)
        self.p.outbox.mark_seen([name])

    def forget(self, entries: list[Entry], name: str) -> None:
        """These entries are dropped (their record is ``name``)."""
        self.p.outbox.settle([e.uid for e in entries if e.uid])
        self.p.outbox.ack([e.seq for e in entries])
        self.p.outbox.mark_seen([name])

    def apply_record(self, rec: Record) -> None:
        """Apply a record another process or node published (inside a transaction)."""
        body = rec.body
        if rec.kind == "queued":
            self.take_queued(rec.name, rec.node, list(body.get("entries", [])))
            return
        if rec.kind != "state":
            log.warning("queue record %s of an unknown kind (%s): skipped", rec.name, rec.kind)
            return
        uids = [str(u) for u in body.get("uids", [])]
        entries = self.p.outbox.by_uid(uids)
        seqs = [e.seq for e in entries]
        to = body.get("to")
        if to == "in_flight":
            self.p.outbox.mark_in_flight(seqs, body.get("marker"), body.get("sent_at"), count=False)
        elif to == "pending":
            self.p.outbox.reset(seqs)
        elif to == "done":
            self.delivered_elsewhere(entries, body.get("made") or {})
        elif to == "dropped":
            self.dropped_elsewhere(entries)
            self.p.outbox.settle(uids)
        elif to == "dead":
            for entry in entries:
                self.p.outbox.bury(entry.seq, body.get("status"), str(body.get("error") or ""))
            self.undone_elsewhere([e for e in entries if e.state is not EntryState.DEAD])
        elif to == "revived":
            for entry in entries:
                self.p.outbox.revive(entry.seq)
                effects.lay_back(self.p, entry)
        elif to == "edited":
            for seq in seqs:
                self.p.outbox.set_payload(seq, dict(body.get("payload") or {}))
        self.p.outbox.settle(uids) if to == "done" else None

    def delivered_elsewhere(self, entries: list[Entry], made: dict[str, Any]) -> None:
        """Another node delivered these entries. Creates take the server's ids (their rows
        are re-read before the mirror answers with them); updated rows are re-read too."""
        self.p.outbox.ack([e.seq for e in entries])
        for resource, grouped in itertools.groupby(entries, key=lambda e: e.resource):
            res = RESOURCES[resource]
            group = list(grouped)
            pairs = [
                (e.obj_id, int(real))
                for e in group
                if e.op is Op.CREATE and (real := made.get(e.uid or "")) is not None
            ]
            effects.move(self.p, resource, pairs)
            touched = [real for _, real in pairs] + [
                e.obj_id for e in group if e.op is Op.UPDATE and e.obj_id > 0
            ]
            every = ",".join(res.server_set) or STAMP
            effects.mark_unconfirmed(self.p, res, [(i, every) for i in touched])
            for other in res.side_effects:
                self.p.coverage.invalidate(other)

    def dropped_elsewhere(self, entries: list[Entry]) -> None:
        """Another node took these entries back: so are their changes here."""
        self.p.outbox.ack([e.seq for e in entries])
        self.undone_elsewhere(entries)

    def undone_elsewhere(self, entries: list[Entry]) -> None:
        """Changes another node put back (refused or taken back): a provisional row goes; the
        others' rows are the server's again, which the mirror no longer claims to know."""
        for entry in entries:
            res = RESOURCES[entry.resource]
            if entry.op is Op.CREATE:
                self.p.store.delete(res.name, [entry.obj_id])
            elif entry.op is Op.UPDATE and entry.obj_id > 0:
                effects.mark_unconfirmed(
                    self.p, res, [(entry.obj_id, ",".join(res.server_set) or STAMP)]
                )
                self.p.coverage.invalidate(res.name)
            else:
                self.p.coverage.invalidate(res.name)

    def publish_legacy(self) -> None:
        """Entries queued before the queue was shared (an older balsam_sync) are published,
        their provisional ids renumbered into this mirror's own block first."""
        with self.p.store.reading():
            legacy = self.p.outbox.unpublished()
        if not legacy:
            return
        temps = sorted({e.obj_id for e in legacy if e.obj_id < 0}, reverse=True)
        fresh = self.temp_ids(len(temps))
        mapping = dict(zip(temps, fresh, strict=True))
        entries = [
            {
                "resource": e.resource,
                "op": e.op.value,
                "obj": mapping.get(e.obj_id, e.obj_id),
                "payload": renumbered(e.resource, e.payload, mapping),
            }
            for e in legacy
        ]
        name = self.publish("queued", entries=entries)
        with self.p.store.write():
            for resource in RESOURCES:
                made = {e.obj_id for e in legacy if e.resource == resource and e.op is Op.CREATE}
                effects.move(self.p, resource, [(t, n) for t, n in mapping.items() if t in made])
            self.p.outbox.name_entries(
                {e.seq: (f"{name}#{i}", self.journal.node) for i, e in enumerate(legacy)}
            )
            self.p.outbox.mark_seen([name])
        for entry in legacy:
            fresh_entry = self.p.outbox.by_uid([f"{name}#{legacy.index(entry)}"])
            if entry.state is EntryState.IN_FLIGHT and entry.marker and fresh_entry:
                self.in_flight([fresh_entry[0].seq], entry.marker, entry.sent_at)
            elif entry.state is EntryState.DEAD and fresh_entry:
                uid = fresh_entry[0].uid
                marked = self.publish(
                    "state", to="dead", uids=[uid], status=entry.status, error=entry.error
                )
                with self.p.store.write():
                    self.p.outbox.mark_seen([marked])
