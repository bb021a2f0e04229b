"""``Model.objects``: starts queries and carries out saves, bulk operations and deletes.

The manager validates what the user asked for and hands it to the gateway, which decides
between the mirror, the outbox and the server. It never talks HTTP or SQL itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from pydantic import BaseModel

from ..errors import ObjectStateError, UsageError, UsageTypeError
from ..freshness import USE_CLIENT_DEFAULT, Answer, PolicyArg
from ..resources import APP
from ..spec import QuerySpec
from .access import ModelState
from .fields import validate_field
from .models import Model
from .query import Query

if TYPE_CHECKING:
    from ..gateway import Gateway, WriteResult

M = TypeVar("M", bound=Model)
Row = dict[str, Any]


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
        return Query(self, QuerySpec(self._resource.name))

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
        if not isinstance(objs, list):
            raise UsageTypeError(f"bulk_create takes a list, not {type(objs).__name__}")
        for obj in objs:
            if not isinstance(obj, self.model):
                raise UsageTypeError(f"bulk_create takes {self.model.__name__} instances: {obj!r}")
            if obj._state is not ModelState.CREATING:
                raise UsageError(f"bulk_create takes unsaved instances; {obj!r} is already saved")
        if not objs:
            return objs
        names: dict[Any, int] = {}
        payloads = [self._creation_payload(o, names) for o in objs]
        result = self._gateway.create(self._resource, payloads)
        self._load_all(objs, result)
        return objs

    @staticmethod
    def _load_all(objs: Sequence[Model], result: WriteResult) -> None:
        """Load each instance with its row, except refused ones; then raise the refusal."""
        for index, (obj, row) in enumerate(zip(objs, result.rows, strict=True)):
            if row is not None and index not in result.errors:
                obj._load(row)
        result.raise_first()

    @staticmethod
    def _creation_payload(obj: Model, names: dict[Any, int] | None = None) -> Row:
        """The wire fields of an unsaved object (references given by name resolved now)."""
        obj._before_create({} if names is None else names)
        return dict(obj._data)

    def _resolve_app_id(self, name: str, site_name: str | None) -> int:
        """Find an App's id by its name (and site name when one is given), not by unpickling."""
        filters = {"name": name, **({"site_name": site_name} if site_name else {})}
        spec = QuerySpec(APP.name).with_filters(filters).with_window(0, 2)
        rows = self._gateway.fetch(APP, spec, USE_CLIENT_DEFAULT).dicts()
        where = f" at site {site_name!r}" if site_name else ""
        if not rows:
            raise UsageError(f"no App named {name!r}{where}")
        if len(rows) > 1:
            raise UsageError(f"App {name!r} exists at several sites: pass site_name= to choose")
        app_id: int = rows[0]["id"]
        return app_id

    # -- updates -------------------------------------------------------------------------------

    def bulk_update(self, objs: Sequence[M]) -> int:
        """Send each instance's own changes; return how many instances were updated.

        Instances without changes are skipped; updated instances are reloaded with what the
        server stored (including the state it derived).
        """
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
        self._require_update()
        items = [(obj._saved_id(), changes) for obj, changes in changed]
        result = self._gateway.bulk_update(self._resource, items)
        self._load_all([obj for obj, _ in changed], result)
        return len(changed)

    def _require_update(self) -> type[BaseModel]:
        schema = self._resource.update
        if schema is None:
            raise UsageError(f"{self.model.__name__} is read-only")
        return schema

    def _wire_changes(self, fields: dict[str, Any]) -> Row:
        schema = self._require_update()
        name = self.model.__name__
        out = {}
        for key, value in fields.items():
            if key not in self.model._update_fields:
                raise UsageError(
                    f"{name}.objects.update(): {key!r} cannot be updated "
                    f"(updatable: {', '.join(sorted(self.model._update_fields))})"
                )
            out[key] = validate_field(schema, name, key, value)
            self.model._check_rule(key, out[key])
        return out

    # -- instance lifecycle (called by Model) --------------------------------------------------

    def _save(self, obj: M) -> None:
        if obj._state is ModelState.CREATING:
            self._load_all(
                [obj], self._gateway.create(self._resource, [self._creation_payload(obj)])
            )
            return
        if obj._state is ModelState.DELETED:
            raise ObjectStateError(f"cannot save a deleted {self.model.__name__}")
        changes = obj._pending_changes()
        if changes:
            self._require_update()
            self._load_all([obj], self._gateway.update(self._resource, obj._saved_id(), changes))

    def _refresh(self, obj: M) -> None:
        """Reload ``obj`` from the server (from the mirror, marked stale, when unreachable)."""
        obj_id = obj._saved_id()
        spec = QuerySpec(self._resource.name).with_filters({"id": [obj_id]})
        answer = self._fetch(spec, latest=True)
        rows = answer.dicts()
        if not rows:
            raise self.model.DoesNotExist(f"{self.model.__name__} {obj_id} no longer exists")
        obj._load(rows[0])
        obj._prov = answer

    def _delete(self, obj: M) -> None:
        if not self._resource.can_delete:
            raise UsageError(f"{self.model.__name__} objects cannot be deleted through the API")
        self._gateway.delete(self._resource, obj._saved_id()).raise_first()
        obj._mark_deleted()

    # -- plumbing for Query --------------------------------------------------------------------

    def _fetch(
        self, spec: QuerySpec, policy: PolicyArg = USE_CLIENT_DEFAULT, latest: bool = False
    ) -> Answer:
        return self._gateway.fetch(self._resource, spec, policy, latest)

    def _count(self, spec: QuerySpec, policy: PolicyArg = USE_CLIENT_DEFAULT) -> Answer:
        return self._gateway.count(self._resource, spec, policy)

    def _stream(self, spec: QuerySpec, policy: PolicyArg, chunk_size: int) -> Iterator[Row]:
        return self._gateway.stream(self._resource, spec, policy, chunk_size)

    def _query_update(self, spec: QuerySpec, fields: dict[str, Any]) -> int:
        changes = self._wire_changes(fields)
        if spec.empty:
            return 0
        result = self._gateway.query_update(self._resource, spec, changes)
        result.raise_first()
        return result.count

    def _query_delete(self, spec: QuerySpec) -> int:
        if not self._resource.can_delete:
            raise UsageError(f"{self.model.__name__} objects cannot be deleted through the API")
        if spec.empty:
            return 0
        result = self._gateway.query_delete(self._resource, spec)
        result.raise_first()
        return result.count


Model._manager_class = Manager
