"""The outbox: every mutation, queued in the same transaction that applies it to the mirror.

Entries are replayed in ``seq`` order (``sync/replay.py``). An object created locally gets a
provisional negative id; when the server assigns the real one, ``remap`` rewrites the mirror
row, every reference to it (parent_ids, app_id, site_id, batch_job_id) and every queued entry
that mentions it, in one transaction. Pending updates and deletes are laid back over rows the
server sends until they are acknowledged (``overlay``), so a pull never erases a local change.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from ..resources import Row
from ..utc import later_text, now_text
from .journal import ID_BLOCK
from .schema import PARENTS_TABLE, REFERENCES, SEEN_TABLE, SETTLED_TABLE, TABLES
from .store import Store


class Op(Enum):
    """What an entry asks the server to do."""

    CREATE = "create"  # payload: the creation fields (references may be provisional ids)
    UPDATE = "update"  # payload: the changed fields
    DELETE = "delete"  # payload: {}


class EntryState(Enum):
    """Where an outbox entry stands."""

    PENDING = "pending"  # waiting to be sent
    IN_FLIGHT = "in_flight"  # sent at least once without a definite answer (maybe applied)
    DEAD = "dead"  # rejected by the server for good; kept with its reason until handled


@dataclass(frozen=True)
class Entry:
    """One queued mutation."""

    seq: int
    resource: str
    op: Op
    obj_id: int
    payload: Row
    marker: str | None
    state: EntryState
    attempts: int
    status: int | None = None
    error: str | None = None
    created_at: str = ""
    sent_at: str | None = None  # when last sent; None once the server cannot be running it
    next_try_at: str | None = None  # not sent again before this (capped back-off)
    failing_since: str | None = None  # when the server first failed it with an error of its own
    uid: str | None = None  # its id in the user's queue (the record that queued it, and its index)
    node: str | None = None  # the login node that queued it

    def due(self, now: str) -> bool:
        """True when its back-off period (if any) is over."""
        return self.next_try_at is None or self.next_try_at <= now


_COLUMNS = (
    "seq, resource, op, obj_id, payload, marker, state, attempts, status, error, created_at, "
    "sent_at, next_try_at, failing_since, uid, node"
)


def _entry(rec: tuple[Any, ...]) -> Entry:
    seq, resource, op, obj_id, payload, marker, state, attempts, status, error, *times = rec
    return Entry(
        seq,
        resource,
        Op(op),
        obj_id,
        json.loads(payload),
        marker,
        EntryState(state),
        attempts,
        status,
        error,
        *times,
    )


class Outbox:
    """Queued mutations of one mirror (shares the store's connection and transactions)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.conn = store.conn

    # -- enqueueing ----------------------------------------------------------------------------

    def temp_ids(self, n: int) -> list[int]:
        """Reserve up to ``n`` provisional ids from this mirror's block (fewer when the block
        runs out: ``use_block`` gives it another one). Ids are never reused, by any process
        or node: a block is this mirror's alone (``Journal.take_id_block``)."""
        with self.store.write():
            found = dict(
                self.conn.execute(
                    "SELECT name, value FROM counters WHERE name IN ('temp_block', 'temp_used')"
                )
            )
            block, used = found.get("temp_block"), found.get("temp_used", 0)
            if block is None:
                return []
            take = max(0, min(n, ID_BLOCK - used))
            self.conn.execute(
                "INSERT OR REPLACE INTO counters (name, value) VALUES ('temp_used', ?)",
                [used + take],
            )
        first = block * ID_BLOCK + used + 1
        return [-(first + i) for i in range(take)]

    def use_block(self, block: int) -> None:
        """Take provisional ids from ``block`` from now on."""
        with self.store.write():
            self.conn.executemany(
                "INSERT OR REPLACE INTO counters (name, value) VALUES (?, ?)",
                [("temp_block", block), ("temp_used", 0)],
            )

    def enqueue(
        self,
        resource: str,
        op: Op,
        items: Iterable[tuple[int, Row]],
        uids: list[str],
        node: str,
    ) -> list[int]:
        """Append entries (call inside the store transaction that changes the mirror)."""
        stamp = now_text()
        seqs = []
        with self.store.write():
            for (obj_id, payload), uid in zip(items, uids, strict=True):
                cur = self.conn.execute(
                    "INSERT INTO outbox (resource, op, obj_id, payload, state, attempts, "
                    "created_at, updated_at, uid, node) "
                    "VALUES (?, ?, ?, ?, 'pending', 0, ?, ?, ?, ?)",
                    [resource, op.value, obj_id, json.dumps(payload), stamp, stamp, uid, node],
                )
                seqs.append(int(cur.lastrowid or 0))
        return seqs

    # -- the user's queue, as records ---------------------------------------------------------

    def by_seq(self, seqs: list[int]) -> list[Entry]:
        """These entries (those still here), oldest first."""
        return [
            _entry(r)
            for r in self.conn.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE seq IN (SELECT value FROM json_each(?)) "
                "ORDER BY seq",
                [json.dumps(seqs)],
            )
        ]

    def uids(self, seqs: list[int]) -> list[str]:
        """The queue ids of these entries, in the order given (entries without one left out)."""
        found = dict(
            self.conn.execute(
                "SELECT seq, uid FROM outbox WHERE seq IN (SELECT value FROM json_each(?))",
                [json.dumps(seqs)],
            )
        )
        return [found[s] for s in seqs if found.get(s)]

    def by_uid(self, uids: list[str]) -> list[Entry]:
        """The entries of these queue ids that are here, oldest first."""
        return [
            _entry(r)
            for r in self.conn.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE uid IN (SELECT value FROM json_each(?)) "
                "ORDER BY seq",
                [json.dumps(uids)],
            )
        ]

    def seen(self) -> set[str]:
        """The records applied here."""
        return {r[0] for r in self.conn.execute(f"SELECT name FROM [{SEEN_TABLE}]")}

    def mark_seen(self, names: list[str]) -> None:
        self.conn.executemany(
            f"INSERT OR IGNORE INTO [{SEEN_TABLE}] (name) VALUES (?)", [(n,) for n in names]
        )

    def settle(self, uids: list[str]) -> None:
        """These entries are delivered or dropped, for good."""
        self.conn.executemany(
            f"INSERT OR IGNORE INTO [{SETTLED_TABLE}] (uid) VALUES (?)", [(u,) for u in uids]
        )

    def settled(self, uids: list[str]) -> set[str]:
        return {
            r[0]
            for r in self.conn.execute(
                f"SELECT uid FROM [{SETTLED_TABLE}] WHERE uid IN (SELECT value FROM json_each(?))",
                [json.dumps(uids)],
            )
        }

    def by_node(self) -> dict[str, int]:
        """Entries waiting to be sent, by the node that queued them."""
        return dict(
            self.conn.execute(
                "SELECT coalesce(node, '?'), count(*) FROM outbox WHERE state != 'dead' "
                "GROUP BY node"
            )
        )

    def unpublished(self) -> list[Entry]:
        """Entries queued before the queue was shared (they have no queue id yet)."""
        return [
            _entry(r)
            for r in self.conn.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE uid IS NULL ORDER BY seq"
            )
        ]

    def name_entries(self, uids: dict[int, tuple[str, str]]) -> None:
        """Give entries (by seq) their queue id and node."""
        self.conn.executemany(
            "UPDATE outbox SET uid = ?, node = ? WHERE seq = ?",
            [(uid, node, seq) for seq, (uid, node) in uids.items()],
        )

    # -- reading -------------------------------------------------------------------------------

    def entries(self, states: Iterable[EntryState], limit: int | None = None) -> list[Entry]:
        wanted = [s.value for s in states]
        marks = ", ".join("?" for _ in wanted)
        sql = f"SELECT {_COLUMNS} FROM outbox WHERE state IN ({marks}) ORDER BY seq"
        args: list[Any] = list(wanted)
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        with self.store.reading():
            return [_entry(r) for r in self.conn.execute(sql, args)]

    def get(self, seq: int) -> Entry | None:
        with self.store.reading():
            rec = self.conn.execute(
                f"SELECT {_COLUMNS} FROM outbox WHERE seq = ?", [seq]
            ).fetchone()
        return _entry(rec) if rec else None

    def pending_for(self, resource: str, ids: Iterable[int]) -> Iterator[Entry]:
        """Unacknowledged entries touching these objects, oldest first."""
        sql = (
            f"SELECT {_COLUMNS} FROM outbox WHERE resource = ? AND state != 'dead' AND obj_id IN "
            "(SELECT value FROM json_each(?)) ORDER BY seq"
        )
        with self.store.reading():
            rows = self.conn.execute(sql, [resource, json.dumps(list(ids))]).fetchall()
        return (_entry(r) for r in rows)

    def stats(self) -> dict[str, Any]:
        """Counts per state and the creation time of the oldest unacknowledged entry.

        Read from the table itself, never from an index alone: a damaged page of the queue
        raises (``MirrorDamaged``) instead of being counted as no entries.
        """
        with self.store.reading():
            rows = self.conn.execute(
                "SELECT state, count(*), min(created_at), sum(length(payload)) "
                "FROM outbox NOT INDEXED GROUP BY state"
            ).fetchall()
        counts = {r[0]: r[1] for r in rows}
        oldest = min((r[2] for r in rows if r[0] != "dead" and r[2]), default=None)
        return {"counts": counts, "oldest": oldest}

    def has_pending(self, resource: str | None = None) -> bool:
        sql = "SELECT 1 FROM outbox WHERE state != 'dead'"
        args: list[Any] = []
        if resource is not None:
            sql += " AND resource = ?"
            args.append(resource)
        with self.store.reading():
            return self.conn.execute(sql + " LIMIT 1", args).fetchone() is not None

    # -- state changes -------------------------------------------------------------------------

    def mark_in_flight(
        self, seqs: list[int], marker: str | None, sent_at: str | None, count: bool = True
    ) -> None:
        """Record, before sending, that these entries are about to reach the server (sent at
        ``sent_at``, by the server's clock); ``count``: one more attempt (another node's send,
        read from its record, is not)."""
        with self.store.write():
            self.conn.execute(
                "UPDATE outbox SET state = 'in_flight', attempts = attempts + ?, "
                "updated_at = ?, sent_at = ?, marker = coalesce(?, marker) "
                "WHERE seq IN (SELECT value FROM json_each(?)) AND state != 'dead'",
                [int(count), now_text(), sent_at, marker, json.dumps(seqs)],
            )

    def finished(self, seqs: list[int]) -> None:
        """The server answered these entries' request: it can no longer be running it."""
        with self.store.write():
            self.conn.execute(
                "UPDATE outbox SET sent_at = NULL WHERE seq IN (SELECT value FROM json_each(?))",
                [json.dumps(seqs)],
            )

    def defer(self, seqs: list[int], seconds: float, status: int | None, error: str) -> None:
        """Do not try these entries again for ``seconds``; note why (status shows it)."""
        with self.store.write():
            stamp = now_text()
            failing = stamp if status is not None and status >= 500 else None
            self.conn.execute(
                "UPDATE outbox SET next_try_at = ?, status = ?, error = ?, updated_at = ?, "
                "failing_since = coalesce(failing_since, ?) "
                "WHERE seq IN (SELECT value FROM json_each(?)) AND state != 'dead'",
                [later_text(seconds), status, error, stamp, failing, json.dumps(seqs)],
            )

    def set_payload(self, seq: int, payload: Row) -> None:
        with self.store.write():
            self.conn.execute(
                "UPDATE outbox SET payload = ? WHERE seq = ?", [json.dumps(payload), seq]
            )

    def ack(self, seqs: list[int]) -> None:
        """Drop acknowledged entries."""
        with self.store.write():
            self.conn.execute(
                "DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?))",
                [json.dumps(seqs)],
            )

    def bury(self, seq: int, status: int | None, error: str) -> None:
        """Move an entry to the dead letters with the server's reason."""
        with self.store.write():
            self.conn.execute(
                "UPDATE outbox SET state = 'dead', status = ?, error = ?, updated_at = ? "
                "WHERE seq = ?",
                [status, error, now_text(), seq],
            )

    def revive(self, seq: int) -> bool:
        """Put a dead letter back in the queue (keeping its place in the order)."""
        with self.store.write():
            cur = self.conn.execute(
                "UPDATE outbox SET state = 'pending', status = NULL, error = NULL, updated_at = ?,"
                " next_try_at = NULL, sent_at = NULL, failing_since = NULL "
                "WHERE seq = ? AND state = 'dead'",
                [now_text(), seq],
            )
        return cur.rowcount == 1

    def reset(self, seqs: list[int]) -> None:
        """Send these entries again from scratch (their earlier attempt was not applied)."""
        with self.store.write():
            self.conn.execute(
                "UPDATE outbox SET state = 'pending', marker = NULL, sent_at = NULL, "
                "updated_at = ? WHERE seq IN (SELECT value FROM json_each(?))",
                [now_text(), json.dumps(seqs)],
            )

    def forget(self, seq: int) -> bool:
        """Delete an entry for good (a discarded dead letter)."""
        with self.store.write():
            cur = self.conn.execute("DELETE FROM outbox WHERE seq = ?", [seq])
        return cur.rowcount == 1

    # -- provisional ids -----------------------------------------------------------------------

    def real_ids(self, temp_ids: list[int]) -> dict[int, int]:
        """The server's ids of provisional ids whose creation was acknowledged."""
        if not temp_ids:
            return {}
        with self.store.reading():
            rows = self.conn.execute(
                "SELECT temp_id, real_id FROM id_map WHERE temp_id IN "
                "(SELECT value FROM json_each(?))",
                [json.dumps(temp_ids)],
            ).fetchall()
        return {int(t): int(r) for t, r in rows}

    def resolve_refs(self, resource: str, payload: Row) -> Row:
        """``payload`` with provisional ids in its reference fields replaced by the server's
        ids where they are known (call inside the transaction that uses the result)."""
        names = [field for (owner, field) in REFERENCES if owner == resource]
        temps: list[int] = []
        for name in names:
            value = payload.get(name)
            values = value if isinstance(value, list) else [value]
            temps += [v for v in values if type(v) is int and v < 0]
        mapping = self.real_ids(temps)
        if not mapping:
            return payload
        swapped = dict(payload)
        _swap_refs(swapped, names, mapping)
        return swapped

    def remap(self, resource: str, pairs: list[tuple[int, int]], rows: list[Row]) -> None:
        """Each provisional id of ``pairs`` became the paired id (the server's, or another
        provisional one): swap ids everywhere; ``rows`` are the objects' rows under their new
        ids.

        Set-based (one statement per referencing column), so acknowledging 5000 creates costs
        a handful of statements, not thousands.
        """
        if not pairs:
            return
        temps = [temp for temp, _ in pairs]
        with self.store.write():
            self.store.delete(resource, temps)
            self.store.upsert(resource, rows)
            self.conn.executemany(
                "INSERT OR REPLACE INTO id_map (temp_id, resource, real_id) VALUES (?, ?, ?)",
                [(temp, resource, real) for temp, real in pairs],
            )
            self.conn.execute(
                "CREATE TEMP TABLE IF NOT EXISTS _remap (temp INTEGER PRIMARY KEY, real INTEGER)"
            )
            self.conn.execute("DELETE FROM _remap")
            self.conn.executemany("INSERT INTO _remap (temp, real) VALUES (?, ?)", pairs)
            self._remap_mirror(resource, dict(pairs))
            self.conn.execute(
                "UPDATE outbox SET obj_id = r.real FROM _remap r "
                "WHERE outbox.resource = ? AND outbox.obj_id = r.temp",
                [resource],
            )
            self._remap_payloads(resource, dict(pairs))

    def _remap_mirror(self, resource: str, mapping: dict[int, int]) -> None:
        for (owner, field), target in REFERENCES.items():
            if target != resource:
                continue
            if field == "parent_ids":
                self._remap_parents(mapping)
                continue
            table = TABLES[owner].table
            self.conn.execute(
                f"UPDATE [{table}] SET [{field}] = r.real FROM _remap r "
                f"WHERE [{table}].[{field}] = r.temp"
            )

    def _remap_parents(self, mapping: dict[int, int]) -> None:
        children = [
            r[0]
            for r in self.conn.execute(
                f"SELECT DISTINCT job_id FROM [{PARENTS_TABLE}] "
                "WHERE parent_id IN (SELECT temp FROM _remap)"
            )
        ]
        for child in children:
            (raw,) = self.conn.execute(
                "SELECT parent_ids FROM jobs WHERE id = ?", [child]
            ).fetchone()
            parents = sorted(mapping.get(p, p) for p in json.loads(raw or "[]"))
            self.conn.execute(
                "UPDATE jobs SET parent_ids = ? WHERE id = ?", [json.dumps(parents), child]
            )
        self.conn.execute(
            f"UPDATE [{PARENTS_TABLE}] SET parent_id = r.real FROM _remap r "
            f"WHERE [{PARENTS_TABLE}].parent_id = r.temp"
        )

    def _remap_payloads(self, resource: str, mapping: dict[int, int]) -> None:
        fields: dict[str, list[str]] = {}
        for (owner, field), target in REFERENCES.items():
            if target == resource:
                fields.setdefault(owner, []).append(field)
        for owner, names in fields.items():
            rows = self.conn.execute(
                "SELECT seq, payload FROM outbox WHERE resource = ? AND op != 'delete'", [owner]
            ).fetchall()
            for seq, raw in rows:
                payload = json.loads(raw)
                if _swap_refs(payload, names, mapping):
                    self.conn.execute(
                        "UPDATE outbox SET payload = ? WHERE seq = ?", [json.dumps(payload), seq]
                    )

    # -- the local view ------------------------------------------------------------------------

    def overlay(self, resource: str, ids: Iterable[int], skip: int | None = None) -> None:
        """Re-apply unacknowledged updates and deletes to rows just written from the server."""
        pending = [e for e in self.pending_for(resource, ids) if e.seq != skip]
        if not pending:
            return
        with self.store.write():
            for entry in pending:
                if entry.op is Op.DELETE:
                    self.store.delete_cascade(resource, [entry.obj_id])
                elif entry.op is Op.UPDATE:
                    row = self.store.get(resource, entry.obj_id)
                    if row is not None:
                        self.store.upsert(resource, [{**row, **entry.payload}])

    def log(self, key: str, value: str) -> None:
        """Record a sync event (last push, last pull, last error) for ``status()``."""
        with self.store.write():
            self.conn.execute(
                "INSERT OR REPLACE INTO sync_log (key, value) VALUES (?, ?)", [key, value]
            )

    def read_log(self) -> dict[str, str]:
        with self.store.reading():
            return dict(self.conn.execute("SELECT key, value FROM sync_log"))


def _swap_refs(payload: Row, names: list[str], mapping: dict[int, int]) -> bool:
    """Replace provisional ids in ``payload``'s reference fields; return True if any changed."""
    changed = False
    for name in names:
        value = payload.get(name)
        if isinstance(value, list) and any(v in mapping for v in value):
            payload[name] = [mapping.get(v, v) for v in value]
            changed = True
        elif isinstance(value, int) and value in mapping:
            payload[name] = mapping[value]
            changed = True
    return changed
