"""Rows as compact blobs: the mirror keeps each row also packed with ``marshal``, so turning
cached rows into instances skips decoding column by column.

A blob holds the row's values as a list, in column order. A JSON column's value is packed
decoded when its text is short (``SMALL_JSON``) and not empty: marshal rebuilds a small dict
for less than decoding its text costs. Other JSON stays text, decoded when its field is read.
A blob rebuilt from the columns (``repacker``) is the blob the row was written with.
"""

from __future__ import annotations

import json
import marshal
from collections.abc import Callable, Iterable
from typing import Any

from .schema import TableDef

_ENCODER = json.JSONEncoder(separators=(",", ":"))
_SCAN: Callable[[str, int], tuple[Any, int]] = vars(json.JSONDecoder())["scan_once"]

SMALL_JSON = 512
"""JSON text up to this length is packed decoded."""


def encode_json(value: Any) -> str:
    """JSON text of a dict/list/set column value (empty ones are the common case)."""
    if not value:
        return "{}" if isinstance(value, dict) else "[]"
    if isinstance(value, set | frozenset):
        value = sorted(value)
    return _ENCODER.encode(value)


def _json_at(tdef: TableDef) -> tuple[int, ...]:
    return tuple(i for i, name in enumerate(tdef.columns) if name in tdef.json_columns)


def repacker(tables: Iterable[TableDef]) -> Callable[..., bytes]:
    """Return ``repack(table, *values)``: the blob of a row of ``table`` rebuilt from its
    columns (the SQL function ``bsync_pack``), as the write path packs it."""
    json_at = {tdef.table: _json_at(tdef) for tdef in tables}

    def repack(table: str, *values: Any) -> bytes:
        return _dump(values, json_at[table])

    return repack


def unpack(row: tuple[int, bytes]) -> list[Any] | tuple[Any, ...]:
    """The column values of a packed row ``(id, blob)`` as ``Store.query_packed`` fetches it
    (a tuple in blobs written before they held lists)."""
    values: list[Any] | tuple[Any, ...] = marshal.loads(row[1])
    return values


def _small_json(text: str) -> Any:
    """The value of short JSON ``text``, or the text itself (long, empty or not plain JSON).

    Empty ones stay text: an unpacked dict or list is one more object for the cyclic garbage
    collector to visit, which cost more than decoding ``{}`` on the rare read of one.
    """
    if len(text) > SMALL_JSON or text == "{}" or text == "[]":
        return text
    try:
        value, end = _SCAN(text, 0)
    except (StopIteration, ValueError):
        return text  # left to the reader's json.loads, which gives the error
    return value if end == len(text) else text


def _dump(values: Iterable[Any], json_at: tuple[int, ...]) -> bytes:
    out = list(values)
    for i in json_at:
        text = out[i]
        if type(text) is str:
            # Each value decoded afresh: no two columns share one object (marshal would pack
            # a shared one once, and unpack it shared).
            out[i] = _small_json(text)
    return marshal.dumps(out)


def packer(tdef: TableDef) -> Callable[[tuple[Any, ...]], bytes | None]:
    """Return ``pack(record) -> bytes | None`` for the rows of one table.

    The blob must hold exactly what SQLite will store: a value SQLite would convert through a
    column's affinity (text in a number column, a float in an integer one, ...) is not packed
    here (None), and the reader packs that row from its columns instead. JSON columns hold
    JSON text, packed decoded when short.
    """
    kinds = tuple(tdef.columns.values())
    json_at = _json_at(tdef)

    def pack(record: tuple[Any, ...]) -> bytes | None:
        # Rows from the server: every value is None or exactly of its column's type.
        for kind, value in zip(kinds, record, strict=True):
            if value is not None and type(value) is not kind:
                return convert(record)
        return _dump(record, json_at)

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
        return _dump(out, json_at)

    return pack
