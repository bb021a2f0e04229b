"""``Model.objects``: a factory of queries plus the write API (saves, bulk operations, deletes).

The manager validates what the user asked for and hands it to the gateway, which decides
between the mirror, the outbox and the server. It never talks HTTP or SQL itself. Queries it
starts own their backend (model and gateway) and never call back into it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from ..errors import ObjectStateError, UsageError, UsageTypeError
from ..freshness import USE_CLIENT_DEFAULT
from ..resources import Row
from ..spec import QuerySpec
from .access import ModelState
from .changes import require_bulk, require_delete, require_update
from .models import Model, Unconfirmed
from .query import Query

if TYPE_CHECKING:
    from ..gateway import Gateway, WriteResult

M = TypeVar("M", bound=Model)


class Manager(Generic[M]):
    """Entry point for queries and writes of one model class on one client."""

    def __init__(self, model: type[M], gateway: Gateway) -> None:
        self.model = model
        self._gateway = gateway
        self._resource = model._resource

    def __repr__(self) -> str:
        return f"<Manager of {self.model.__name__}>"

    # -- queries -------------------------------------------------------------------------------

    def _query(self) -> Query[M]:
        return Query(self.model, self._gateway, QuerySpec(self._resource.name))

    def all(self) -> Query[M]:
        """Return a lazy query over every object."""
        return self._query().all()

    def filter(self, **filters: Any) -> Query[M]:
        """Return a lazy query narrowed by ``filters``."""
        return self._query().filter(**filters)

    def order_by(self, field: str | None) -> Query[M]:
        """Return a lazy query over every object in this order."""
        return self._query().order_by(field)

    def fresh(self, max_age: float) -> Query[M]:
        """Return a query over every object, answered from a mirror confirmed within max_age."""
        return self._query().all().fresh(max_age)

    def offline(self) -> Query[M]:
        """Return a query over every object, answered from the mirror only."""
        return self._query().all().offline()

    def online(self) -> Query[M]:
        """Return a query over every object, answered by the server only."""
        return self._query().all().online()

    def get(self, **filters: Any) -> M:
        """Return the one object matching ``filters`` (see ``Query.get``)."""
        return self._query().get(**filters)

    def count(self) -> int:
        """Return how many objects there are."""
        return self._query().count()

    def first(self) -> M:
        """Return the first object by the default ordering (IndexError when there is none)."""
        return self._query().first()

    # -- creation ------------------------------------------------------------------------------

    def _require_create(self, method: str) -> None:
        if self._resource.create is None:
            # Upstream's managers of server-made resources have no such method at all.
            raise AttributeError(
                f"'{self.model.__name__}Manager' object has no attribute '{method}': "
                f"{self.model.__name__} objects are created by the server"
            )

    def create(self, *args: Any, **fields: Any) -> M:
        """Create one object and return it with its id set (arguments as the constructor's)."""
        self._require_create("create")
        obj = self.model(*args, **fields)
        self._save(obj)
        return obj

    def bulk_create(self, objs: list[M]) -> list[M]:
        """Create many objects; each passed instance gets its id (Job: 5000 per request).

        Returns the same instances, in the order given.
        """
        self._require_create("bulk_create")
        require_bulk(self.model, "create")
        if not isinstance(objs, list):
            raise UsageTypeError(f"bulk_create takes a list, not {type(objs).__name__}")
        for obj in objs:
            if not isinstance(obj, self.model):
                raise UsageTypeError(f"bulk_create takes {self.model.__name__} instances: {obj!r}")
            if obj._state is not ModelState.CREATING:
                raise UsageError(f"bulk_create takes unsaved instances; {obj!r} is already saved")
        if not objs:
            return objs
        result = self._gateway.create(self._resource, [o._creation_fields() for o in objs])
        self._load_all(objs, result)
        return objs

    def _load_all(self, objs: Sequence[Model], result: WriteResult) -> None:
        """Load each instance with its row, except refused ones; then raise the refusal.

        Fields the server set without sending them back (a job's new ``last_update``) are
        read when first asked for, once for all the instances of this write.
        """
        loaded = []
        for index, (obj, row) in enumerate(zip(objs, result.rows, strict=True)):
            if row is not None and index not in result.errors:
                obj._load(row)
                loaded.append(obj)
        if result.unknown:
            Unconfirmed(self._confirm_rows, loaded, result.unknown)
        result.raise_first()

    def _confirm_rows(self, ids: list[int]) -> dict[int, Row]:
        return self._gateway.confirm(self._resource, ids)

    def real_id(self, temp_id: int) -> int:
        """The server's id of an object created offline (``temp_id`` until it is sent)."""
        return self._gateway.real_id(temp_id)

    # -- updates -------------------------------------------------------------------------------

    def bulk_update(self, objs: Sequence[M]) -> int:
        """Send each instance's own changes; return how many instances were updated.

        Instances without changes are skipped; updated instances are reloaded with what the
        server stored (including the state it derived).
        """
        require_bulk(self.model, "update")
        changed = []
        for obj in objs:
            if not isinstance(obj, self.model):
                raise UsageTypeError(f"bulk_update takes {self.model.__name__} instances: {obj!r}")
            if obj._state in (ModelState.CREATING, ModelState.DELETED):
                raise ObjectStateError(f"bulk_update takes saved instances: {obj!r}")
            changes = obj._pending_changes()
            if changes:
                changed.append((obj, changes))
        if not changed:
            return 0
        require_update(self.model)
        items = [(obj._saved_id(), changes) for obj, changes in changed]
        result = self._gateway.bulk_update(self._resource, items)
        self._load_all([obj for obj, _ in changed], result)
        return len(changed)

    # -- instance lifecycle (called by Model) --------------------------------------------------

    def _save(self, obj: M) -> None:
        if obj._state is ModelState.CREATING:
            self._load_all([obj], self._gateway.create(self._resource, [obj._creation_fields()]))
            return
        if obj._state is ModelState.DELETED:
            raise ObjectStateError(f"cannot save a deleted {self.model.__name__}")
        changes = obj._pending_changes()
        if changes:
            require_update(self.model)
            self._load_all([obj], self._gateway.update(self._resource, obj._saved_id(), changes))

    def _refresh(self, obj: M) -> None:
        """Reload ``obj`` from the server (from the mirror, marked stale, when unreachable)."""
        obj_id = obj._saved_id()
        spec = QuerySpec(self._resource.name).with_filters({"id": [obj_id]})
        answer = self._gateway.fetch(self._resource, spec, USE_CLIENT_DEFAULT, True)
        rows = answer.dicts()
        if not rows:
            raise self.model.DoesNotExist(f"{self.model.__name__} {obj_id} no longer exists")
        obj._load(rows[0])
        obj._prov = answer

    def _delete(self, obj: M) -> None:
        require_delete(self.model)
        self._gateway.delete(self._resource, obj._saved_id()).raise_first()
        obj._mark_deleted()


ManagerResolver = Callable[[type[Model]], Manager[Any]]
_resolve_manager: ManagerResolver | None = None


def set_manager_resolver(resolver: ManagerResolver) -> None:
    """Tell unbound model classes how to find the default client's manager (done by client)."""
    global _resolve_manager
    _resolve_manager = resolver


class ManagerAccess:
    """``Model.objects``: the manager of the client this model class is bound to."""

    def __get__(self, obj: Model | None, owner: type[M]) -> Manager[M]:
        if obj is not None:
            raise AttributeError("the manager is reached through the class: use Model.objects")
        bound = owner.__dict__.get("_manager")
        if bound is not None:
            return bound  # type: ignore[no-any-return]
        if _resolve_manager is None:
            raise RuntimeError("balsam_sync.client was not imported")
        return _resolve_manager(owner)


# The model layer's bottom (models.py) cannot import this module, which builds on it: the
# manager is attached to the base class here, as Django's ``contribute_to_class`` does.
Model._manager_class = Manager
Model.objects = ManagerAccess()
