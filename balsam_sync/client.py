"""The composition root: one Client wires settings, transport, mirror and managers together.

``client.Job`` (and ``.Site``, ``.App``, ...) are subclasses bound to that client, so several
servers can be used in one process. The unbound classes in ``balsam_sync.api`` use a default
client that is built on first use, never at import.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
import threading
from pathlib import Path
from typing import Any, TypeVar

from .cache import Entry, EntryState, Identity, Mirror, Neighbour, locate, neighbours, open_mirror
from .compat.appdef import ApplicationDefinition
from .compat.host import set_default_client_factory
from .compat.session import Session
from .config import ENV_HOME, Settings, load_settings
from .errors import BalsamSyncError, ConfigError, OfflineError, UsageError
from .freshness import AUTO, OFFLINE, ReadPolicy
from .gateway import Gateway
from .orm.dead import edited_payload
from .orm.job import Job, set_app_loader
from .orm.manager import Manager, set_manager_resolver
from .orm.models import Model
from .orm.records import App, BatchJob, EventLog, Site, TransferItem
from .remote.jwt import user_of
from .remote.link import Link
from .remote.outcomes import Backoff, RetryPolicy
from .remote.rest import Remote
from .remote.serverclock import Clock
from .remote.transport import Transport
from .sync.cost import metered
from .sync.daemon import SyncDaemon
from .sync.pull import Progress, Puller, PullOptions, PullReport
from .sync.push import PushReport
from .sync.status import SyncStatus, sync_status
from .utc import now_text

M = TypeVar("M", bound=Model)
log = logging.getLogger(__name__)


class Client:
    """A connection to one Balsam server as one user, with its mirror.

    Attributes:
        Site, App, Job, BatchJob, TransferItem, EventLog: model classes bound to this client.
    """

    def __init__(
        self, settings: Settings, *, retry: RetryPolicy | None = None, clock: Clock | None = None
    ) -> None:
        self.settings = settings
        self.transport = Transport(
            settings.api_root,
            settings.token,
            retry=retry or RetryPolicy(attempts=max(1, settings.retry_count)),
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            verify=settings.verify_tls,
            clock=clock,
            link=Link(Backoff(initial=settings.retry_backoff)),
            write_wait=settings.write_wait,
        )
        self.remote = Remote(self.transport)
        self.gateway = Gateway(
            self.remote,
            self._open_mirror,
            OFFLINE if settings.offline else AUTO,
            offline=settings.offline,
            max_request_seconds=settings.max_request_seconds,
        )
        self._managers: dict[type[Model], Manager[Any]] = {}
        self._lock = threading.Lock()
        self.Site = self._bind(Site)
        self.App = self._bind(App)
        self.Job = self._bind(Job)
        self.BatchJob = self._bind(BatchJob)
        self.TransferItem = self._bind(TransferItem)
        self.EventLog = self._bind(EventLog)
        self.Session: type[Session] = type(
            "Session", (Session,), {"_client": self, "__module__": Session.__module__}
        )

    def __repr__(self) -> str:
        return f"<balsam_sync.Client {self.settings.api_root}>"

    def _identity(self) -> Identity:
        token = self.settings.token
        user = user_of(token) if token else None
        if user is None and token:
            # Not a JWT: the server will refuse it; keep such a mirror apart from real users'.
            user = "token-" + hashlib.sha256(token.encode()).hexdigest()[:16]
        if user is None:
            raise ConfigError(
                "cannot tell whose mirror to open: no readable token "
                "(log in with `balsam-sync login` or set BALSAM_SYNC_TOKEN)"
            )
        return Identity(self.settings.api_root, user)

    @property
    def _explicit_home(self) -> bool:
        return self.settings.home is not None or bool(os.environ.get(ENV_HOME))

    def _open_mirror(self) -> Mirror:
        home, explicit = self.settings.mirror_home, self._explicit_home
        mirror = open_mirror(
            home,
            self._identity(),
            explicit_home=explicit,
            clock=self.transport.server_now,
            queue_home=self.settings.queue_folder,
            node=self.settings.node_name,
        )
        # Processes sharing the mirror share what they know of the link (see link.py).
        self.transport.link.share(mirror.companion(".link.json"))
        return mirror

    @property
    def mirror_file(self) -> Path:
        """Where this client's mirror is (or will be) kept; nothing is opened or created."""
        return locate(self.settings.mirror_home, self._identity(), self._explicit_home)

    def other_mirrors(self) -> list[Neighbour]:
        """Other mirrors of this user in the same folder that hold queued changes."""
        path = self.mirror_file
        return neighbours(path.parent, path, self._identity().user)

    @property
    def mirror(self) -> Mirror:
        """The local mirror of this user on this server (opened on first use)."""
        return self.gateway.mirror

    def _bind(self, model: type[M]) -> type[M]:
        bound = type(
            model.__name__,
            (model,),
            {"__slots__": (), "__module__": model.__module__, "__qualname__": model.__qualname__},
        )
        bound._manager = model._manager_class(bound, self.gateway)  # type: ignore[attr-defined]
        return bound

    def manager(self, model: type[M]) -> Manager[M]:
        """Return this client's manager for an unbound model class."""
        with self._lock:
            found = self._managers.get(model)
            if found is None:
                found = self._managers[model] = model._manager_class(model, self.gateway)
            return found

    @property
    def default_policy(self) -> ReadPolicy:
        """The read policy used by queries that do not choose one."""
        return self.gateway.default_policy

    @default_policy.setter
    def default_policy(self, policy: ReadPolicy) -> None:
        self.gateway.default_policy = policy

    def _refuse_offline(self, what: str) -> None:
        if self.settings.offline:
            raise OfflineError(
                f"{what} needs the server, but the client is offline "
                "(BALSAM_SYNC_OFFLINE=1): nothing was sent"
            )

    def pull(self, *, full: bool = False, progress: Progress | None = None) -> PullReport:
        """Bring the mirror up to the server's state (see ``balsam_sync.sync.pull``).

        Raises:
            OfflineError: the client is offline (``BALSAM_SYNC_OFFLINE=1``).
        """
        self._refuse_offline("pull()")
        mirror = self.mirror
        try:
            self.transport.ensure_reachable()  # tried now, even while the link backs off
            options = PullOptions(
                max_request_seconds=self.settings.max_request_seconds,
                reconcile_seconds=self.settings.reconcile_seconds,
                page_rows=self.settings.page_rows,
            )
            puller = Puller(self.remote, mirror, progress, options)
            report = puller.pull(full=full)
        except BalsamSyncError as exc:
            self._note_error(f"pull failed: {exc}")
            raise
        mirror.note("last_pull", now_text())
        self._note_error(None)
        return report

    def push(self, *, lock_wait: float = 30.0) -> PushReport:
        """Send what is queued now; returns what was sent, what failed and what died.

        Creates whose earlier POST may still be running on the server are waited for (at most
        ``max_request_seconds``) before anything else is sent (see ``balsam_sync.remote.outcomes``).

        Raises:
            OfflineError: the client is offline (``BALSAM_SYNC_OFFLINE=1``).
        """
        self._refuse_offline("push()")
        try:
            with metered(self.transport) as cost:
                report = self.gateway.replayer().push(lock_wait=lock_wait)
            report.requests, report.bytes, report.seconds = cost.requests, cost.bytes, cost.seconds
        except BalsamSyncError as exc:
            self._note_error(f"push failed: {exc}")
            raise
        if not report.skipped:
            self._note_error(report.error)
        return report

    def _note_error(self, error: str | None) -> None:
        """Record the last sync error for ``status()``; a sync that succeeds clears it."""
        with contextlib.suppress(BalsamSyncError):  # a failing mirror: its error is raised
            self.mirror.note("last_error", error or "")

    def status(self, *, check_server: bool = True) -> SyncStatus:
        """A snapshot of the outbox, the last push/pull, the token and the server's reachability."""
        if check_server and not self.settings.offline:
            with contextlib.suppress(BalsamSyncError):  # a failed probe: shown as unreachable
                self.transport.ensure_reachable()
        offline = self.settings.offline
        return sync_status(
            lambda: self.mirror,
            self.remote,
            mirror_file=lambda: self.mirror_file,
            elsewhere=self.other_mirrors,
            offline=offline,
            ask_server=check_server and not offline and bool(self.settings.token),
        )

    def reload_token(self) -> bool:
        """Take up a new token from the environment or client.yml (``balsam-sync login`` and
        upstream's ``balsam login`` write it there); True when the token changed.

        Only a token of the same user is taken: this client's mirror and its queue are that
        user's. A token of another user is left alone, with a warning.
        """
        try:
            fresh = load_settings(self.settings.api_root, home=self.settings.home).token
        except ConfigError as exc:
            log.warning("cannot look for a new token: %s", exc)
            return False
        if not fresh or fresh == self.settings.token:
            return False
        mine, theirs = self._identity().user, user_of(fresh)
        if theirs != mine:
            log.warning(
                "a new token was found, but it is another user's (%s, not %s): it is not "
                "used for this mirror",
                theirs,
                mine,
            )
            return False
        self.transport.set_token(fresh)
        self.settings = dataclasses.replace(self.settings, token=fresh)
        return True

    def daemon(self, **options: Any) -> SyncDaemon:
        """A sync daemon for this client's mirror (options: see ``SyncDaemon``)."""
        return SyncDaemon(
            lambda: self.mirror,
            self.gateway.replayer,
            self.transport,
            self.pull,
            reload_token=self.reload_token,
            **options,
        )

    def dead_letters(self) -> list[Entry]:
        """Mutations the server refused for good, with its reasons (oldest first)."""
        return self.mirror.queued([EntryState.DEAD])

    def retry_dead(self, seq: int) -> bool:
        """Queue a dead letter again (its local change is re-applied); False if unknown."""
        return self.gateway.revive(seq)

    def edit_dead(self, seq: int, changes: dict[str, Any], unset: list[str]) -> Entry:
        """Correct a dead letter's payload (validated like any write); it stays dead until
        ``retry_dead``.

        Raises:
            UsageError: no such dead letter, a delete (no payload), or an invalid payload.
        """
        entry = self.mirror.entry(seq)
        if entry is None or entry.state is not EntryState.DEAD:
            raise UsageError(f"no dead letter with seq {seq} (see `balsam-sync dead list`)")
        payload = edited_payload(entry, getattr(self, entry.resource), changes, unset)
        self.mirror.edit(seq, payload)
        return dataclasses.replace(entry, payload=payload)

    def discard_dead(self, seq: int) -> bool:
        """Drop a dead letter for good (the mirror already holds the server's truth)."""
        return self.mirror.discard(seq)

    def drop_mirror(self) -> None:
        """Close the mirror; the next use opens (or creates) the file again."""
        self.gateway.close_mirror()

    def close(self) -> None:
        """Release connections and close the mirror."""
        self.transport.close()
        self.drop_mirror()


def connect(
    api_root: str | None = None,
    token: str | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    retry: RetryPolicy | None = None,
    clock: Clock | None = None,
    **settings: Any,
) -> Client:
    """Return a client for one server; arguments override the environment and client.yml.

    ``clock`` replaces this machine's clock (tests of a skewed clock).
    """
    return Client(load_settings(api_root, token, home, **settings), retry=retry, clock=clock)


_default: Client | None = None
_default_lock = threading.Lock()


def default_client() -> Client:
    """Return the process-wide client used by ``balsam_sync.api``, building it on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = connect()
        return _default


def set_default_client(client: Client | None) -> None:
    """Replace the client used by ``balsam_sync.api`` (None: rebuild from settings on next use)."""
    global _default
    with _default_lock:
        _default = client


set_manager_resolver(lambda model: default_client().manager(model))
set_default_client_factory(default_client)
set_app_loader(ApplicationDefinition.load_by_id)
