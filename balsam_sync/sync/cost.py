"""What syncing costs the server: requests, reply bytes and server time, counted from replies.

Server time is the sum, over requests, of the time from sending each one to its reply's head:
what the server spent on it, plus the round trip. Replies to probes are not counted.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..remote.transport import Reply, Transport


@dataclass(eq=False)
class Cost:
    """Requests answered, reply bytes and server seconds (safe to add to from threads)."""

    requests: int = 0
    bytes: int = 0
    seconds: float = 0.0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, reply: Reply) -> None:
        with self._lock:
            self.requests += 1
            self.bytes += reply.size
            self.seconds += reply.seconds

    def __str__(self) -> str:
        return f"{self.requests} requests, {self.bytes} bytes, {self.seconds:.2f} s server time"


@contextmanager
def metered(transport: Transport) -> Iterator[Cost]:
    """Count the replies ``transport`` receives inside the block (from any thread)."""
    cost = Cost()
    transport.on_response.append(cost.add)
    try:
        yield cost
    finally:
        transport.on_response.remove(cost.add)
