"""A ``QuerySpec`` as SQL over the mirror: the only filter → SQL translation.

Each Balsam filter maps to the SQL that gives the server's exact answer (balsam-api.md §2.1):
list filters become ``IN (json_each(?))`` (any length, one parameter), key/value containment
becomes one indexed ``EXISTS`` per pair, LIKE filters become case-sensitive GLOB patterns with
PostgreSQL's backslash escapes, and ordering adds the server's ``id`` tie-break with its NULL
placement (NULLS LAST ascending, NULLS FIRST descending).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ..resources import RESOURCES
from ..spec import QuerySpec
from ..utc import utc_text
from .schema import PARENTS_TABLE, TABLES

Fragment = tuple[str, list[Any]]
Compiler = Callable[[str, Any], Fragment]


@dataclass(frozen=True)
class Compiled:
    """The pieces of ``SELECT ... FROM table WHERE where ORDER BY order_by LIMIT/OFFSET``."""

    table: str
    where: str
    args: list[Any]
    order_by: str
    limit: int | None
    offset: int


def sql_time(value: datetime) -> str:
    """Canonical text of a datetime, as stored in the mirror (UTC, microseconds, +00:00)."""
    return utc_text(value)


def like_contains_glob(value: str) -> str:
    """Turn a PostgreSQL ``LIKE '%value%'`` into the equivalent SQLite GLOB pattern.

    ``%`` and ``_`` stay wildcards, a backslash makes the next character literal, and GLOB's
    own special characters are bracketed so they match themselves.
    """
    # The server builds the pattern f"%{value}%" first, so a backslash at the end of the value
    # escapes the closing "%" (the match must then end with a literal "%").
    pattern = f"%{value}%"
    out = []
    i = 0
    while i < len(pattern):
        char = pattern[i]
        if char == "\\" and i + 1 < len(pattern):
            out.append(_glob_literal(pattern[i + 1]))
            i += 2
            continue
        out.append("*" if char == "%" else "?" if char == "_" else _glob_literal(char))
        i += 1
    return "".join(out)


def _glob_literal(char: str) -> str:
    return f"[{char}]" if char in "*?[" else char


def _in_list(column: str) -> Compiler:
    def compile_(table: str, value: Any) -> Fragment:
        values = list(value)
        if len(values) == 1:  # lets SQLite walk an index in ORDER BY order
            return f"{table}.{column} = ?", values
        if len(values) <= SMALL_LIST:
            return f"{table}.{column} IN ({', '.join('?' for _ in values)})", values
        return f"{table}.{column} IN (SELECT value FROM json_each(?))", [json.dumps(values)]

    return compile_


SMALL_LIST = 64
"""Lists up to this long are inlined as parameters; longer ones travel as one JSON array."""


def _compare(column: str, op: str) -> Compiler:
    def compile_(table: str, value: Any) -> Fragment:
        if isinstance(value, datetime):
            value = sql_time(value)
        elif isinstance(value, bool):
            value = int(value)
        return f"{table}.{column} {op} ?", [value]

    return compile_


def _contains(column: str) -> Compiler:
    def compile_(table: str, value: Any) -> Fragment:
        return f"{table}.{column} GLOB ?", [like_contains_glob(value)]

    return compile_


def _key_values(kv_table: str, owner_column: str = "id") -> Compiler:
    """Containment of every (key, value) pair, one indexed lookup per pair."""

    def compile_(table: str, value: Any) -> Fragment:
        parts, args = [], []
        for key, val in value:
            parts.append(
                f"EXISTS (SELECT 1 FROM [{kv_table}] kv WHERE kv.owner_id = {table}.{owner_column}"
                " AND kv.key = ? AND kv.value = ?)"
            )
            args += [key, val]
        return " AND ".join(parts), args

    return compile_


def _via(column: str, subquery: str, wrap: Callable[[Any], list[Any]] | None = None) -> Compiler:
    """``column IN (subquery)`` where the subquery takes the filter value as its parameter."""

    def compile_(table: str, value: Any) -> Fragment:
        args = wrap(value) if wrap else [value]
        return f"{table}.{column} IN ({subquery})", args

    return compile_


def _json_list(value: Any) -> list[Any]:
    return [json.dumps(list(value))]


def _glob(value: Any) -> list[Any]:
    return [like_contains_glob(value)]


EACH = "SELECT value FROM json_each(?)"

COMPILERS: dict[str, dict[str, Compiler]] = {
    "Site": {
        "name": _compare("name", "="),
        "path": _contains("path"),
        "id": _in_list("id"),
        "last_refresh_after": _compare("last_refresh", ">="),
    },
    "App": {
        "site_id": _in_list("site_id"),
        "id": _in_list("id"),
        "name": _compare("name", "="),
        "site_path": _via("site_id", "SELECT id FROM sites WHERE path GLOB ?", _glob),
        "site_name": _via("site_id", "SELECT id FROM sites WHERE name = ?"),
    },
    "Job": {
        "id": _in_list("id"),
        "parent_id": _via(
            "id", f"SELECT job_id FROM [{PARENTS_TABLE}] WHERE parent_id IN ({EACH})", _json_list
        ),
        "app_id": _compare("app_id", "="),
        "site_id": _via("app_id", f"SELECT id FROM apps WHERE site_id IN ({EACH})", _json_list),
        # Quirk of the server (its SQL joins BatchJob through the Site): this filter matches
        # every job at the SITE of the batch job, not only the jobs that ran in it.
        "batch_job_id": _via(
            "app_id",
            "SELECT a.id FROM apps a JOIN batch_jobs b ON b.site_id = a.site_id WHERE b.id = ?",
        ),
        "last_update_before": _compare("last_update", "<="),
        "last_update_after": _compare("last_update", ">="),
        "workdir__contains": _contains("workdir"),
        "state__ne": _compare("state", "!="),
        "state": _in_list("state"),
        "tags": _key_values("job_tags"),
        "pending_file_cleanup": _compare("pending_file_cleanup", "="),
    },
    "BatchJob": {
        "id": _in_list("id"),
        "site_id": _in_list("site_id"),
        "state": _in_list("state"),
        "scheduler_id": _compare("scheduler_id", "="),
        "queue": _compare("queue", "="),
        "start_time_before": _compare("start_time", "<="),
        "start_time_after": _compare("start_time", ">="),
        "end_time_before": _compare("end_time", "<="),
        "end_time_after": _compare("end_time", ">="),
        "filter_tags": _key_values("batch_job_tags"),
    },
    "TransferItem": {
        "id": _in_list("id"),
        "site_id": _via(
            "job_id", "SELECT j.id FROM jobs j JOIN apps a ON a.id = j.app_id WHERE a.site_id = ?"
        ),
        "job_id": _in_list("job_id"),
        "state": _in_list("state"),
        "direction": _compare("direction", "="),
        "job_state": _via("job_id", "SELECT id FROM jobs WHERE state = ?"),
        "tags": _key_values("job_tags", "job_id"),
    },
    "EventLog": {
        "id": _in_list("id"),
        "job_id": _in_list("job_id"),
        "batch_job_id": _via("job_id", "SELECT id FROM jobs WHERE batch_job_id = ?"),
        # Quirk of the server, as for Job.batch_job_id: the BatchJob is joined through the
        # Site, so this matches the events of every job at the site of such a batch job.
        "scheduler_id": _via(
            "job_id",
            "SELECT j.id FROM jobs j JOIN apps a ON a.id = j.app_id "
            "JOIN batch_jobs b ON b.site_id = a.site_id WHERE b.scheduler_id = ?",
        ),
        "tags": _key_values("job_tags", "job_id"),
        "data": _key_values("event_data"),
        "timestamp_before": _compare("timestamp", "<="),
        "timestamp_after": _compare("timestamp", ">="),
        "from_state": _compare("from_state", "="),
        "to_state": _compare("to_state", "="),
    },
}

NULLABLE_ORDERINGS = frozenset({"start_time"})
"""Ordering fields that can be NULL on the server (PostgreSQL puts NULLs last ascending and
first descending; SQLite does the opposite). Other fields are never NULL on the server, so
their ORDER BY stays plain and an index can serve it (NULL is only in provisional rows)."""


def order_clause(table: str, ordering: str | None, resource: str) -> str:
    """ORDER BY text matching the server's sort (see ``Resource.order``)."""
    field, descending = RESOURCES[resource].order(ordering)
    if field == "id":
        return f"{table}.id {'DESC' if descending else 'ASC'}"
    nulls = ""
    if field in NULLABLE_ORDERINGS:
        nulls = " NULLS FIRST" if descending else " NULLS LAST"
    return f"{table}.{field} {'DESC' if descending else 'ASC'}{nulls}, {table}.id ASC"


OWN_KEY_VALUES = {"Job": ("tags", "job_tags"), "BatchJob": ("filter_tags", "batch_job_tags")}
"""Containment filters whose side table belongs to the queried table itself."""


def count_sql(spec: QuerySpec) -> tuple[str, list[Any]]:
    """``SELECT count(*)`` for the filters of ``spec``.

    A count filtered only by tag pairs is answered from the side table's (key, value) index
    alone, without touching the rows: the common "how many jobs of experiment X" stays fast
    on a mirror of millions of jobs.
    """
    own = OWN_KEY_VALUES.get(spec.resource)
    if own and not spec.empty and [name for name, _ in spec.filters] == [own[0]]:
        pairs = spec.filters[0][1]
        joins = "".join(
            f" JOIN [{own[1]}] k{i} ON k{i}.owner_id = k0.owner_id"
            f" AND k{i}.key = ? AND k{i}.value = ?"
            for i in range(1, len(pairs))
        )
        args = [part for pair in pairs[1:] for part in pair] + list(pairs[0])
        return f"SELECT count(*) FROM [{own[1]}] k0{joins} WHERE k0.key = ? AND k0.value = ?", args
    c = compile_spec(spec.unsliced())
    return f"SELECT count(*) FROM [{c.table}] WHERE {c.where}", c.args


def compile_spec(spec: QuerySpec) -> Compiled:
    """Translate ``spec`` into SQL pieces over its resource's mirror table."""
    table = TABLES[spec.resource].table
    compilers = COMPILERS[spec.resource]
    parts: list[str] = []
    args: list[Any] = []
    if spec.empty:
        parts.append("0")
    for name, value in spec.filters:
        sql, more = compilers[name](table, value)
        parts.append(sql)
        args += more
    return Compiled(
        table=table,
        where=" AND ".join(f"({p})" for p in parts) or "1",
        args=args,
        order_by=order_clause(table, spec.ordering, spec.resource),
        limit=spec.limit,
        offset=spec.low,
    )
