"""What reads and writes share: the remote, the mirror (opened on first use), the replayer
of its outbox, the clock and the read policy."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime

from ..cache.lock import FileLock
from ..cache.mirror import Mirror
from ..freshness import PolicyArg, ReadPolicy, choose
from ..remote.rest import Remote
from ..sync.replay import Replayer

log = logging.getLogger(__name__)

DEFAULT_MAX_AGE = 30.0
"""Seconds a full sync stays fresh enough to answer queries under the AUTO policy: a loop that
polls with default-policy queries sees a change the server committed after the pull within
this time (a pull's ``as_of`` is when it started)."""


class GatewayCore:
    """The parts of the gateway (see ``balsam_sync.gateway``).

    Args:
        remote: the REST API.
        mirror: returns the open mirror (opened lazily, on first use).
        default_policy: the policy of queries that do not choose one.
        max_age: seconds a full sync stays fresh under AUTO.
        clock: the time now (default: the server's clock, as the transport estimates it).
    """

    def __init__(
        self,
        remote: Remote,
        mirror: Callable[[], Mirror],
        default_policy: ReadPolicy,
        max_age: float = DEFAULT_MAX_AGE,
        offline: bool = False,
        clock: Callable[[], datetime] | None = None,
        max_request_seconds: float = 120.0,
    ) -> None:
        self.remote = remote
        self.clock = clock or remote.transport.server_now
        self.offline = offline
        self.max_request_seconds = max_request_seconds
        self._replayer: Replayer | None = None
        self._mirror_factory = mirror
        self._mirror: Mirror | None = None
        self.default_policy = default_policy
        self.max_age = max_age
        self._warned_offline = False

    @property
    def mirror(self) -> Mirror:
        if self._mirror is None:
            self._mirror = self._mirror_factory()
        return self._mirror

    def close_mirror(self) -> None:
        """Close the mirror (and forget its replayer); the next use opens the file again."""
        if self._mirror is not None:
            self._mirror.close()
            self._mirror = None
        self._replayer = None

    def replayer(self) -> Replayer:
        """The replayer of this mirror's outbox (built on first use)."""
        if self._replayer is None:
            mirror = self.mirror
            lock = FileLock(mirror.lock_path)
            self._replayer = Replayer(
                self.remote,
                mirror,
                mirror.outbox,
                lock,
                max_request_seconds=self.max_request_seconds,
            )
        return self._replayer

    def _policy(self, policy: PolicyArg, latest: bool = False) -> ReadPolicy:
        """The policy a read follows (``latest``: a read that names objects, see freshness)."""
        return choose(self.default_policy, policy, offline=self.offline, latest=latest)
