"""The composition root: one Client wires settings, transport, mirror and managers together.

``client.Job`` (and ``.Site``, ``.App``, ...) are subclasses bound to that client, so several
servers can be used in one process. The unbound classes in ``balsam_sync.api`` use a default
client that is built on first use, never at import.
"""

from __future__ import annotations

import hashlib
import os
import threading
from typing import Any, TypeVar

from .cache.mirror import Identity, Mirror, open_mirror
from .cache.outbox import Entry, EntryState, now_text
from .config import ENV_HOME, Settings, load_settings
from .errors import ConfigError
from .freshness import AUTO, OFFLINE, ReadPolicy
from .gateway import Gateway
from .job import Job
from .manager import Manager
from .models import Model, set_manager_resolver
from .objects import App, BatchJob, EventLog, Site, TransferItem
from .remote import Remote
from .retry import RetryPolicy
from .sync.pull import Progress, Puller, PullOptions, PullReport
from .sync.replay import PushReport
from .sync.status import SyncStatus, sync_status
from .token import user_of
from .transport import Transport

M = TypeVar("M", bound=Model)


class Client:
    """A connection to one Balsam server as one user, with its mirror.

    Attributes:
        Site, App, Job, BatchJob, TransferItem, EventLog: model classes bound to this client.
    """

    def __init__(self, settings: Settings, *, retry: RetryPolicy | None = None) -> None:
        self.settings = settings
        self.transport = Transport(
            settings.api_root,
            settings.token,
            retry=retry or RetryPolicy(attempts=max(1, settings.retry_count)),
            connect_timeout=settings.connect_timeout,
            read_timeout=settings.read_timeout,
            verify=settings.verify_tls,
        )
        self.remote = Remote(self.transport)
        self.gateway = Gateway(
            self.remote,
            self._open_mirror,
            OFFLINE if settings.offline else AUTO,
            offline=settings.offline,
        )
        self._managers: dict[type[Model], Manager[Any]] = {}
        self._lock = threading.Lock()
        self.Site = self._bind(Site)
        self.App = self._bind(App)
        self.Job = self._bind(Job)
        self.BatchJob = self._bind(BatchJob)
        self.TransferItem = self._bind(TransferItem)
        self.EventLog = self._bind(EventLog)

    def __repr__(self) -> str:
        return f"<balsam_sync.Client {self.settings.api_root}>"

    def _open_mirror(self) -> Mirror:
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
        explicit = self.settings.home is not None or bool(os.environ.get(ENV_HOME))
        identity = Identity(self.settings.api_root, user)
        return open_mirror(self.settings.mirror_home, identity, explicit_home=explicit)

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
        bound._manager = Manager(bound, self.gateway)  # type: ignore[attr-defined]
        return bound

    def manager(self, model: type[M]) -> Manager[M]:
        """Return this client's manager for an unbound model class."""
        with self._lock:
            found = self._managers.get(model)
            if found is None:
                found = self._managers[model] = Manager(model, self.gateway)
            return found

    @property
    def default_policy(self) -> ReadPolicy:
        """The read policy used by queries that do not choose one."""
        return self.gateway.default_policy

    @default_policy.setter
    def default_policy(self, policy: ReadPolicy) -> None:
        self.gateway.default_policy = policy

    def pull(self, *, full: bool = False, progress: Progress | None = None) -> PullReport:
        """Bring the mirror up to the server's state (see ``balsam_sync.sync.pull``)."""
        options = PullOptions(
            max_request_seconds=self.settings.max_request_seconds,
            reconcile_seconds=self.settings.reconcile_seconds,
            history=self.settings.history_per_pull,
        )
        report = Puller(self.remote, self.mirror, progress, options).pull(full=full)
        self.mirror.outbox.log("last_pull", now_text())
        return report

    def push(self, *, lock_wait: float = 30.0) -> PushReport:
        """Send what is queued now; returns what was sent, what failed and what died."""
        return self.gateway.replayer().push(lock_wait=lock_wait)

    def status(self, *, check_server: bool = True) -> SyncStatus:
        """A snapshot of the outbox, the last push/pull, the token and the server's reachability."""
        return sync_status(self, check_server=check_server)

    def dead_letters(self) -> list[Entry]:
        """Mutations the server refused for good, with its reasons (oldest first)."""
        return self.mirror.outbox.entries([EntryState.DEAD])

    def retry_dead(self, seq: int) -> bool:
        """Queue a dead letter again (its local change is re-applied); False if unknown."""
        return self.gateway.revive(seq)

    def discard_dead(self, seq: int) -> bool:
        """Drop a dead letter for good (the mirror already holds the server's truth)."""
        entry = self.mirror.outbox.get(seq)
        if entry is None or entry.state is not EntryState.DEAD:
            return False
        return self.mirror.outbox.forget(seq)

    def close(self) -> None:
        """Release connections and close the mirror."""
        self.transport.close()
        if self.gateway._mirror is not None:
            self.gateway._mirror.close()
            self.gateway._mirror = None


def connect(
    api_root: str | None = None,
    token: str | None = None,
    *,
    home: str | os.PathLike[str] | None = None,
    retry: RetryPolicy | None = None,
    **settings: Any,
) -> Client:
    """Return a client for one server; arguments override the environment and client.yml."""
    return Client(load_settings(api_root, token, home, **settings), retry=retry)


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
