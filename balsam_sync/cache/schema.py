"""Tables, columns and indexes of the mirror, derived from the wire schemas, and migrations.

Each resource gets a table with a typed column per field (JSON text for dicts, lists and sets).
Key/value containment filters (``tags``, ``filter_tags``, event ``data``) and the parent
overlap filter get side tables with indexes, so no query parses JSON per row.
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from pathlib import Path
from types import NoneType, UnionType
from typing import Any
from uuid import UUID

from pydantic import BaseModel
from sqlite_utils import Database
from sqlite_utils.migrations import Migrations

from ..resources import RESOURCES, Resource

SCHEMA_VERSION = 8
"""Bump with a new migration whenever the layout below changes."""

PACKED = "_packed"
"""Column holding a row's values packed in one blob (``marshal``), so a query turns each row
into Python with one call instead of one conversion per column. It is a cache of the other
columns: an UPDATE that does not write it clears it (a trigger), and readers repack a NULL."""


@dataclass(frozen=True)
class KeyValueTable:
    """A side table holding one row per (owner, key, value) of a dict field."""

    table: str
    field: str
    strings_only: bool = False  # event data: the server matches string values only


@dataclass(frozen=True)
class TableDef:
    """How one resource is laid out in the mirror."""

    resource: str
    table: str
    columns: dict[str, type]
    json_columns: frozenset[str]
    indexes: tuple[tuple[str, ...], ...]
    key_values: tuple[KeyValueTable, ...] = ()


def _column_type(annotation: Any) -> tuple[type, bool]:
    """Return (SQLite column type, is_json) for a field annotation."""
    if typing.get_origin(annotation) in (typing.Union, UnionType):
        args = [a for a in typing.get_args(annotation) if a is not NoneType]
        annotation = args[0] if len(args) == 1 else Any
    origin = typing.get_origin(annotation) or annotation
    if origin in (dict, list, set, frozenset):
        return str, True
    if annotation is bool:
        return int, False
    if annotation in (int, float):
        return annotation, False
    if annotation in (str, datetime, UUID, Path) or (
        isinstance(annotation, type) and issubclass(annotation, Enum)
    ):
        return str, False
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return str, True
    return str, True


def _table_def(
    res: Resource,
    table: str,
    indexes: tuple[tuple[str, ...], ...],
    key_values: tuple[KeyValueTable, ...] = (),
) -> TableDef:
    columns: dict[str, type] = {}
    json_columns = set()
    for name, info in res.out.model_fields.items():
        col_type, is_json = _column_type(info.annotation)
        columns[name] = col_type
        if is_json:
            json_columns.add(name)
    return TableDef(res.name, table, columns, frozenset(json_columns), indexes, key_values)


TABLES: dict[str, TableDef] = {
    "Site": _table_def(RESOURCES["Site"], "sites", (("name",), ("last_refresh",))),
    "App": _table_def(RESOURCES["App"], "apps", (("site_id",), ("name",))),
    "Job": _table_def(
        RESOURCES["Job"],
        "jobs",
        (
            ("state", "last_update"),
            ("last_update",),
            ("app_id",),
            ("batch_job_id",),
            ("workdir",),
            ("state", "workdir"),
        ),
        (KeyValueTable("job_tags", "tags"),),
    ),
    "BatchJob": _table_def(
        RESOURCES["BatchJob"],
        "batch_jobs",
        (("site_id",), ("start_time",), ("end_time",), ("scheduler_id",), ("state",)),
        (KeyValueTable("batch_job_tags", "filter_tags"),),
    ),
    "TransferItem": _table_def(
        RESOURCES["TransferItem"], "transfer_items", (("job_id",), ("state",))
    ),
    "EventLog": _table_def(
        RESOURCES["EventLog"],
        "event_logs",
        (("job_id",), ("timestamp",), ("to_state",), ("from_state",)),
        (KeyValueTable("event_data", "data", strings_only=True),),
    ),
}

MARKS_TABLE = "job_marks"
"""One row per job whose transfer items and events were read from the server: the job's
``last_update`` at that time. A job whose ``last_update`` differs from its mark (or that has
none) needs its transfer items and events read again (see sync/children.py)."""

UNCONFIRMED_TABLE = "unconfirmed"
"""One row per mirror row holding a change the server applied without sending the row back
(see m007)."""

ITEMLESS_TABLE = "itemless_jobs"
"""Jobs created here without transfer items: they never have any (items are only made with
their job), so the state the server derives for them is known."""

MARKED_TABLE = "marked_jobs"
"""Jobs created here whose creation tag (``resources.MARKER_KEY``) is still on the server: a
push removes it once no sender can look the create up again (it is settled)."""

SEEN_TABLE = "journal_seen"
"""The records of the user's queue (cache/journal.py) this mirror has applied."""

SETTLED_TABLE = "journal_settled"
"""Queue entries delivered or dropped: a record that queued them, read late, is not applied."""

PARENTS_TABLE = "job_parents"
"""One row per (job, parent): the index behind the ``parent_id`` overlap filter."""

REFERENCES: dict[tuple[str, str], str] = {
    (res.name, name): target for res in RESOURCES.values() for name, target in res.references
}
"""Fields that hold another object's id: (resource, field) -> referenced resource
(``Resource.references``)."""

migrations = Migrations("balsam_sync_mirror")


@migrations()
def m001_mirror_tables(db: Database) -> None:
    """Create the resource tables, their side tables and indexes, and the bookkeeping tables."""
    for tdef in TABLES.values():
        db[tdef.table].create(tdef.columns, pk="id", not_null={"id"})  # type: ignore[union-attr]
        for cols in tdef.indexes:
            db[tdef.table].create_index(list(cols))  # type: ignore[union-attr]
        for kv in tdef.key_values:
            db.execute(
                f"CREATE TABLE [{kv.table}] (owner_id INTEGER NOT NULL, key TEXT NOT NULL, "
                "value TEXT, PRIMARY KEY (owner_id, key)) WITHOUT ROWID"
            )
            db.execute(f"CREATE INDEX [idx_{kv.table}_kv] ON [{kv.table}] (key, value, owner_id)")
    db.execute(
        f"CREATE TABLE [{PARENTS_TABLE}] (job_id INTEGER NOT NULL, parent_id INTEGER NOT NULL, "
        "PRIMARY KEY (job_id, parent_id)) WITHOUT ROWID"
    )
    db.execute(
        f"CREATE INDEX [idx_{PARENTS_TABLE}_parent] ON [{PARENTS_TABLE}] (parent_id, job_id)"
    )
    db["meta"].create({"key": str, "value": str}, pk="key")  # type: ignore[union-attr]
    db["sync_state"].create(  # type: ignore[union-attr]
        {"resource": str, "full_at": str, "watermark": str, "pulled_at": str}, pk="resource"
    )
    # One row per server answer the mirror can stand in for (see cache/coverage.py).
    db["fetches"].create(  # type: ignore[union-attr]
        {
            "resource": str,
            "filters": str,
            "ordering": str,
            "low": int,
            "high": int,
            "count": int,
            "fetched_at": str,
        },
        pk=("resource", "filters", "ordering", "low", "high"),
    )
    # The outbox: mutations applied to the mirror and not yet acknowledged by the server.
    db.execute(
        "CREATE TABLE outbox (seq INTEGER PRIMARY KEY AUTOINCREMENT, resource TEXT NOT NULL, "
        "op TEXT NOT NULL, obj_id INTEGER NOT NULL, payload TEXT NOT NULL, marker TEXT, "
        "state TEXT NOT NULL, attempts INTEGER NOT NULL DEFAULT 0, status INTEGER, error TEXT, "
        "created_at TEXT NOT NULL, updated_at TEXT NOT NULL)"
    )
    db.execute("CREATE INDEX idx_outbox_state ON outbox (state, seq)")
    db.execute("CREATE INDEX idx_outbox_obj ON outbox (resource, obj_id)")
    db["id_map"].create(  # type: ignore[union-attr]
        {"temp_id": int, "resource": str, "real_id": int}, pk="temp_id"
    )
    db["counters"].create({"name": str, "value": int}, pk="name")  # type: ignore[union-attr]
    db["sync_log"].create({"key": str, "value": str}, pk="key")  # type: ignore[union-attr]


@migrations()
def m002_descending_order_indexes(db: Database) -> None:
    """Indexes that serve ``-last_update`` / ``-timestamp`` with the server's ``id`` tie-break.

    The implicit rowid (= id) suffix of an index is ascending, so an index on ``x DESC`` read
    forward yields ``x DESC, id ASC`` — the server's order — without a sort.
    """
    db.execute("CREATE INDEX idx_jobs_state_last_update_desc ON jobs (state, last_update DESC)")
    db.execute("CREATE INDEX idx_jobs_last_update_desc ON jobs (last_update DESC)")
    db.execute("CREATE INDEX idx_event_logs_timestamp_desc ON event_logs (timestamp DESC)")
    db.execute("CREATE INDEX idx_event_logs_job_timestamp ON event_logs (job_id, timestamp DESC)")


@migrations()
def m003_packed_rows(db: Database) -> None:
    """Add the packed copy of each row and the trigger that keeps it from going stale."""
    for tdef in TABLES.values():
        t = tdef.table
        db.execute(f"ALTER TABLE [{t}] ADD COLUMN [{PACKED}] BLOB")
        db.execute(
            f"CREATE TRIGGER [{t}_unpack] AFTER UPDATE ON [{t}] FOR EACH ROW "
            f"WHEN NEW.[{PACKED}] IS NOT NULL AND NEW.[{PACKED}] IS OLD.[{PACKED}] "
            f"BEGIN UPDATE [{t}] SET [{PACKED}] = NULL WHERE rowid = NEW.rowid; END"
        )


@migrations()
def m004_outbox_attempt_times(db: Database) -> None:
    """Record when an entry was last sent and when it may be tried again (replay settling)."""
    db.execute("ALTER TABLE outbox ADD COLUMN sent_at TEXT")
    db.execute("ALTER TABLE outbox ADD COLUMN next_try_at TEXT")


@migrations()
def m005_pull_marks(db: Database) -> None:
    """Add the job marks and the time of the last full reconciliation."""
    db.execute(
        f"CREATE TABLE [{MARKS_TABLE}] (id INTEGER PRIMARY KEY, stamp TEXT NOT NULL, "
        "at TEXT NOT NULL)"
    )
    db.execute("ALTER TABLE sync_state ADD COLUMN reconciled_at TEXT")
    # A pull of the earlier layout left a watermark that may have skipped late commits: the
    # next pull reads everything again.
    db.execute("UPDATE sync_state SET watermark = NULL")


@migrations()
def m006_outbox_failing_since(db: Database) -> None:
    """Record when the server first failed a queued change (a change it fails every time
    becomes a dead letter after a while, instead of holding others back)."""
    db.execute("ALTER TABLE outbox ADD COLUMN failing_since TEXT")


@migrations()
def m007_unconfirmed_rows(db: Database) -> None:
    """Rows whose change the server acknowledged without sending them back (a job's PATCH
    answers a count): ``at`` is when it did (this machine's clock), so a server copy read by a
    request sent earlier cannot replace the row; ``fields`` are those the mirror does not know
    (the server sets them: the new stamp, a state it may rewrite). And the jobs known to have
    no transfer items, and those whose creation tag is still on the server."""
    db.execute(
        f"CREATE TABLE [{UNCONFIRMED_TABLE}] (resource TEXT NOT NULL, id INTEGER NOT NULL, "
        "at TEXT NOT NULL, fields TEXT NOT NULL, PRIMARY KEY (resource, id)) WITHOUT ROWID"
    )
    db.execute(f"CREATE TABLE [{ITEMLESS_TABLE}] (id INTEGER PRIMARY KEY)")
    db.execute(f"CREATE TABLE [{MARKED_TABLE}] (id INTEGER PRIMARY KEY)")


@migrations()
def m008_shared_queue(db: Database) -> None:
    """The queue is also the user's, in files every login node sees (cache/journal.py): each
    entry gets the id its record gives it and the node that queued it; the records applied
    here are remembered, and so are the entries settled (a record read late cannot bring one
    back); provisional ids come from blocks no other mirror uses."""
    db.execute("ALTER TABLE outbox ADD COLUMN uid TEXT")
    db.execute("ALTER TABLE outbox ADD COLUMN node TEXT")
    db.execute("CREATE UNIQUE INDEX idx_outbox_uid ON outbox (uid)")
    db.execute(f"CREATE TABLE [{SEEN_TABLE}] (name TEXT PRIMARY KEY) WITHOUT ROWID")
    db.execute(f"CREATE TABLE [{SETTLED_TABLE}] (uid TEXT PRIMARY KEY) WITHOUT ROWID")


@migrations()
def m009_pull_plan(db: Database) -> None:
    """Add the plan of an unfinished first or full pull: where each listing stands, and the
    jobs' stamps its transfer items and events are listed for (cache/pullplan.py)."""
    db.execute(
        "CREATE TABLE pull_plan (id INTEGER PRIMARY KEY CHECK (id = 1), kind TEXT NOT NULL, "
        "started TEXT NOT NULL, children_from TEXT, jobs_first INTEGER NOT NULL DEFAULT 0, "
        "recorded INTEGER NOT NULL DEFAULT 0)"
    )
    db.execute(
        "CREATE TABLE pull_cursors (resource TEXT NOT NULL, part INTEGER NOT NULL, key TEXT, "
        "lower TEXT, upper TEXT, skip INTEGER NOT NULL, last_value TEXT, last_id INTEGER, "
        "stored INTEGER NOT NULL, total INTEGER, done INTEGER NOT NULL, "
        "PRIMARY KEY (resource, part))"
    )
    db.execute("CREATE TABLE pull_marks (id INTEGER PRIMARY KEY, stamp TEXT NOT NULL)")


def clear_packed(db: Database) -> None:
    """Drop every packed copy (they are rebuilt on read), e.g. for another Python's marshal."""
    for tdef in TABLES.values():
        db.execute(f"UPDATE [{tdef.table}] SET [{PACKED}] = NULL WHERE [{PACKED}] IS NOT NULL")
