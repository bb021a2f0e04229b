"""The sync daemon: push what is queued, pull what changed, again and again.

One daemon per mirror (a lock file); while the server is unreachable the pause between rounds
doubles up to ``max_backoff``, and each round starts with a short probe. SIGTERM or SIGINT lets
the batch in flight finish for a few seconds (``Transport.stop_grace``; its result is stored)
and then exits cleanly, within 5 s even on a link that never answers; a batch cut short, like
a kill -9, loses nothing, because every entry stays in the outbox until the server's answer
has been stored, and one that may have reached the server is settled first next time.
The daemon leaves its parts as it found them: its stop event and batch size apply to its own
rounds only. It is given its parts (``Client.daemon()`` wires them), not the client.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ..cache.lock import FileLock
from ..cache.mirror import Mirror
from ..errors import BalsamSyncError, NotAuthenticated
from ..remote.transport import Transport
from .cost import metered
from .pull import PullReport
from .replay import Replayer

log = logging.getLogger(__name__)


class DaemonAlreadyRunning(BalsamSyncError):
    """Another daemon already syncs this mirror."""


@dataclass
class RoundReport:
    """What one round did."""

    sent: int = 0
    dead: int = 0
    pulled: int = 0
    reachable: bool = True
    error: str | None = None


class SyncDaemon:
    """Keeps one mirror and its server converged.

    Args:
        mirror: opens (on first use) the mirror that is synced.
        replayer: the replayer of its outbox.
        transport: the transport whose requests a stop cuts short.
        puller: one pull of the mirror (the client's ``pull``).
        interval: seconds between rounds while the server answers.
        batch_size: most outbox entries sent per request (5000 at most).
        max_backoff: longest pause while the server is unreachable.
        pull: also pull after each push.
    """

    def __init__(
        self,
        mirror: Callable[[], Mirror],
        replayer: Callable[[], Replayer],
        transport: Transport,
        puller: Callable[[], PullReport],
        *,
        interval: float = 30.0,
        batch_size: int = 5000,
        max_backoff: float = 600.0,
        pull: bool = True,
    ) -> None:
        self.mirror, self.replayer, self.transport = mirror, replayer, transport
        self.puller = puller
        self.interval = interval
        self.max_backoff = max_backoff
        self.pull = pull
        self.batch_size = max(1, min(batch_size, 5000))
        self.stop = threading.Event()
        self.rounds = 0
        self.last_round: RoundReport | None = None

    @property
    def lock_path(self) -> Path:
        return self.mirror().path.with_suffix(".daemon.lock")

    def request_stop(self, signum: int = 0, frame: FrameType | None = None) -> None:
        """Finish the batch in flight, then stop (also the SIGTERM/SIGINT handler)."""
        log.info("stop requested (signal %s): finishing the batch in flight", signum)
        self.stop.set()

    def run(self, max_rounds: int | None = None) -> int:
        """Run rounds until stopped (or ``max_rounds``); return the process exit code."""
        lock = FileLock(self.lock_path)
        if not lock.acquire(0):
            raise DaemonAlreadyRunning(f"a daemon already syncs {self.mirror().path}")
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                previous[sig] = signal.signal(sig, self.request_stop)
        try:
            # A stop also cuts short requests in flight and the waits between retries.
            with self.transport.stopping(self.stop):
                self._loop(max_rounds)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            lock.release()
            log.info("daemon stopped after %d rounds", self.rounds)
        return 0

    def _loop(self, max_rounds: int | None) -> None:
        delay = self.interval
        log.info("daemon started for %s", self.mirror().path)
        while not self.stop.is_set():
            report = self.last_round = self.round()
            self.rounds += 1
            if max_rounds is not None and self.rounds >= max_rounds:
                break
            delay = (
                self.interval if report.reachable else min(max(delay, 1.0) * 2, self.max_backoff)
            )
            self.stop.wait(delay)

    def round(self) -> RoundReport:
        """One push (and pull); never raises for a network or server problem."""
        report = RoundReport()
        with metered(self.transport) as cost:
            self._round(report)
        log.info(
            "round %d: sent %d, dead %d, pulled %d; %s%s",
            self.rounds + 1,
            report.sent,
            report.dead,
            report.pulled,
            cost,
            f", error: {report.error}" if report.error else "",
        )
        return report

    def _round(self, report: RoundReport) -> None:
        try:
            pushed = self.replayer().push(batch_size=self.batch_size)
            report.sent, report.dead = pushed.sent, pushed.dead
            report.reachable = pushed.failed == 0
            report.error = pushed.error
            if pushed.paused_for_auth:
                log.error("the server refused the token: log in again (balsam-sync login)")
                report.reachable = False
            elif self.pull and report.reachable and not self.stop.is_set():
                pulled = self.puller()
                report.pulled = sum(pulled.fetched.values())
        except NotAuthenticated as exc:
            report.reachable, report.error = False, str(exc)
            log.error("%s", exc)
        except BalsamSyncError as exc:
            report.reachable, report.error = False, str(exc)
            log.warning("round failed: %s", exc)
