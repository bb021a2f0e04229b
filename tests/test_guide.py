"""Every code example of the Python API user guide, run against the real Balsam server.

The specification is ``python-api-guide.md`` (upstream's "The Python API" page) plus the design
decisions of balsam_sync (model-scoped exceptions, ``bulk_create`` ids on the passed instances,
counts of sliced queries, int results of query ``update``/``delete``, reloads after saves).
Examples written with ``from balsam_sync.api import Job`` use the ``api`` fixture, so they run
exactly as the page shows them. What the server stored is checked with plain HTTP requests
(``server_rows``), never through the client under test.
"""

from __future__ import annotations

import inspect
import json
import typing
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import requests

import balsam_sync
from balsam_sync.api import App, BatchJob, EventLog, Job, Site, TransferItem
from balsam_sync.client import Client
from balsam_sync.errors import MultipleObjectsReturned, ObjectDoesNotExist
from balsam_sync.orm.models import Model
from balsam_sync.remote.outcomes import RetryPolicy
from balsam_sync.resources import MARKER_KEY

QUICK_RETRY = RetryPolicy(attempts=3, max_seconds=5.0, initial_wait=0.01, max_wait=0.05)


# -- helpers ---------------------------------------------------------------------------------


def server_rows(user: Any, path: str, **params: Any) -> list[dict[str, Any]]:
    """What the server holds, read with a plain HTTP GET (not through balsam_sync)."""
    reply = requests.get(
        f"{user.api_root}{path}",
        params=params,
        headers={"Authorization": f"Bearer {user.token}"},
        timeout=30,
    )
    assert reply.status_code == 200, reply.text
    rows: list[dict[str, Any]] = reply.json()["results"]
    return rows


def naive_utc(text: str) -> datetime:
    """The server's ISO text as the naive UTC datetime a model field reads."""
    value = datetime.fromisoformat(text)
    return value.astimezone(timezone.utc).replace(tzinfo=None) if value.tzinfo else value


def server_job(user: Any, job_id: int) -> dict[str, Any]:
    (row,) = server_rows(user, "/jobs/", id=job_id)
    return row


@dataclass
class Wire:
    """Every HTTP exchange of this test, with the full URL (query string included)."""

    calls: list[tuple[requests.PreparedRequest, requests.Response]]

    def clear(self) -> None:
        self.calls.clear()

    def requests_to(self, method: str, path: str) -> list[requests.PreparedRequest]:
        return [
            req
            for req, _ in self.calls
            if req.method == method and urlsplit(req.url or "").path == path
        ]

    def exchanges(
        self, method: str, path: str
    ) -> list[tuple[dict[str, list[str]], requests.Response]]:
        return [
            (parse_qs(urlsplit(req.url or "").query), resp)
            for req, resp in self.calls
            if req.method == method and urlsplit(req.url or "").path == path
        ]


@pytest.fixture
def wire(monkeypatch: pytest.MonkeyPatch) -> Wire:
    """Observe (not alter) what goes over the wire: ``sent`` records no query strings."""
    log = Wire([])
    real_send = requests.Session.send

    def send(self: requests.Session, request: requests.PreparedRequest, **kw: Any) -> Any:
        response = real_send(self, request, **kw)
        log.calls.append((request, response))
        return response

    monkeypatch.setattr(requests.Session, "send", send)
    return log


@pytest.fixture
def other(user: Any, tmp_path: Path) -> Iterator[Client]:
    """A second client of the same user, with its own mirror (another laptop, say)."""
    c = balsam_sync.connect(
        user.api_root, user.token, home=str(tmp_path / "other-home"), retry=QUICK_RETRY
    )
    yield c
    c.close()


def new_jobs(app: Any, n: int, prefix: str = "w", **fields: Any) -> list[Any]:
    """Create ``n`` jobs of ``app`` with the api classes (one bulk POST)."""
    jobs = [Job(workdir=f"{prefix}/{i}", app_id=app.id, **fields) for i in range(n)]
    Job.objects.bulk_create(jobs)
    return jobs


def set_states(jobs: list[Any], state: str) -> None:
    for job in jobs:
        job.state = state
    Job.objects.bulk_update(jobs)


def batch_job_fields(site: Any, **over: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "site_id": site.id,
        "project": "datascience",
        "queue": "debug",
        "num_nodes": 2,
        "wall_time_min": 30,
        "job_mode": "mpi",
    }
    fields.update(over)
    return fields


def _uid() -> str:
    return uuid.uuid4().hex[:8]


# -- imports and model fields ----------------------------------------------------------------


def test_resources_are_imported_at_the_top_level() -> None:
    import balsam_sync.api as api

    for name in ("Site", "App", "Job", "BatchJob", "TransferItem", "EventLog"):
        cls = getattr(api, name)
        assert isinstance(cls, type) and issubclass(cls, Model), name
        assert cls.__name__ == name


EXPECTED_FIELDS: dict[type[Model], set[str]] = {
    Site: {
        "id",
        "name",
        "path",
        "globus_endpoint_id",
        "backfill_windows",
        "queued_jobs",
        "optional_batch_job_params",
        "allowed_projects",
        "allowed_queues",
        "transfer_locations",
        "last_refresh",
        "creation_date",
    },
    App: {
        "id",
        "site_id",
        "name",
        "serialized_class",
        "source_code",
        "description",
        "parameters",
        "transfers",
    },
    Job: {
        "id",
        "workdir",
        "app_id",
        "tags",
        "serialized_parameters",
        "data",
        "return_code",
        "num_nodes",
        "ranks_per_node",
        "threads_per_rank",
        "threads_per_core",
        "launch_params",
        "gpus_per_rank",
        "node_packing_count",
        "wall_time_min",
        "parent_ids",
        "transfers",
        "batch_job_id",
        "state",
        "state_timestamp",
        "state_data",
        "pending_file_cleanup",
        "last_update",
    },
    BatchJob: {
        "id",
        "site_id",
        "project",
        "queue",
        "num_nodes",
        "wall_time_min",
        "job_mode",
        "optional_params",
        "filter_tags",
        "partitions",
        "scheduler_id",
        "state",
        "status_info",
        "start_time",
        "end_time",
    },
    TransferItem: {
        "id",
        "job_id",
        "direction",
        "local_path",
        "remote_path",
        "location_alias",
        "recursive",
        "state",
        "task_id",
        "transfer_info",
    },
    EventLog: {"id", "job_id", "timestamp", "from_state", "to_state", "data"},
}


@pytest.mark.parametrize("model", list(EXPECTED_FIELDS), ids=lambda m: m.__name__)
def test_model_fields_are_type_annotated_and_documented(model: type[Model]) -> None:
    assert inspect.getdoc(model), f"{model.__name__} has no class docstring"
    hints = typing.get_type_hints(model)
    for field in EXPECTED_FIELDS[model]:
        assert hasattr(model, field), f"{model.__name__}.{field} missing"
        assert field in hints, f"{model.__name__}.{field} has no type annotation"


@pytest.mark.parametrize("model", list(EXPECTED_FIELDS), ids=lambda m: m.__name__)
def test_field_docstrings_carry_the_schema_descriptions(model: type[Model]) -> None:
    """A field described by any of the server's schemas shows that description in the IDE."""
    res = model._resource
    undocumented = []
    for field in sorted(EXPECTED_FIELDS[model]):
        descriptions = [
            sch.model_fields[field].description
            for sch in (res.out, res.create, res.update)
            if sch is not None and field in sch.model_fields
        ]
        if any(descriptions) and not getattr(model, field).__doc__:
            undocumented.append(field)
    assert undocumented == [], f"{model.__name__}: described in the schema, no docstring"


def test_job_parameters_are_discoverable_as_a_dictionary(api: Client, app: Any) -> None:
    # "we can start searching for 'param' and find that job.parameters should be a dictionary"
    found = [name for name in dir(Job) if "param" in name]
    assert "parameters" in found
    assert inspect.getdoc(Job.parameters)
    assert typing.get_origin(typing.get_type_hints(Job.parameters.fget)["return"]) is dict
    job = Job(workdir="param/1", app_id=app.id, parameters={"name": "world", "N": "4"})
    assert job.parameters == {"name": "world", "N": "4"}
    job.save()
    fetched = Job.objects.get(id=job.id)
    assert fetched.parameters == {"name": "world", "N": "4"}


def test_instances_read_typed_values(api: Client, app: Any) -> None:
    job = Job.objects.create(workdir="typed/1", app_id=app.id, tags={"a": "1"})
    assert isinstance(job.id, int)
    # naive UTC, as upstream gives them (see the README)
    assert isinstance(job.last_update, datetime) and job.last_update.tzinfo is None
    assert isinstance(job.workdir, Path) and job.workdir == Path("typed/1")
    assert job.state == "STAGED_IN"
    assert isinstance(job.parent_ids, set)
    assert job.tags["a"] == "1"


# -- time filters (introduction of the guide) -----------------------------------------------


def test_recently_used_sites_and_updated_jobs_naive_utc(api: Client, site: Any, app: Any) -> None:
    job = Job.objects.create(workdir="recent/1", app_id=app.id)

    hour_ago = datetime.utcnow() - timedelta(hours=1)

    recently_used_sites = Site.objects.filter(last_refresh_after=hour_ago)
    recently_updated_jobs = Job.objects.filter(last_update_after=hour_ago)

    assert [s.id for s in recently_used_sites] == [site.id]
    assert [j.id for j in recently_updated_jobs] == [job.id]

    soon = datetime.utcnow() + timedelta(minutes=10)
    assert list(Site.objects.filter(last_refresh_after=soon)) == []
    assert list(Job.objects.filter(last_update_after=soon)) == []
    assert [j.id for j in Job.objects.filter(last_update_before=soon)] == [job.id]


def test_time_filters_take_aware_datetimes_in_any_zone(api: Client, site: Any, app: Any) -> None:
    job = Job.objects.create(workdir="aware/1", app_id=app.id)
    for offset_hours in (0, 5, -7):
        now = datetime.now(timezone(timedelta(hours=offset_hours)))
        hour_ago, soon = now - timedelta(hours=1), now + timedelta(minutes=10)
        assert [s.id for s in Site.objects.filter(last_refresh_after=hour_ago)] == [site.id]
        assert [j.id for j in Job.objects.filter(last_update_after=hour_ago)] == [job.id]
        assert Site.objects.filter(last_refresh_after=soon).count() == 0, offset_hours
        assert Job.objects.filter(last_update_after=soon).count() == 0, offset_hours


# -- creating --------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["save", "create", "bulk_create"])
def test_tags_are_stored_as_given(api: Client, app: Any, user: Any, how: str) -> None:
    """The tags of a created job are the user's tags, nothing added or lost.

    On the server a job created through balsam_sync also carries the exactly-once marker
    (``MARKER_KEY``, documented in the README); ``job.tags`` never shows it.
    """
    given = [{"experiment": "foo", "system": "H2O"}, {}]
    if how == "create":
        jobs = [
            Job.objects.create(workdir=f"tags/{i}", app_id=app.id, tags=t)
            for i, t in enumerate(given)
        ]
    else:
        jobs = [Job(workdir=f"tags/{i}", app_id=app.id, tags=t) for i, t in enumerate(given)]
        if how == "save":
            for job in jobs:
                job.save()
        else:
            Job.objects.bulk_create(jobs)
    assert [job.tags for job in jobs] == given
    on_server = [server_job(user, job.id)["tags"] for job in jobs]
    assert all(MARKER_KEY in tags for tags in on_server)
    assert [{k: v for k, v in t.items() if k != MARKER_KEY} for t in on_server] == given
    assert [Job.objects.get(id=job.id).tags for job in jobs] == given


def test_create_in_memory_then_save(api: Client, app: Any, sent: Any, user: Any) -> None:
    sent.clear()
    # Create in-memory with the required kwargs...
    j = Job(workdir="demo/hello", app_id=app.id, tags={"experiment": "foo"})

    # New in-memory resources have no ID:
    assert j.id is None
    assert len(sent) == 0

    # ...then persist:
    j.save()
    assert j.id is not None
    assert [m for m, _ in sent.calls] == ["POST"]
    row = server_job(user, j.id)
    assert row["workdir"] == "demo/hello"
    assert row["tags"]["experiment"] == "foo"  # exactness: test_tags_are_stored_as_given
    assert row["app_id"] == app.id
    assert j.state == row["state"] == "STAGED_IN"


def test_create_and_persist_in_one_step(api: Client, app: Any, user: Any) -> None:
    j = Job.objects.create(workdir="demo/one-step", app_id=app.id, num_nodes=3)
    assert j.id is not None
    assert server_job(user, j.id)["num_nodes"] == 3


def test_bulk_create_sets_the_id_of_every_passed_instance(
    api: Client, app: Any, user: Any, sent: Any
) -> None:
    job_specs = [
        {"workdir": f"bulk/{i}", "app_id": app.id, "tags": {"i": str(i)}} for i in range(7)
    ]
    jobs = [Job(**kwargs) for kwargs in job_specs]
    sent.clear()
    returned = Job.objects.bulk_create(jobs)
    for job in jobs:
        assert job.id is not None
    assert len(sent) == 1
    assert len(returned) == len(jobs)
    assert all(r is j for r, j in zip(returned, jobs, strict=True))
    assert len({j.id for j in jobs}) == 7
    on_server = {row["id"]: row for row in server_rows(user, "/jobs/")}
    assert set(on_server) == {j.id for j in jobs}
    for spec, job in zip(job_specs, jobs, strict=True):
        assert job.id is not None
        assert on_server[job.id]["workdir"] == spec["workdir"] == str(job.workdir)
        assert on_server[job.id]["tags"]["i"] == spec["tags"]["i"]


def test_bulk_create_chunks_at_5000_jobs_per_post(
    api: Client, app: Any, user: Any, sent: Any, wire: Wire
) -> None:
    jobs = [Job(workdir=f"many/{i}", app_id=app.id) for i in range(5001)]
    sent.clear()
    wire.clear()
    Job.objects.bulk_create(jobs)
    posts = [url for method, url in sent.calls if method == "POST"]
    assert len(posts) == 2
    sizes = [len(json.loads(req.body or b"[]")) for req in wire.requests_to("POST", "/jobs/")]
    assert sizes == [5000, 1]
    ids: list[Any] = [j.id for j in jobs]
    assert None not in ids and len(set(ids)) == 5001
    assert ids == sorted(ids)  # the server answers in request order
    assert Job.objects.count() == 5001


@pytest.mark.parametrize("how", ["save", "create"])
def test_site_app_batchjob_are_created_both_ways(
    api: Client, user: Any, how: str, sent: Any
) -> None:
    def make(model: Any, **fields: Any) -> Any:
        if how == "create":
            obj = model.objects.create(**fields)
        else:
            obj = model(**fields)
            assert obj.id is None
            obj.save()
        assert obj.id is not None
        return obj

    site = make(Site, name=f"theta-{_uid()}", path="/projects/theta")
    app = make(App, site_id=site.id, name="Sim", serialized_class="txt", source_code="pass")
    bj = make(BatchJob, **batch_job_fields(site))
    assert [r["id"] for r in server_rows(user, "/sites/")] == [site.id]
    assert [r["id"] for r in server_rows(user, "/apps/")] == [app.id]
    (bj_row,) = server_rows(user, "/batch-jobs/")
    assert bj_row["id"] == bj.id
    assert bj.state == bj_row["state"] == "pending_submission"
    assert site.last_refresh is not None and site.last_refresh.tzinfo is None


# -- updating --------------------------------------------------------------------------------


def test_save_updates_an_existing_job(api: Client, app: Any, user: Any, sent: Any) -> None:
    job = Job.objects.create(workdir="upd/1", app_id=app.id)
    job_id = job.id
    before = job.last_update
    sent.clear()

    job.state = "RESTART_READY"
    job.save()

    assert job.id == job_id
    writes = [m for m, _ in sent.calls if m != "GET"]
    assert writes in (["PUT"], ["PATCH"])  # an update, not a second create
    assert job.state == "RESTART_READY"
    assert job.last_update is not None and before is not None and job.last_update > before
    (row,) = server_rows(user, "/jobs/")
    assert row["id"] == job_id and row["state"] == "RESTART_READY"


SERVER_REWRITES = [
    ("READY", "STAGED_IN"),
    ("POSTPROCESSED", "JOB_FINISHED"),
    ("STAGED_OUT", "JOB_FINISHED"),
    ("FAILED", "FAILED"),
]


def test_save_leaves_the_instance_holding_what_the_server_stored(
    api: Client, app: Any, user: Any
) -> None:
    jobs = new_jobs(app, len(SERVER_REWRITES))
    for job, (requested, stored) in zip(jobs, SERVER_REWRITES, strict=True):
        if requested == "READY":
            job.state = "RESTART_READY"  # READY must be a change from the current STAGED_IN
            job.save()
        job.state = requested
        job.save()
        assert job.state == stored, requested
        row = server_job(user, job.id)
        assert row["state"] == stored, requested
        assert job.last_update == naive_utc(row["last_update"]), requested


def test_in_place_change_deep_inside_a_cached_row_is_saved(
    api: Client, app: Any, user: Any
) -> None:
    job = Job.objects.create(workdir="inplace/2", app_id=app.id, data={"a": [1], "b": {"c": 0}})
    cached = Job.objects.filter(id=[job.id]).offline()[0]
    cached.data["a"].append(2)
    cached.data["b"]["c"] = 5
    flat = Job.objects.filter(id=[job.id]).offline()[0]
    flat.tags["x"] = "1"  # a flat dict: its snapshot is a shallow copy
    cached.save()
    assert server_job(user, job.id)["data"] == {"a": [1, 2], "b": {"c": 5}}
    flat.save()
    assert server_job(user, job.id)["tags"] == {"x": "1"}


def test_in_place_change_of_a_dict_field_is_saved(api: Client, app: Any, user: Any) -> None:
    job = Job.objects.create(workdir="inplace/1", app_id=app.id, data={"a": 0})
    loaded = Job.objects.get(id=job.id)
    loaded.data["k"] = 1
    loaded.tags["experiment"] = "foo"
    loaded.save()
    row = server_job(user, job.id)
    assert row["data"] == {"a": 0, "k": 1}
    # The whole dict is sent, as seen by the user: the hidden create marker is dropped with it.
    assert row["tags"] == {"experiment": "foo"}
    assert loaded.data == {"a": 0, "k": 1}


def test_refresh_from_db_sees_another_clients_change(api: Client, app: Any, other: Client) -> None:
    job = Job.objects.create(workdir="refresh/1", app_id=app.id)
    theirs = other.Job.objects.get(id=job.id)
    theirs.num_nodes = 4
    theirs.state = "FAILED"
    theirs.save()

    assert job.num_nodes == 1
    # Re-fetch the Job & update fields:
    job.refresh_from_db()
    assert job.num_nodes == 4
    assert job.state == "FAILED"


def test_refresh_from_db_discards_unsaved_local_changes(api: Client, app: Any, sent: Any) -> None:
    job = Job.objects.create(workdir="refresh/2", app_id=app.id)
    job.num_nodes = 8
    job.refresh_from_db()
    assert job.num_nodes == 1
    sent.clear()
    job.save()  # nothing is pending any more
    assert len(sent) == 0


def test_query_update_of_failed_jobs(api: Client, app: Any, user: Any) -> None:
    jobs = new_jobs(app, 4, num_nodes=4)
    failed, kept = jobs[:2], jobs[2:]
    set_states(failed, "FAILED")

    # Select all FAILED jobs, change num_nodes=1, and mark for retry
    n = Job.objects.filter(state="FAILED").update(num_nodes=1, state="RESTART_READY")

    assert n == 2
    on_server = {row["id"]: row for row in server_rows(user, "/jobs/")}
    for job in failed:
        assert on_server[job.id]["state"] == "RESTART_READY"
        assert on_server[job.id]["num_nodes"] == 1
    for job in kept:
        assert on_server[job.id]["state"] == "STAGED_IN"
        assert on_server[job.id]["num_nodes"] == 4
    assert server_rows(user, "/jobs/", state="FAILED") == []
    assert Job.objects.filter(state="FAILED").count() == 0
    assert {j.id for j in Job.objects.filter(state="RESTART_READY")} == {j.id for j in failed}


def test_bulk_update_sends_each_instance_its_own_changes(
    api: Client, app: Any, user: Any, sent: Any
) -> None:
    modified_jobs = new_jobs(app, 4)
    a, b, c, d = modified_jobs
    a.num_nodes = 2
    b.state = "FAILED"
    c.tags = {"system": "H2O"}
    c.data = {"energy": -76.4}
    d.state = "POSTPROCESSED"  # the server stores JOB_FINISHED (no stage-out items)

    # Mutated jobs to be updated, each in their own way:
    n = Job.objects.bulk_update(modified_jobs)

    assert n == 4
    rows = {row["id"]: row for row in server_rows(user, "/jobs/")}
    assert (rows[a.id]["num_nodes"], rows[a.id]["state"]) == (2, "STAGED_IN")
    assert (rows[b.id]["num_nodes"], rows[b.id]["state"]) == (1, "FAILED")
    assert rows[c.id]["tags"] == {"system": "H2O"}
    assert rows[c.id]["data"] == {"energy": -76.4}
    assert rows[c.id]["state"] == "STAGED_IN"
    assert rows[d.id]["state"] == "JOB_FINISHED"
    # the instances were reloaded: they hold the server's state and have nothing pending
    assert (a.num_nodes, b.state, c.tags, d.state) == (
        2,
        "FAILED",
        {"system": "H2O"},
        "JOB_FINISHED",
    )
    for job in modified_jobs:
        assert job.last_update == naive_utc(rows[job.id]["last_update"])
    sent.clear()
    for job in modified_jobs:
        job.save()
    assert len(sent) == 0


def test_bulk_update_without_changes_sends_nothing(api: Client, app: Any, sent: Any) -> None:
    jobs = new_jobs(app, 2)
    sent.clear()
    assert Job.objects.bulk_update(jobs) == 0
    assert len(sent) == 0


def test_site_and_app_save_and_refresh(api: Client, user: Any, other: Client) -> None:
    site = Site.objects.create(name=f"polaris-{_uid()}", path="/projects/polaris")
    app = App.objects.create(site_id=site.id, name="Sim", serialized_class="t", source_code="x")

    site.path = Path("/projects/polaris2")  # a str works too
    site.allowed_projects = ["datascience"]
    site.save()
    app.description = "a simulation"
    app.save()
    (site_row,) = server_rows(user, "/sites/")
    (app_row,) = server_rows(user, "/apps/")
    assert site_row["path"] == "/projects/polaris2"
    assert site_row["allowed_projects"] == ["datascience"]
    assert app_row["description"] == "a simulation"

    their_site = other.Site.objects.get(id=site.id)
    their_site.transfer_locations = {"laptop": "rsync://user@laptop"}
    their_site.save()
    their_app = other.App.objects.get(id=app.id)
    their_app.source_code = "print('v2')"
    their_app.save()

    assert site.transfer_locations == {}
    site.refresh_from_db()
    app.refresh_from_db()
    assert site.transfer_locations == {"laptop": "rsync://user@laptop"}
    assert site.path == Path("/projects/polaris2")
    assert app.source_code == "print('v2')"


def test_batch_job_save_refresh_and_query_update(
    api: Client, site: Any, user: Any, other: Client
) -> None:
    bj1 = BatchJob.objects.create(**batch_job_fields(site))
    bj2 = BatchJob.objects.create(**batch_job_fields(site, queue="prod"))

    bj1.state = "queued"
    bj1.scheduler_id = 4242
    bj1.save()
    assert bj1.state == "queued" and bj1.scheduler_id == 4242
    rows = {r["id"]: r for r in server_rows(user, "/batch-jobs/")}
    assert (rows[bj1.id]["state"], rows[bj1.id]["scheduler_id"]) == ("queued", 4242)
    assert rows[bj2.id]["state"] == "pending_submission"

    theirs = other.BatchJob.objects.get(id=bj2.id)
    theirs.status_info = {"note": "held"}
    theirs.save()
    bj2.refresh_from_db()
    assert bj2.status_info == {"note": "held"}

    # upstream has no PUT /batch-jobs/ route, yet the query update works
    n = BatchJob.objects.filter(site_id=site.id).update(state="queued")
    assert n == 2
    assert {r["state"] for r in server_rows(user, "/batch-jobs/")} == {"queued"}
    assert BatchJob.objects.filter(state="queued").count() == 2


def test_batch_job_bulk_update(api: Client, site: Any, user: Any, sent: Any) -> None:
    bjs = [BatchJob.objects.create(**batch_job_fields(site)) for _ in range(3)]
    bjs[0].state = "running"
    bjs[1].scheduler_id = 77
    bjs[2].start_time = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)

    assert BatchJob.objects.bulk_update(bjs) == 3

    rows = {r["id"]: r for r in server_rows(user, "/batch-jobs/")}
    assert (rows[bjs[0].id]["state"], rows[bjs[0].id]["scheduler_id"]) == ("running", None)
    assert (rows[bjs[1].id]["state"], rows[bjs[1].id]["scheduler_id"]) == (
        "pending_submission",
        77,
    )
    assert datetime.fromisoformat(rows[bjs[2].id]["start_time"]).replace(
        tzinfo=timezone.utc
    ) == datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    assert bjs[0].state == "running" and bjs[1].scheduler_id == 77
    assert bjs[2].start_time == datetime(2024, 5, 1, 12, 0)
    sent.clear()
    for bj in bjs:
        bj.save()
    assert len(sent) == 0


# -- deleting --------------------------------------------------------------------------------


def test_delete_one_job(api: Client, app: Any, user: Any) -> None:
    job, keep = new_jobs(app, 2)
    old_id = job.id

    job.delete()
    assert job.id is None

    assert [r["id"] for r in server_rows(user, "/jobs/")] == [keep.id]
    with pytest.raises(Job.DoesNotExist):
        Job.objects.get(id=old_id)


def test_query_delete_of_failed_jobs(api: Client, app: Any, user: Any) -> None:
    jobs = new_jobs(app, 5)
    set_states(jobs[:3], "FAILED")

    Job.objects.filter(state="FAILED").delete()

    assert server_rows(user, "/jobs/", state="FAILED") == []
    assert Job.objects.filter(state="FAILED").count() == 0
    assert sorted(r["id"] for r in server_rows(user, "/jobs/")) == sorted(j.id for j in jobs[3:])


def test_delete_site_app_batchjob(api: Client, user: Any) -> None:
    site = Site.objects.create(name=f"aurora-{_uid()}", path="/projects/aurora")
    app = App.objects.create(site_id=site.id, name="Sim", serialized_class="t", source_code="x")
    bj = BatchJob.objects.create(**batch_job_fields(site))
    ids = (site.id, app.id, bj.id)

    bj.delete()
    assert bj.id is None
    assert server_rows(user, "/batch-jobs/") == []
    app.delete()
    assert app.id is None
    assert server_rows(user, "/apps/") == []
    site.delete()
    assert site.id is None
    assert server_rows(user, "/sites/") == []

    with pytest.raises(Site.DoesNotExist):
        Site.objects.get(id=ids[0])
    with pytest.raises(App.DoesNotExist):
        App.objects.get(id=ids[1])
    with pytest.raises(BatchJob.DoesNotExist):
        BatchJob.objects.get(id=ids[2])


# -- querying --------------------------------------------------------------------------------


def test_all_iterates_every_job(api: Client, app: Any, capsys: pytest.CaptureFixture[str]) -> None:
    jobs = new_jobs(app, 3)
    seen = []
    for job in Job.objects.all():
        print(job)
        seen.append(job.id)
    assert seen == [j.id for j in jobs]
    printed = capsys.readouterr().out
    for job in jobs:
        assert str(job.workdir) in printed


def test_chained_filters_equal_one_filter(api: Client, app: Any, sent: Any, wire: Wire) -> None:
    foo = new_jobs(app, 3, "foo", tags={"experiment": "foo"})
    bar = new_jobs(app, 2, "bar", tags={"experiment": "bar"})
    set_states([foo[0], foo[2], bar[0]], "FAILED")
    sent.clear()
    wire.clear()

    # These 3 chained queries...
    all_jobs = Job.objects.all()
    foo_jobs = all_jobs.filter(tags={"experiment": "foo"})
    failed_foo_jobs = foo_jobs.filter(state="FAILED")
    assert len(sent) == 0
    chained = [j.id for j in failed_foo_jobs]

    # ...are equivalent to this 1 query:
    failed_foo_jobs = Job.objects.filter(tags={"experiment": "foo"}, state="FAILED")
    single = [j.id for j in failed_foo_jobs]

    assert chained == single == [foo[0].id, foo[2].id]
    assert [j.id for j in foo_jobs] == [j.id for j in foo]
    assert len(list(all_jobs)) == 5
    first, second = wire.exchanges("GET", "/jobs/")[:2]
    assert first[0] == second[0]
    assert first[0]["tags"] == ["experiment:foo"] and first[0]["state"] == ["FAILED"]


def test_chained_filter_with_the_same_key_overrides(api: Client, app: Any) -> None:
    foo = new_jobs(app, 2, "foo", tags={"experiment": "foo"})
    new_jobs(app, 2, "bar", tags={"experiment": "bar"})
    q = Job.objects.filter(tags={"experiment": "bar"}).filter(tags={"experiment": "foo"})
    assert [j.id for j in q] == [j.id for j in foo]


def test_order_by_and_slice_fetch_only_what_was_asked(
    api: Client, app: Any, sent: Any, wire: Wire
) -> None:
    jobs = new_jobs(app, 6)
    for job in (jobs[3], jobs[1], jobs[4], jobs[0]):  # fail them in this order
        job.state = "FAILED"
        job.save()
    sent.clear()
    wire.clear()

    # 1000 most recent failures
    q = Job.objects.filter(state="FAILED").order_by("-last_update")[0:1000]
    assert len(sent) == 0
    recent = [j.id for j in q]

    assert recent == [jobs[0].id, jobs[4].id, jobs[1].id, jobs[3].id]
    assert sent.calls == [("GET", f"{api.settings.api_root}/jobs/")]
    ((params, _),) = wire.exchanges("GET", "/jobs/")
    assert params["limit"] == ["1000"]
    assert params["offset"] == ["0"]
    assert params["ordering"] == ["-last_update"]
    assert params["state"] == ["FAILED"]

    wire.clear()
    two = Job.objects.filter(state="FAILED").order_by("-last_update")[1:3]
    assert [j.id for j in two] == [jobs[4].id, jobs[1].id]
    ((params, response),) = wire.exchanges("GET", "/jobs/")
    assert (params["limit"], params["offset"]) == (["2"], ["1"])
    assert len(response.json()["results"]) == 2

    oldest_first = Job.objects.filter(state="FAILED").order_by("last_update")
    assert [j.id for j in oldest_first] == recent[::-1]


SLICE_CASES = [
    ((10, 20), (2, 4)),
    ((10, None), (2, 4)),
    ((None, 5), (3, None)),
    ((10, 20), (8, 15)),
    ((20, 30), (3, None)),
    ((5, 15), (0, 0)),
    ((3, None), (None, 4)),
]


def test_slices_compose(api: Client, app: Any, wire: Wire) -> None:
    jobs = new_jobs(app, 25)
    ids = [j.id for j in jobs]
    q = Job.objects.order_by("id")
    for (a, b), (c, d) in SLICE_CASES:
        case = f"[{a}:{b}][{c}:{d}]"
        wire.clear()
        expected = ids[a:b][c:d]
        sliced = q[a:b][c:d]
        assert [j.id for j in sliced] == expected, case
        assert sliced.count() == len(expected), case
        # no more data crossed the wire than the composed slice asked for
        fetched = [
            r["id"] for _, resp in wire.exchanges("GET", "/jobs/") for r in resp.json()["results"]
        ]
        assert fetched == expected, case

    wire.clear()
    got = [j.id for j in Job.objects.order_by("id")[10:20][2:4]]
    assert got == [jobs[12].id, jobs[13].id]
    ((params, _),) = wire.exchanges("GET", "/jobs/")
    assert (params["offset"], params["limit"], params["ordering"]) == (["12"], ["2"], ["id"])


def test_get_exactly_one(api: Client, app: Any, capsys: pytest.CaptureFixture[str]) -> None:
    (h2o,) = new_jobs(app, 1, "h2o", tags={"system": "H2O"})

    def guide_example() -> Any:
        try:
            h2o_job = Job.objects.get(tags={"system": "H2O"})
        except Job.DoesNotExist:
            print("There is no finished H2O job!")
            return None
        except Job.MultipleObjectsReturned:
            print("There is more than one finished H2O job!")
            return None
        return h2o_job

    found = guide_example()
    assert found is not None and found.id == h2o.id
    assert capsys.readouterr().out == ""

    Job.objects.filter(tags={"system": "H2O"}).delete()
    assert guide_example() is None
    assert capsys.readouterr().out == "There is no finished H2O job!\n"

    new_jobs(app, 2, "h2o-b", tags={"system": "H2O"})
    assert guide_example() is None
    assert capsys.readouterr().out == "There is more than one finished H2O job!\n"

    with pytest.raises(Job.MultipleObjectsReturned) as many:
        Job.objects.get(tags={"system": "H2O"})
    assert isinstance(many.value, MultipleObjectsReturned)
    with pytest.raises(Job.DoesNotExist) as none:
        Job.objects.get(tags={"system": "CO2"})
    assert isinstance(none.value, ObjectDoesNotExist)


def test_does_not_exist_is_model_scoped(api: Client, site: Any, app: Any) -> None:
    for model in (Site, App, Job, BatchJob, TransferItem, EventLog):
        assert issubclass(model.DoesNotExist, ObjectDoesNotExist)
        assert issubclass(model.MultipleObjectsReturned, MultipleObjectsReturned)
    assert not issubclass(Site.DoesNotExist, Job.DoesNotExist)
    assert not issubclass(Job.DoesNotExist, Site.DoesNotExist)
    assert not issubclass(Site.MultipleObjectsReturned, Job.MultipleObjectsReturned)

    with pytest.raises(Site.DoesNotExist):
        try:
            Site.objects.get(name="no-such-site")
        except Job.DoesNotExist:
            pytest.fail("except Job.DoesNotExist caught Site.DoesNotExist")
    with pytest.raises(App.DoesNotExist):
        try:
            App.objects.get(name="NoSuchApp")
        except Job.DoesNotExist:
            pytest.fail("except Job.DoesNotExist caught App.DoesNotExist")
    # the client-bound classes raise subclasses of the api classes' exceptions
    with pytest.raises(Job.DoesNotExist):
        api.Job.objects.get(tags={"nobody": "here"})


def test_site_and_app_get_count_filter(api: Client) -> None:
    s1 = Site.objects.create(name=f"theta-{_uid()}", path="/projects/theta")
    s2 = Site.objects.create(name=f"cori-{_uid()}", path="/global/cori")
    a1 = App.objects.create(site_id=s1.id, name="Sim", serialized_class="t", source_code="x")
    a2 = App.objects.create(site_id=s2.id, name="Sim", serialized_class="t", source_code="x")
    a3 = App.objects.create(site_id=s2.id, name="Post", serialized_class="t", source_code="x")

    assert Site.objects.count() == 2
    assert Site.objects.get(name=s2.name).id == s2.id
    assert [s.id for s in Site.objects.filter(path="projects")] == [s1.id]
    assert [s.id for s in Site.objects.filter(id=[s1.id, s2.id])] == [s1.id, s2.id]
    assert Site.objects.filter(name="nope").count() == 0

    assert App.objects.count() == 3
    assert App.objects.filter(site_id=s2.id).count() == 2
    assert [a.id for a in App.objects.filter(name="Sim")] == [a1.id, a2.id]
    assert App.objects.get(name="Sim", site_name=s2.name).id == a2.id
    assert App.objects.get(name="Post").id == a3.id
    with pytest.raises(App.MultipleObjectsReturned):
        App.objects.get(name="Sim")
    with pytest.raises(Site.DoesNotExist):
        Site.objects.get(name="nope")


def test_count_fetches_no_items(api: Client, app: Any, sent: Any, wire: Wire) -> None:
    jobs = new_jobs(app, 5)
    set_states(jobs[:2], "RUNNING")
    set_states(jobs[2:3], "POSTPROCESSED")  # stored as JOB_FINISHED
    sent.clear()
    wire.clear()

    counts = {}
    for state in ["RUNNING", "JOB_FINISHED"]:
        count = Job.objects.filter(state=state).count()
        print(state, count)
        counts[state] = count

    assert counts == {"RUNNING": 2, "JOB_FINISHED": 1}
    assert len(sent) == 2
    exchanges = wire.exchanges("GET", "/jobs/")
    assert len(exchanges) == 2
    for params, response in exchanges:
        assert params["limit"] == ["0"]
        assert response.json()["results"] == []
    assert Job.objects.count() == 5


def test_count_of_a_sliced_query_counts_what_the_slice_yields(api: Client, app: Any) -> None:
    new_jobs(app, 5)
    q = Job.objects.order_by("id")
    for s in (slice(None, 3), slice(2, None), slice(1, 4), slice(4, 10), slice(7, None)):
        assert q[s].count() == len(list(q[s])), s
    assert q[:10].count() == 5
    assert q[1:4].count() == 3
    assert q[7:].count() == 0


def test_first_and_index_zero_are_the_same(api: Client, app: Any) -> None:
    jobs = new_jobs(app, 3)
    set_states(jobs[1:], "RUNNING")

    one = Job.objects.filter(state="RUNNING")[0]

    same_thing = Job.objects.filter(state="RUNNING").first()

    assert one.id == same_thing.id == jobs[1].id
    assert one == same_thing
    assert Job.objects.first().id == jobs[0].id


def test_first_and_index_zero_raise_index_error_when_empty(api: Client, app: Any) -> None:
    new_jobs(app, 1)
    with pytest.raises(IndexError):
        Job.objects.filter(state="RUNNING")[0]
    with pytest.raises(IndexError):
        Job.objects.filter(state="RUNNING").first()
    with pytest.raises(IndexError):
        BatchJob.objects.first()


# -- lazy evaluation -------------------------------------------------------------------------


def test_queries_are_lazy_and_cached(
    api: Client, app: Any, sent: Any, other: Client, capsys: pytest.CaptureFixture[str]
) -> None:
    jobs = new_jobs(app, 4)
    set_states(jobs[:2], "FAILED")
    set_states(jobs[2:3], "RUNNING")
    sent.clear()

    # This doesn't fetch any Jobs yet:
    failed_jobs = Job.objects.filter(state="FAILED")
    narrowed = failed_jobs.filter(tags={"x": "y"}).order_by("-last_update")[0:10]
    assert failed_jobs.source is None and narrowed.as_of is None
    assert len(sent) == 0

    # This triggers the HTTP request:
    for job in failed_jobs:
        print(job)
    assert len(sent) == 1

    other.Job.objects.filter(id=[jobs[0].id]).delete()  # the server changes behind our back

    # This re-uses the cached result:
    again = []
    for job in failed_jobs:
        print("Again!", job)
        again.append(job.id)
    assert again == [jobs[0].id, jobs[1].id]
    assert len(failed_jobs) == 2 and bool(failed_jobs) and failed_jobs[1].id == jobs[1].id
    assert failed_jobs.count() == 2
    assert len(sent) == 1

    # We can explicitly force iteration and store the result:
    running_jobs = list(Job.objects.filter(state="RUNNING"))
    assert [j.id for j in running_jobs] == [jobs[2].id]
    assert len(sent) == 2
    assert capsys.readouterr().out.count("Again!") == 2


def test_evaluated_queries_say_where_and_when_from(api: Client, app: Any) -> None:
    new_jobs(app, 2)
    before = datetime.now(timezone.utc)
    listed = Job.objects.all()
    list(listed)
    counted = Job.objects.filter(state="STAGED_IN")
    counted.count()
    for q in (listed, counted):
        assert q.source == "server"
        assert q.as_of is not None and q.as_of.tzinfo is not None
        assert before - timedelta(seconds=5) <= q.as_of <= datetime.now(timezone.utc)


def test_len_fetches_the_result_set(api: Client, app: Any, sent: Any, wire: Wire) -> None:
    new_jobs(app, 3)
    sent.clear()
    wire.clear()
    q = Job.objects.all()
    assert len(q) == 3
    ((params, response),) = wire.exchanges("GET", "/jobs/")
    assert params.get("limit") != ["0"]
    assert len(response.json()["results"]) == 3
    assert len(q) == 3
    assert len(sent) == 1


def test_boolean_value_of_a_query(api: Client, app: Any, sent: Any) -> None:
    new_jobs(app, 2)
    sent.clear()
    failed = Job.objects.filter(state="FAILED")
    staged = Job.objects.filter(state="STAGED_IN")
    assert not failed
    assert staged
    assert len(sent) == 2
    if staged:
        pass
    assert bool(failed) is False
    assert len(sent) == 2
    assert len(staged) == 2
    assert len(sent) == 2
