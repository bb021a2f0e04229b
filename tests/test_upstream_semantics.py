"""Upstream's semantics where its own API tests check them, one test per behaviour.

Text fields take numbers as pydantic 1 does, every timestamp is naive UTC yet compares with
aware ones, operations upstream's API lacks raise NotImplementedError, Session has a query,
an unknown App name fails in the Job constructor, and return values and field types are
upstream's (``delete()`` returns None, ``BatchJob.state`` is a str).
"""

from __future__ import annotations

import json
import pickle
import uuid
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.api import App as UnboundApp
from balsam_sync.client import Client
from balsam_sync.errors import NoEvidence, UsageError
from tests.conftest import User, server_jobs


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def batch_job(client: Client, site: Any) -> Any:
    return client.BatchJob.objects.create(
        site_id=site.id, project="p", queue="q", num_nodes=1, wall_time_min=5, job_mode="mpi"
    )


# -- numbers given for text -------------------------------------------------------------------


def test_numbers_given_for_text_become_text_as_pydantic_1_makes_them(
    client: Client, app: Any, site: Any, user: User
) -> None:
    tags: dict[Any, Any] = {"step": 0, "done": True, "x": 1.5, 7: "seven"}
    job = client.Job("w/1", app.id, tags=tags)
    assert job.tags == {"step": "0", "done": "True", "x": "1.5", "7": "seven"}
    job.save()
    params: dict[Any, Any] = {"cpu_bind": 2}
    job.launch_params = params
    job.save()
    (row,) = server_jobs(user)
    assert (row["tags"]["step"], row["launch_params"]) == ("0", {"cpu_bind": "2"})
    assert [j.id for j in client.Job.objects.filter(tags="step:0")] == [job.id]
    bj = client.BatchJob.objects.create(
        site_id=site.id, project=42, queue="q", num_nodes=1, wall_time_min=5, job_mode="mpi"
    )
    assert bj.project == "42"
    with pytest.raises(UsageError, match="tags"):
        client.Job("w/2", app.id, tags={"bad": None})  # pydantic 1 refuses these too
    with pytest.raises(UsageError, match="tags"):
        client.Job("w/2", app.id, tags={"bad": [1]})


# -- naive UTC that compares with aware -------------------------------------------------------


def test_timestamps_are_naive_utc_and_compare_with_aware_ones(client: Client, app: Any) -> None:
    jobs = client.Job.objects.bulk_create([client.Job(f"t/{i}", app.id) for i in range(3)])
    before = datetime.now(timezone.utc) - timedelta(seconds=120)
    for job in jobs:
        job.state = "PREPROCESSED"
        job.state_timestamp = datetime.now(timezone.utc)
    client.Job.objects.bulk_update(jobs)
    for job in [*jobs, *client.Job.objects.all()]:
        stamp = job.last_update
        assert stamp.tzinfo is None
        assert stamp > before and stamp > datetime.utcnow() - timedelta(seconds=120)
        assert before < stamp and stamp >= before.replace(tzinfo=None)
        assert timedelta(0) < stamp - before < timedelta(minutes=5)
        assert timedelta(0) < datetime.now(timezone.utc) - stamp < timedelta(minutes=5)
        assert stamp != stamp.replace(tzinfo=timezone.utc)  # datetime's own equality rule
    stamp = jobs[0].last_update
    assert repr(stamp).startswith("datetime.datetime(")
    plain = pickle.loads(pickle.dumps(stamp))
    assert type(plain) is datetime and plain == stamp


# -- operations upstream's API does not offer ---------------------------------------------------


def test_operations_upstream_lacks_raise_not_implemented_before_anything_is_sent(
    client: Client, site: Any, app: Any, sent: Any
) -> None:
    bjs = [batch_job(client, site) for _ in range(2)]
    sent.clear()
    new_bj = client.BatchJob(1, 5, "mpi", site.id, "p", "q")
    refused: list[Callable[[], object]] = [
        lambda: client.BatchJob.objects.filter(site_id=site.id).delete(),
        lambda: client.BatchJob.objects.bulk_create([new_bj]),
        lambda: client.Site.objects.filter(id=[site.id]).update(path="/projects/other"),
        lambda: client.Site.objects.bulk_update([site]),
        lambda: client.App.objects.filter(id=[app.id]).delete(),
        lambda: client.EventLog.objects.all().update(to_state="X"),
        lambda: client.TransferItem.objects.all().delete(),
        lambda: client.Session.objects.all().delete(),
    ]
    for call in refused:
        with pytest.raises(NotImplementedError, match="does not offer"):
            call()
    assert len(sent) == 0
    for bj in bjs:  # one by one, as upstream's own test deletes them
        bj.delete()
    assert client.BatchJob.objects.count() == 0


# -- Session.objects is a query ----------------------------------------------------------------


def test_session_objects_all_is_a_lazy_query(client: Client, site: Any, sent: Any) -> None:
    sent.clear()
    query = client.Session.objects.all()
    assert len(sent) == 0  # lazy
    assert query.count() == 0 and len(sent) == 1
    first = client.Session.objects.create(site_id=site.id)
    second = client.Session.objects.create(site_id=site.id)
    everything = client.Session.objects.all()
    assert everything.count() == 2 and len(everything) == 2
    assert {s.id for s in everything} == {first.id, second.id}
    assert everything[0].id in {first.id, second.id} and len(everything[:1]) == 1
    assert client.Session.objects.filter(id=second.id).get().id == second.id
    assert client.Session.objects.get(id=first.id).site_id == site.id
    first.delete()
    assert client.Session.objects.all().count() == 1
    with pytest.raises(client.Session.DoesNotExist):
        client.Session.objects.get(id=-1)
    with pytest.raises(IndexError):
        client.Session.objects.filter(id=[]).first()


# -- an App given by name -----------------------------------------------------------------------


def test_an_unknown_app_name_raises_app_does_not_exist_in_the_constructor(
    client: Client, sent: Any
) -> None:
    sites = [client.Site.objects.create(name=f"s{i}-{_uid()}", path="/projects/x") for i in (1, 2)]
    apps = [
        client.App.objects.create(site_id=s.id, name="Twin", serialized_class="t", source_code="x")
        for s in sites
    ]
    sent.clear()
    with pytest.raises(client.App.DoesNotExist, match="no App named 'Twin' at site 'nowhere'"):
        client.Job("w/1", app_id="Twin", site_name="nowhere")
    with pytest.raises(UnboundApp.DoesNotExist):  # the same class, however it is reached
        client.Job("w/1", app_id="Nope")
    with pytest.raises(client.App.MultipleObjectsReturned, match="several sites"):
        client.Job("w/1", app_id="Twin")
    assert client.App.DoesNotExist is UnboundApp.DoesNotExist
    job = client.Job("w/1", app_id="Twin", site_name=sites[1].name)
    assert job.app_id == apps[1].id
    assert len(sent) == 4  # one lookup per (name, site); nothing was created


def test_offline_an_app_name_is_looked_up_in_the_mirror(
    client: Client, user: User, site: Any, app: Any, tmp_path: Path
) -> None:
    offline = balsam_sync.connect(
        user.api_root, user.token, home=str(tmp_path / "home"), offline=True
    )
    try:
        with pytest.raises(NoEvidence, match="never pulled"):  # nobody can tell yet
            offline.Job("w/later", app_id=app.name, site_name=site.name)
        client.pull()
        with pytest.raises(offline.App.DoesNotExist):
            offline.Job("w/later", app_id="Nope", site_name=site.name)
        job = offline.Job("w/later", app_id=app.name, site_name=site.name)
        assert job.app_id == app.id
        job.save()
    finally:
        offline.close()
    assert server_jobs(user) == []
    report = client.push()
    assert report.remaining == 0 and not report.dead
    (row,) = server_jobs(user)
    assert row["app_id"] == app.id


# -- return values and field types ------------------------------------------------------------


def test_delete_returns_none_and_batch_job_state_is_text(
    client: Client, site: Any, app: Any
) -> None:
    client.Job.objects.bulk_create([client.Job(f"d/{i}", app.id) for i in range(2)])
    query: Any = client.Job.objects.filter(workdir__contains="d/")
    assert query.delete() is None
    assert client.Job.objects.count() == 0
    bj = batch_job(client, site)
    bj.state = "queued"
    bj.save()
    fetched = client.BatchJob.objects.get(id=bj.id)
    for value in (bj.state, fetched.state):
        assert type(value) is str and value == "queued" and repr(value) == "'queued'"
    assert type(fetched.job_mode) is str and fetched.job_mode == "mpi"
    assert json.loads(json.dumps({"state": fetched.state})) == {"state": "queued"}
    assert client.BatchJob.objects.filter(state="queued").count() == 1
