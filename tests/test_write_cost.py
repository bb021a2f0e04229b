"""Online writes send what upstream sends: one request per save(), no re-read, no scan.

Requests are counted with the transport's hook (what reaches the wire), on the real server.
What a write leaves unknown (the server's new stamp) is read once, when first asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import balsam_sync
from balsam_sync.client import Client
from balsam_sync.resources import MARKER_KEY
from tests.conftest import RequestLog, User, server_jobs


def _writes(sent: RequestLog) -> list[str]:
    return [f"{method} {url.split('?')[0].split('/', 3)[-1]}" for method, url in sent.calls]


def test_a_save_is_one_request_whatever_the_job_state(
    client: Client, app: Any, sent: RequestLog
) -> None:
    running, finished = client.Job.objects.bulk_create(
        [client.Job(workdir=f"cost/{i}", app_id=app.id) for i in range(2)]
    )
    finished.state = "POSTPROCESSED"
    finished.save()
    sent.clear()
    for job in (running, finished):
        job.num_nodes = 4
        job.save()
    assert _writes(sent) == ["PATCH jobs/", "PATCH jobs/"]  # no re-read, no parent_id scan


def test_finishing_a_parent_scans_nothing_and_its_children_are_read_when_asked(
    client: Client, app: Any, sent: RequestLog
) -> None:
    parent = client.Job.objects.create(workdir="cost/p", app_id=app.id)
    child = client.Job.objects.create(workdir="cost/c", app_id=app.id, parent_ids=[parent.id])
    client.pull()
    sent.clear()
    parent.state = "POSTPROCESSED"
    parent.save()
    assert _writes(sent) == ["PATCH jobs/"]
    assert parent.state == "JOB_FINISHED"  # the mirror knows it has no stage-out items
    assert client.Job.objects.offline().get(id=child.id).state == "STAGED_IN"  # as the server
    sent.clear()
    assert {j.id: j.state for j in client.Job.objects.all()} == {
        parent.id: "JOB_FINISHED",
        child.id: "STAGED_IN",
    }
    assert _writes(sent) == ["GET jobs/"]  # the unconfirmed rows, by id, before the mirror answers
    assert "parent_id" not in " ".join(url for _, url in sent.calls)


def test_the_new_stamps_of_a_write_are_read_once_for_all_its_objects(
    client: Client, app: Any, sent: RequestLog
) -> None:
    jobs = client.Job.objects.bulk_create(
        [client.Job(workdir=f"stamp/{i}", app_id=app.id) for i in range(5)]
    )
    before = {j.id: j.last_update for j in jobs}
    for job in jobs:
        job.num_nodes = 3
    sent.clear()
    client.Job.objects.bulk_update(jobs)
    assert _writes(sent) == ["PATCH jobs/"]
    assert all(j.last_update > before[j.id] for j in jobs)  # asked for: read now...
    assert _writes(sent) == ["PATCH jobs/", "GET jobs/"]  # ...in one request for all five
    online = {j.id: j.last_update for j in client.Job.objects.online().filter(id=list(before))}
    assert {j.id: j.last_update for j in jobs} == online


def test_a_query_update_is_the_listing_and_one_patch(
    client: Client, app: Any, sent: RequestLog
) -> None:
    client.Job.objects.bulk_create(
        [client.Job(workdir=f"q/{i}", app_id=app.id, tags={"g": "x"}) for i in range(100)]
    )
    sent.clear()
    assert client.Job.objects.filter(tags={"g": "x"}).update(num_nodes=2) == 100
    assert _writes(sent) == ["GET jobs/", "PATCH jobs/"]  # upstream: the listing and a PUT


def test_a_bulk_create_is_one_post(client: Client, app: Any, sent: RequestLog) -> None:
    client.Job.objects.bulk_create(
        [client.Job(workdir=f"b/{i}", app_id=app.id) for i in range(100)]
    )
    assert _writes(sent) == ["POST jobs/"]


def test_a_push_takes_the_creation_tag_off_settled_jobs_in_one_patch(
    client: Client, app: Any, user: User, sent: RequestLog
) -> None:
    jobs = client.Job.objects.bulk_create(
        [client.Job(workdir=f"t/{i}", app_id=app.id, tags={"exp": str(i)}) for i in range(50)]
    )
    assert {MARKER_KEY} <= set(server_jobs(user)[0]["tags"])  # exactly-once needs it until settled
    sent.clear()
    client.push()
    assert _writes(sent) == ["PATCH jobs/"]  # one request for the whole batch
    assert {r["workdir"]: r["tags"] for r in server_jobs(user)} == {
        f"t/{i}": {"exp": str(i)} for i in range(50)
    }
    assert [j.tags for j in jobs] == [{"exp": str(i)} for i in range(50)]
    sent.clear()
    client.push()
    assert _writes(sent) == []  # nothing left to clear


def test_clearing_the_creation_tag_never_undoes_a_tag_the_user_set(
    user: User, app: Any, tmp_path: Path
) -> None:
    online = balsam_sync.connect(user.api_root, user.token, home=str(tmp_path / "h"))
    job = online.Job.objects.create(workdir="t/mine", app_id=app.id, tags={"a": "1"})
    offline = balsam_sync.connect(user.api_root, user.token, home=str(tmp_path / "h"), offline=True)
    mine = offline.Job.objects.offline().get(id=job.id)
    mine.tags = {"a": "2"}
    mine.save()  # queued
    offline.close()
    online.push()
    (row,) = server_jobs(user)
    assert row["tags"] == {"a": "2"}
    online.close()
