"""Lazy, immutable queries: ``filter``, ``order_by`` and slices build specs; evaluation fetches.

Every builder returns a clone that never shares the result cache. Rows are fetched in exactly
one place (``_fetch_all``); iteration, ``len``, ``bool`` and indexing reuse them. Each evaluated
query records where its answer came from (``source``) and how old it is (``as_of``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

from ..errors import SlicedQueryError, UsageError, UsageTypeError
from ..freshness import (
    OFFLINE,
    ONLINE,
    USE_CLIENT_DEFAULT,
    Answer,
    PolicyArg,
    Source,
    fresh,
)
from ..spec import QuerySpec
from .changes import query_delete, query_update, require_bulk

if TYPE_CHECKING:
    from ..gateway import Gateway
    from .models import Model

M = TypeVar("M", bound="Model")


class Query(Generic[M]):
    """A lazy query over one resource (see the module docstring).

    It owns its backend: the model class it builds, and the gateway that answers it.
    """

    def __init__(
        self,
        model: type[M],
        gateway: Gateway,
        spec: QuerySpec,
        policy: PolicyArg = USE_CLIENT_DEFAULT,
        explicit_all: bool = False,
    ) -> None:
        self._model = model
        self._gateway = gateway
        self._spec = spec
        self._policy = policy
        self._explicit_all = explicit_all
        self._result: list[M] | None = None
        self._answer: Answer | None = None
        self._count: int | None = None

    # -- building ------------------------------------------------------------------------------

    def _chain(self, spec: QuerySpec | None = None, **changes: Any) -> Query[M]:
        q: Query[M] = Query(
            self._model,
            self._gateway,
            spec or self._spec,
            changes.get("policy", self._policy),
            changes.get("explicit_all", self._explicit_all),
        )
        return q

    def _refuse_if_sliced(self, action: str) -> None:
        if self._spec.is_sliced:
            raise SlicedQueryError(f"Cannot {action} a sliced Query")

    def all(self) -> Query[M]:
        """Return a copy of this query that explicitly means every matching object."""
        return self._chain(explicit_all=True)

    def filter(self, **filters: Any) -> Query[M]:
        """Return a query narrowed by ``filters`` (validated now; nothing is sent)."""
        self._refuse_if_sliced("filter")
        return self._chain(self._spec.with_filters(filters))

    def order_by(self, field: str | None) -> Query[M]:
        """Return a query ordered by ``field`` (``-field`` for descending; None to clear)."""
        self._refuse_if_sliced("re-order")
        return self._chain(self._spec.with_ordering(field))

    def fresh(self, max_age: float) -> Query[M]:
        """Answer from the mirror when this data was confirmed within ``max_age`` seconds."""
        return self._chain(policy=fresh(max_age))

    def offline(self) -> Query[M]:
        """Answer from the mirror only; never touch the network."""
        return self._chain(policy=OFFLINE)

    def online(self) -> Query[M]:
        """Answer from the server only; fail clearly when it is unreachable."""
        return self._chain(policy=ONLINE)

    @overload
    def __getitem__(self, k: int) -> M: ...

    @overload
    def __getitem__(self, k: slice) -> Query[M]: ...

    def __getitem__(self, k: int | slice) -> M | Query[M]:
        if isinstance(k, slice):
            if k.step not in (None, 1):
                # As upstream: a stepped slice evaluates the query and returns a list.
                return list(self)[k]  # type: ignore[return-value]
            for bound in (k.start, k.stop):
                if bound is not None and (not isinstance(bound, int) or bound < 0):
                    raise UsageError(f"slice bounds must be non-negative ints, got {bound!r}")
            return self._chain(self._spec.with_window(k.start, k.stop))
        if isinstance(k, bool) or not isinstance(k, int):
            raise UsageTypeError(f"Query indices must be ints or slices, not {type(k).__name__}")
        if k < 0:
            raise UsageError("negative indexing is not supported")
        if self._result is not None:
            return self._result[k]
        one = self._chain(self._spec.with_window(k, k + 1))
        items = list(one)
        if not items:
            raise IndexError(f"{self._model.__name__} query index {k} out of range")
        return items[0]

    # -- evaluation ----------------------------------------------------------------------------

    def _fetch_all(self) -> list[M]:
        if self._result is None:
            answer = self._gateway.fetch(self._model._resource, self._spec, self._policy)
            model = self._model
            result: list[M]
            if answer.layout is not None:
                result = model._from_packed(answer)  # type: ignore[assignment]
            else:
                build = model._from_row
                result = [build(row) for row in answer.rows]  # type: ignore[misc]
                for obj in result:
                    obj._prov = answer
            self._result = result
            self._answer = answer
        return self._result

    def __iter__(self) -> Iterator[M]:
        return iter(self._fetch_all())

    def __len__(self) -> int:
        return len(self._fetch_all())

    def __bool__(self) -> bool:
        return bool(self._fetch_all())

    def __repr__(self) -> str:
        items = list(self[:21]) if self._result is None else self._result[:21]
        shown = ", ".join(repr(i) for i in items[:20])
        more = ", ..." if len(items) > 20 else ""
        return f"<Query {self._model.__name__} [{shown}{more}]>"

    def iterator(self, chunk_size: int = 2000) -> Iterator[M]:
        """Stream the matching objects without keeping them all (and without caching them)."""
        build = self._model._from_row
        for row in self._gateway.stream(
            self._model._resource, self._spec, self._policy, chunk_size
        ):
            yield build(row)  # type: ignore[misc]

    @property
    def source(self) -> Source | None:
        """ "server" or "cache" once evaluated (None before)."""
        return self._answer.source if self._answer else None

    @property
    def as_of(self) -> datetime | None:
        """When the server last confirmed the data of this answer (None before evaluation)."""
        return self._answer.as_of if self._answer else None

    @property
    def stale(self) -> bool:
        """True when the server was unreachable and the mirror answered instead."""
        return bool(self._answer and self._answer.stale)

    def count(self) -> int:
        """Return how many objects this query yields, without fetching them.

        Unlike upstream, a sliced query counts what the slice yields, so ``q.count() ==
        len(list(q))`` always holds.
        """
        if self._result is not None:
            return len(self._result)
        if self._count is None:
            answer = self._gateway.count(self._model._resource, self._spec.unsliced(), self._policy)
            total = answer.count or 0
            spec = self._spec
            windowed = max(0, total - spec.low)
            self._count = windowed if spec.limit is None else min(windowed, spec.limit)
            if self._answer is None:
                self._answer = answer
        return self._count

    def first(self) -> M:
        """Return the first object; raises IndexError when there is none (as upstream)."""
        return self[0]

    def get(self, **filters: Any) -> M:
        """Return the one object matching ``filters``.

        Raises:
            Model.DoesNotExist: nothing matched.
            Model.MultipleObjectsReturned: more than one object matched.
        """
        self._refuse_if_sliced("get from")
        q = self.filter(**filters) if filters else self
        # Like upstream, get() asks the server whenever it can (unless a policy was chosen).
        answer = self._gateway.fetch(
            self._model._resource, q._spec.with_window(0, 2), q._policy, True
        )
        model = self._model
        rows = answer.dicts()
        if not rows:
            raise model.DoesNotExist(
                f"No {model.__name__} matched the query params: {dict(q._spec.filters)}"
            )
        if len(rows) > 1:
            n = answer.count if answer.count is not None else "several"
            raise model.MultipleObjectsReturned(
                f"Returned {n} {model.__name__} objects; expected one!"
            )
        obj = model._from_row(rows[0])
        obj._prov = answer
        return obj  # type: ignore[return-value]

    # -- bulk changes --------------------------------------------------------------------------

    def _refuse_unbounded(self, action: str) -> None:
        self._refuse_if_sliced(action)
        if not self._spec.filters and not self._spec.empty and not self._explicit_all:
            name = self._model.__name__
            raise UsageError(
                f"refusing to {action} every {name}: this query has no filters. "
                f"Say {name}.objects.all().{action}(...) if that is what you mean"
            )

    def update(self, **fields: Any) -> int:
        """Apply the same field values to every matching object; return how many changed."""
        require_bulk(self._model, "update")
        if not fields:
            raise UsageError("update() needs at least one field")
        self._refuse_unbounded("update")
        return query_update(self._model, self._gateway, self._spec, fields)

    def delete(self) -> None:
        """Delete every matching object (returns None, as upstream's does)."""
        require_bulk(self._model, "delete")
        self._refuse_unbounded("delete")
        query_delete(self._model, self._gateway, self._spec)
