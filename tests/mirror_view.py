"""What the mirror holds, read without the evidence rules of queries (for tests only).

``.offline()`` refuses a query the mirror has no evidence for (``NoEvidence``); tests of
write-through and of the mirror file look at the rows themselves, whatever the mirror knows.
"""

from __future__ import annotations

import sqlite3
from typing import Any


def held(query: Any) -> list[Any]:
    """The mirror's rows of ``query`` as instances, in the query's order."""
    mirror = query._gateway.mirror
    return [query._model._from_row(row) for row in mirror.dicts(query._spec)]


def held_count(query: Any) -> int:
    """How many mirror rows match ``query``'s filters."""
    return int(query._gateway.mirror.count(query._spec))


def sql(client: Any) -> sqlite3.Connection:
    """The mirror's own database connection, for tests that look at (or damage) its tables."""
    conn: sqlite3.Connection = client.mirror._store.conn
    return conn
