"""A listener that accepts nothing: a connect to it is never answered, as to a host that is gone.

A listening socket's kernel completes a TCP handshake by itself while the socket's queue has
room, even if the program never calls ``accept()``. To make a connect hang, as it does to a
host that is down or behind a firewall that drops packets, the queue is shrunk to its minimum
and filled with a connection of our own: the kernel then drops every new SYN, and the client's
connect waits (retrying) until its timeout. Undone, the queue grows back and the connects
retried after that are accepted.
"""

from __future__ import annotations

import contextlib
import socket

BACKLOG = 128
_FILLERS = 2  # the kernel queues up to backlog + 1 connections: fill it whatever its rule


class Stall:
    """Stops a listening socket from answering connects, until ``end``."""

    def __init__(self) -> None:
        self._fillers: list[socket.socket] = []

    @property
    def active(self) -> bool:
        return bool(self._fillers)

    def begin(self, listener: socket.socket) -> None:
        """Shrink ``listener``'s queue and fill it (its owner must stop calling accept())."""
        if self._fillers:
            return
        listener.listen(0)
        address = listener.getsockname()
        for _ in range(_FILLERS):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            with contextlib.suppress(BlockingIOError, OSError):
                filler.connect(address)  # completes at once while there is room
            self._fillers.append(filler)

    def end(self, listener: socket.socket | None) -> None:
        """Let ``listener`` answer connects again; the fillers go away."""
        if listener is not None:
            with contextlib.suppress(OSError):
                listener.listen(BACKLOG)
        for filler in self._fillers:
            filler.close()
        self._fillers.clear()
