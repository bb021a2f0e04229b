"""Bad input fails with the documented error before anything is sent; server errors fail fast.

Every row of the tables is one bad call. It must raise the documented class (which also
subclasses the builtin a Python user expects: ValueError, TypeError, AttributeError) and the
client must not have tried a single request, nor queued one. These checks come before any
I/O, so they need no server: the client is online but its server refuses every connection
(``unreachable``), so a call that reached for the server would be recorded; its objects are
rows planted in its throw-away mirror, as a pull would have left them.

The errors the SERVER reports (duplicate names, foreign ids, a bad token) must surface as the
matching ``balsam_sync.errors`` class with the server's reason, at once (one attempt, no
half-hour upstream-style retry), and never show the token: those tests use the real server.
"""

from __future__ import annotations

import time
import traceback
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.client import Client
from balsam_sync.errors import (
    BalsamSyncError,
    FieldNotWritable,
    HTTPStatusError,
    NotAuthenticated,
    NotFound,
    ObjectStateError,
    Rejected,
    SlicedQueryError,
    UsageError,
    UsageTypeError,
)
from balsam_sync.remote.retry import RetryPolicy
from tests.conftest import RequestLog, register_user
from tests.server_rows import server_row

QUICK_RETRY = RetryPolicy(attempts=3, max_seconds=5.0, initial_wait=0.01, max_wait=0.05)


def _connect(api_root: str, token: str, home: Path) -> Client:
    return balsam_sync.connect(api_root, token, home=str(home), retry=QUICK_RETRY)


@pytest.fixture
def fresh_client(balsam_server: str, tmp_path: Path) -> Iterator[Client]:
    """A client of a brand-new user, for tests that count everything the user owns."""
    c = _connect(balsam_server, register_user(balsam_server, "bad-own").token, tmp_path / "own")
    yield c
    c.close()


@dataclass
class Ctx:
    """Objects in every state a case may need, bound to the test's ``unreachable`` client."""

    c: Client
    site: Any
    app: Any
    job: Any  # saved, clean
    bj: Any  # saved batch job
    new_job: Any  # built locally, never saved
    gone: Any  # deleted through this instance
    event: Any  # an EventLog row (read-only)
    queued: int  # changes queued by the setup (the deletion of ``gone``)


def _plant(c: Client, resource: str, **fields: Any) -> Any:
    """An object the server holds, as a pull leaves it in the mirror (no request)."""
    c.mirror.server_rows(resource, [server_row(resource, **fields)])
    return getattr(c, resource).objects.offline().get(id=fields["id"])


@pytest.fixture
def ctx(unreachable: Client, unreachable_sent: RequestLog) -> Ctx:
    c = unreachable
    site = _plant(c, "Site", id=11, name="ctx-site", path="/projects/ctx")
    app = _plant(c, "App", id=12, site_id=site.id, name="Hello")
    job = _plant(c, "Job", id=13, app_id=app.id, workdir="ctx/job", data={"k": 1})
    gone = _plant(c, "Job", id=14, app_id=app.id, workdir="ctx/gone")
    bj = _plant(c, "BatchJob", id=15, site_id=site.id, project="p", queue="debug")
    event = _plant(c, "EventLog", id=16, job_id=job.id)
    new_job = c.Job(workdir="ctx/new", app_id=app.id)
    c.transport.link.mark_down("the test queues a deletion without sending it")
    gone.delete()
    c.transport.link.reset()  # from here on, any call that reaches for the server tries
    assert unreachable_sent.calls == [] and _pending(c) == 1
    return Ctx(c, site, app, job, bj, new_job, gone, event, queued=1)


def _pending(c: Client) -> int:
    return c.status(check_server=False).pending


@dataclass(frozen=True)
class Case:
    id: str
    action: Callable[[Any], Any]
    error: type[BaseException]
    match: str | None = None


BUILTIN_OF: dict[type[BaseException], tuple[type[BaseException], ...]] = {
    UsageError: (ValueError,),
    UsageTypeError: (ValueError, TypeError),
    FieldNotWritable: (ValueError, AttributeError),
    ObjectStateError: (ValueError, AttributeError),
    SlicedQueryError: (ValueError, AttributeError, TypeError),
}


def check_refused(case: Case, arg: Any, c: Client, sent: RequestLog, queued: int = 0) -> None:
    with pytest.raises(case.error, match=case.match) as info:
        case.action(arg)
    assert isinstance(info.value, BalsamSyncError)
    for builtin in BUILTIN_OF.get(case.error, ()):
        assert isinstance(info.value, builtin), f"{type(info.value).__name__} is no {builtin}"
    assert str(info.value), "the error explains itself"
    assert len(sent) == 0, f"sent before refusing: {sent.calls}"
    assert _pending(c) == queued, "queued before refusing"


def _gen(c: Client) -> Iterator[Any]:
    yield c.Job(workdir="g/1", app_id=1)


# Cases that need only a client (nothing saved). ``c`` is the test's client.
CLIENT_CASES: list[Case] = [
    # unknown or misspelled filter names (the server would ignore them and match everything)
    Case("filter-stat", lambda c: c.Job.objects.filter(stat="FAILED"), UsageError, "'state'"),
    Case("filter-tag", lambda c: c.Job.objects.filter(tag={"a": "b"}), UsageError, "'tags'"),
    Case(
        "filter-workdir_contains",
        lambda c: c.Job.objects.filter(workdir_contains="x"),
        UsageError,
        "workdir__contains",
    ),
    Case(
        "filter-last_updated_after",
        lambda c: c.Job.objects.filter(last_updated_after=datetime.now(timezone.utc)),
        UsageError,
        "last_update_after",
    ),
    Case("filter-parameters", lambda c: c.Job.objects.filter(parameters={"a": 1}), UsageError),
    Case("filter-num_nodes", lambda c: c.Job.objects.filter(num_nodes=2), UsageError),
    Case("chained-filter-typo", lambda c: c.Job.objects.all().filter(sate="X"), UsageError),
    Case("site-filter-nam", lambda c: c.Site.objects.filter(nam="x"), UsageError, "'name'"),
    Case("app-filter-site", lambda c: c.App.objects.filter(sit_id=1), UsageError, "site_id"),
    Case("batchjob-filter", lambda c: c.BatchJob.objects.filter(project="p"), UsageError),
    Case("get-typo", lambda c: c.Job.objects.get(stat="FAILED"), UsageError, "'state'"),
    # unknown orderings, and ordering where the server has none
    Case(
        "order-last_updated",
        lambda c: c.Job.objects.order_by("-last_updated"),
        UsageError,
        "last_update",
    ),
    Case("order-num_nodes", lambda c: c.Job.objects.order_by("num_nodes"), UsageError),
    Case("order-after-filter", lambda c: c.Job.objects.filter(id=[1]).order_by("x"), UsageError),
    Case("order-site-name", lambda c: c.Site.objects.order_by("name"), UsageError),
    Case("order-site-id", lambda c: c.Site.objects.all().order_by("id"), UsageError),
    Case("order-app", lambda c: c.App.objects.order_by("-id"), UsageError),
    Case("order-batchjob-id", lambda c: c.BatchJob.objects.order_by("id"), UsageError),
    Case("order-not-a-string", lambda c: c.Job.objects.order_by(5), UsageError),
    # invalid enum values
    Case(
        "state-FINISHED",
        lambda c: c.Job.objects.filter(state="FINISHED"),
        UsageError,
        "JOB_FINISHED",
    ),
    Case("state-lowercase", lambda c: c.Job.objects.filter(state="failed"), UsageError),
    Case("state-in-list", lambda c: c.Job.objects.filter(state=["FAILED", "DONE"]), UsageError),
    Case("state__ne-bad", lambda c: c.Job.objects.filter(state__ne="OK"), UsageError),
    Case("transfer-state", lambda c: c.TransferItem.objects.filter(state="x"), UsageError),
    Case("transfer-dir", lambda c: c.TransferItem.objects.filter(direction="up"), UsageError),
    # tag strings without ':' (the server drops them)
    Case("tags-abc", lambda c: c.Job.objects.filter(tags="abc"), UsageError, "'abc'"),
    Case("tags-list-b", lambda c: c.Job.objects.filter(tags=["a:1", "b"]), UsageError, "'b'"),
    Case("filter_tags-abc", lambda c: c.BatchJob.objects.filter(filter_tags="abc"), UsageError),
    Case("event-data-abc", lambda c: c.EventLog.objects.filter(data=["x"]), UsageError),
    # values the server ignores, so the query would match everything ("fail open")
    Case(
        "pending_file_cleanup-False",
        lambda c: c.Job.objects.filter(pending_file_cleanup=False),
        UsageError,
    ),
    Case("app_id-0", lambda c: c.Job.objects.filter(app_id=0), UsageError),
    Case("batch_job_id-0", lambda c: c.Job.objects.filter(batch_job_id=0), UsageError),
    Case(
        "workdir__contains-empty", lambda c: c.Job.objects.filter(workdir__contains=""), UsageError
    ),
    Case("state-empty-set", lambda c: c.Job.objects.filter(state=set()), UsageError),
    Case("id-empty-set", lambda c: c.Job.objects.filter(id=set()), UsageError),
    Case("tags-empty-dict", lambda c: c.Job.objects.filter(tags={}), UsageError),
    Case("tags-empty-list", lambda c: c.Job.objects.filter(tags=[]), UsageError),
    Case("site-name-empty", lambda c: c.Site.objects.filter(name=""), UsageError),
    Case("state-None", lambda c: c.Job.objects.filter(state=None), UsageError),
    # update()/delete() of an unfiltered query need an explicit .all()
    Case(
        "update-unfiltered",
        lambda c: c.Job.objects.filter().update(num_nodes=2),
        UsageError,
        r"all\(\)",
    ),
    Case("delete-unfiltered", lambda c: c.Job.objects.filter().delete(), UsageError, r"all\(\)"),
    Case("delete-ordered", lambda c: c.Job.objects.order_by("id").delete(), UsageError),
    Case("update-ordered", lambda c: c.Job.objects.order_by("id").update(num_nodes=2), UsageError),
    Case(
        "batchjob-update-unfiltered",
        lambda c: c.BatchJob.objects.filter().update(state="queued"),
        UsageError,
    ),
    Case("update-no-fields", lambda c: c.Job.objects.filter(id=[1]).update(), UsageError),
    Case(
        "update-not-updatable",
        lambda c: c.Job.objects.filter(id=[1]).update(app_id=2),
        UsageError,
        "app_id",
    ),
    Case(
        "update-unknown-field",
        lambda c: c.Job.objects.filter(id=[1]).update(colour="red"),
        UsageError,
    ),
    Case(
        "update-bad-value",
        lambda c: c.Job.objects.filter(id=[1]).update(num_nodes="many"),
        UsageError,
        "num_nodes",
    ),
    Case(
        "update-bad-state",
        lambda c: c.Job.objects.filter(id=[1]).update(state="FINISHED"),
        UsageError,
    ),
    Case(
        "update-batchjob-queue",
        lambda c: c.BatchJob.objects.filter(id=[1]).update(queue="prod"),
        UsageError,
    ),
    Case("update-eventlog", lambda c: c.EventLog.objects.all().update(to_state="X"), UsageError),
    Case("delete-eventlog", lambda c: c.EventLog.objects.all().delete(), UsageError),
    Case("delete-transfers", lambda c: c.TransferItem.objects.all().delete(), UsageError),
    # filter / order_by / update / delete / get after a slice
    Case(
        "filter-sliced",
        lambda c: c.Job.objects.all()[:5].filter(state="FAILED"),
        SlicedQueryError,
    ),
    Case(
        "order-sliced",
        lambda c: c.Job.objects.filter(state="FAILED")[2:].order_by("id"),
        SlicedQueryError,
    ),
    Case(
        "update-sliced",
        lambda c: c.Job.objects.filter(state="FAILED")[:5].update(num_nodes=2),
        SlicedQueryError,
    ),
    Case("delete-sliced", lambda c: c.Job.objects.all()[:5].delete(), SlicedQueryError),
    Case("delete-offset", lambda c: c.Job.objects.all()[3:].delete(), SlicedQueryError),
    Case("get-sliced", lambda c: c.Job.objects.all()[1:3].get(id=1), SlicedQueryError),
    Case(
        "batchjob-update-sliced",
        lambda c: c.BatchJob.objects.all()[:2].update(state="queued"),
        SlicedQueryError,
    ),
    # negative or non-int indexes and slices
    Case("index-negative", lambda c: c.Job.objects.all()[-1], UsageError),
    Case("slice-negative-start", lambda c: c.Job.objects.all()[-3:], UsageError),
    Case("slice-negative-stop", lambda c: c.Job.objects.filter(state="FAILED")[:-1], UsageError),
    Case("slice-of-slice-negative", lambda c: c.Job.objects.all()[2:8][-1:], UsageError),
    Case("index-str", lambda c: c.Job.objects.all()["a"], UsageTypeError),
    Case("index-float", lambda c: c.Job.objects.all()[1.5], UsageTypeError),
    Case("slice-float", lambda c: c.Job.objects.all()[0:2.5], UsageError),
    # wrong types
    Case("bulk_create-generator", lambda c: c.Job.objects.bulk_create(_gen(c)), UsageTypeError),
    Case(
        "bulk_create-tuple",
        lambda c: c.Job.objects.bulk_create((c.Job(workdir="t/1", app_id=1),)),
        UsageTypeError,
    ),
    Case(
        "bulk_create-wrong-model",
        lambda c: c.Job.objects.bulk_create([c.Site(name="s", path="/p")]),
        UsageTypeError,
    ),
    Case(
        "bulk_create-dicts", lambda c: c.Job.objects.bulk_create([{"workdir": "a"}]), UsageTypeError
    ),
    Case("bulk_update-ints", lambda c: c.Job.objects.bulk_update([1, 2]), UsageTypeError),
    Case(
        "bulk_update-unsaved",
        lambda c: c.Job.objects.bulk_update([c.Job(workdir="u/1", app_id=1)]),
        ObjectStateError,
    ),
    Case("app_id-str", lambda c: c.Job.objects.filter(app_id="x"), UsageTypeError),
    Case("app_id-bool", lambda c: c.Job.objects.filter(app_id=True), UsageTypeError),
    Case("app_id-list", lambda c: c.Job.objects.filter(app_id=[1, 2]), UsageTypeError),
    Case("id-mixed", lambda c: c.Job.objects.filter(id=[1, "a"]), UsageTypeError),
    Case("id-str", lambda c: c.Job.objects.filter(id="1"), UsageTypeError),
    Case("id-float", lambda c: c.Job.objects.filter(id=[1.5]), UsageTypeError),
    Case("site-id-str", lambda c: c.Site.objects.filter(id=["x"]), UsageTypeError),
    Case(
        "workdir__contains-int", lambda c: c.Job.objects.filter(workdir__contains=5), UsageTypeError
    ),
    Case(
        "datetime-int",
        lambda c: c.Job.objects.filter(last_update_after=12345),
        UsageTypeError,
    ),
    Case(
        "datetime-text",
        lambda c: c.Site.objects.filter(last_refresh_after="an hour ago"),
        UsageError,
    ),
    # constructors
    Case("job-absolute-workdir", lambda c: c.Job(workdir="/abs/path", app_id=1), UsageError, "abs"),
    Case("job-empty-workdir", lambda c: c.Job(workdir="", app_id=1), UsageError, "workdir"),
    Case("job-no-workdir", lambda c: c.Job(app_id=1), UsageError, "workdir"),
    Case("job-no-app", lambda c: c.Job(workdir="a"), UsageError, "app_id"),
    Case(
        "job-unknown-kwarg",
        lambda c: c.Job(workdir="a", app_id=1, colour="red"),
        UsageError,
        "colour",
    ),
    Case("job-id-kwarg", lambda c: c.Job(workdir="a", app_id=1, id=5), UsageError, "id"),
    Case(
        "job-state-kwarg",
        lambda c: c.Job(workdir="a", app_id=1, state="RUNNING"),
        UsageError,
        "state",
    ),
    Case(
        "job-num_nodes-many",
        lambda c: c.Job(workdir="a", app_id=1, num_nodes="many"),
        UsageError,
        "num_nodes",
    ),
    Case("job-tags-str", lambda c: c.Job(workdir="a", app_id=1, tags="abc"), UsageError, "tags"),
    Case(
        "job-parameters-str",
        lambda c: c.Job(workdir="a", app_id=1, parameters="x=1"),
        UsageTypeError,
    ),
    Case(
        "job-transfer-no-alias",
        lambda c: c.Job(workdir="a", app_id=1, transfers={"in": "/abs/file"}),
        UsageError,
    ),
    Case(
        "job-transfer-relative",
        lambda c: c.Job(workdir="a", app_id=1, transfers={"in": "laptop:rel/file"}),
        UsageError,
    ),
    Case("site-relative-path", lambda c: c.Site(name="s", path="relative"), UsageError, "path"),
    Case("site-no-path", lambda c: c.Site(name="s"), UsageError, "path"),
    Case("site-unknown-kwarg", lambda c: c.Site(name="s", path="/p", host="x"), UsageError, "host"),
    Case(
        "app-name-not-identifier",
        lambda c: c.App(site_id=1, name="not an identifier", serialized_class="t", source_code="x"),
        UsageError,
        "identifier",
    ),
    Case(
        "app-name-digit",
        lambda c: c.App(site_id=1, name="1st", serialized_class="t", source_code="x"),
        UsageError,
    ),
    Case(
        "batchjob-job_mode",
        lambda c: c.BatchJob(
            site_id=1, project="p", queue="q", num_nodes=1, wall_time_min=5, job_mode="parallel"
        ),
        UsageError,
        "job_mode",
    ),
    Case(
        "batchjob-state-kwarg",
        lambda c: c.BatchJob(
            site_id=1,
            project="p",
            queue="q",
            num_nodes=1,
            wall_time_min=5,
            job_mode="mpi",
            state="queued",
        ),
        UsageError,
    ),
    Case("transferitem-ctor", lambda c: c.TransferItem(), UsageError),
    Case("transferitem-ctor-kw", lambda c: c.TransferItem(state="done"), UsageError),
    Case("eventlog-ctor", lambda c: c.EventLog(), UsageError),
    # unsaved objects
    Case(
        "refresh-unsaved",
        lambda c: c.Job(workdir="a", app_id=1).refresh_from_db(),
        ObjectStateError,
    ),
    Case("delete-unsaved", lambda c: c.Job(workdir="a", app_id=1).delete(), ObjectStateError),
    Case(
        "site-refresh-unsaved",
        lambda c: c.Site(name="s", path="/p").refresh_from_db(),
        ObjectStateError,
    ),
    Case(
        "app-delete-unsaved",
        lambda c: c.App(site_id=1, name="A", serialized_class="t", source_code="x").delete(),
        ObjectStateError,
    ),
]


def _set(obj: Any, name: str, value: Any) -> None:
    setattr(obj, name, value)


# Cases that need saved objects (``Ctx``).
OBJECT_CASES: list[Case] = [
    # fields that cannot be assigned
    Case("job-app_id", lambda x: _set(x.job, "app_id", 3), FieldNotWritable, "app_id"),
    Case("job-parent_ids", lambda x: _set(x.job, "parent_ids", {1}), FieldNotWritable),
    Case("job-id", lambda x: _set(x.job, "id", 5), FieldNotWritable),
    Case(
        "job-last_update",
        lambda x: _set(x.job, "last_update", datetime.now(timezone.utc)),
        FieldNotWritable,
    ),
    Case("job-transfers", lambda x: _set(x.job, "transfers", {}), FieldNotWritable),
    Case("batchjob-queue", lambda x: _set(x.bj, "queue", "prod"), FieldNotWritable, "queue"),
    Case("batchjob-project", lambda x: _set(x.bj, "project", "other"), FieldNotWritable),
    Case("batchjob-num_nodes", lambda x: _set(x.bj, "num_nodes", 8), FieldNotWritable),
    Case("batchjob-site_id", lambda x: _set(x.bj, "site_id", x.site.id), FieldNotWritable),
    Case("site-id", lambda x: _set(x.site, "id", 1), FieldNotWritable),
    Case(
        "site-last_refresh",
        lambda x: _set(x.site, "last_refresh", datetime.now(timezone.utc)),
        FieldNotWritable,
    ),
    Case("app-id", lambda x: _set(x.app, "id", 1), FieldNotWritable),
    Case("new-job-state", lambda x: _set(x.new_job, "state", "RUNNING"), FieldNotWritable),
    Case("new-job-id", lambda x: _set(x.new_job, "id", 1), FieldNotWritable),
    Case("event-to_state", lambda x: _set(x.event, "to_state", "X"), FieldNotWritable),
    Case("event-data", lambda x: _set(x.event, "data", {}), FieldNotWritable),
    # updatable fields given a value of the wrong type or shape
    Case("job-num_nodes-many", lambda x: _set(x.job, "num_nodes", "many"), UsageError, "num_nodes"),
    Case("job-state-FINISHED", lambda x: _set(x.job, "state", "FINISHED"), UsageError, "state"),
    Case("job-tags-str", lambda x: _set(x.job, "tags", "abc"), UsageError, "tags"),
    Case("job-data-str", lambda x: _set(x.job, "data", "x"), UsageError, "data"),
    Case("job-workdir-abs", lambda x: _set(x.job, "workdir", "/abs"), UsageError, "workdir"),
    Case("job-return_code", lambda x: _set(x.job, "return_code", "zero"), UsageError),
    Case("job-parameters-list", lambda x: _set(x.job, "parameters", [1]), UsageTypeError),
    Case("batchjob-state-done", lambda x: _set(x.bj, "state", "done"), UsageError, "state"),
    Case("site-path-relative", lambda x: _set(x.site, "path", "rel/dir"), UsageError, "path"),
    Case("app-name-spaces", lambda x: _set(x.app, "name", "not ok"), UsageError, "name"),
    Case("new-job-num_nodes", lambda x: _set(x.new_job, "num_nodes", "many"), UsageError),
    Case("new-job-workdir-abs", lambda x: _set(x.new_job, "workdir", "/abs"), UsageError),
    # lifecycle: unsaved and deleted objects
    Case("refresh-unsaved", lambda x: x.new_job.refresh_from_db(), ObjectStateError),
    Case("delete-unsaved", lambda x: x.new_job.delete(), ObjectStateError),
    Case("save-deleted", lambda x: x.gone.save(), ObjectStateError),
    Case("refresh-deleted", lambda x: x.gone.refresh_from_db(), ObjectStateError),
    Case("delete-deleted", lambda x: x.gone.delete(), ObjectStateError),
    Case("assign-deleted", lambda x: _set(x.gone, "num_nodes", 2), ObjectStateError),
    Case("bulk_update-deleted", lambda x: x.c.Job.objects.bulk_update([x.gone]), ObjectStateError),
    Case("bulk_create-saved", lambda x: x.c.Job.objects.bulk_create([x.job]), UsageError),
    Case("delete-event", lambda x: x.event.delete(), UsageError),
]


def _unique_ids(cases: list[Case]) -> list[Case]:
    ids = [case.id for case in cases]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    return cases


@pytest.mark.parametrize("case", _unique_ids(CLIENT_CASES), ids=lambda case: case.id)
def test_bad_call_is_refused_before_any_request(
    unreachable: Client, unreachable_sent: RequestLog, case: Case
) -> None:
    check_refused(case, unreachable, unreachable, unreachable_sent)


@pytest.mark.parametrize("case", _unique_ids(OBJECT_CASES), ids=lambda case: case.id)
def test_bad_call_on_an_object_is_refused_before_any_request(
    ctx: Ctx, unreachable_sent: RequestLog, case: Case
) -> None:
    check_refused(case, ctx, ctx.c, unreachable_sent, ctx.queued)


def test_refused_assignments_leave_the_object_unchanged(
    ctx: Ctx, unreachable_sent: RequestLog
) -> None:
    job = ctx.job
    for name, value in [("num_nodes", "many"), ("state", "FINISHED"), ("app_id", 3)]:
        with pytest.raises(UsageError):
            setattr(job, name, value)
    assert (job.num_nodes, job.state, job.app_id) == (1, "STAGED_IN", ctx.app.id)
    job.save()  # nothing is pending
    assert len(unreachable_sent) == 0 and _pending(ctx.c) == ctx.queued


# -- filter(id=[]): an empty query that sends nothing -----------------------------------------


EMPTY_QUERY_USES: list[tuple[str, Callable[[Any], Any], Any]] = [
    ("list", lambda q: list(q), []),
    ("iterate-twice", lambda q: [list(q), list(q)], [[], []]),
    ("count", lambda q: q.count(), 0),
    ("len", lambda q: len(q), 0),
    ("bool", lambda q: bool(q), False),
    ("update", lambda q: q.update(num_nodes=2), 0),
    ("delete", lambda q: q.delete(), None),
    ("chained-filter", lambda q: list(q.filter(state="FAILED")), []),
    ("ordered-slice", lambda q: list(q.order_by("-last_update")[0:10]), []),
    ("sliced-count", lambda q: q[:5].count(), 0),
]


@pytest.mark.parametrize("empty", [[], ()], ids=["list", "tuple"])
@pytest.mark.parametrize(
    ("use", "expected"),
    [(fn, want) for _, fn, want in EMPTY_QUERY_USES],
    ids=[name for name, _, _ in EMPTY_QUERY_USES],
)
def test_filter_by_an_empty_id_list_is_an_empty_query(
    ctx: Ctx, unreachable_sent: RequestLog, use: Callable[[Any], Any], expected: Any, empty: Any
) -> None:
    q = ctx.c.Job.objects.filter(id=empty)
    assert use(q) == expected
    assert len(unreachable_sent) == 0  # nothing asked, nothing changed on the server
    assert _pending(ctx.c) == ctx.queued  # nor queued to be changed later
    assert ctx.c.Job.objects.offline().get(id=ctx.job.id).num_nodes == 1


def test_empty_query_first_get_and_other_resources(ctx: Ctx, unreachable_sent: RequestLog) -> None:
    q = ctx.c.Job.objects.filter(id=[])
    with pytest.raises(IndexError):
        q.first()
    with pytest.raises(IndexError):
        q[0]
    with pytest.raises(ctx.c.Job.DoesNotExist):
        q.get()
    assert list(ctx.c.Site.objects.filter(id=[])) == []
    assert ctx.c.BatchJob.objects.filter(id=[]).update(state="queued") == 0
    assert ctx.c.App.objects.filter(site_id=[]).count() == 0
    assert len(unreachable_sent) == 0 and _pending(ctx.c) == ctx.queued


def test_all_allows_update_and_delete_of_everything(fresh_client: Client) -> None:
    c = fresh_client
    site = c.Site.objects.create(name=f"s-{uuid.uuid4().hex[:6]}", path="/projects/all")
    app = c.App.objects.create(site_id=site.id, name="A", serialized_class="t", source_code="x")
    c.Job.objects.bulk_create([c.Job(workdir=f"all/{i}", app_id=app.id) for i in range(3)])
    assert c.Job.objects.all().update(num_nodes=2) == 3
    assert {j.num_nodes for j in c.Job.objects.all()} == {2}
    c.Job.objects.all().delete()
    assert c.Job.objects.count() == 0


# -- errors reported by the server ------------------------------------------------------------


def _attempts(sent: Any, method: str, path_end: str) -> int:
    return sum(1 for m, url in sent.calls if m == method and url.endswith(path_end))


def test_duplicate_site_name_is_rejected_at_once(client: Client, sent: Any) -> None:
    name = f"dup-{uuid.uuid4().hex[:6]}"
    client.Site.objects.create(name=name, path="/projects/a")
    sent.clear()
    start = time.monotonic()
    with pytest.raises(Rejected, match="already exists") as info:
        client.Site.objects.create(name=name, path="/projects/b")
    assert time.monotonic() - start < 5
    assert info.value.status == 400
    assert _attempts(sent, "POST", "/sites/") == 1
    assert [str(s.path) for s in client.Site.objects.filter(name=name)] == ["/projects/a"]


def test_duplicate_app_name_is_rejected_at_once(client: Client, site: Any, sent: Any) -> None:
    client.App.objects.create(site_id=site.id, name="Twice", serialized_class="t", source_code="x")
    sent.clear()
    with pytest.raises(Rejected, match="already exists"):
        client.App.objects.create(
            site_id=site.id, name="Twice", serialized_class="t", source_code="y"
        )
    assert _attempts(sent, "POST", "/apps/") == 1


@pytest.fixture
def foreign_app_id(balsam_server: str, tmp_path: Path) -> Iterator[int]:
    """The id of an App owned by ANOTHER user."""
    stranger = _connect(
        balsam_server, register_user(balsam_server, "stranger").token, tmp_path / "stranger"
    )
    site = stranger.Site.objects.create(name=f"theirs-{uuid.uuid4().hex[:6]}", path="/x")
    app = stranger.App.objects.create(
        site_id=site.id, name="Theirs", serialized_class="t", source_code="x"
    )
    yield app.id
    stranger.close()


@pytest.mark.parametrize("which", ["foreign", "missing"])
def test_job_with_a_foreign_or_missing_app_is_not_found(
    client: Client, sent: Any, foreign_app_id: int, which: str
) -> None:
    app_id = foreign_app_id if which == "foreign" else 2_000_000_000
    tag = uuid.uuid4().hex
    sent.clear()
    start = time.monotonic()
    with pytest.raises(NotFound, match="Could not find one or more Apps") as info:
        client.Job.objects.create(workdir=f"{tag}/1", app_id=app_id)
    assert time.monotonic() - start < 5
    assert info.value.status == 404
    assert _attempts(sent, "POST", "/jobs/") == 1
    with pytest.raises(NotFound):
        client.Job.objects.bulk_create([client.Job(workdir=f"{tag}/2", app_id=app_id)])
    assert client.Job.objects.filter(workdir__contains=tag).count() == 0


def test_batch_job_at_a_foreign_site_is_rejected(client: Client, sent: Any) -> None:
    sent.clear()
    with pytest.raises((Rejected, NotFound)) as info:
        client.BatchJob.objects.create(
            site_id=2_000_000_000,
            project="p",
            queue="q",
            num_nodes=1,
            wall_time_min=5,
            job_mode="mpi",
        )
    assert "site" in str(info.value).lower()
    assert _attempts(sent, "POST", "/batch-jobs/") == 1


def test_saving_a_job_deleted_elsewhere_fails_at_once(
    client: Client, app: Any, sent: Any, user: Any, tmp_path: Path
) -> None:
    job = client.Job.objects.create(workdir="stale/1", app_id=app.id)
    other = _connect(user.api_root, user.token, tmp_path / "elsewhere")
    other.Job.objects.filter(id=[job.id]).delete()
    other.close()
    job.num_nodes = 2
    sent.clear()
    start = time.monotonic()
    with pytest.raises(HTTPStatusError):
        job.save()
    assert time.monotonic() - start < 5
    assert len(sent) <= 3
    with pytest.raises(client.Job.DoesNotExist):
        job.refresh_from_db()


def _bad_tokens(user: Any) -> list[str]:
    header, payload, _signature = user.token.split(".")
    return ["not-a-jwt", f"{header}.{payload}.c2lnbmF0dXJlLWZyb20tc29tZXdoZXJlLWVsc2U"]


OPERATIONS: list[tuple[str, Callable[[Client], Any]]] = [
    ("list", lambda c: list(c.Job.objects.all())),
    ("count", lambda c: c.Job.objects.filter(state="FAILED").count()),
    ("get", lambda c: c.Site.objects.get(name="x")),
    ("create-site", lambda c: c.Site.objects.create(name="x", path="/p")),
    ("create-job", lambda c: c.Job.objects.create(workdir="a", app_id=1)),
    ("query-delete", lambda c: c.Job.objects.filter(state="FAILED").delete()),
]


@pytest.mark.parametrize("token_kind", [0, 1], ids=["not-a-jwt", "forged-signature"])
@pytest.mark.parametrize(("op_name", "op"), OPERATIONS, ids=[n for n, _ in OPERATIONS])
def test_bad_token_is_not_authenticated_and_never_shown(
    user: Any, tmp_path: Path, token_kind: int, op_name: str, op: Callable[[Client], Any]
) -> None:
    token = _bad_tokens(user)[token_kind]
    bad = balsam_sync.connect(user.api_root, token, home=str(tmp_path), retry=QUICK_RETRY)
    calls: list[tuple[str, str]] = []
    bad.transport.on_request.append(lambda method, url: calls.append((method, url)))
    start = time.monotonic()
    try:
        with pytest.raises(NotAuthenticated) as info:
            op(bad)
    finally:
        bad.close()
    assert time.monotonic() - start < 5
    assert len(calls) == 1, calls  # refused at once: no retry
    exc = info.value
    assert exc.status == 401
    shown = "\n".join([str(exc), repr(exc), exc.url, "".join(traceback.format_exception(exc))])
    assert token not in shown
    assert token.split(".")[-1] not in shown
