"""The sync daemon: push what is queued, pull what changed, again and again.

One daemon per mirror (a lock file); while the server is unreachable the pause between rounds
doubles up to ``max_backoff``, and each round starts with a short probe. SIGTERM or SIGINT lets
the batch in flight finish for a few seconds (``Transport.stop_grace``; its result is stored)
and then exits cleanly, within 5 s even on a link that never answers; a batch cut short, like
a kill -9, loses nothing, because every entry stays in the outbox until the server's answer
has been stored, and one that may have reached the server is settled first next time.
The daemon leaves its parts as it found them: its stop event and batch size apply to its own
rounds only. It is given its parts (``Client.daemon()`` wires them), not the client.

A token the server refuses (401) pauses sending: the refused token is not sent again, the log
and ``balsam-sync status`` say so, and every round (as soon as client.yml changes, also when
not paused) the daemon looks for a new token in the environment and client.yml, which
``balsam-sync login`` writes, and resumes with it, without a restart.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

from ..cache import FileLock, Mirror
from ..config import ENV_TOKEN, client_yml_path
from ..errors import BalsamSyncError, NotAuthenticated, ServerUnreachable
from ..remote.transport import Transport
from ..utc import now_text
from .cost import metered
from .pull import PullReport
from .push import Replayer

log = logging.getLogger(__name__)


class DaemonAlreadyRunning(BalsamSyncError):
    """Another daemon already syncs this mirror."""


PAUSED_KEY = "paused_for_auth"
"""The sync log's entry (see ``Outbox.log``): when the daemon paused for a refused token."""


@dataclass
class RoundReport:
    """What one round did.

    Attributes:
        token_refused: the server refused the token: sending is paused.
        unreachable: the server could not be reached.
    """

    sent: int = 0
    dead: int = 0
    pulled: int = 0
    reachable: bool = True
    error: str | None = None
    token_refused: bool = False
    unreachable: bool = False


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
        reload_token: takes up a new token from the environment or client.yml; True when the
            token changed (the client's ``reload_token``; None: the token never changes).

    Attributes:
        paused: the server refused the token; nothing is sent until a new one is found.
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
        reload_token: Callable[[], bool] | None = None,
    ) -> None:
        self.mirror, self.replayer, self.transport = mirror, replayer, transport
        self.puller = puller
        self.reload_token = reload_token
        self.paused = False
        self._settings_seen: tuple[int, int, int] | None = None
        self.interval = interval
        self.max_backoff = max_backoff
        self.pull = pull
        self.batch_size = max(1, min(batch_size, 5000))
        self.stop = threading.Event()
        self.rounds = 0
        self.last_round: RoundReport | None = None

    @property
    def lock_path(self) -> Path:
        return self.mirror().companion(".daemon.lock")

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
            self._settings_seen = _settings_key()
            self._note_pause(False)  # a pause of an earlier daemon (killed) is over
            # A stop also cuts short requests in flight and the waits between retries.
            with self.transport.stopping(self.stop):
                self._loop(max_rounds)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.paused:
                self._note_pause(False)  # no daemon waits any more
            lock.release()
            log.info("daemon stopped after %d rounds", self.rounds)
        return 0

    def _loop(self, max_rounds: int | None) -> None:
        delay = self.interval
        log.info("daemon started for %s", self.mirror().path)
        while not self.stop.is_set():
            self._look_for_token()
            report = self.last_round = self._paused_round() if self.paused else self.round()
            self.rounds += 1
            if max_rounds is not None and self.rounds >= max_rounds:
                break
            backoff = min(max(delay, 1.0) * 2, self.max_backoff)
            delay = self.interval if report.reachable or self.paused else backoff
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
                self._pause(report)
            elif self.pull and report.reachable and not self.stop.is_set():
                pulled = self.puller()
                report.pulled = sum(pulled.fetched.values())
        except NotAuthenticated as exc:
            report.error = str(exc)
            self._pause(report)
        except ServerUnreachable as exc:
            report.reachable, report.error, report.unreachable = False, str(exc), True
            log.warning("round failed: %s", exc)
        except BalsamSyncError as exc:
            report.reachable, report.error = False, str(exc)
            log.warning("round failed: %s", exc)
        if report.error and not report.token_refused and self.transport.link.down():
            report.unreachable = True  # the push met it (and kept its changes queued)

    # -- a refused token -----------------------------------------------------------------------

    def _pause(self, report: RoundReport) -> None:
        """Stop sending until a new token is found (the refused one is not sent again)."""
        report.reachable, report.token_refused = False, True
        if self.paused:
            return
        self.paused = True
        log.error(
            "the server refused the token: sending is paused until a new one is found "
            "(log in again: `balsam-sync login`); the daemon looks for it every round"
        )
        if os.environ.get(ENV_TOKEN):
            log.error(
                "the token comes from %s, which a running daemon cannot see change: "
                "restart it with a new token",
                ENV_TOKEN,
            )
        self._note_pause(True)

    def _paused_round(self) -> RoundReport:
        """A round while paused: nothing is sent."""
        log.info("round %d: paused, the server refused the token", self.rounds + 1)
        return RoundReport(
            reachable=False,
            token_refused=True,
            error="paused: the server refused the token (log in again: `balsam-sync login`)",
        )

    def _look_for_token(self) -> None:
        """Take up a new token: every round while paused, otherwise when client.yml changed."""
        if self.reload_token is None:
            return
        seen = _settings_key()
        if not self.paused and seen == self._settings_seen:
            return
        self._settings_seen = seen
        if not self.reload_token():
            return
        if self.paused:
            log.info("a new token was found: resuming (the queued changes are sent now)")
            self.paused = False
            self._note_pause(False)
        else:
            log.info("a new token was found in the environment or client.yml: using it")

    def _note_pause(self, paused: bool) -> None:
        """Record the pause in the mirror's sync log, for ``balsam-sync status``."""
        try:
            self.mirror().note(PAUSED_KEY, now_text() if paused else "")
        except BalsamSyncError as exc:  # the pause itself is logged: status only misses it
            log.warning("cannot record the pause in the mirror: %s", exc)


def _settings_key() -> tuple[int, int, int] | None:
    """What tells a changed client.yml: inode, size, modification time (None: no file)."""
    try:
        st = os.stat(client_yml_path())
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
