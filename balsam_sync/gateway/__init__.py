"""Route every read and write of the managers to the mirror or the server.

Reads follow the query's policy (``freshness.py``, ``reads.py``); writes go to the mirror and
the outbox, then to the server (``writes.py``); both share ``core.py``.
"""

from __future__ import annotations

from .core import DEFAULT_MAX_AGE
from .reads import Reads
from .writes import Writes
from .writing import WriteResult

__all__ = ["DEFAULT_MAX_AGE", "Gateway", "WriteResult"]


class Gateway(Reads, Writes):
    """The one object managers talk to (its arguments: ``core.GatewayCore``)."""
