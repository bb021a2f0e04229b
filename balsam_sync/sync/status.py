"""``client.status()``: what is queued, what died, when we last synced, and can we reach it.

Whether the token is good is the server's call: ``status`` asks it (unless told not to, or
offline) and never judges by this machine's clock. A token the server refuses, or a server that
cannot be reached, opens no mirror that does not exist yet, and a mirror that cannot be used is
reported, not raised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from ..cache import Mirror, MirrorMissing, Neighbour
from ..errors import BalsamSyncError, MirrorError, NotAuthenticated
from ..remote.rest import Remote
from ..remote.serverclock import SKEW_TOLERANCE
from ..resources import SITE
from ..spec import QuerySpec
from ..utc import now
from .daemon import PAUSED_KEY


@dataclass(frozen=True)
class SyncStatus:
    """A snapshot of one client's sync state.

    Attributes:
        pending: mutations queued and not yet acknowledged by the server (None: unknown, the
            queue cannot be read — ``mirror_error`` says why; never a 0 that was not counted).
        oldest_pending_age: seconds since the oldest of them was queued (None when empty).
        dead: mutations the server refused for good (see ``balsam-sync dead``; None: unknown).
        last_push / last_pull: when they last succeeded (None: never).
        last_error: the error of the last sync that failed (None once one succeeds).
        token_expiry: when the token says it stops working (None: unknown).
        server_reachable: whether the server just answered (None: not checked).
        mirror_path: where the mirror file is.
        token_accepted: whether the server accepted the token (None: not asked).
        offline: the client is offline (``BALSAM_SYNC_OFFLINE=1``): the server is not asked.
        mirror_error: why the mirror cannot be used, if it cannot.
        clock_skew: seconds this machine's clock is ahead of the server's (None: in step or
            unknown).
        elsewhere: other mirrors of this user in the same folder that hold queued changes.
        paused_for_auth: since when a daemon pauses sending because the server refused the
            token (None: no daemon is paused).
        pending_by_node: ``pending``, by the login node that queued each change (the queue is
            the user's, shared by every node: ``cache/journal.py``).
    """

    pending: int | None
    oldest_pending_age: float | None
    dead: int | None
    last_push: datetime | None
    last_pull: datetime | None
    last_error: str | None
    token_expiry: datetime | None
    server_reachable: bool | None
    mirror_path: str
    token_accepted: bool | None = None
    offline: bool = False
    mirror_error: str | None = None
    clock_skew: float | None = None
    elsewhere: tuple[Neighbour, ...] = field(default_factory=tuple)
    pending_by_node: dict[str, int] = field(default_factory=dict)
    paused_for_auth: datetime | None = None


def _when(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def _ask_server(remote: Remote) -> tuple[bool | None, bool | None]:
    """(reachable, token accepted), from one cheap request."""
    try:
        remote.count(SITE, QuerySpec(SITE.name))
        return True, True
    except NotAuthenticated:
        return True, False
    except BalsamSyncError:
        return False, None


def sync_status(
    mirror: Callable[[], Mirror],
    remote: Remote,
    *,
    mirror_file: Callable[[], Path],
    elsewhere: Callable[[], list[Neighbour]],
    offline: bool,
    ask_server: bool,
) -> SyncStatus:
    """Read the sync state from the mirror (opened by ``mirror()``) and the transport.

    Args:
        mirror: opens the mirror (only when there is a mirror file).
        remote: the server (asked only when ``ask_server``), and the transport's token expiry
            and clock estimate.
        mirror_file: where the mirror is (nothing is opened).
        elsewhere: other mirrors of this user that hold queued changes.
        offline: the client is offline (shown as such).
        ask_server: send one cheap request to see whether the server accepts the token.
    """
    reachable, accepted = _ask_server(remote) if ask_server else (None, None)
    pending: int | None = 0
    dead: int | None = 0
    oldest, logged, problem = None, {}, None
    by_node: dict[str, int] = {}
    path = ""
    try:
        path = str(mirror_file())
        if accepted or not ask_server or mirror_file().exists():
            opened = mirror()
            counts = opened.queue_counts()
            pending, dead = counts.pending + counts.in_flight, counts.dead
            by_node = counts.by_node
            oldest, logged = counts.oldest, opened.noted()
    except MirrorMissing:
        pass  # no mirror yet: nothing is queued
    except MirrorError as exc:
        pending = dead = None  # unknown: a count of 0 would tell the user nothing is queued
        problem = str(exc)
    skew = remote.transport.clock_offset
    return SyncStatus(
        pending=pending,
        oldest_pending_age=max((now() - oldest).total_seconds(), 0.0) if oldest else None,
        dead=dead,
        last_push=_when(logged.get("last_push")),
        last_pull=_when(logged.get("last_pull")),
        last_error=logged.get("last_error") or None,
        token_expiry=remote.transport.token_expiry,
        server_reachable=reachable,
        mirror_path=path,
        token_accepted=accepted,
        offline=offline,
        mirror_error=problem,
        clock_skew=-skew if skew is not None and abs(skew) > SKEW_TOLERANCE else None,
        elsewhere=tuple(elsewhere()) if path else (),
        paused_for_auth=_when(logged.get(PAUSED_KEY)),
        pending_by_node=by_node,
    )
