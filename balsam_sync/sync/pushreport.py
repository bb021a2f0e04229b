"""What one push of the outbox did, as the caller, ``status`` and the daemon see it."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import HTTPStatusError


@dataclass
class PushReport:
    """What one push did.

    Attributes:
        sent: entries the server acknowledged.
        failed: entries tried without a definite answer (still queued).
        dead: entries moved to the dead letters by this push.
        remaining: entries still queued afterwards.
        waiting: in-flight creates the server may still be running (settled by a later push).
        paused_for_auth: the token was refused: nothing more is sent until a new login.
        skipped: another process holds the replay lock (it will send our entries).
        error: the last error seen, as text.
        rejected: entries of the caller that the server refused (raised to the caller).
        requests, bytes, seconds: what the push cost: requests answered, reply bytes, and
            server time (sync/cost.py); counted by ``Client.push``.
    """

    sent: int = 0
    failed: int = 0
    dead: int = 0
    remaining: int = 0
    waiting: int = 0
    paused_for_auth: bool = False
    skipped: bool = False
    error: str | None = None
    rejected: dict[int, HTTPStatusError] = field(default_factory=dict)
    requests: int = 0
    bytes: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        text = f"sent {self.sent}, failed {self.failed}, dead {self.dead}, queued {self.remaining}"
        if self.waiting:
            text += f" ({self.waiting} sent, awaiting the server's outcome)"
        if self.paused_for_auth:
            text += " (paused: log in again)"
        return text + (f"; last error: {self.error}" if self.error else "")
