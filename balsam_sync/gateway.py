"""Route every read and write of the managers to the mirror, the outbox or the server.

Reads follow the query's policy; every row the server returns is written through to the
mirror in the same call, so the mirror always holds the server's latest word.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Any

from .freshness import USE_CLIENT_DEFAULT, Answer, PolicyArg, ReadPolicy
from .remote import Remote
from .resources import Resource
from .spec import QuerySpec

Row = dict[str, Any]


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Gateway:
    """The one object managers talk to."""

    def __init__(self, remote: Remote, default_policy: ReadPolicy) -> None:
        self.remote = remote
        self.default_policy = default_policy

    def _policy(self, policy: PolicyArg) -> ReadPolicy:
        return self.default_policy if policy is USE_CLIENT_DEFAULT else policy  # type: ignore[return-value]

    # -- reads ---------------------------------------------------------------------------------

    def fetch(self, res: Resource, spec: QuerySpec, policy: PolicyArg) -> Answer:
        """Return the rows of ``spec``."""
        self._policy(policy)
        now = utcnow()
        rows, count = self.remote.list(res, spec)
        return Answer(rows, count, "server", now)

    def count(self, res: Resource, spec: QuerySpec, policy: PolicyArg) -> Answer:
        """Return how many objects match ``spec`` (rows are not fetched)."""
        self._policy(policy)
        now = utcnow()
        return Answer([], self.remote.count(res, spec), "server", now)

    def stream(
        self, res: Resource, spec: QuerySpec, policy: PolicyArg, chunk_size: int
    ) -> Iterator[Row]:
        """Yield the rows of ``spec`` without holding them all."""
        for page in self.remote.pages(res, spec, chunk_size):
            yield from page

    # -- writes --------------------------------------------------------------------------------

    def create(self, res: Resource, payloads: list[Row]) -> list[Row]:
        return self.remote.create(res, payloads)

    def update(self, res: Resource, obj_id: int, changes: Row) -> Row:
        return self.remote.update(res, obj_id, changes)

    def bulk_update(self, res: Resource, items: list[tuple[int, Row]]) -> list[Row]:
        return self.remote.bulk_update(res, items)

    def query_update(self, res: Resource, spec: QuerySpec, changes: Row) -> int:
        return len(self.remote.query_update(res, spec, changes))

    def delete(self, res: Resource, obj_id: int) -> None:
        self.remote.delete(res, obj_id)

    def query_delete(self, res: Resource, spec: QuerySpec) -> int:
        deleted, _kept = self.remote.query_delete(res, spec)
        return len(deleted)
