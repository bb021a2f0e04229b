"""The mirror's rows: write the server's rows through, answer queries, stream, count.

Rows read from the mirror keep their JSON columns as text; the model decodes a field only when
it is read, which is what makes turning 1000 cached rows into instances cheap.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

from sqlite_utils import Database

from ..freshness import RowLayout
from ..resources import RESOURCES, Row
from ..spec import QuerySpec
from .packing import encode_json, packer, repacker, unpack
from .schema import PACKED, PARENTS_TABLE, TABLES, UNCONFIRMED_TABLE, TableDef
from .sql import compile_spec, count_sql

_writing = threading.local()

STAMP = "last_update"
"""The column the server stamps on every change of a row (Job): a row with an older stamp
than the stored one was read before the stored one was written."""

LAYOUTS = {name: RowLayout(tuple(t.columns), unpack) for name, t in TABLES.items()}
"""One layout per resource for every store, so a field descriptor finds its column once."""

STREAM_CACHE_KIB = 2048
"""SQLite's page cache while a stream runs. A stream reads each page once, so a big cache
only grows the process: iterating a million jobs filled the 64 MB cache for nothing."""


def writing_here() -> bool:
    """True while the calling thread holds a mirror write transaction (``Store.write()``).

    No network call may start then: other processes would wait for it (tests assert this).
    """
    return getattr(_writing, "depth", 0) > 0


class Store:
    """Rows of every resource in one SQLite database (thread-safe within a process)."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.conn: sqlite3.Connection = db.conn
        self._lock = threading.RLock()
        self._streams = 0  # streams running; while any does, the page cache is small
        self._cache_pragma = 0  # the cache_size to go back to afterwards (read when one starts)
        self._insert_sql = {name: self._insert_statement(t) for name, t in TABLES.items()}
        self._columns = {name: tuple(t.columns) for name, t in TABLES.items()}
        self._packers = {name: packer(t) for name, t in TABLES.items()}
        self._layouts = LAYOUTS
        # Repacks rows whose packed copy was cleared (called by SQLite only for those rows).
        self.conn.create_function("bsync_pack", -1, repacker(TABLES.values()), deterministic=True)

    @staticmethod
    def _insert_statement(tdef: TableDef) -> str:
        cols = ", ".join(f"[{c}]" for c in [*tdef.columns, PACKED])
        marks = ", ".join("?" for _ in range(len(tdef.columns) + 1))
        return f"INSERT OR REPLACE INTO [{tdef.table}] ({cols}) VALUES ({marks})"

    # -- transactions --------------------------------------------------------------------------

    @contextmanager
    def reading(self) -> Iterator[sqlite3.Connection]:
        """The connection, held for one read (the threads of a client share it)."""
        with self._lock:
            yield self.conn

    @contextmanager
    def write(self) -> Iterator[None]:
        """One write transaction (nested calls join it through a savepoint).

        ``BEGIN IMMEDIATE`` takes the write lock up front, so two processes never deadlock on
        a read lock upgrade; the busy timeout makes the loser wait instead of failing.
        """
        with self._lock:
            if self.conn.in_transaction:
                self.conn.execute("SAVEPOINT nested")
                try:
                    yield
                except BaseException:
                    if self.conn.in_transaction:  # SQLite rolls back by itself on a full disk
                        self.conn.execute("ROLLBACK TO SAVEPOINT nested")
                        self.conn.execute("RELEASE SAVEPOINT nested")
                    raise
                self.conn.execute("RELEASE SAVEPOINT nested")
                return
            self.conn.execute("BEGIN IMMEDIATE")
            _writing.depth = getattr(_writing, "depth", 0) + 1
            try:
                try:
                    yield
                except BaseException:
                    if self.conn.in_transaction:  # SQLite rolls back by itself on a full disk
                        self.conn.execute("ROLLBACK")
                    raise
                try:
                    self.conn.execute("COMMIT")
                except BaseException:
                    # A failed COMMIT (a deferred constraint, an I/O error) leaves the
                    # transaction open: without this the next write() would nest in it.
                    if self.conn.in_transaction:
                        self.conn.execute("ROLLBACK")
                    raise
            finally:
                _writing.depth -= 1

    # -- writing rows --------------------------------------------------------------------------

    def upsert(
        self,
        resource: str,
        rows: Iterable[Row],
        newer_only: bool = False,
        read_at: str | None = None,
    ) -> list[int]:
        """Store rows (replacing the stored copies); return the ids written.

        ``newer_only``: rows of the server, read by a request sent at ``read_at`` (this
        machine's clock; None: unknown). They never replace a stored copy whose
        ``last_update`` is newer (a listing read before one of our writes committed), nor one
        holding a change the server applied unseen after the request was sent
        (``UNCONFIRMED_TABLE``).
        """
        return self._write_rows(
            resource, rows, changed_only=False, newer_only=newer_only, read_at=read_at
        )

    def merge(self, resource: str, rows: Iterable[Row], read_at: str | None = None) -> list[int]:
        """Store the rows that differ from the mirror's copy; return the ids written.

        A row equal to the stored one (its packed values compare equal) is not rewritten, so
        reading an unchanged row again costs the pull its bytes and nothing more.
        """
        return self._write_rows(resource, rows, changed_only=True, newer_only=True, read_at=read_at)

    def _write_rows(
        self,
        resource: str,
        rows: Iterable[Row],
        changed_only: bool,
        newer_only: bool = False,
        read_at: str | None = None,
    ) -> list[int]:
        tdef = TABLES[resource]
        columns = list(tdef.columns)
        json_at = [i for i, c in enumerate(columns) if c in tdef.json_columns]
        int_at = [i for i, kind in enumerate(tdef.columns.values()) if kind is int]
        links = RESOURCES[resource].links
        side = [kv.field for kv in tdef.key_values] + ([links] if links else [])
        records = []
        ids = []
        pack_row = self._packers[resource]
        kept: list[Row] = []
        for row in rows:
            record = [row.get(c) for c in columns]
            for i in json_at:
                value = record[i]
                if value is not None and not isinstance(value, str):
                    record[i] = encode_json(value)
            for i in int_at:
                flag = record[i]
                if type(flag) is bool:
                    record[i] = int(flag)  # as SQLite stores it (and the packed copy)
            values = tuple(record)
            records.append((*values, pack_row(values)))
            ids.append(row["id"])
            kept.append(row)
        if not records:
            return []
        with self.write():
            if changed_only or (newer_only and STAMP in tdef.columns):
                records, ids, kept = self._changed(tdef, records, ids, kept, changed_only, read_at)
                if not records:
                    return []
            side_values: dict[str, list[Any]] = {name: [] for name in side}
            for row in kept:
                for name in side:
                    raw = row.get(name)
                    side_values[name].append(json.loads(raw) if isinstance(raw, str) else raw)
            self.conn.executemany(self._insert_sql[resource], records)
            self._write_side_tables(tdef, ids, side_values)
        return ids

    def _changed(
        self,
        tdef: TableDef,
        records: list[tuple[Any, ...]],
        ids: list[int],
        rows: list[Row],
        changed_only: bool,
        read_at: str | None,
    ) -> tuple[list[tuple[Any, ...]], list[int], list[Row]]:
        """Keep the records that are not older than the stored ones: by ``last_update``, and,
        for a row holding a change the server applied unseen, by when their request was sent
        (``read_at``); and, when ``changed_only``, those whose packed values differ from the
        stored ones (or are new)."""
        stamped = STAMP in tdef.columns
        stamp = f"t.[{STAMP}]" if stamped else "NULL"
        stored = {
            r[0]: (r[1], r[2], r[3])
            for r in self.conn.execute(
                f"SELECT t.id, t.[{PACKED}], {stamp}, u.at FROM [{tdef.table}] t "
                f"LEFT JOIN [{UNCONFIRMED_TABLE}] u ON u.resource = ? AND u.id = t.id "
                "WHERE t.id IN (SELECT value FROM json_each(?))",
                [tdef.resource, json.dumps(ids)],
            )
        }
        at = list(tdef.columns).index(STAMP) if stamped else -1

        def keep(obj_id: int, rec: tuple[Any, ...]) -> bool:
            old = stored.get(obj_id)
            if old is None:
                return True
            if old[2] is not None and (read_at is None or read_at <= old[2]):
                return False  # read before the server applied a change the row holds
            new = rec[at] if stamped else None
            if new is not None and old[1] is not None and new < old[1]:
                return False  # the stored copy is newer: this row was read before it
            return not changed_only or rec[-1] is None or old[0] != rec[-1]

        kept = [
            i for i, (obj_id, rec) in enumerate(zip(ids, records, strict=True)) if keep(obj_id, rec)
        ]
        return [records[i] for i in kept], [ids[i] for i in kept], [rows[i] for i in kept]

    def _write_side_tables(
        self, tdef: TableDef, ids: list[int], values: dict[str, list[Any]]
    ) -> None:
        id_list = json.dumps(ids)
        for kv in tdef.key_values:
            self.conn.execute(
                f"DELETE FROM [{kv.table}] WHERE owner_id IN (SELECT value FROM json_each(?))",
                [id_list],
            )
            pairs = []
            for obj_id, mapping in zip(ids, values[kv.field], strict=True):
                for key, value in (mapping or {}).items():
                    if kv.strings_only and not isinstance(value, str):
                        continue
                    pairs.append((obj_id, key, value if isinstance(value, str) else str(value)))
            self.conn.executemany(
                f"INSERT INTO [{kv.table}] (owner_id, key, value) VALUES (?, ?, ?)", pairs
            )
        field = RESOURCES[tdef.resource].links
        if field:
            self.conn.execute(
                f"DELETE FROM [{PARENTS_TABLE}] WHERE job_id IN (SELECT value FROM json_each(?))",
                [id_list],
            )
            links = [
                (obj_id, parent)
                for obj_id, parents in zip(ids, values[field], strict=True)
                for parent in parents or ()
            ]
            self.conn.executemany(
                f"INSERT OR IGNORE INTO [{PARENTS_TABLE}] (job_id, parent_id) VALUES (?, ?)", links
            )

    def delete(self, resource: str, ids: Iterable[int]) -> int:
        """Remove rows by id (and their side-table rows); return how many were removed."""
        tdef = TABLES[resource]
        id_list = json.dumps(list(ids))
        with self.write():
            cur = self.conn.execute(
                f"DELETE FROM [{tdef.table}] WHERE id IN (SELECT value FROM json_each(?))",
                [id_list],
            )
            for kv in tdef.key_values:
                self.conn.execute(
                    f"DELETE FROM [{kv.table}] WHERE owner_id IN (SELECT value FROM json_each(?))",
                    [id_list],
                )
            if RESOURCES[resource].links:
                self.conn.execute(
                    f"DELETE FROM [{PARENTS_TABLE}] WHERE job_id IN "
                    "(SELECT value FROM json_each(?))",
                    [id_list],
                )
        return cur.rowcount

    def delete_cascade(self, resource: str, ids: list[int]) -> None:
        """Remove rows the way the server's deletes cascade (``Resource.cascade``, ``detach``;
        balsam-api.md §1.1-§1.4): a site takes its apps and batch jobs, an app its jobs, a job
        its transfer items and events; jobs outlive their batch job, which they stop naming."""
        if not ids:
            return
        res = RESOURCES[resource]
        each = "(SELECT value FROM json_each(?))"
        with self.write():
            for child, field in res.cascade:
                table = TABLES[child].table
                self.delete_cascade(
                    child, self._ids(f"SELECT id FROM [{table}] WHERE [{field}] IN {each}", ids)
                )
            for child, field in res.detach:
                table = TABLES[child].table
                self.conn.execute(
                    f"UPDATE [{table}] SET [{field}] = NULL WHERE [{field}] IN {each}",
                    [json.dumps(ids)],
                )
            self.delete(resource, ids)

    def _ids(self, sql: str, ids: list[int]) -> list[int]:
        return [r[0] for r in self.conn.execute(sql, [json.dumps(ids)])]

    def all_ids(self, resource: str) -> set[int]:
        """Ids of the rows the server has confirmed (provisional rows have negative ids)."""
        table = TABLES[resource].table
        with self._lock:
            return {r[0] for r in self.conn.execute(f"SELECT id FROM [{table}] WHERE id > 0")}

    def count_confirmed(self, resource: str) -> int:
        table = TABLES[resource].table
        with self._lock:
            (n,) = self.conn.execute(f"SELECT count(*) FROM [{table}] WHERE id > 0").fetchone()
        return int(n)

    def get(self, resource: str, obj_id: int) -> Row | None:
        """Return one row with its JSON columns decoded, or None."""
        rows = self.query(QuerySpec(resource).with_filters({"id": [obj_id]}))
        return self.decode(resource, rows[0]) if rows else None

    # -- reading -------------------------------------------------------------------------------

    def _select(self, spec: QuerySpec, columns: str | None = None) -> tuple[str, list[Any]]:
        c = compile_spec(spec)
        cols = columns or ", ".join(f"[{col}]" for col in TABLES[spec.resource].columns)
        sql = f"SELECT {cols} FROM [{c.table}] WHERE {c.where} ORDER BY {c.order_by}"
        args = list(c.args)
        if c.limit is not None or c.offset:
            sql += " LIMIT ? OFFSET ?"
            args += [-1 if c.limit is None else c.limit, c.offset]
        return sql, args

    def query(self, spec: QuerySpec) -> list[Row]:
        """Return the rows of ``spec`` in the server's order (JSON columns left as text)."""
        sql, args = self._select(spec)
        names = list(TABLES[spec.resource].columns)
        with self._lock:
            cursor = self.conn.execute(sql, args)
            return [dict(zip(names, rec, strict=True)) for rec in cursor]

    def query_packed(self, spec: QuerySpec) -> tuple[RowLayout, list[tuple[int, bytes]]]:
        """Like ``query`` but each row is ``(id, blob)``: the id plus every value packed in one
        blob (the cheapest form to fetch; the id is read without unpacking the blob)."""
        columns = ", ".join(f"[{c}]" for c in self._columns[spec.resource])
        table = TABLES[spec.resource].table
        sql, args = self._select(
            spec, f"[id], coalesce([{PACKED}], bsync_pack('{table}', {columns}))"
        )
        with self._lock:
            packed = self.conn.execute(sql, args).fetchall()
        return self._layouts[spec.resource], packed

    def stream(self, spec: QuerySpec, chunk_size: int = 2000) -> Iterator[Row]:
        """Yield the rows of ``spec`` in pages of ``chunk_size``.

        Ordered by id (the default of most resources), pages continue after the last id seen
        (keyset), so a page deep into a million rows costs what the first one does; other
        orderings page by offset.
        """
        with self._small_cache():
            yield from self._stream(spec, chunk_size)

    @contextmanager
    def _small_cache(self) -> Iterator[None]:
        """Shrink the page cache to ``STREAM_CACHE_KIB`` until the last stream ends.

        Other reads meanwhile share the small cache; afterwards the cache refills on demand.
        """
        with self._lock:
            if not self._streams:
                (self._cache_pragma,) = self.conn.execute("PRAGMA cache_size").fetchone()
                self.conn.execute(f"PRAGMA cache_size = -{STREAM_CACHE_KIB}")
            self._streams += 1
        try:
            yield
        finally:
            with self._lock:
                self._streams -= 1
                if not self._streams:
                    self.conn.execute(f"PRAGMA cache_size = {int(self._cache_pragma)}")

    def _stream(self, spec: QuerySpec, chunk_size: int) -> Iterator[Row]:
        names = list(TABLES[spec.resource].columns)
        default = RESOURCES[spec.resource].default_ordering
        by_id = (spec.ordering or default) == "id" and not spec.is_sliced
        if by_id:
            yield from self._stream_by_id(spec, names, chunk_size)
            return
        offset = 0
        while True:
            window = spec.with_window(offset, offset + chunk_size)
            sql, args = self._select(window)
            with self._lock:
                page = self.conn.execute(sql, args).fetchall()
            for rec in page:
                yield dict(zip(names, rec, strict=True))
            if len(page) < chunk_size:
                return
            offset += chunk_size

    def _stream_by_id(self, spec: QuerySpec, names: list[str], size: int) -> Iterator[Row]:
        c = compile_spec(spec)
        cols = ", ".join(f"[{col}]" for col in names)
        sql = (
            f"SELECT {cols} FROM [{c.table}] WHERE ({c.where}) AND [{c.table}].id > ? "
            f"ORDER BY [{c.table}].id LIMIT ?"
        )
        last, at = -(2**62), names.index("id")
        while True:
            with self._lock:
                page = self.conn.execute(sql, [*c.args, last, size]).fetchall()
            for rec in page:
                yield dict(zip(names, rec, strict=True))
            if len(page) < size:
                return
            last = page[-1][at]

    def count(self, spec: QuerySpec) -> int:
        """Return the number of rows matching the filters of ``spec`` (window ignored)."""
        sql, args = count_sql(spec)
        with self._lock:
            (n,) = self.conn.execute(sql, args).fetchone()
        return int(n)

    def decode(self, resource: str, row: Row) -> Row:
        """Return ``row`` with its JSON columns decoded (rows straight from ``query``)."""
        json_cols = TABLES[resource].json_columns
        return {
            k: json.loads(v) if k in json_cols and isinstance(v, str) else v for k, v in row.items()
        }
