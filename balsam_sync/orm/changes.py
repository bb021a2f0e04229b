"""Changes to many objects at once: validated against the model, then handed to the gateway.

Shared by the manager (``bulk_update``, ``save``) and the query (``update()``, ``delete()``),
which owns its backend and so does not call back into the manager.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from ..errors import NotOffered, UsageError
from ..resources import BulkOp, Row
from ..spec import QuerySpec
from .fields import validate_field

if TYPE_CHECKING:
    from ..gateway import Gateway
    from .models import Model


_BULK_NAMES: dict[BulkOp, str] = {
    "create": "bulk_create",
    "update": "bulk updates (bulk_update, a query's update())",
    "delete": "bulk deletes (a query's delete(); delete objects one by one)",
}


def require_bulk(model: type[Model], op: BulkOp) -> None:
    """NotOffered (a NotImplementedError, as upstream raises) unless ``model`` offers ``op``."""
    if op not in model._resource.bulk:
        raise NotOffered(f"The {model.__name__} API does not offer {_BULK_NAMES[op]}")


def require_update(model: type[Model]) -> type[BaseModel]:
    """The update schema of ``model``; UsageError when it is read-only."""
    schema = model._resource.update
    if schema is None:
        raise UsageError(f"{model.__name__} is read-only")
    return schema


def require_delete(model: type[Model]) -> None:
    """UsageError when ``model``'s objects cannot be deleted through the API."""
    if not model._resource.can_delete:
        raise UsageError(f"{model.__name__} objects cannot be deleted through the API")


def wire_changes(model: type[Model], fields: dict[str, Any]) -> Row:
    """``fields`` validated as an update of ``model`` (what ``update(**fields)`` would send)."""
    schema = require_update(model)
    name = model.__name__
    out = {}
    for key, value in fields.items():
        if key not in model._update_fields:
            raise UsageError(
                f"{name}.objects.update(): {key!r} cannot be updated "
                f"(updatable: {', '.join(sorted(model._update_fields))})"
            )
        out[key] = validate_field(schema, name, key, value)
        model._check_rule(key, out[key])
    return out


def query_update(
    model: type[Model], gateway: Gateway, spec: QuerySpec, fields: dict[str, Any]
) -> int:
    """Apply ``fields`` to every object matching ``spec``; return how many changed."""
    changes = wire_changes(model, fields)
    if spec.empty:
        return 0
    result = gateway.query_update(model._resource, spec, changes)
    result.raise_first()
    return result.count


def query_delete(model: type[Model], gateway: Gateway, spec: QuerySpec) -> int:
    """Delete every object matching ``spec``; return how many were deleted."""
    require_delete(model)
    if spec.empty:
        return 0
    result = gateway.query_delete(model._resource, spec)
    result.raise_first()
    return result.count
