"""What a pull needs to know about the mirror: job marks, unfinished rows, children by job.

A job's *mark* is its ``last_update`` when its transfer items and events were last read from
the server. Every server-side change of a job's items or events also changes the job's
``last_update`` (the server logs events and moves jobs in the transaction that changes them),
so a job whose mark equals its ``last_update`` has its children in the mirror as the server has
them; any other job needs them read again.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..resources import JOB, TRANSFER_ITEM, Row
from .schema import (
    ITEMLESS_TABLE,
    MARKED_TABLE,
    MARKS_TABLE,
    PARENTS_TABLE,
    TABLES,
    UNCONFIRMED_TABLE,
)
from .store import Store


@dataclass(frozen=True)
class Unsynced:
    """A job whose children need reading: its id, its ``last_update`` and why."""

    id: int
    stamp: str | None
    changed: bool  # it had a mark: its children were read before, and the job changed since
    done: bool  # finished or failed: its children are history


class PullState:
    """Reads and writes the pull's bookkeeping in one mirror."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn

    def _rows(self, sql: str, args: list[Any]) -> list[tuple[Any, ...]]:
        with self.store.reading():
            return [tuple(r) for r in self.conn.execute(sql, args)]

    # -- job marks -----------------------------------------------------------------------------

    def unsynced_jobs(self) -> list[Unsynced]:
        """Jobs whose children are not known to match the server's."""
        done = ", ".join(f"'{s}'" for s in JOB.done_states)
        rows = self._rows(
            f"SELECT j.id, j.last_update, m.stamp IS NOT NULL, j.state IN ({done}) "
            f"FROM jobs j LEFT JOIN [{MARKS_TABLE}] m ON m.id = j.id WHERE j.id > 0 "
            "AND (m.stamp IS NULL OR m.stamp IS NOT j.last_update) ORDER BY j.id",
            [],
        )
        return [Unsynced(r[0], r[1], bool(r[2]), bool(r[3])) for r in rows]

    def count_unsynced(self) -> int:
        (n,) = self._rows(
            f"SELECT count(*) FROM jobs j LEFT JOIN [{MARKS_TABLE}] m ON m.id = j.id "
            "WHERE j.id > 0 AND (m.stamp IS NULL OR m.stamp IS NOT j.last_update)",
            [],
        )[0]
        return int(n)

    def marks(self, ids: list[int]) -> dict[int, str]:
        """The marks of these jobs (jobs without one are left out)."""
        rows = self._rows(
            f"SELECT id, stamp FROM [{MARKS_TABLE}] WHERE id IN (SELECT value FROM json_each(?))",
            [json.dumps(ids)],
        )
        return {r[0]: r[1] for r in rows}

    def existing(self, resource: str, ids: list[int]) -> set[int]:
        """Which of ``ids`` the mirror holds."""
        table = TABLES[resource].table
        rows = self._rows(
            f"SELECT id FROM [{table}] WHERE id IN (SELECT value FROM json_each(?))",
            [json.dumps(ids)],
        )
        return {r[0] for r in rows}

    def set_marks(self, marks: list[tuple[int, str | None]], at: str) -> None:
        """Record that the children of these jobs were read when they had these stamps."""
        rows = [(obj_id, stamp, at) for obj_id, stamp in marks if stamp is not None]
        with self.store.write():
            self.conn.executemany(
                f"INSERT OR REPLACE INTO [{MARKS_TABLE}] (id, stamp, at) VALUES (?, ?, ?)", rows
            )

    def drop_marks(self, ids: list[int]) -> None:
        """Forget the marks of these jobs: their children must be read again."""
        self.conn.execute(
            f"DELETE FROM [{MARKS_TABLE}] WHERE id IN (SELECT value FROM json_each(?))",
            [json.dumps(ids)],
        )

    def drop_stray_marks(self) -> None:
        """Forget the marks of jobs that left the mirror."""
        with self.store.write():
            self.conn.execute(f"DELETE FROM [{MARKS_TABLE}] WHERE id NOT IN (SELECT id FROM jobs)")

    # -- children ------------------------------------------------------------------------------

    def replace_children(self, resource: str, job_ids: list[int], rows: list[Row]) -> list[int]:
        """Make the mirror's ``resource`` rows of these jobs exactly ``rows``; return ids written.

        Rows the server no longer lists for these jobs are removed (their own pending local
        changes, provisional rows with negative ids, are kept).
        """
        table = TABLES[resource].table
        keep = {r["id"] for r in rows}
        with self.store.write():
            stored = self._rows(
                f"SELECT id FROM [{table}] WHERE id > 0 AND job_id IN "
                "(SELECT value FROM json_each(?))",
                [json.dumps(job_ids)],
            )
            gone = [r[0] for r in stored if r[0] not in keep]
            if gone:
                self.store.delete(resource, gone)
            return self.store.merge(resource, rows)

    # -- rows the server changed without sending them back -------------------------------------

    def mark_unconfirmed(self, resource: str, rows: list[tuple[int, str]], at: str) -> None:
        """These rows hold changes the server applied at ``at`` (this machine's clock) without
        sending them back; the comma-separated ``fields`` of each are not known."""
        with self.store.write():
            self.conn.executemany(
                f"INSERT INTO [{UNCONFIRMED_TABLE}] (resource, id, at, fields) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (resource, id) DO UPDATE SET "
                "at = max(at, excluded.at), fields = CASE WHEN instr(',' || fields || "
                "',', ',' || excluded.fields || ',') THEN fields ELSE fields || ',' || "
                "excluded.fields END",
                [(resource, obj_id, at, fields) for obj_id, fields in rows],
            )

    def unknown_fields(self, resource: str, ids: list[int]) -> dict[int, frozenset[str]]:
        """The fields the mirror does not know of these rows (rows it knows are left out)."""
        rows = self._rows(
            f"SELECT id, fields FROM [{UNCONFIRMED_TABLE}] WHERE resource = ? AND id IN "
            "(SELECT value FROM json_each(?))",
            [resource, json.dumps(ids)],
        )
        return {r[0]: frozenset(r[1].split(",")) for r in rows}

    def drop_unconfirmed(self, resource: str, ids: list[int]) -> None:
        """The server sent these rows (newer than any change it applied unseen)."""
        if ids:
            self.conn.execute(
                f"DELETE FROM [{UNCONFIRMED_TABLE}] WHERE resource = ? AND id IN "
                "(SELECT value FROM json_each(?))",
                [resource, json.dumps(ids)],
            )

    def unconfirmed(self, resource: str) -> list[int]:
        rows = self._rows(
            f"SELECT id FROM [{UNCONFIRMED_TABLE}] WHERE resource = ? ORDER BY id", [resource]
        )
        return [r[0] for r in rows]

    def waiting_children(self, parents: list[int]) -> list[tuple[int, Any]]:
        """The jobs waiting for any of ``parents`` (AWAITING_PARENTS), with their stamps."""
        return self._rows(
            f"SELECT j.id, j.last_update FROM [{PARENTS_TABLE}] p JOIN jobs j ON j.id = p.job_id "
            "WHERE p.parent_id IN (SELECT value FROM json_each(?)) AND j.state = ?",
            [json.dumps(parents), JOB.waiting_state],
        )

    def itemless(self, ids: list[int]) -> None:
        """These jobs were created without transfer items (so they will never have any)."""
        self.conn.executemany(
            f"INSERT OR IGNORE INTO [{ITEMLESS_TABLE}] (id) VALUES (?)", [(i,) for i in ids]
        )

    def marked(self, ids: list[int]) -> None:
        """These jobs were created here with the creation tag, which is now on the server."""
        self.conn.executemany(
            f"INSERT OR IGNORE INTO [{MARKED_TABLE}] (id) VALUES (?)", [(i,) for i in ids]
        )

    def unmarked(self, ids: list[int]) -> None:
        """The creation tag of these jobs is gone from the server (or they are)."""
        self.conn.execute(
            f"DELETE FROM [{MARKED_TABLE}] WHERE id IN (SELECT value FROM json_each(?))",
            [json.dumps(ids)],
        )

    def still_marked(self, limit: int) -> list[tuple[int, str | None]]:
        """Marked jobs with no change queued (or refused) for them, and their tags as stored."""
        return self._rows(
            f"SELECT m.id, j.tags FROM [{MARKED_TABLE}] m JOIN jobs j ON j.id = m.id "
            "WHERE NOT EXISTS (SELECT 1 FROM outbox o WHERE o.resource = ? "
            "AND o.obj_id = m.id) ORDER BY m.id LIMIT ?",
            [JOB.name, limit],
        )

    def items_done(self, ids: list[int]) -> dict[int, dict[str, bool]]:
        """For the jobs whose transfer items the mirror knows (read since the job last changed,
        or created without any): whether every item of each direction is done."""
        known = {
            r[0]
            for r in self._rows(
                f"SELECT j.id FROM jobs j LEFT JOIN [{MARKS_TABLE}] m ON m.id = j.id "
                f"WHERE j.id IN (SELECT value FROM json_each(?)) AND (m.stamp = j.last_update "
                f"OR j.id IN (SELECT id FROM [{ITEMLESS_TABLE}]))",
                [json.dumps(ids)],
            )
        }
        done = {i: {"in": True, "out": True} for i in known}
        for job_id, direction, state in self._rows(
            "SELECT job_id, direction, state FROM transfer_items "
            "WHERE job_id IN (SELECT value FROM json_each(?))",
            [json.dumps(sorted(known))],
        ):
            finished = state in TRANSFER_ITEM.done_states
            done[job_id][direction] = done[job_id].get(direction, True) and finished
        return done

    def parent_states(self, ids: list[int]) -> dict[int, tuple[list[int], str]]:
        """Each of these jobs' parents and state."""
        return {
            r[0]: (json.loads(r[1] or "[]"), r[2])
            for r in self._rows(
                "SELECT id, parent_ids, state FROM jobs "
                "WHERE id IN (SELECT value FROM json_each(?))",
                [json.dumps(ids)],
            )
        }

    # -- rows in motion ------------------------------------------------------------------------

    def ids_in_states(self, resource: str, states: tuple[str, ...]) -> set[int]:
        """Confirmed ids of ``resource`` rows whose ``state`` is one of ``states``."""
        table = TABLES[resource].table
        rows = self._rows(
            f"SELECT id FROM [{table}] WHERE id > 0 AND state IN (SELECT value FROM json_each(?))",
            [json.dumps(list(states))],
        )
        return {r[0] for r in rows}

    def newest_job_update(self) -> str | None:
        """The newest ``last_update`` of a confirmed job in the mirror."""
        (stamp,) = self._rows("SELECT max(last_update) FROM jobs WHERE id > 0", [])[0]
        return str(stamp) if stamp is not None else None
