"""What every model class gets when it is defined: its own exceptions, its fields as
compiled properties (from the resource's schemas), and upstream's positional constructor order.
``cls`` is a ``models.Model`` subclass (typed ``Any``: this module sits below models.py)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel

from ..errors import UsageTypeError
from ..resources import Resource
from .access import field_property, field_reader
from .fields import converters, json_fields


def own_exceptions(cls: Any) -> None:
    """Give ``cls`` its own ``DoesNotExist`` and ``MultipleObjectsReturned`` subclasses.

    A client's binding of a model (``client.App``: same name, one base, no resource of its
    own) keeps the model's exceptions, so ``except client.App.DoesNotExist`` catches what any
    other part of the model layer raises as ``App.DoesNotExist``.
    """
    if binds_model(cls):
        return
    for name in ("DoesNotExist", "MultipleObjectsReturned"):
        base = getattr(cls, name)
        qualname = f"{cls.__qualname__}.{name}"
        setattr(
            cls, name, type(name, (base,), {"__module__": cls.__module__, "__qualname__": qualname})
        )


def binds_model(cls: Any) -> bool:
    """``cls`` is a client's binding of the one model class it derives from."""
    if len(cls.__bases__) != 1 or "_resource" in cls.__dict__:
        return False
    (base,) = cls.__bases__
    return bool(base.__qualname__ == cls.__qualname__ and base.__module__ == cls.__module__)


def install_fields(cls: Any, res: Resource) -> None:
    """Install one property per field of ``res`` and the class's field tables.

    Packed mirror rows hold the fields of ``res.out`` in schema order (the mirror's columns);
    ``Model._from_packed`` checks that a row layout has exactly these before using them.
    """
    schemas = [sch for sch in (res.out, res.create, res.update) if sch is not None]
    names: dict[str, str | None] = {}
    for sch in schemas:
        for name, info in sch.model_fields.items():
            if not names.get(name):
                names[name] = info.description
    cls._fields = frozenset(names)
    # A field the server never returns (Job.transfers, state_timestamp) still reads typed.
    cls._conv = {k: v for sch in reversed(schemas) for k, v in converters(sch).items()}
    for name in cls._as_text:  # upstream reads these enums as their text
        cls._conv.pop(name, None)
    cls._json = json_fields(res.out)
    cls._bools = frozenset(n for n, conv in cls._conv.items() if conv is bool)
    cls._refs = frozenset({"id", "app_id", "site_id", "batch_job_id"}) & cls._fields
    cls._packed_columns = tuple(res.out.model_fields)
    at = {name: i for i, name in enumerate(cls._packed_columns)}
    cls._readers = {
        name: field_reader(
            name,
            at.get(name),
            cls._conv.get(name),
            name in cls._json,
            name in cls._refs,
            cls._hidden.get(name),
        )
        for name in names
    }
    for name, doc in names.items():
        if name not in cls.__dict__:  # Job.app_id is a property (reading through _read)
            setattr(cls, name, field_property(name, cls._readers[name], doc))
    cls._create_fields = frozenset(res.create.model_fields) if res.create else frozenset()
    cls._update_fields = frozenset(res.update.model_fields) if res.update else frozenset()
    cls._positional = cls._constructor_order(res.create) if res.create else ()


def constructor_order(schema: type[BaseModel]) -> tuple[str, ...]:
    """Upstream's generated constructor order: required fields first, each in schema order."""
    fields = schema.model_fields
    required = [n for n, info in fields.items() if info.is_required()]
    return (*required, *(n for n in fields if n not in required))


def named_arguments(cls: Any, args: tuple[Any, ...], fields: dict[str, Any]) -> dict[str, Any]:
    """Name positional arguments by upstream's constructor order."""
    order = cls._positional
    if len(args) > len(order):
        raise UsageTypeError(
            f"{cls.__name__}() takes {len(order)} positional arguments "
            f"({', '.join(order)}) but {len(args)} were given"
        )
    named = dict(fields)
    for key, value in zip(order, args, strict=False):
        if key in fields:
            raise UsageTypeError(f"{cls.__name__}() got multiple values for argument {key!r}")
        named[key] = value
    return named
