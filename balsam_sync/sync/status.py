"""``client.status()``: what is queued, what died, when we last synced, and can we reach it."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ..errors import BalsamSyncError, NotAuthenticated
from ..spec import QuerySpec

if TYPE_CHECKING:
    from ..client import Client


@dataclass(frozen=True)
class SyncStatus:
    """A snapshot of one client's sync state.

    Attributes:
        pending: mutations queued and not yet acknowledged by the server.
        oldest_pending_age: seconds since the oldest of them was queued (None when empty).
        dead: mutations the server refused for good (see ``balsam-sync dead``).
        last_push / last_pull: when they last succeeded (None: never).
        last_error: the last sync error, as text.
        token_expiry: when the token stops working (None: unknown).
        server_reachable: whether the server just answered (None: not checked).
        token_accepted: whether it accepted the token (None: not checked or unreachable).
        mirror_path: where the mirror file is.
    """

    pending: int
    oldest_pending_age: float | None
    dead: int
    last_push: datetime | None
    last_pull: datetime | None
    last_error: str | None
    token_expiry: datetime | None
    server_reachable: bool | None
    mirror_path: str
    token_accepted: bool | None = None


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def sync_status(client: Client, *, check_server: bool = True) -> SyncStatus:
    """Read the status of ``client`` from its mirror (and ask the server when told to)."""
    mirror = client.mirror
    stats = mirror.outbox.stats()
    logged = mirror.outbox.read_log()
    counts = stats["counts"]
    oldest = _when(stats["oldest"])
    now = datetime.now(timezone.utc)
    reachable: bool | None = None
    accepted: bool | None = None
    if check_server and not client.settings.offline:
        try:
            client.remote.count(client.Site._resource, QuerySpec("Site"))
            reachable = accepted = True
        except NotAuthenticated:
            reachable, accepted = True, False
        except BalsamSyncError:
            reachable = False
    return SyncStatus(
        pending=counts.get("pending", 0) + counts.get("in_flight", 0),
        oldest_pending_age=(now - oldest).total_seconds() if oldest else None,
        dead=counts.get("dead", 0),
        last_push=_when(logged.get("last_push")),
        last_pull=_when(logged.get("last_pull")),
        last_error=logged.get("last_error"),
        token_expiry=client.transport.token_expiry,
        server_reachable=reachable,
        mirror_path=str(mirror.path),
        token_accepted=accepted,
    )
