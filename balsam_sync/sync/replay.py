"""Replay the outbox against the server: in order, batched, exactly once.

* Order: entries are taken in ``seq`` order; only a run of consecutive entries of the same
  kind is coalesced (creates of jobs into one POST of up to 5000, updates into PATCH calls
  grouped by key set, job deletes into one DELETE), so no object's changes are reordered.
  A job that references another job created in the same run starts a new run (parents first).
* Exactly-once creates: every job create carries the tag ``bsync_op:<batch uuid>`` and is
  marked in flight (with the time it was sent) before the POST. Creates in flight are settled
  before anything else is sent (``settle.py``). The tag stays on the server (removing it would
  cost a second request per job) and is hidden from ``job.tags``.
* Failures follow the outcome table (``outcomes.py``): one that may be transient stops the
  push and keeps the entries, to be tried again after a capped back-off that is persisted with
  them (a push never sends one entry twice); 401 pauses the whole queue ("log in again"); a
  refusal for good (400/404/409/422) of a batch is bisected to the entry at fault, which goes
  to the dead letters with the server's reason while the mirror row is restored to the
  server's truth; later entries go on.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterable

from ..cache.lock import FileLock
from ..cache.mirror import Mirror
from ..cache.outbox import Entry, EntryState, Op, Outbox, now_text
from ..cache.schema import REFERENCES
from ..errors import (
    HTTPStatusError,
    NotAuthenticated,
    Rejected,
    ServerUnreachable,
    TransportError,
)
from ..remote.outcomes import Backoff, Outcome, link_failed, outcome
from ..remote.rest import Remote
from ..resources import MARKER_KEY, MAX_BULK, RESOURCES, Resource, Row
from ..spec import QuerySpec
from .pushreport import PushReport
from .settle import Settler
from .writes import followups, store_server_rows

log = logging.getLogger(__name__)


ENTRY_BACKOFF_CAP = 300.0
"""Longest pause before a write's push resends a change the server failed (it starts at the
link's first back-off, ``Settings.retry_backoff``)."""
KEPT_TRIES = 4
"""Sends of a DELETE whose object the server keeps before it counts as kept for good."""


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
    """Sends one mirror's outbox to one server.

    Args:
        max_request_seconds: the longest the server may take to commit a request it received
            (see ``settle.py``).
    """

    def __init__(
        self,
        remote: Remote,
        mirror: Mirror,
        outbox: Outbox,
        lock: FileLock,
        batch_size: int = MAX_BULK,
        max_request_seconds: float = 120.0,
    ) -> None:
        self.remote = remote
        self.mirror = mirror
        self.outbox = outbox
        self.lock = lock
        self.batch_size = min(batch_size, MAX_BULK)
        self.settler = Settler(remote, mirror, outbox, max_request_seconds)

    # -- the loop ------------------------------------------------------------------------------

    def push(
        self,
        own: Iterable[int] = (),
        lock_wait: float = 30.0,
        *,
        settle_wait: float | None = None,
        force: bool = True,
        batch_size: int | None = None,
    ) -> PushReport:
        """Send what is queued now; entries in ``own`` are the caller's (rejections returned).

        Args:
            settle_wait: seconds to wait for creates the server may still be running
                (None: as long as it may take, ``max_request_seconds``).
            force: also try entries whose back-off after a failure is not over (an explicit
                push); a write's push passes False.
            batch_size: most entries per request for this push.
        """
        report = PushReport()
        stopped = self.remote.transport.stop_requested
        if not self.lock.acquire(lock_wait, stopped):
            report.skipped = True
            return report
        wait = self.settler.max_request_seconds if settle_wait is None else settle_wait
        size = min(batch_size or self.batch_size, MAX_BULK)
        try:
            if force:  # an explicit push tries the server now, even while the link backs off
                self.remote.transport.ensure_reachable()
            self._run(set(own), report, wait, force, size)
        except NotAuthenticated as exc:
            report.paused_for_auth = True
            report.error = f"the server refused the token, log in again: {exc}"
            self.outbox.log("last_error", report.error)
        except ServerUnreachable as exc:
            report.error = str(exc)
            report.failed += self.outbox.stats()["counts"].get("pending", 0)
        finally:
            self.lock.release()
            stats = self.outbox.stats()["counts"]
            report.remaining = stats.get("pending", 0) + stats.get("in_flight", 0)
        if report.sent:
            self.outbox.log("last_push", now_text())
        return report

    def _run(self, mine: set[int], report: PushReport, wait: float, force: bool, size: int) -> None:
        tried: set[int] = set()
        stopped = self.remote.transport.stop_requested
        while self._settle(report, wait, force) and not stopped():
            entries = self.outbox.entries([EntryState.PENDING, EntryState.IN_FLIGHT], size + 1)
            if not entries or entries[0].seq in tried:
                return
            if not force and not entries[0].due(now_text()):
                report.error = entries[0].error
                return
            group = self._next_group(entries, mine, report, size)
            tried |= {e.seq for e in group}
            if group and not self._send_group(group, mine, report):
                return

    def _settle(self, report: PushReport, wait: float, force: bool) -> bool:
        """Settle in-flight creates; True when none is left undecided."""
        try:
            adopted, undecided = self.settler.settle(
                wait, force, self.remote.transport.stop_requested
            )
        except TransportError as exc:
            if isinstance(exc, NotAuthenticated):
                raise
            in_flight = len(self.outbox.entries([EntryState.IN_FLIGHT]))
            report.failed = max(report.failed, in_flight)
            report.error = str(exc)
            return False
        report.sent += adopted
        report.waiting = undecided
        if undecided:
            report.error = f"{undecided} create(s) sent, the server's outcome not known yet"
        return not undecided

    def _send_group(self, group: list[Entry], mine: set[int], report: PushReport) -> bool:
        """Send one group; return False when the push must stop (a transient failure)."""
        log.debug(
            "sending %s %s x%d (seq %d..%d)",
            group[0].op.value,
            group[0].resource,
            len(group),
            group[0].seq,
            group[-1].seq,
        )
        try:
            report.sent += self._send(group, mine, report)
            return True
        except TransportError as exc:
            found = outcome(exc)
            if found is Outcome.NOT_AUTHENTICATED:
                self.outbox.reset([e.seq for e in group])  # refused, so not applied
                raise
            # The server itself answered (not a gateway's 502/503/504): it has finished.
            answered = isinstance(exc, HTTPStatusError) and not link_failed(exc)
            creates = group[0].op is Op.CREATE
            if len(group) > 1 and (found is Outcome.REFUSED or (answered and not creates)):
                # Find the entry at fault; the others go through. Updates and deletes are
                # idempotent, so halves of a batch that may have been applied are resent as is
                # (the server fails some PATCH batches whose jobs need different columns).
                half = len(group) // 2
                return self._send_group(group[:half], mine, report) and self._send_group(
                    group[half:], mine, report
                )
            if found is Outcome.REFUSED and isinstance(exc, HTTPStatusError):
                self._reject(group[0], exc, mine, report)
                return True
            if answered and creates:
                self.outbox.finished([e.seq for e in group])  # one look-up decides
            self._transient(group, exc, found, report)
            return creates and self._settle(report, 0.0, True)

    def _transient(
        self, group: list[Entry], exc: TransportError, found: Outcome, report: PushReport
    ) -> None:
        """Keep the entries for a later push; a create that may exist stays in flight."""
        seqs = [e.seq for e in group]
        report.failed += len(group)
        report.error = str(exc)
        self.outbox.log("last_error", report.error)
        if found is Outcome.NEVER_SENT:
            self.outbox.reset(seqs)
        if link_failed(exc):
            return  # the link's back-off (link.py) keeps writes from trying too soon
        attempts = max(e.attempts for e in group) + 1
        status = exc.status if isinstance(exc, HTTPStatusError) else None
        backoff = Backoff(self.remote.transport.link.backoff.initial, ENTRY_BACKOFF_CAP)
        self.outbox.defer(seqs, backoff.delay(attempts), status, f"{found.value}: {exc}")

    # -- grouping ------------------------------------------------------------------------------

    def _next_group(
        self, entries: list[Entry], mine: set[int], report: PushReport, size: int
    ) -> list[Entry]:
        first = entries[0]
        if _refs(first):
            self._orphan(first, mine, report)
            return []
        if first.status is not None and first.status >= 500:  # isolate the entry at fault
            size = max(1, size >> min(first.attempts, 20))
        group = [first]
        if first.op is Op.CREATE and RESOURCES[first.resource].create_route != "list":
            return group
        seen = {first.obj_id}
        kind = (first.resource, first.op)
        for entry in entries[1:]:
            if len(group) >= size or (entry.resource, entry.op) != kind:
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
            return self._send_deletes(res, group, mine, report)
        return len(group)

    def _send_creates(self, res: Resource, group: list[Entry]) -> None:
        marker = uuid.uuid4().hex if res.marked_creates else None
        self.outbox.mark_in_flight([e.seq for e in group], marker)  # persisted before sending
        payloads = [_with_marker(e.payload, marker) for e in group]
        rows = self.remote.create(res, payloads)
        self.settler.adopt(res, list(zip(group, rows, strict=True)))

    def _send_updates(self, res: Resource, group: list[Entry]) -> None:
        self.outbox.mark_in_flight([e.seq for e in group])
        rows = self.remote.bulk_update(res, [(e.obj_id, e.payload) for e in group])
        children = followups(self.remote, res, rows)
        with self.mirror.store.write():
            self.outbox.ack([e.seq for e in group])
            store_server_rows(self.mirror, res, rows, children)

    def _send_deletes(
        self, res: Resource, group: list[Entry], mine: set[int], report: PushReport
    ) -> int:
        """Delete, and return how many the server acknowledged.

        The server answers 204 yet skips a job it cannot lock: one locked by a running
        session, or by another request still running (an earlier copy of this very DELETE,
        say). Such a job is tried again later; one still kept after ``KEPT_TRIES`` sends,
        spread over ``max_request_seconds``, is kept for good (a session holds it).
        """
        self.outbox.mark_in_flight([e.seq for e in group])
        rows = self.remote.delete_ids(res, [e.obj_id for e in group])
        kept = {row["id"] for row in rows}
        self.outbox.ack([e.seq for e in group if e.obj_id not in kept])
        for entry in (e for e in group if e.obj_id in kept):
            reason = f"{res.name} {entry.obj_id} is locked: the server kept it"
            if entry.attempts + 1 < KEPT_TRIES:
                self.outbox.reset([entry.seq])  # not applied: an ordinary pending change
                wait = self.settler.max_request_seconds / (KEPT_TRIES - 1)
                self.outbox.defer([entry.seq], wait, 409, f"{reason} (tried again later)")
                report.failed += 1
                continue
            locked = Rejected(
                f"{reason} (a running session holds it)",
                method="DELETE",
                url=res.item_path(entry.obj_id),
                status=409,
                body=None,
            )
            self._reject(entry, locked, mine, report)
        return len(group) - len(kept)

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
        spec = QuerySpec(res.name).with_filters({"id": [entry.obj_id]})
        try:  # read first, then write: never a request inside a mirror transaction
            rows, _ = self.remote.select(res, spec)
        except TransportError:
            self.mirror.coverage.invalidate(res.name)  # the next read asks the server
            return
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
