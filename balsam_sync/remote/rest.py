"""The Balsam REST API as operations on rows, with every server quirk handled here.

Paging, 500-value filter chunks, 5000-item bulk chunks, Job replies that are integers (so the
jobs are read back), PATCH items grouped by identical key sets, and rows normalised to one
canonical form (aware UTC timestamps, no extra keys) all live in this module
(balsam-api.md §2.2, §7). Above it, a row is a row, and a checked one: every reply is checked
against the server's schema (``wire.py``) and the pages of a listing against each other
(``listing.py``) before a row is returned, so nothing above ever sees, or stores, a bad one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any
from urllib.parse import urlencode

from ..errors import NotFound, ProtocolError, Rejected
from ..resources import MAX_BULK, MAX_PAGE, Resource, Row
from ..spec import QuerySpec
from ..utc import canonical_time
from .listing import Listing
from .params import FILTER_CHUNK_SIZE, Params, chunked_filter_params, filter_params
from .transport import Transport
from .wire import SERVER_STAMPS, check_row, page_of, reply_for

__all__ = ["Remote", "canonical_time", "normalize_row"]


class Remote:
    """Rows in, rows out, over one ``Transport``."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    # -- reads ---------------------------------------------------------------------------------

    def select(self, res: Resource, spec: QuerySpec) -> tuple[list[Row], int]:
        """Return the rows of ``spec``'s window in order, and the total number of matches."""
        if spec.empty:
            return [], 0
        chunks = list(chunked_filter_params(spec))
        if len(chunks) == 1:
            return self._window(res, chunks[0], spec.ordering, spec.low, spec.limit)
        merged: dict[int, Row] = {}
        for params in chunks:
            rows, _ = self._window(res, params, spec.ordering, 0, None)
            merged.update((row["id"], row) for row in rows)
        ordered = sort_rows(list(merged.values()), *res.order(spec.ordering))
        high = None if spec.limit is None else spec.low + spec.limit
        return ordered[spec.low : high], len(ordered)

    def count(self, res: Resource, spec: QuerySpec) -> int:
        """Return the number of matches without fetching rows (``limit=0``)."""
        if spec.empty:
            return 0
        chunks = list(chunked_filter_params(spec))
        if len(chunks) > 1:
            return self.select(res, spec.unsliced())[1]
        body = self._get(res, chunks[0] + [("limit", "0"), ("offset", "0")])
        count: int = body["count"]
        return count

    def ids(self, res: Resource, spec: QuerySpec) -> list[int]:
        """Return the ids of every object matching the filters of ``spec``."""
        return [row["id"] for row in self.select(res, spec.unsliced())[0]]

    def pages(self, res: Resource, spec: QuerySpec, page_size: int) -> Iterator[list[Row]]:
        """Yield the rows of an unchunked ``spec`` page by page (for pulls and streaming)."""
        base = filter_params(spec)
        if spec.ordering:
            base.append(("ordering", spec.ordering))
        listing = Listing(res.name, page_size, stable=stable_order(res, spec.ordering))
        offset = spec.low
        remaining = spec.limit
        while remaining is None or remaining > 0:
            want = page_size if remaining is None else min(page_size, remaining)
            page, count = self.page(res, base, offset, want, listing)
            if page:
                yield page
            offset += len(page)
            remaining = None if remaining is None else remaining - len(page)
            if len(page) < want or offset >= count:
                return

    def page(
        self, res: Resource, params: Params, offset: int, want: int, listing: Listing
    ) -> tuple[list[Row], int]:
        """One page of a listing (checked, and checked against the listing's other pages):
        its rows and the count the reply gave."""
        query = [*params, ("limit", str(want)), ("offset", str(offset))]
        body = self._get(res, query)
        rows: list[Row] = body["results"]
        listing.take(rows, body["count"], offset, want, f"GET {res.path}?{urlencode(query)}")
        self._witness(res, rows)
        return rows, body["count"]

    def _witness(self, res: Resource, rows: Iterable[Row]) -> None:
        """Tell the server clock the newest stamp the server put on these rows."""
        field = SERVER_STAMPS.get(res.name)
        stamps = [row[field] for row in rows if row.get(field)] if field else []
        if stamps:  # canonical stamps sort as time sorts
            self.transport.witness(datetime.fromisoformat(max(stamps)))

    def _window(
        self, res: Resource, params: Params, ordering: str | None, low: int, limit: int | None
    ) -> tuple[list[Row], int]:
        base = list(params)
        if ordering:
            base.append(("ordering", ordering))
        out: list[Row] = []
        offset = low
        listing = Listing(res.name, MAX_PAGE, stable=stable_order(res, ordering))
        while True:
            want = MAX_PAGE if limit is None else min(MAX_PAGE, limit - len(out))
            page, count = self.page(res, base, offset, want, listing)
            out.extend(page)
            offset += len(page)
            if len(page) < want or offset >= count or (limit is not None and len(out) >= limit):
                return out, count

    def _get(self, res: Resource, params: Params) -> Any:
        return self.transport.request("GET", res.path, params=params, expect=page_of(res.name))

    def _by_ids(self, res: Resource, ids: Iterable[int]) -> list[Row]:
        rows: list[Row] = []
        for chunk in _chunks(list(ids), FILTER_CHUNK_SIZE):
            spec = QuerySpec(res.name).with_filters({"id": chunk})
            rows.extend(self._window(res, filter_params(spec), None, 0, None)[0])
        return rows

    # -- writes --------------------------------------------------------------------------------

    def create(self, res: Resource, payloads: list[Row]) -> list[Row]:
        """Create objects and return the server's rows, in the order given."""
        expect = reply_for(res, res.create_route)
        if res.create_route == "list":
            rows: list[Row] = []
            for chunk in _chunks(payloads, MAX_BULK):
                reply = self.transport.request("POST", res.path, json_body=chunk, expect=expect)
                if len(reply) != len(chunk):
                    raise ProtocolError(
                        f"POST {res.path}: {len(reply)} {res.name} rows answer {len(chunk)} "
                        "creates (the server's outcome is unknown)",
                        method="POST",
                        url=res.path,
                        resource=res.name,
                    )
                rows.extend(reply)
            self._witness(res, rows)
            return rows
        return [
            self.transport.request("POST", res.path, json_body=p, expect=expect) for p in payloads
        ]

    def update(self, res: Resource, obj_id: int, changes: Row) -> Row:
        """Send ``changes`` to one object and return the row the server now holds."""
        expect = reply_for(res, res.update_reply)
        reply = self.transport.request(
            "PUT", res.item_path(obj_id), json_body=changes, expect=expect
        )
        if res.update_reply == "object":
            row: Row = reply
            return row
        rows = self._by_ids(res, [obj_id])
        if not rows:
            raise Rejected(
                f"{res.name} {obj_id} vanished after its update",
                method="PUT",
                url=res.item_path(obj_id),
                status=404,
                body=None,
            )
        return rows[0]

    def bulk_update(self, res: Resource, items: list[tuple[int, Row]]) -> list[Row] | None:
        """Apply per-object changes; return the rows the server now holds, or None when its
        reply carries no rows (Job: an int) and reading them again would only cost a request.

        Like upstream's ``save()``, one request in the common case. A PATCH of several jobs
        that changes states is read back, because the server may drop its state changes
        (``_repair_dropped_states``).
        """
        merged: dict[int, Row] = {}
        for obj_id, changes in items:
            merged[obj_id] = {**merged.get(obj_id, {}), **changes}
        if res.bulk_update is None:
            return [self.update(res, obj_id, ch) for obj_id, ch in merged.items()]
        rows: list[Row] = []
        expect = reply_for(res, "int" if res.bulk_update_reply == "int" else "list")
        for group in group_by_keys(merged).values():
            for chunk in _chunks(group, MAX_BULK):
                reply = self.transport.request("PATCH", res.path, json_body=chunk, expect=expect)
                if res.bulk_update_reply == "object":
                    rows.extend(reply)
        if res.bulk_update_reply != "int":
            return rows
        if len(merged) == 1 or not any("state" in changes for changes in merged.values()):
            return None
        rows = self._by_ids(res, merged)
        return self._repair_dropped_states(res, merged, rows)

    def _repair_dropped_states(
        self, res: Resource, sent: dict[int, Row], rows: list[Row]
    ) -> list[Row]:
        """Re-send, one job at a time, state changes a multi-job PATCH silently dropped.

        The server writes a PATCH with one ``executemany`` whose columns come from the first
        job: when that job's state change was a no-op (it already had the state), no job's
        new state is written, although each one's event is logged. A single-job PUT has no
        such problem, so mismatches are repaired that way (their event is then logged twice).
        """
        dropped = [
            row["id"]
            for row in rows
            if "state" in sent.get(row["id"], {})
            and row["state"] not in res.stored_states(sent[row["id"]]["state"])
        ]
        if not dropped:
            return rows
        expect = reply_for(res, res.update_reply)
        for obj_id in dropped:
            self.transport.request(
                "PUT", res.item_path(obj_id), json_body=sent[obj_id], expect=expect
            )
        fixed = {row["id"]: row for row in self._by_ids(res, dropped)}
        return [fixed.get(row["id"], row) for row in rows]

    def delete_ids(self, res: Resource, ids: list[int]) -> list[Row]:
        """Delete objects by id (an id already gone counts as deleted); return rows kept."""
        if not res.can_query_delete:
            for obj_id in ids:
                try:
                    self.transport.request("DELETE", res.item_path(obj_id))
                except NotFound:
                    continue
            return []
        for chunk in _chunks(ids, FILTER_CHUNK_SIZE):
            self.transport.request("DELETE", res.path, params=[("id", str(i)) for i in chunk])
        return self._by_ids(res, ids)


def group_by_keys(items: dict[int, Row]) -> dict[frozenset[str], list[Row]]:
    """Group PATCH items by their key sets: the server needs every item to carry the same keys."""
    groups: dict[frozenset[str], list[Row]] = {}
    for obj_id, changes in items.items():
        groups.setdefault(frozenset(changes), []).append({"id": obj_id, **changes})
    return groups


def stable_order(res: Resource, ordering: str | None) -> bool:
    """Whether offset pages in this order keep their rows while others are written: only
    ascending ids do (new objects come last; a deletion moves rows up, never back)."""
    return res.order(ordering) == ("id", False)


def sort_rows(rows: list[Row], field: str, descending: bool) -> list[Row]:
    """Order rows as the server would (see ``Resource.order``)."""
    rows = sorted(rows, key=lambda r: r["id"])
    if field == "id":
        return rows[::-1] if descending else rows
    return sorted(
        rows,
        key=lambda r: (r.get(field) is None, r.get(field) or ""),
        reverse=descending,
    )


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


# -- row normalisation ----------------------------------------------------------------------


def normalize_row(res: Resource, row: Any) -> Row:
    """Return ``row`` checked against ``res``'s schema, with only its fields and timestamps
    as aware UTC ISO text (a row that reached us inside another reply).

    Raises:
        ProtocolError: the row is off the schema.
    """
    return check_row(res, row)
