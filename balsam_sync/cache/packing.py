"""Rows as compact blobs: the mirror keeps each row also packed with ``marshal``, so turning
cached rows into instances skips decoding column by column; JSON columns stay text."""

from __future__ import annotations

import json
import marshal
from collections.abc import Callable, Iterable
from typing import Any

_ENCODER = json.JSONEncoder(separators=(",", ":"))


def encode_json(value: Any) -> str:
    """JSON text of a dict/list/set column value (empty ones are the common case)."""
    if not value:
        return "{}" if isinstance(value, dict) else "[]"
    if isinstance(value, set | frozenset):
        value = sorted(value)
    return _ENCODER.encode(value)


def pack(*values: Any) -> bytes:
    return marshal.dumps(values)


def unpack(row: tuple[int, bytes]) -> tuple[Any, ...]:
    """The column values of a packed row ``(id, blob)`` as ``Store.query_packed`` fetches it."""
    values: tuple[Any, ...] = marshal.loads(row[1])
    return values


def packer(column_types: Iterable[type]) -> Callable[[tuple[Any, ...]], bytes | None]:
    """Return ``pack(record) -> bytes | None`` for one table's column types.

    The blob must hold exactly what SQLite will store: a value SQLite would convert through a
    column's affinity (text in a number column, a float in an integer one, ...) is not packed
    here (None), and the reader packs that row from its columns instead.
    """
    kinds = tuple(column_types)

    def pack(record: tuple[Any, ...]) -> bytes | None:
        # Rows from the server: every value is None or exactly of its column's type.
        for kind, value in zip(kinds, record, strict=True):
            if value is not None and type(value) is not kind:
                return convert(record)
        return marshal.dumps(record)

    def convert(record: tuple[Any, ...]) -> bytes | None:
        out: list[str | int | float | None] = []
        for kind, value in zip(kinds, record, strict=True):
            if value is None:
                out.append(None)
            elif kind is str and isinstance(value, str):
                out.append(str.__str__(value))  # a str Enum is stored as its plain text
            elif kind is int and type(value) in (int, bool):
                out.append(int(value))
            elif kind is float and type(value) in (int, float):
                out.append(float(value))
            else:
                return None
        return marshal.dumps(tuple(out))

    return pack
