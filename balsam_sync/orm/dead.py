"""Correcting a dead letter: its new payload is validated like any write before it is kept."""

from __future__ import annotations

from ..cache import Entry, EntryState, Op
from ..errors import UsageError
from ..resources import Row
from .changes import wire_changes
from .fields import validate_payload
from .models import Model


def edited_payload(entry: Entry, model: type[Model], changes: Row, unset: list[str]) -> Row:
    """Return ``entry``'s payload with ``changes`` applied and ``unset`` removed, validated.

    A create is validated whole against the creation schema and the model's rules, an update
    field by field against the update schema, exactly as ``create()`` and ``save()`` would.

    Raises:
        UsageError: not a dead letter, a delete (it has no payload), or an invalid payload.
    """
    if entry.state is not EntryState.DEAD:
        raise UsageError(f"entry {entry.seq} is not a dead letter (see `balsam-sync dead list`)")
    if entry.op is Op.DELETE:
        raise UsageError(f"dead letter {entry.seq} is a delete: it has no payload to edit")
    missing = [name for name in unset if name not in entry.payload]
    if missing:
        raise UsageError(f"dead letter {entry.seq} has no field(s) {missing} to unset")
    payload = {k: v for k, v in {**entry.payload, **changes}.items() if k not in unset}
    name = model.__name__
    res = model._resource
    if entry.op is Op.CREATE:
        if res.create is None:
            raise UsageError(f"{name} cannot be created")
        unknown = sorted(set(payload) - set(res.create.model_fields))
        if unknown:
            raise UsageError(f"{name} has no field(s) {unknown} to create with")
        valid = validate_payload(res.create, name, payload)
    else:
        valid = wire_changes(model, payload)
    for field, value in valid.items():
        model._check_rule(field, value)
    return valid
