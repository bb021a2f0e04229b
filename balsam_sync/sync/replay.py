"""Replay the outbox against the server: in order, batched, exactly once.

* Order: entries are taken in ``seq`` order; only a run of consecutive entries of the same
  kind is coalesced (creates of jobs into one POST of up to 5000, updates into PATCH calls
  grouped by key set, job deletes into one DELETE), so no object's changes are reordered.
  A job that references another job created in the same run starts a new run (parents first).
* Exactly-once creates: every job create carries the tag ``bsync_op:<batch uuid>`` and is
  marked in flight before the POST. After an ambiguous failure (lost reply, timeout, 502/504)
  the replayer looks the marker up before sending anything again: found rows are adopted (the
  POST is atomic, so all or none), otherwise the batch is resent under a new marker. The tag
  stays on the server (removing it would cost a second request per job) and is hidden from
  ``job.tags``. Sites and apps are found by their unique names instead.
* Failures: transient ones (unreachable, 429/502/503/504) stop the push and keep the queue;
  401 pauses the whole queue ("log in again"); a permanent rejection (400/404/409/422/500) of a
  batch is bisected to the entry at fault, which goes to the dead letters with the server's
  reason while the mirror row is restored to the server's truth; later entries go on.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from ..cache.mirror import Mirror
from ..cache.outbox import Entry, EntryState, Op, Outbox, now_text
from ..cache.schema import REFERENCES
from ..errors import HTTPStatusError, NotAuthenticated, Rejected, ReplyLost, ServerUnreachable
from ..remote import Remote
from ..resources import MARKER_KEY, MAX_BULK, RESOURCES, Resource
from ..retry import is_transient
from ..spec import QuerySpec
from .lock import FileLock
from .writes import apply_server_rows

log = logging.getLogger(__name__)

Row = dict[str, Any]


@dataclass
class PushReport:
    """What one push did.

    Attributes:
        sent: entries the server acknowledged.
        failed: entries tried without a definite answer (still queued).
        dead: entries moved to the dead letters by this push.
        remaining: entries still queued afterwards.
        paused_for_auth: the token was refused: nothing more is sent until a new login.
        skipped: another process holds the replay lock (it will send our entries).
        error: the last error seen, as text.
        rejected: entries of the caller that the server refused (raised to the caller).
    """

    sent: int = 0
    failed: int = 0
    dead: int = 0
    remaining: int = 0
    paused_for_auth: bool = False
    skipped: bool = False
    error: str | None = None
    rejected: dict[int, HTTPStatusError] = field(default_factory=dict)

    def __str__(self) -> str:
        text = f"sent {self.sent}, failed {self.failed}, dead {self.dead}, queued {self.remaining}"
        if self.paused_for_auth:
            text += " (paused: log in again)"
        return text + (f"; last error: {self.error}" if self.error else "")


def _refs(entry: Entry) -> set[int]:
    """Provisional ids an entry depends on (its object, and ids in its reference fields)."""
    found = {entry.obj_id} if entry.op is not Op.CREATE and entry.obj_id < 0 else set()
    for (owner, name), _target in REFERENCES.items():
        if owner != entry.resource:
            continue
        value = entry.payload.get(name)
        values = value if isinstance(value, list) else [value]
        found |= {v for v in values if isinstance(v, int) and v < 0}
    return found


class Replayer:
    """Sends one mirror's outbox to one server."""

    def __init__(
        self,
        remote: Remote,
        mirror: Mirror,
        outbox: Outbox,
        lock: FileLock,
        batch_size: int = MAX_BULK,
        stop: threading.Event | None = None,
    ) -> None:
        self.remote = remote
        self.mirror = mirror
        self.outbox = outbox
        self.lock = lock
        self.batch_size = min(batch_size, MAX_BULK)
        self.stop = stop or threading.Event()

    # -- the loop ------------------------------------------------------------------------------

    def push(self, own: Iterable[int] = (), lock_wait: float = 30.0) -> PushReport:
        """Send what is queued now; entries in ``own`` are the caller's (rejections returned)."""
        report = PushReport()
        mine = set(own)
        if not self.lock.acquire(lock_wait):
            report.skipped = True
            return report
        try:
            settled = self._settle_in_flight(report)
            while settled and not self.stop.is_set():
                entries = self.outbox.entries(
                    [EntryState.PENDING, EntryState.IN_FLIGHT], self.batch_size + 1
                )
                if not entries:
                    break
                group = self._next_group(entries, mine, report)
                if group and not self._send_group(group, mine, report):
                    break
        except NotAuthenticated as exc:
            report.paused_for_auth = True
            report.error = f"log in again: {exc}"
            self.outbox.log("last_error", report.error)
        finally:
            self.lock.release()
            stats = self.outbox.stats()["counts"]
            report.remaining = stats.get("pending", 0) + stats.get("in_flight", 0)
        if report.sent:
            self.outbox.log("last_push", now_text())
        return report

    def _send_group(self, group: list[Entry], mine: set[int], report: PushReport) -> bool:
        """Send one group; return False when the push must stop (server unreachable)."""
        log.debug(
            "sending %s %s x%d (seq %d..%d, objects %s)",
            group[0].op.value,
            group[0].resource,
            len(group),
            group[0].seq,
            group[-1].seq,
            [e.obj_id for e in group][:50],
        )
        try:
            report.sent += self._send(group, mine, report)
            return True
        except NotAuthenticated:
            raise
        except ReplyLost as exc:
            report.error = str(exc)
            if group[0].op is Op.CREATE:
                return self._settle_in_flight(report)  # look the marker up before anything else
            report.failed += len(group)
            return False
        except (ServerUnreachable, HTTPStatusError) as exc:
            if isinstance(exc, ServerUnreachable) or is_transient(exc, idempotent=True):
                report.failed += len(group)
                report.error = str(exc)
                self.outbox.log("last_error", report.error)
                return False
            if len(group) > 1:
                half = len(group) // 2
                return self._send_group(group[:half], mine, report) and self._send_group(
                    group[half:], mine, report
                )
            self._reject(group[0], exc, mine, report)
            return True

    # -- grouping ------------------------------------------------------------------------------

    def _next_group(self, entries: list[Entry], mine: set[int], report: PushReport) -> list[Entry]:
        first = entries[0]
        if _refs(first):
            self._orphan(first, mine, report)
            return []
        group = [first]
        if first.op is Op.CREATE and first.resource != "Job":
            return group
        seen = {first.obj_id}
        kind = (first.resource, first.op)
        for entry in entries[1:]:
            if len(group) >= self.batch_size or (entry.resource, entry.op) != kind:
                break
            # Parents first: a reference to a provisional id ends the run. Repeated updates
            # of one object merge (in order); a repeated create or delete cannot.
            if _refs(entry) or (entry.op is not Op.UPDATE and entry.obj_id in seen):
                break
            group.append(entry)
            seen.add(entry.obj_id)
        return group

    def _orphan(self, entry: Entry, mine: set[int], report: PushReport) -> None:
        """An entry that references an object whose creation was rejected cannot be sent."""
        missing = sorted(_refs(entry))
        error = f"depends on provisional id(s) {missing}, whose creation was rejected or discarded"
        self._restore(entry)
        if entry.seq in mine:
            self.outbox.forget(entry.seq)
        else:
            self.outbox.bury(entry.seq, None, error)
            report.dead += 1

    # -- sending -------------------------------------------------------------------------------

    def _send(self, group: list[Entry], mine: set[int], report: PushReport) -> int:
        """Send one group; return how many entries the server acknowledged."""
        res = RESOURCES[group[0].resource]
        op = group[0].op
        if op is Op.CREATE:
            self._send_creates(res, group)
        elif op is Op.UPDATE:
            self._send_updates(res, group)
        else:
            before = len(report.rejected) + report.dead
            self._send_deletes(res, group, mine, report)
            return len(group) - (len(report.rejected) + report.dead - before)
        return len(group)

    def _send_creates(self, res: Resource, group: list[Entry]) -> None:
        seqs = [e.seq for e in group]
        marker = uuid.uuid4().hex if res.name == "Job" else None
        self.outbox.mark_in_flight(seqs, marker)
        payloads = [_with_marker(e.payload, marker) for e in group]
        rows = self.remote.create(res, payloads)
        self._adopt(res, list(zip(group, rows, strict=True)))

    def _adopt(self, res: Resource, created: list[tuple[Entry, Row]]) -> None:
        store = self.mirror.store
        with store.write():
            self.outbox.ack([e.seq for e, _ in created])
            self.outbox.remap(res.name, [(e.obj_id, row) for e, row in created])
            apply_server_rows(self.remote, self.mirror, self.outbox, res, [r for _, r in created])

    def _send_updates(self, res: Resource, group: list[Entry]) -> None:
        self.outbox.mark_in_flight([e.seq for e in group])
        rows = self.remote.bulk_update(res, [(e.obj_id, e.payload) for e in group])
        with self.mirror.store.write():
            self.outbox.ack([e.seq for e in group])
            apply_server_rows(self.remote, self.mirror, self.outbox, res, rows)

    def _send_deletes(
        self, res: Resource, group: list[Entry], mine: set[int], report: PushReport
    ) -> None:
        self.outbox.mark_in_flight([e.seq for e in group])
        kept = {row["id"] for row in self.remote.delete_ids(res, [e.obj_id for e in group])}
        self.outbox.ack([e.seq for e in group if e.obj_id not in kept])
        for entry in (e for e in group if e.obj_id in kept):
            # The server skips jobs locked by a running session and still answers 204.
            locked = Rejected(
                f"{res.name} {entry.obj_id} is locked by a running session: the server kept it",
                method="DELETE",
                url=res.item_path(entry.obj_id),
                status=409,
                body=None,
            )
            self._reject(entry, locked, mine, report)

    # -- ambiguity -----------------------------------------------------------------------------

    def _settle_in_flight(self, report: PushReport) -> bool:
        """Resolve creates that may have reached the server; return False if unreachable."""
        entries = [e for e in self.outbox.entries([EntryState.IN_FLIGHT]) if e.op is Op.CREATE]
        try:
            for key, group in _by_marker(entries).items():
                res = RESOURCES[group[0].resource]
                found = self._lookup(res, key, group)
                if found:
                    self._adopt(res, found)
                    report.sent += len(found)
                done = {e.seq for e, _ in found}
                self.outbox.reset([e.seq for e in group if e.seq not in done])
        except (ServerUnreachable, HTTPStatusError) as exc:
            if isinstance(exc, NotAuthenticated):
                raise
            report.failed += len(entries)
            report.error = str(exc)
            return False
        return True

    def _lookup(self, res: Resource, marker: str, group: list[Entry]) -> list[tuple[Entry, Row]]:
        """Find rows the server created for in-flight creates (by marker, or unique names)."""
        if res.name == "Job":
            spec = QuerySpec("Job").with_filters({"tags": {MARKER_KEY: marker}})
            by_workdir = {r["workdir"]: r for r in self.remote.select(res, spec)[0]}
            return [
                (e, by_workdir[e.payload["workdir"]])
                for e in group
                if e.payload["workdir"] in by_workdir
            ]
        (entry,) = group
        keys = {"Site": ("name",), "App": ("site_id", "name")}.get(res.name)
        if keys is None:
            return self._lookup_batch_job(entry)
        spec = QuerySpec(res.name).with_filters({k: entry.payload[k] for k in keys})
        rows = self.remote.select(res, spec)[0]
        return [(entry, rows[0])] if rows else []

    def _lookup_batch_job(self, entry: Entry) -> list[tuple[Entry, Row]]:
        """BatchJobs have no unique key: adopt the newest unknown one with identical fields."""
        res = RESOURCES["BatchJob"]
        payload = entry.payload
        spec = QuerySpec("BatchJob").with_filters(
            {"site_id": [payload["site_id"]], "queue": payload["queue"]}
        )
        known = self.mirror.store.all_ids("BatchJob")
        same = [
            r
            for r in self.remote.select(res, spec)[0]
            if r["id"] not in known
            and all(r.get(k) == payload.get(k) for k in ("project", "num_nodes", "job_mode"))
        ]
        return [(entry, max(same, key=lambda r: r["id"]))] if same else []

    # -- rejection -----------------------------------------------------------------------------

    def _reject(
        self, entry: Entry, exc: HTTPStatusError, mine: set[int], report: PushReport
    ) -> None:
        self._restore(entry)
        if entry.seq in mine:
            self.outbox.forget(entry.seq)
            report.rejected[entry.seq] = exc
            return
        reason = exc.detail or str(exc)
        log.warning(
            "outbox entry %s (%s %s) rejected: %s",
            entry.seq,
            entry.op.value,
            entry.resource,
            reason,
        )
        self.outbox.bury(entry.seq, exc.status, reason)
        report.dead += 1

    def _restore(self, entry: Entry) -> None:
        """Put the mirror row of a refused entry back to what the server holds."""
        store = self.mirror.store
        if entry.op is Op.CREATE or entry.obj_id < 0:
            store.delete(entry.resource, [entry.obj_id])
            return
        res = RESOURCES[entry.resource]
        rows = self.remote.select(res, QuerySpec(res.name).with_filters({"id": [entry.obj_id]}))[0]
        with store.write():
            if rows:
                store.upsert(res.name, rows)
                self.outbox.overlay(res.name, [entry.obj_id], skip=entry.seq)
            else:
                store.delete_cascade(res.name, [entry.obj_id])


def _with_marker(payload: Row, marker: str | None) -> Row:
    if marker is None:
        return payload
    return {**payload, "tags": {**payload.get("tags", {}), MARKER_KEY: marker}}


def _by_marker(entries: list[Entry]) -> dict[str, list[Entry]]:
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        key = entry.marker if entry.resource == "Job" and entry.marker else f"seq:{entry.seq}"
        groups.setdefault(key, []).append(entry)
    return groups
