"""What the mirror must learn after the server applied a write.

The rows the server returned are stored; windows and counts of that resource stop being
trusted; resources the server changed as a side effect (events and transfer items of jobs) lose
their coverage; children a finished job promoted are re-read; and changes still queued for the
same objects are laid back on top, so the local view keeps showing them.
"""

from __future__ import annotations

from typing import Any

from ..cache.mirror import Mirror
from ..cache.outbox import Outbox
from ..remote import Remote
from ..resources import Resource
from ..spec import QuerySpec

Row = dict[str, Any]

SIDE_EFFECTS = {"Job": ("EventLog", "TransferItem"), "TransferItem": ("Job", "EventLog")}
"""Writes to a resource that change other resources on the server in ways we cannot replay."""


def apply_server_rows(
    remote: Remote, mirror: Mirror, outbox: Outbox, res: Resource, rows: list[Row]
) -> None:
    """Store ``rows`` (the server's answer to a write) and everything that follows from it."""
    with mirror.store.write():
        mirror.store.upsert(res.name, rows)
        mirror.coverage.forget_windows()
        for other in SIDE_EFFECTS.get(res.name, ()):
            mirror.coverage.invalidate(other)
        outbox.overlay(res.name, [r["id"] for r in rows])
    finished = [r["id"] for r in rows if res.name == "Job" and r.get("state") == "JOB_FINISHED"]
    if finished:
        # The server promotes AWAITING_PARENTS children of a finished job (balsam-api.md §4).
        spec = QuerySpec("Job").with_filters({"parent_id": finished})
        children = remote.select(res, spec)[0]
        with mirror.store.write():
            mirror.store.upsert("Job", children)
            outbox.overlay("Job", [r["id"] for r in children])
