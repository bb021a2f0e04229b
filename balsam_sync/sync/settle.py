"""Settle creates that may have reached the server: adopt what it made, resend only the rest.

An entry is *in flight* from just before its POST until the server's answer is stored. After
a lost reply, a timeout, any 5xx or a crash, its fate is unknown and nothing else is sent until
it is known (creates coming later may reference it):

* a job create is looked up by the marker tag its batch was sent with (sites and apps by their
  unique names); rows found are adopted (a job POST is atomic: all of its jobs, or none);
* "not found" proves nothing while the server may still be running the request, so it counts
  only once the server answered it (a 5xx of its own: ``Outbox.finished``) or it was sent
  longer ago than ``max_request_seconds``; then the entries are sent again, under a new
  marker. Before that, an explicit push polls the marker (the server usually commits within
  seconds); a write's push does not wait.

Updates and deletes in flight need no settling: they are idempotent and are simply sent again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime, timezone

from ..cache.mirror import Mirror
from ..cache.outbox import Entry, EntryState, Op, Outbox, now_text
from ..remote.rest import Remote
from ..resources import MARKER_KEY, RESOURCES, Resource, Row
from ..spec import QuerySpec
from .writes import followups, store_server_rows

log = logging.getLogger(__name__)

Found = list[tuple[Entry, Row]]

POLL_SECONDS = 1.0
"""How often an explicit push looks a marker up again while the server may still commit."""


class Settler:
    """Resolves the in-flight creates of one outbox against one server."""

    def __init__(
        self, remote: Remote, mirror: Mirror, outbox: Outbox, max_request_seconds: float
    ) -> None:
        self.remote = remote
        self.mirror = mirror
        self.outbox = outbox
        self.max_request_seconds = max_request_seconds

    def settle(self, wait: float, force: bool, stopped: Callable[[], bool]) -> tuple[int, int]:
        """Settle what can be settled; return (entries adopted, entries still undecided).

        ``wait``: seconds to keep polling undecided batches; ``force``: look them up even when
        an earlier look asked to wait (a write's push does not, to avoid a request per write).
        """
        deadline = time.monotonic() + wait
        adopted = 0
        while True:
            groups = _by_marker(
                [e for e in self.outbox.entries([EntryState.IN_FLIGHT]) if e.op is Op.CREATE]
            )
            if not groups:
                return adopted, 0
            now = now_text()
            if not force and not all(e.due(now) for g in groups.values() for e in g):
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
        found = self._lookup(res, group)
        if found:
            self.adopt(res, found)
            if res.marked_creates:  # one POST: the marker's other jobs were made too (and
                left = [e for e in group if e.seq not in {f.seq for f, _ in found}]
                self._made_then_deleted(res, left)  # deleted since)
            return len(found), 0
        if self._may_still_commit(group[0]):
            self.outbox.defer([e.seq for e in group], POLL_SECONDS, None, _WAITING)
            return 0, len(group)
        log.info("%s create(s) never reached the server: sending them again", len(group))
        self.outbox.reset([e.seq for e in group])
        return 0, 0

    def _may_still_commit(self, entry: Entry) -> bool:
        if entry.sent_at is None:
            return False
        sent = datetime.fromisoformat(entry.sent_at)
        return (datetime.now(timezone.utc) - sent).total_seconds() < self.max_request_seconds

    def _made_then_deleted(self, res: Resource, entries: list[Entry]) -> None:
        if entries:
            with self.mirror.store.write():
                self.outbox.ack([e.seq for e in entries])
                self.mirror.store.delete(res.name, [e.obj_id for e in entries])

    def adopt(self, res: Resource, created: Found) -> None:
        """The server created these entries as these rows: acknowledge and store them."""
        rows = [row for _, row in created]
        children = followups(self.remote, res, rows)
        with self.mirror.store.write():
            self.outbox.ack([e.seq for e, _ in created])
            self.outbox.remap(res.name, [(e.obj_id, row) for e, row in created])
            store_server_rows(self.mirror, res, rows, children)

    # -- lookups -------------------------------------------------------------------------------

    def _lookup(self, res: Resource, group: list[Entry]) -> Found:
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
        keys = {"Site": ("name",), "App": ("site_id", "name")}.get(res.name)
        if keys is None:
            return self._lookup_batch_job(entry)
        spec = QuerySpec(res.name).with_filters({k: entry.payload[k] for k in keys})
        rows = self.remote.select(res, spec)[0]
        return [(entry, rows[0])] if rows else []

    def _lookup_batch_job(self, entry: Entry) -> Found:
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


_WAITING = "sent, no answer yet: the server may still be creating it"


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
