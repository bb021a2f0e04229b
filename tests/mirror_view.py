"""What the mirror holds, read without the evidence rules of queries (for tests only).

``.offline()`` refuses a query the mirror has no evidence for (``NoEvidence``); tests of
write-through and of the mirror file look at the rows themselves, whatever the mirror knows.
"""

from __future__ import annotations

from typing import Any


def held(query: Any) -> list[Any]:
    """The mirror's rows of ``query`` as instances, in the query's order."""
    store = query._gateway.mirror.store
    return [query._model._from_row(row) for row in store.query(query._spec)]


def held_count(query: Any) -> int:
    """How many mirror rows match ``query``'s filters."""
    return int(query._gateway.mirror.store.count(query._spec))
