"""What the mirror must learn after the server applied a write: fetch first, then store.

The rows the server returned are stored; windows and counts of that resource stop being
trusted; resources the server changed as a side effect (events and transfer items of jobs) lose
their coverage; children a finished job promoted are re-read; and changes still queued for the
same objects are laid back on top, so the local view keeps showing them.

The re-read happens in ``followups`` (network, outside any transaction) and everything is
stored in ``store_server_rows`` (one transaction, no network), so another process writing the
mirror never waits on the server.
"""

from __future__ import annotations

import logging

from ..cache.mirror import Mirror
from ..errors import TransportError
from ..remote.rest import Remote
from ..resources import RESOURCES, Resource, Row
from ..spec import QuerySpec

log = logging.getLogger(__name__)


def followups(remote: Remote, res: Resource, rows: list[Row]) -> list[Row] | None:
    """Fetch rows the write changed on the server beyond ``rows`` (call outside transactions).

    The server promotes AWAITING_PARENTS children of a finished job (balsam-api.md §4).
    Returns None when they could not be read (the write itself did succeed).
    """
    finished = [r["id"] for r in rows if res.promotes_children and r.get("state") == "JOB_FINISHED"]
    if not finished:
        return []
    spec = QuerySpec("Job").with_filters({"parent_id": finished})
    try:
        return remote.select(RESOURCES["Job"], spec)[0]
    except TransportError as exc:
        log.info("children of finished jobs not re-read (%s): the next read asks the server", exc)
        return None


def store_server_rows(
    mirror: Mirror, res: Resource, rows: list[Row], children: list[Row] | None
) -> None:
    """Store ``rows`` (the server's answer to a write) and what ``followups`` found."""
    with mirror.store.write():
        mirror.accept(res.name, rows)
        mirror.coverage.forget_windows()
        for other in res.side_effects:
            mirror.coverage.invalidate(other)
        if children is None:
            mirror.coverage.invalidate("Job")
        elif children:
            mirror.accept("Job", children)
