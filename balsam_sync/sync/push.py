"""Push: send the queued changes to the server — in order, batched, exactly once — and say
what happened.

* **Order.** Changes of one object are sent in the order they were made, and a change that
  names an object created offline waits for that object's create (parents first). Changes of
  different objects are independent: one that cannot go now (it waits out a back-off after the
  server failed it) holds back only the changes of its own object and those that depend on it.
  Consecutive changes of one kind are sent together (job creates in one POST of up to 5000,
  updates in PATCH calls grouped by key set, job deletes in one DELETE).
* **Exactly-once creates.** Every job create carries the tag ``bsync_op:<batch uuid>`` and is
  recorded as in flight, with the time it was sent, before the POST leaves. Creates in flight
  are settled before anything else is sent: the tag is looked up and the jobs found are
  adopted; "not found" counts only once the server can no longer be running the POST (it
  answered, or the POST was sent longer ago than ``max_request_seconds``); only then is it sent
  again, under a new tag. Sites and apps are found by their unique names.
* **Failures** follow the outcome table (``remote/outcomes.py``): a transient one keeps the
  entries for a later push, with a capped back-off persisted with them; 401 pauses the queue
  ("log in again"); a refusal for good of a batch is bisected to the entry at fault, which
  becomes a dead letter with the server's reason (or is raised to the write that made it), its
  object put back to the server's truth. A batch the server itself fails (a 5xx, answered) is
  split too; one change the server fails on its own ``FAIL_TRIES`` times over at least
  ``FAIL_SECONDS`` becomes a dead letter with the server's reason, and the rest go on.

What the mirror must learn from each answer it is told in the domain's words (``Mirror``):
confirmed, created, refused; nothing here touches its parts.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime

from ..cache import Entry, EntryState, Mirror, Op, SenderLock
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
from ..utc import now, now_text

log = logging.getLogger(__name__)

ENTRY_BACKOFF_CAP = 300.0
"""Longest pause before a change the server failed is sent again (it starts at the link's
first back-off, ``Settings.retry_backoff``)."""
KEPT_TRIES = 4
"""Sends of a DELETE whose object the server keeps before it counts as kept for good."""
FAIL_TRIES = 5
"""Sends of one change, alone, that the server answers with an error of its own (5xx) before
the change becomes a dead letter..."""
FAIL_SECONDS = 600.0
"""...provided the first of those failures is at least this old."""
POLL_SECONDS = 1.0
"""How often an explicit push looks a create up again while the server may still commit it."""
_WAITING = "sent, no answer yet: the server may still be creating it"


@dataclass
class PushReport:
    """What one push did.

    Attributes:
        sent: entries the server acknowledged.
        failed: entries tried without a definite answer (still queued).
        dead: entries moved to the dead letters by this push.
        remaining: entries still queued afterwards.
        waiting: in-flight creates the server may still be running (settled by a later push).
        paused_for_auth: the token was refused: nothing more is sent until a new login.
        skipped: another process holds the replay lock (it will send our entries).
        error: the last error seen, as text.
        rejected: entries of the caller that the server refused (raised to the caller).
        requests, bytes, seconds: what the push cost: requests answered, reply bytes, and
            server time (sync/cost.py); counted by ``Client.push``.
    """

    sent: int = 0
    failed: int = 0
    dead: int = 0
    remaining: int = 0
    waiting: int = 0
    paused_for_auth: bool = False
    skipped: bool = False
    error: str | None = None
    rejected: dict[int, HTTPStatusError] = field(default_factory=dict)
    requests: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        text = f"sent {self.sent}, failed {self.failed}, dead {self.dead}, queued {self.remaining}"
        if self.waiting:
            text += f" ({self.waiting} sent, awaiting the server's outcome)"
        if self.paused_for_auth:
            text += " (paused: log in again)"
        return text + (f"; last error: {self.error}" if self.error else "")


def provisional_refs(entry: Entry) -> set[int]:
    """Provisional ids ``entry`` names: its object's (unless it creates it) and references."""
    found = {entry.obj_id} if entry.op is not Op.CREATE and entry.obj_id < 0 else set()
    for name in RESOURCES[entry.resource].reference_fields:
        value = entry.payload.get(name)
        values = value if isinstance(value, list) else [value]
        found |= {v for v in values if type(v) is int and v < 0}
    return found


class _Holds:
    """The objects a push must not touch again: their change was put off or failed."""

    def __init__(self) -> None:
        self.objects: set[tuple[str, int]] = set()

    def add(self, entry: Entry) -> None:
        self.objects.add((entry.resource, entry.obj_id))

    def holds(self, entry: Entry, waiting_creates: set[int]) -> bool:
        if (entry.resource, entry.obj_id) in self.objects:
            return True
        return bool(provisional_refs(entry) & waiting_creates)


class Replayer:
    """Sends one mirror's queue to one server.

    Args:
        max_request_seconds: the longest the server may take to commit a request it received.
    """

    def __init__(
        self,
        remote: Remote,
        mirror: Mirror,
        batch_size: int = MAX_BULK,
        max_request_seconds: float = 120.0,
    ) -> None:
        self.remote = remote
        self.mirror = mirror
        self.lock: SenderLock = mirror.sender()
        self.batch_size = min(batch_size, MAX_BULK)
        self.max_request_seconds = max_request_seconds

    # -- the loop --------------------------------------------------------------------------------

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
                push); a write's push and the daemon pass False.
            batch_size: most entries per request for this push.
        """
        report = PushReport()
        stopped = self.remote.transport.stop_requested
        try:
            taken = self.lock.acquire(lock_wait, stopped)
        except FileNotFoundError:  # the mirror's folder was purged: it is opened anew
            taken = False
        if not taken:
            report.skipped = True
            return report
        wait = self.max_request_seconds if settle_wait is None else settle_wait
        size = min(batch_size or self.batch_size, MAX_BULK)
        try:
            self.mirror.catch_up()  # what other processes and nodes queued, sent or settled
            if force:  # an explicit push tries the server now, even while the link backs off
                self.remote.transport.ensure_reachable()
            self._run(set(own), report, wait, force, size)
            if force and not self.mirror.queue_counts().pending:
                self._clear_creation_tags(report)
        except NotAuthenticated as exc:
            report.paused_for_auth = True
            report.error = f"the server refused the token, log in again: {exc}"
            self.mirror.note("last_error", report.error)
        except ServerUnreachable as exc:
            report.error = str(exc)
            report.failed += self.mirror.queue_counts().pending
        finally:
            self.lock.release()
            counts = self.mirror.queue_counts()
            report.remaining = counts.pending + counts.in_flight
        if report.sent:
            self.mirror.note("last_push", now_text())
        return report

    def _run(self, mine: set[int], report: PushReport, wait: float, force: bool, size: int) -> None:
        tried: set[int] = set()
        holds = _Holds()
        stopped = self.remote.transport.stop_requested
        limit = size + 1
        while self._settle(report, wait, force) and not stopped():
            if not self.lock.still_held():
                report.error = "another node took over sending: it sends the rest"
                return
            queue = self.mirror.queued([EntryState.PENDING, EntryState.IN_FLIGHT], limit)
            waiting = {e.obj_id for e in queue if e.op is Op.CREATE}
            stamp = now_text()
            group: list[Entry] = []
            for skipped, entry in enumerate(queue):
                if entry.seq in tried or holds.holds(entry, waiting):
                    holds.add(entry)
                    continue
                if not force and not entry.due(stamp):
                    report.error = entry.error
                    holds.add(entry)
                    continue
                limit = max(limit, skipped + size + 1)
                group = self._group_from(entry, queue, tried, holds, waiting, mine, report, size)
                tried.add(entry.seq)
                break
            else:
                if len(queue) < limit:
                    return  # nothing left that may go now
                limit *= 2  # every entry of this window is held back: look further
                continue
            tried |= {e.seq for e in group}
            if group and not self._send_group(group, mine, report):
                return

    def _group_from(
        self,
        first: Entry,
        queue: list[Entry],
        tried: set[int],
        holds: _Holds,
        waiting: set[int],
        mine: set[int],
        report: PushReport,
        size: int,
    ) -> list[Entry]:
        """The batch that starts with ``first``: the changes of the same kind that follow it and
        that nothing holds back, up to ``size`` (creates of resources created one by one go
        alone)."""
        if provisional_refs(first) - waiting:
            self._orphan(first, mine, report)
            return []
        group = [first]
        if first.op is Op.CREATE and RESOURCES[first.resource].create_route != "list":
            return group
        seen = {first.obj_id}
        kind = (first.resource, first.op)
        later = _Holds()  # objects left out of this batch: their later changes are, too
        for entry in queue[queue.index(first) + 1 :]:
            if len(group) >= size:
                break
            if (entry.resource, entry.op) != kind:
                break  # only a run of one kind goes together
            if (
                entry.seq in tried
                or holds.holds(entry, waiting)
                or later.holds(entry, waiting)
                or provisional_refs(entry)
            ):
                later.add(entry)
                continue
            if entry.op is not Op.UPDATE and entry.obj_id in seen:
                break  # a repeated create or delete of one object cannot share a request
            if entry.status is not None and entry.status >= 500:
                break  # one that the server failed goes on its own, to find the one at fault
            group.append(entry)
            seen.add(entry.obj_id)
        return group

    def _clear_creation_tags(self, report: PushReport) -> None:
        """Take the creation tag off jobs whose create is settled (no sender can look it up
        again): one PATCH per 5000 jobs, so upstream's tools show the tags the user set."""
        stopped = self.remote.transport.stop_requested
        for res in RESOURCES.values():
            while res.marked_creates and not stopped():
                items = self.mirror.tags_to_clear(MAX_BULK)
                if not items or not self._clear_tags(res, items, report):
                    break

    def _clear_tags(self, res: Resource, items: list[tuple[int, Row]], report: PushReport) -> bool:
        """Send one batch of tag clearings; False when the server cannot be used now."""
        try:
            self.remote.bulk_update(res, items)
        except TransportError as exc:
            if outcome(exc) is not Outcome.REFUSED:
                report.error = str(exc)
                return False
            if len(items) == 1:  # a job deleted meanwhile, say: its tag goes with it
                self.mirror.tags_cleared(res.name, items, refused=True)
                return True
            half = len(items) // 2
            return self._clear_tags(res, items[:half], report) and self._clear_tags(
                res, items[half:], report
            )
        self.mirror.tags_cleared(res.name, items)
        return True

    # -- settling creates that may have reached the server ---------------------------------------

    def _settle(self, report: PushReport, wait: float, force: bool) -> bool:
        """Settle in-flight creates; True when none is left undecided."""
        try:
            adopted, undecided = self._settle_creates(wait, force)
        except TransportError as exc:
            if isinstance(exc, NotAuthenticated):
                raise
            in_flight = self.mirror.queue_counts().in_flight
            report.failed = max(report.failed, in_flight)
            report.error = str(exc)
            return False
        report.sent += adopted
        report.waiting = undecided
        if undecided:
            report.error = f"{undecided} create(s) sent, the server's outcome not known yet"
        return not undecided

    def _settle_creates(self, wait: float, force: bool) -> tuple[int, int]:
        """Settle what can be settled; return (entries adopted, entries still undecided).

        ``wait``: seconds to keep polling undecided batches; ``force``: look them up even when
        an earlier look asked to wait (a write's push does not, to avoid a request per write).
        """
        deadline = time.monotonic() + wait
        adopted = 0
        stopped = self.remote.transport.stop_requested
        while True:
            in_flight = self.mirror.queued([EntryState.IN_FLIGHT])
            groups = _by_marker([e for e in in_flight if e.op is Op.CREATE])
            if not groups:
                return adopted, 0
            stamp = now_text()
            if not force and not all(e.due(stamp) for g in groups.values() for e in g):
                return adopted, sum(len(g) for g in groups.values())
            undecided = 0
            for group in groups.values():
                found, open_ = self._settle_group(group)
                adopted += found
                undecided += open_
            if not undecided:
                return adopted, 0
            pause = min(POLL_SECONDS, deadline - time.monotonic())
            if pause <= 0 or stopped():
                return adopted, undecided
            time.sleep(pause)
            force = True

    def _settle_group(self, group: list[Entry]) -> tuple[int, int]:
        """Look one batch up; return (adopted, undecided)."""
        res = RESOURCES[group[0].resource]
        sent = now()
        found = self._lookup(res, group)
        if found:
            self._adopt(res, found, sent)
            if res.marked_creates:  # one POST: the marker's other jobs were made too (and
                made = {e.seq for e, _ in found}  # deleted since)
                self.mirror.created_then_deleted(res.name, [e for e in group if e.seq not in made])
            return len(found), 0
        if self._may_still_commit(group[0]):
            self.mirror.retry_later([e.seq for e in group], POLL_SECONDS, None, _WAITING)
            return 0, len(group)
        log.info("%s create(s) never reached the server: sending them again", len(group))
        self.mirror.not_applied([e.seq for e in group])
        return 0, 0

    def _may_still_commit(self, entry: Entry) -> bool:
        """Whether the server may still be running the request that sent ``entry`` (its
        sending time is the server's clock, as whichever node sent it estimated it)."""
        if entry.sent_at is None:
            return False
        sent = datetime.fromisoformat(entry.sent_at)
        return (
            self.remote.transport.server_now() - sent
        ).total_seconds() < self.max_request_seconds

    def _adopt(self, res: Resource, made: list[tuple[Entry, Row]], read_at: datetime) -> None:
        """The server created these entries as these rows (read by a request sent at
        ``read_at``): the mirror takes them in."""
        self.mirror.created(res.name, made, read_at)

    def _lookup(self, res: Resource, group: list[Entry]) -> list[tuple[Entry, Row]]:
        """Find rows the server created for in-flight creates (by marker, or unique names)."""
        if res.marked_creates:
            spec = QuerySpec(res.name).with_filters({"tags": {MARKER_KEY: group[0].marker}})
            by_workdir = {r["workdir"]: r for r in self.remote.select(res, spec)[0]}
            return [
                (e, by_workdir[e.payload["workdir"]])
                for e in group
                if e.payload["workdir"] in by_workdir
            ]
        (entry,) = group
        payload = entry.payload
        spec = QuerySpec(res.name).with_filters({k: payload[k] for k in res.settle_by})
        rows = self.remote.select(res, spec)[0]
        if not res.settle_same:  # a unique key: the one found is the one created
            return [(entry, rows[0])] if rows else []
        # No unique key (batch jobs): the newest one the mirror does not know yet whose every
        # sent field is equal.
        known = self.mirror.confirmed_ids(res.name)
        same = [
            r
            for r in rows
            if r["id"] not in known and all(r.get(k) == payload.get(k) for k in res.settle_same)
        ]
        return [(entry, max(same, key=lambda r: r["id"]))] if same else []

    # -- sending -----------------------------------------------------------------------------

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
                self.mirror.not_applied([e.seq for e in group])  # refused, so not applied
                raise
            # The server itself failed it (a 5xx of its own, not a gateway's 502/503/504): it
            # has finished with the request, whatever it did.
            answered = (
                isinstance(exc, HTTPStatusError)
                and found is Outcome.MAYBE_APPLIED
                and not link_failed(exc)
            )
            creates = group[0].op is Op.CREATE
            if answered and creates:
                # A POST is one transaction, but its commit may have preceded the error: look
                # the batch up first (one request), and split it only if it was not made.
                self.mirror.answered([e.seq for e in group])
                if not self._settle(report, 0.0, True):
                    return False
                group = [e for e in group if self._still_queued(e)]
                if not group:
                    return True
            if len(group) > 1 and (found is Outcome.REFUSED or answered):
                # Find the entry at fault; the others go through. Updates and deletes are
                # idempotent, so halves of a batch that may have been applied are resent as is.
                half = len(group) // 2
                return self._send_group(group[:half], mine, report) and self._send_group(
                    group[half:], mine, report
                )
            if found is Outcome.REFUSED and isinstance(exc, HTTPStatusError):
                self._reject(group[0], exc, mine, report)
                return True
            if answered and isinstance(exc, HTTPStatusError) and self._failing_for_good(group):
                self._reject(group[0], exc, mine, report, failing=True)
                return True
            self._transient(group, exc, found, report)
            return answered  # the server answered: the others may go on

    def _still_queued(self, entry: Entry) -> bool:
        found = self.mirror.entry(entry.seq)
        return found is not None and found.state is not EntryState.DEAD

    def _failing_for_good(self, group: list[Entry]) -> bool:
        """One change the server failed on its own ``FAIL_TRIES`` times, the first failure at
        least ``FAIL_SECONDS`` ago."""
        if len(group) != 1:
            return False
        entry = self.mirror.entry(group[0].seq) or group[0]
        if entry.attempts < FAIL_TRIES or entry.failing_since is None:
            return False
        first = datetime.fromisoformat(entry.failing_since)
        return (now() - first).total_seconds() >= FAIL_SECONDS

    def _transient(
        self, group: list[Entry], exc: TransportError, found: Outcome, report: PushReport
    ) -> None:
        """Keep the entries for a later push; a create that may exist stays in flight."""
        seqs = [e.seq for e in group]
        report.failed += len(group)
        report.error = str(exc)
        self.mirror.note("last_error", report.error)
        if found is Outcome.NEVER_SENT:
            self.mirror.not_applied(seqs)
        if link_failed(exc):
            return  # the link's back-off (link.py) keeps writes from trying too soon
        attempts = max(e.attempts for e in group) + 1
        status = exc.status if isinstance(exc, HTTPStatusError) else None
        backoff = Backoff(self.remote.transport.link.backoff.initial, ENTRY_BACKOFF_CAP)
        self.mirror.retry_later(seqs, backoff.delay(attempts), status, f"{found.value}: {exc}")

    def _send(self, group: list[Entry], mine: set[int], report: PushReport) -> int:
        """Send one group; return how many entries the server acknowledged."""
        res = RESOURCES[group[0].resource]
        op = group[0].op
        if op is Op.CREATE:
            marker = uuid.uuid4().hex if res.marked_creates else None
            self.mirror.sending([e.seq for e in group], marker)  # recorded before sending
            started = now()
            rows = self.remote.create(res, [_with_marker(e.payload, marker) for e in group])
            self._adopt(res, list(zip(group, rows, strict=True)), started)
        elif op is Op.UPDATE:
            self.mirror.sending([e.seq for e in group])
            changes = [(e.obj_id, e.payload) for e in group]
            seqs = [e.seq for e in group]
            started = now()
            found = self.remote.bulk_update(res, changes)
            if found is None:  # one request, as upstream's save(); the next read confirms
                self.mirror.applied(res.name, seqs, changes)
            else:
                self.mirror.confirmed(res.name, seqs, found, started)
        else:
            return self._send_deletes(res, group, mine, report)
        return len(group)

    def _send_deletes(
        self, res: Resource, group: list[Entry], mine: set[int], report: PushReport
    ) -> int:
        """Delete, and return how many the server acknowledged.

        The server answers 204 yet skips a job it cannot lock: one locked by a running
        session, or by another request still running (an earlier copy of this very DELETE,
        say). Such a job is tried again later; one still kept after ``KEPT_TRIES`` sends,
        spread over ``max_request_seconds``, is kept for good (a session holds it).
        """
        self.mirror.sending([e.seq for e in group])
        kept = {row["id"] for row in self.remote.delete_ids(res, [e.obj_id for e in group])}
        self.mirror.confirmed(res.name, [e.seq for e in group if e.obj_id not in kept], [])
        for entry in (e for e in group if e.obj_id in kept):
            reason = f"{res.name} {entry.obj_id} is locked: the server kept it"
            if entry.attempts + 1 < KEPT_TRIES:
                self.mirror.not_applied([entry.seq])  # not applied: an ordinary pending change
                wait = self.max_request_seconds / (KEPT_TRIES - 1)
                self.mirror.retry_later([entry.seq], wait, 409, f"{reason} (tried again later)")
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

    # -- refusals ----------------------------------------------------------------------------

    def _orphan(self, entry: Entry, mine: set[int], report: PushReport) -> None:
        """An entry that names an object whose creation was refused or discarded."""
        missing = sorted(provisional_refs(entry))
        error = f"depends on provisional id(s) {missing}, whose creation was refused or discarded"
        truth, read_at = self._truth(entry)
        self.mirror.refused(entry, None, error, truth, own=entry.seq in mine, read_at=read_at)
        if entry.seq not in mine:
            report.dead += 1

    def _reject(
        self,
        entry: Entry,
        exc: HTTPStatusError,
        mine: set[int],
        report: PushReport,
        failing: bool = False,
    ) -> None:
        truth, read_at = self._truth(entry)
        reason = exc.detail or str(exc)
        if failing:
            reason = f"the server failed it {FAIL_TRIES} times or more: {reason}"
        own = entry.seq in mine
        self.mirror.refused(entry, exc.status, reason, truth, own=own, read_at=read_at)
        if own:
            report.rejected[entry.seq] = exc
            return
        log.warning(
            "queued change %s (%s %s) refused: %s",
            entry.seq,
            entry.op.value,
            entry.resource,
            reason,
        )
        report.dead += 1

    def _truth(self, entry: Entry) -> tuple[list[Row] | None, datetime]:
        """What the server holds of a refused entry's object (read before the mirror is
        written: never a request inside a transaction), and when it was asked; None when it
        cannot be read."""
        sent = now()
        if entry.op is Op.CREATE or entry.obj_id < 0:
            return [], sent
        res = RESOURCES[entry.resource]
        try:
            spec = QuerySpec(res.name).with_filters({"id": [entry.obj_id]})
            return self.remote.select(res, spec)[0], sent
        except TransportError:
            return None, sent


def _with_marker(payload: Row, marker: str | None) -> Row:
    if marker is None:
        return payload
    return {**payload, "tags": {**payload.get("tags", {}), MARKER_KEY: marker}}


def _by_marker(entries: list[Entry]) -> dict[str, list[Entry]]:
    groups: dict[str, list[Entry]] = {}
    for entry in entries:
        key = (
            entry.marker
            if RESOURCES[entry.resource].marked_creates and entry.marker
            else f"seq:{entry.seq}"
        )
        groups.setdefault(key, []).append(entry)
    return groups
