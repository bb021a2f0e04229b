"""What the server offers for each resource: its path, wire schemas and routes.

Everything a layer above needs to know about a resource's REST shape is declared here once
(balsam-api.md §1.0 capability matrix), so no other module special-cases a resource by name.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Literal

from pydantic import BaseModel

from . import schemas as s

Row = dict[str, Any]
"""One object, field name -> JSON value: as the server sends it and the mirror keeps it."""

CreateRoute = Literal["object", "list", "none"]
"""How POST takes new objects: one object per call, a JSON list (Job), or not at all."""

BulkOp = Literal["create", "update", "delete"]
"""An operation on many objects at once: ``bulk_create``; ``bulk_update`` and a query's
``update()``; a query's ``delete()``."""

UpdateReply = Literal["object", "int", "none"]
"""What PUT/PATCH answer: the updated object(s), an int (Job: re-read needed), or no route."""

MAX_BULK = 5000
"""Most items the server takes in one bulk call (MAX_ITEMS_PER_BULK_OP)."""

MAX_PAGE = 100000
"""Most items the server returns in one page (MAX_PAGE_SIZE)."""

MARKER_KEY = "bsync_op"
"""Tag key whose value identifies the queued batch that created a job (exactly-once replay).
It stays on the server and in the mirror, and is hidden from ``job.tags``."""


@dataclass(frozen=True)
class Resource:
    """The REST shape of one Balsam resource.

    Attributes:
        name: model name ("Job").
        path: collection path with its trailing slash ("/jobs/").
        out: schema of the objects the server returns.
        create: schema accepted on creation, or None when the API cannot create it.
        update: schema accepted on update, or None when the resource is read-only.
        bulk_update: schema of one PATCH item, or None when there is no PATCH route.
        create_route: see ``CreateRoute``.
        update_reply: what a single PUT answers.
        bulk_update_reply: what a PATCH answers.
        can_delete: the item route has DELETE.
        can_query_delete: ``DELETE <path>?<filters>`` exists (Job only).
        default_ordering: the server's order when none is asked ("id" or "-timestamp").
        enum_filters: filters the server does not validate but we do (name -> enum).
        provisional: values of server-set fields in a row created offline, until the server
            answers (a Job shows state CREATED, a state the server never stores).
        marked_creates: creates carry the tag ``MARKER_KEY`` and are settled by looking it up
            (exactly-once replay); other resources are found by their unique names.
        side_effects: resources the server changes, in ways we cannot replay, when this one
            is written (a job update writes events).
        promotes_children: an object that finishes promotes its waiting children (Job).
        done_states: states in which an object is history: nothing moves it any more (a
            finished or failed Job), so what hangs off it (items, events) is history too.
        moving_states: states in which the site agent moves an object without any change of
            the object it belongs to (transfer items in motion, unfinished batch jobs): an
            incremental pull re-reads these.
        references: fields holding another object's id, and that object's resource. A
            provisional (negative) id in them becomes the server's id once that object exists.
        settle_by: fields a create that may have reached the server is looked up by (when
            its creates are not marked): unique names for Site and App...
        settle_same: ...or, for a resource without a unique key (BatchJob), further fields
            that must be equal for a found object to be the one created.
        cascade: what the server deletes with an object: (resource, field naming it).
        detach: what outlives an object's deletion with the field naming it set to null.
        links: a list field of ids kept in a side table for the overlap filter (``parent_ids``).
        state_rewrites: requested states the server stores as another when every transfer
            item of one direction is done (balsam-api.md §4): (requested, stored, direction).
        state_aliases: requested states the server always stores as another.
        server_set: fields the server sets itself when an object changes (Job: its stamp, and
            the state it stores for a requested one). When its reply to a change carries no
            row, these are the fields the mirror may not know until it reads the row again.
        finished_state: the state in which an object promotes its waiting children...
        waiting_state: ...which wait in this state, and are asked for this one once every
            parent has finished:
        promoted_state: ...
        text_limits: the most characters the server stores in a text value (its database's
            ``String(n)`` columns, and its checks of pickled payloads), by field or by a
            dotted path into a nested value (``*``: any key), e.g. ``transfers.*.path``; a
            filter on another resource's column names that column's limit (App's
            ``site_name``). Longer values are refused before anything is queued.
        bulk: the operations on many objects upstream's API offers for this resource; the
            others raise NotImplementedError there, and ``NotOffered`` here.
    """

    name: str
    path: str
    out: type[BaseModel]
    create: type[BaseModel] | None
    update: type[BaseModel] | None
    bulk_update: type[BaseModel] | None
    create_route: CreateRoute
    update_reply: UpdateReply
    bulk_update_reply: UpdateReply
    can_delete: bool
    can_query_delete: bool = False
    default_ordering: str = "id"
    enum_filters: tuple[tuple[str, type[Enum]], ...] = ()
    provisional: tuple[tuple[str, Any], ...] = ()
    marked_creates: bool = False
    side_effects: tuple[str, ...] = ()
    promotes_children: bool = False
    done_states: tuple[str, ...] = ()
    moving_states: tuple[str, ...] = ()
    references: tuple[tuple[str, str], ...] = ()
    settle_by: tuple[str, ...] = ()
    settle_same: tuple[str, ...] = ()
    cascade: tuple[tuple[str, str], ...] = ()
    detach: tuple[tuple[str, str], ...] = ()
    links: str | None = None
    state_rewrites: tuple[tuple[str, str, str], ...] = ()
    state_aliases: tuple[tuple[str, str], ...] = ()
    server_set: tuple[str, ...] = ()
    finished_state: str | None = None
    waiting_state: str | None = None
    promoted_state: str = ""

    text_limits: tuple[tuple[str, int], ...] = ()
    bulk: frozenset[BulkOp] = frozenset()

    @property
    def reference_fields(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.references)

    def stored_states(self, requested: str) -> tuple[str, ...]:
        """The states the server may store when ``requested`` is asked for."""
        alias = dict(self.state_aliases).get(requested)
        if alias is not None:
            return (alias,)
        rewritten = [stored for asked, stored, _ in self.state_rewrites if asked == requested]
        return (requested, *rewritten)

    def stored_state(self, requested: str, done: dict[str, bool] | None) -> str | None:
        """The state the server stores for ``requested``, given whether every transfer item of
        each direction is done (``done``; None: unknown); None when it cannot be told."""
        alias = dict(self.state_aliases).get(requested)
        if alias is not None:
            return alias
        for asked, stored, direction in self.state_rewrites:
            if asked == requested:
                return None if done is None else (stored if done[direction] else requested)
        return requested

    def may_finish(self, requested: str) -> bool:
        """Whether asking for ``requested`` may leave the object finished (children promoted)."""
        return self.finished_state is not None and self.finished_state in self.stored_states(
            requested
        )

    def item_path(self, obj_id: int) -> str:
        return f"{self.path}{obj_id}"

    def order(self, ordering: str | None) -> tuple[str, bool]:
        """``(field, descending)`` of ``ordering`` (None: the server's default order).

        The server's sort, which the mirror copies: by the field, NULLs last ascending and first
        descending, then by ``id`` ascending. ``rest.sort_rows`` (rows in memory) and
        ``sql.order_clause`` (the mirror) both follow it.
        """
        ordering = ordering or self.default_ordering
        return ordering.lstrip("-"), ordering.startswith("-")

    def provisional_row(self, temp_id: int, payload: Row) -> Row:
        """The local row of an object created offline: its fields, server defaults, a temp id."""
        row = {k: v for k, v in payload.items() if k in self.out.model_fields}
        row.update(self.provisional)
        row["id"] = temp_id
        return row


SITE = Resource(
    "Site",
    "/sites/",
    s.SiteOut,
    s.SiteCreate,
    s.SiteUpdate,
    None,
    "object",
    "object",
    "none",
    True,
    settle_by=("name",),
    cascade=(("App", "site_id"), ("BatchJob", "site_id")),
    text_limits=(("name", 100), ("path", 512)),
)
APP = Resource(
    "App",
    "/apps/",
    s.AppOut,
    s.AppCreate,
    s.AppUpdate,
    None,
    "object",
    "object",
    "none",
    True,
    references=(("site_id", "Site"),),
    settle_by=("site_id", "name"),
    cascade=(("Job", "app_id"),),
    text_limits=(
        ("name", 200),
        ("serialized_class", 262_144),  # upstream's MAX_APP_SERIALIZED_SIZE
        ("transfers.*.local_path", 256),  # becomes each job's TransferItem.local_path
        ("site_name", 100),
        ("site_path", 512),
    ),
)
JOB = Resource(
    "Job",
    "/jobs/",
    s.JobOut,
    s.JobCreate,
    s.JobUpdate,
    s.JobBulkUpdate,
    "list",
    "int",
    "int",
    True,
    can_query_delete=True,
    marked_creates=True,
    side_effects=("EventLog", "TransferItem"),
    promotes_children=True,
    server_set=("last_update", "state"),
    finished_state="JOB_FINISHED",
    waiting_state="AWAITING_PARENTS",
    promoted_state="READY",
    state_rewrites=(("READY", "STAGED_IN", "in"), ("POSTPROCESSED", "JOB_FINISHED", "out")),
    state_aliases=(("STAGED_OUT", "JOB_FINISHED"),),
    done_states=("JOB_FINISHED", "FAILED"),
    references=(("app_id", "App"), ("parent_ids", "Job"), ("batch_job_id", "BatchJob")),
    cascade=(("TransferItem", "job_id"), ("EventLog", "job_id")),
    links="parent_ids",
    text_limits=(
        ("workdir", 256),
        ("serialized_parameters", 512_000),  # upstream's MAX_SERIALIZED_PARAMS_SIZE
        ("serialized_return_value", 512_000),
        ("serialized_exception", 512_000),
        ("transfers.*.path", 256),  # becomes a TransferItem's remote_path
        ("transfers.*.location_alias", 256),
    ),
    bulk=frozenset({"create", "update", "delete"}),
    provisional=(
        ("state", "CREATED"),
        ("last_update", None),
        ("batch_job_id", None),
        ("pending_file_cleanup", True),
        ("serialized_return_value", ""),
        ("serialized_exception", ""),
    ),
)
BATCH_JOB = Resource(
    "BatchJob",
    "/batch-jobs/",
    s.BatchJobOut,
    s.BatchJobCreate,
    s.BatchJobUpdate,
    s.BatchJobBulkUpdate,
    "object",
    "object",
    "object",
    True,
    enum_filters=(("state", s.BatchJobState),),
    moving_states=("pending_submission", "queued", "running", "pending_deletion"),
    references=(("site_id", "Site"),),
    settle_by=("site_id", "queue"),
    settle_same=("project", "num_nodes", "job_mode"),
    detach=(("Job", "batch_job_id"),),
    text_limits=(("project", 64), ("queue", 64)),
    bulk=frozenset({"update"}),
    provisional=(
        ("state", "pending_submission"),
        ("scheduler_id", None),
        ("status_info", {}),
        ("start_time", None),
        ("end_time", None),
    ),
)
TRANSFER_ITEM = Resource(
    "TransferItem",
    "/transfers/",
    s.TransferItemOut,
    None,
    s.TransferItemUpdate,
    s.TransferItemBulkUpdate,
    "none",
    "object",
    "object",
    False,
    side_effects=("Job", "EventLog"),
    moving_states=("pending", "active", "inactive"),
    done_states=("done",),
    text_limits=(
        ("task_id", 100),
        ("local_path", 256),
        ("remote_path", 256),
        ("location_alias", 256),
        ("job_state", 32),
    ),
    bulk=frozenset({"update"}),
)
EVENT_LOG = Resource(
    "EventLog",
    "/events/",
    s.EventLogOut,
    None,
    None,
    None,
    "none",
    "none",
    "none",
    False,
    default_ordering="-timestamp",
    text_limits=(("from_state", 32), ("to_state", 32)),
)

RESOURCES: dict[str, Resource] = {
    r.name: r for r in (SITE, APP, JOB, BATCH_JOB, TRANSFER_ITEM, EVENT_LOG)
}
