"""The model base class: field access, change tracking and per-model exceptions.

An instance holds the server's JSON values (``_data``) and, once fields are assigned, the
pending changes (``_changes``). Reading converts a value to its Python type; writing validates
it against the resource's create or update schema at once, so bad input fails at the line
that assigned it. Persistence (save, delete, refresh) is delegated to the model's manager.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable
from typing import Any, ClassVar

from pydantic import BaseModel

from ..errors import (
    FieldNotWritable,
    MultipleObjectsReturned,
    ObjectDoesNotExist,
    ObjectStateError,
    UsageError,
)
from ..freshness import Answer, Provenanced, RowLayout
from ..resources import Resource, Row
from .access import Getter, ModelState, _snapshot
from .classes import constructor_order, install_fields, named_arguments, own_exceptions
from .fields import (
    Converter,
    check_wire,
    decode_json,
    validate_field,
    validate_payload,
)

__all__ = ["Model", "ModelState", "Unconfirmed"]

_unconfirmed: dict[int, tuple[weakref.ref[Model], Unconfirmed, frozenset[str]]] = {}
"""Instances (by ``id()``; models are unhashable) holding fields the server set without
sending them back: the instance, its write, and which fields."""


def _forgetting(key: int) -> Callable[[weakref.ref[Model]], None]:
    """A callback that drops the entry of an instance once it is collected."""

    def forget(_ref: weakref.ref[Model]) -> None:
        _unconfirmed.pop(key, None)

    return forget


def _pending(obj: Model) -> tuple[Unconfirmed, frozenset[str]] | None:
    found = _unconfirmed.get(id(obj))
    if found is None or found[0]() is not obj:
        return None
    return found[1], found[2]


class Unconfirmed:
    """The instances of one write whose server-set fields are not known yet.

    The first read of such a field (``job.last_update`` after ``save()``) reads the rows of
    the whole write once (``confirm``), so a loop of saves costs one request per save, and a
    loop that reads the new stamps costs one more request in all.
    """

    def __init__(
        self,
        confirm: Callable[[list[int]], dict[int, Row]],
        objs: list[Model],
        unknown: dict[int, frozenset[str]],
    ) -> None:
        self._confirm = confirm
        self._objs: list[weakref.ref[Model]] = []
        for obj in objs:
            fields = unknown.get(obj.id)  # type: ignore[arg-type]
            if fields:
                key = id(obj)
                ref = weakref.ref(obj, _forgetting(key))
                self._objs.append(ref)
                _unconfirmed[key] = (ref, self, fields)

    def confirm(self) -> None:
        """Read the rows of this write; the fields the server set replace the guesses."""
        live = [obj for ref in self._objs if (obj := ref()) is not None]
        rows = self._confirm([obj._saved_id() for obj in live])
        if not rows:
            return  # the server cannot be asked now: the guesses stand, asked again next read
        for obj in live:
            entry = _pending(obj)
            _unconfirmed.pop(id(obj), None)
            row = rows.get(obj._saved_id())
            if entry is not None and row is not None:
                obj._take_server_set(row, entry[1])


class Model(Provenanced):
    """Base of Site, App, Job, BatchJob, TransferItem and EventLog.

    Each subclass gets its own ``DoesNotExist`` and ``MultipleObjectsReturned``, so catching
    ``Job.DoesNotExist`` never catches ``Site.DoesNotExist``.
    """

    __slots__ = ("_state", "_d", "_row", "_vals", "_changes", "_seen", "__weakref__")
    _resource: ClassVar[Resource]
    _conv: ClassVar[dict[str, Converter]] = {}
    _json: ClassVar[frozenset[str]] = frozenset()
    _bools: ClassVar[frozenset[str]] = frozenset()
    _hidden: ClassVar[dict[str, str]] = {}
    """Bookkeeping keys kept on the server but hidden from a dict field (field -> key)."""
    _refs: ClassVar[frozenset[str]] = frozenset({"id"})
    _as_text: ClassVar[frozenset[str]] = frozenset()
    """Enum fields read as their plain text value, as upstream reads them (BatchJob.state)."""
    _readers: ClassVar[dict[str, Getter]] = {}
    """The compiled read of every field (also of those a property stands in for)."""
    _packed_columns: ClassVar[tuple[str, ...]] = ()
    """The fields a packed mirror row holds, in order (the readers index them)."""
    _packed_layout: ClassVar[RowLayout | None] = None
    """The last row layout found to hold ``_packed_columns`` (checked once per layout)."""
    _fields: ClassVar[frozenset[str]] = frozenset()
    _create_fields: ClassVar[frozenset[str]] = frozenset()
    _update_fields: ClassVar[frozenset[str]] = frozenset()
    _client_only: ClassVar[frozenset[str]] = frozenset()
    _positional: ClassVar[tuple[str, ...]] = ()
    """Constructor arguments that may be given by position, in upstream's order."""
    _rules: ClassVar[dict[str, Callable[[Any], str | None]]] = {}
    """Checks the server makes (and we make first): field -> returns an error text or None."""
    DoesNotExist: ClassVar[type[ObjectDoesNotExist]] = ObjectDoesNotExist
    MultipleObjectsReturned: ClassVar[type[MultipleObjectsReturned]] = MultipleObjectsReturned
    objects: ClassVar[Any]
    """The manager of the bound client (``manager.ManagerAccess``, attached by manager.py)."""
    _manager_class: ClassVar[Callable[..., Any]]
    """The manager class of this model (set below, once manager.py is importable)."""

    id: int | None  # every resource has one; None before the first save and after delete
    _state: ModelState
    _d: Row | None  # the fields as a dict; None while the instance reads a packed mirror row
    _row: tuple[int, bytes]  # a packed mirror row (id, blob), shaped by _prov.layout
    _vals: list[Any] | None  # the blob unpacked, values made by reads kept (only while _d is None)
    _changes: Row | None
    _seen: Row | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        own_exceptions(cls)
        if "_resource" in cls.__dict__:
            install_fields(cls, cls._resource)

    @classmethod
    def _constructor_order(cls, schema: type[BaseModel]) -> tuple[str, ...]:
        """Upstream's generated constructor order (``Job`` leaves a field out)."""
        return constructor_order(schema)

    # -- construction --------------------------------------------------------------------------

    def __init__(self, *args: Any, **fields: Any) -> None:
        """Build an unsaved object; arguments as upstream's constructor (positional or named).

        A None argument means "not given", as upstream: the field takes its default.
        """
        res = self._resource
        name = type(self).__name__
        if res.create is None:
            raise UsageError(f"{name} is read-only: the server creates them")
        if args:
            fields = named_arguments(type(self), args, fields)
        fields = {k: v for k, v in fields.items() if v is not None}
        unknown = set(fields) - self._create_fields - self._client_only
        if unknown:
            raise UsageError(
                f"{name}() got unknown field(s) {sorted(unknown)}; "
                f"allowed: {sorted(self._create_fields | self._client_only)}"
            )
        payload = self._prepare_create(dict(fields))
        self._data = validate_payload(res.create, name, payload)
        for field, value in self._data.items():
            self._check_rule(field, value)
        self._state = ModelState.CREATING
        self._changes = None
        self._seen = None

    def _prepare_create(self, fields: dict[str, Any]) -> dict[str, Any]:
        """Turn client-only creation arguments into wire fields (overridden by Job)."""
        return fields

    @classmethod
    def _from_row(cls, row: Row) -> Model:
        """Build a clean instance from a trusted row without validating it again."""
        obj = cls.__new__(cls)
        obj._state = ModelState.CLEAN
        obj._d = row
        obj._vals = None
        obj._changes = None
        obj._seen = None
        return obj

    @classmethod
    def _from_packed(cls, answer: Answer) -> list[Model]:
        """Clean instances of the packed mirror rows of ``answer`` (``answer.layout`` set).

        Nothing is unpacked here: ``id`` reads the row's id, another field unpacks the blob
        once, and a JSON field is decoded when it is first read. Rows of a layout that does
        not hold exactly the fields the readers were compiled for are read as dicts.
        """
        layout = answer.layout
        if layout is not cls._packed_layout:
            if layout is None or layout.columns != cls._packed_columns:
                return [cls._from_answer_row(row, answer) for row in answer.dicts()]
            cls._packed_layout = layout
        new, clean, out = cls.__new__, ModelState.CLEAN, []
        for row in answer.rows:
            obj = new(cls)
            obj._state = clean
            obj._d = None
            obj._row = row
            obj._vals = None
            obj._changes = None
            obj._seen = None
            obj._prov = answer
            out.append(obj)
        return out

    @classmethod
    def _from_answer_row(cls, row: Row, answer: Answer) -> Model:
        obj = cls._from_row(row)
        obj._prov = answer
        return obj

    @property
    def _data(self) -> Row:
        data = self._d
        if data is None:
            data = self._d = self._unpacked_dict()
        return data

    @_data.setter
    def _data(self, value: Row) -> None:
        self._d = value
        self._vals = None  # the readers index _vals only while the instance is packed

    def _unpacked_dict(self) -> Row:
        """Leave the packed form: the row as a dict, with the JSON values read so far.

        A JSON value handed out may have been changed in place since: it stays (so the change
        is saved), and its snapshot (to find such changes at save) is the value decoded afresh
        from the row. Values the readers converted (paths, times) are dropped: the dict holds
        wire values.
        """
        layout = self._prov.layout
        assert layout is not None
        vals, original = self._vals, layout.unpack(self._row)
        data = layout.zip(original)
        self._vals = None
        if vals is None:
            return data
        for name in self._json:
            at = layout.index.get(name, -1)
            value = vals[at] if at >= 0 else None
            if value is None or type(value) is str:
                continue  # text, never read: the dict keeps it as it is
            hidden = self._hidden.get(name)
            if hidden is not None and type(value) is dict and hidden in value:
                value = {k: v for k, v in value.items() if k != hidden}  # as a read hands out
            data[name] = value
            if name in self._update_fields:
                if self._seen is None:
                    self._seen = {}
                self._seen.setdefault(name, self._json_value(name, original[at]))
        return data

    # -- field access --------------------------------------------------------------------------

    def _read(self, name: str) -> Any:
        """Read a field of an instance that is not (or no longer) a clean packed row."""
        if name in self._resource.server_set and id(self) in _unconfirmed:
            found = _pending(self)
            if found is not None and name in found[1]:
                found[0].confirm()
        if self._d is None and self._changes is None:
            return self._readers[name](self)
        state = self._state
        changes = self._changes
        if changes is not None and name in changes:
            raw = changes[name]
        else:
            raw = self._data.get(name)
            if type(raw) is str and name in self._json:
                # Mirror rows keep JSON columns as text until a field is read.
                raw = decode_json(raw)
                self._data[name] = raw
            if name in self._hidden and type(raw) is dict and self._hidden[name] in raw:
                raw = {k: v for k, v in raw.items() if k != self._hidden[name]}
                self._data[name] = raw
            if state is not ModelState.CREATING and type(raw) in (dict, list):
                self._remember(name, raw)
        if raw is None:
            return None
        if type(raw) is int and raw < 0 and name in self._refs:
            raw = self._resolve_id(name, raw)
        conv = self._conv.get(name)
        return raw if conv is None else conv(raw)

    def _resolve_id(self, name: str, temp_id: int) -> int:
        """A provisional id turns into the server's id once its creation is acknowledged."""
        real: int = type(self).objects.real_id(temp_id)
        if real != temp_id:
            self._data = {**self._data, name: real}
        return real

    def _decoded(self) -> Row:
        """All fields as JSON values (mirror text decoded, mirror 0/1 back to booleans)."""
        data = self._data
        json_text = any(type(data.get(n)) is str for n in self._json)
        hidden = any(k in (data.get(n) or ()) for n, k in self._hidden.items())
        if json_text or hidden or any(type(data.get(n)) is int for n in self._bools):
            data = {k: self._json_value(k, v) for k, v in data.items()}
            self._data = data
        return data

    def _json_value(self, name: str, value: Any) -> Any:
        if name in self._json and type(value) is str:
            value = decode_json(value)
        if name in self._hidden and type(value) is dict:
            return {k: v for k, v in value.items() if k != self._hidden[name]}
        if name in self._bools and type(value) is int:
            return bool(value)
        return value

    def _remember(self, name: str, raw: Any) -> None:
        """Keep a copy of a mutable value handed out, to detect in-place changes at save."""
        if name not in self._update_fields:
            return
        if self._seen is None:
            self._seen = {}
        if name not in self._seen:
            self._seen[name] = _snapshot(raw)

    def _write(self, name: str, value: Any) -> None:
        model = type(self).__name__
        res = self._resource
        if self._d is None:
            self._d = self._unpacked_dict()  # the readers of a packed row know no changes
        if self._state is ModelState.CREATING:
            if name not in self._create_fields or res.create is None:
                raise FieldNotWritable(f"{model}.{name} is set by the server, not at creation")
            wire = validate_field(res.create, model, name, value)
            self._check_rule(name, wire)
            self._data[name] = wire
            return
        if self._state is ModelState.DELETED:
            raise ObjectStateError(f"this {model} was deleted; it cannot be changed")
        if res.update is None:
            raise FieldNotWritable(f"{model} is read-only")
        if name not in self._update_fields:
            raise FieldNotWritable(
                f"Cannot set {name} when updating {model}: it can only be set at creation "
                f"or by the server (updatable: {', '.join(sorted(self._update_fields))})"
            )
        wire = validate_field(res.update, model, name, value)
        self._check_rule(name, wire)
        self._changes = {**(self._changes or {}), name: wire}
        self._state = ModelState.DIRTY

    @classmethod
    def _check_rule(cls, name: str, wire: Any) -> None:
        rule = cls._rules.get(name)
        problem = rule(wire) if rule is not None and wire is not None else None
        if problem:
            raise UsageError(f"{cls.__name__}.{name}: {problem}")

    def _pending_changes(self) -> Row:
        """Assigned fields plus mutable fields changed in place since they were read."""
        data = self._data  # a packed instance leaves its row, and snapshots what it handed out
        changes = dict(self._changes or {})
        for name, before in (self._seen or {}).items():
            now = data.get(name)
            if name not in changes and now != before:
                check_wire(type(self).__name__, {name: now})  # changed in place: not checked yet
                changes[name] = now
        return changes

    def _creation_fields(self) -> Row:
        """The wire fields of an unsaved object, its dicts and lists checked again (they may
        have been changed in place since they were validated)."""
        row = dict(self._data)
        check_wire(type(self).__name__, {k: row[k] for k in self._json if k in row})
        return row

    # -- lifecycle (delegated to the manager) --------------------------------------------------

    @property
    def state_of_instance(self) -> ModelState:
        """Where this instance stands: CREATING, CLEAN, DIRTY or DELETED."""
        return self._state

    def _load(self, row: Row) -> None:
        """Replace this instance's data with what the server (or mirror) says it is now."""
        self._data = row
        self._state = ModelState.CLEAN
        self._changes = None
        self._seen = None

    def _take_server_set(self, row: Row, fields: frozenset[str]) -> None:
        """Take the values the server set (``fields``) from its ``row``; the rest stays."""
        self._data = {**self._data, **{name: row.get(name) for name in fields}}

    def _mark_deleted(self) -> None:
        self._data = {**self._data, "id": None}
        self._state = ModelState.DELETED
        self._changes = None
        self._seen = None

    def save(self) -> None:
        """Create this object, or send the fields changed since it was loaded."""
        type(self).objects._save(self)

    def refresh_from_db(self) -> None:
        """Reload every field (unsaved local changes are discarded).

        Raises:
            ObjectStateError: the object was never saved, or was deleted.
            DoesNotExist: the object is gone.
        """
        self._require_saved("refresh")
        type(self).objects._refresh(self)

    def delete(self) -> None:
        """Delete this object; afterwards ``id`` reads None."""
        self._require_saved("delete")
        type(self).objects._delete(self)

    def _saved_id(self) -> int:
        """The server id (provisional ids resolved), for operations on a saved object."""
        obj_id = self.id
        if obj_id is None:
            raise ObjectStateError(f"this {type(self).__name__} has no id: save it first")
        return obj_id

    def _require_saved(self, action: str) -> None:
        if self._state in (ModelState.CREATING, ModelState.DELETED):
            raise ObjectStateError(
                f"cannot {action} a {type(self).__name__} that is "
                f"{'not saved yet' if self._state is ModelState.CREATING else 'deleted'}"
            )

    # -- dunder --------------------------------------------------------------------------------

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Model) or other._resource is not self._resource:
            return NotImplemented
        both_clean = self._state is ModelState.CLEAN and other._state is ModelState.CLEAN
        return both_clean and self._decoded() == other._decoded()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        data = {**self._decoded(), **(self._changes or {})}
        head = ["id"] if "id" in self._fields else []
        names = head + sorted(n for n in data if n != "id" and not n.startswith("serialized_"))
        body = ", ".join(f"{n}={data.get(n)!r}" for n in names)
        return f"{type(self).__name__}({body})"

    def to_dict(self) -> Row:
        """Return a copy of the fields as JSON values (pending changes applied)."""
        return copy.deepcopy({**self._decoded(), **self._pending_changes()})
