"""The mirror after online writes (write-through) and the mirror file itself.

Every test talks to the real Balsam server: after a write, the mirror's rows (read without a
request, ``.offline()`` where the mirror has evidence for the query) must show exactly what
``.online()`` answers show, server-derived values included (states the server rewrote,
``last_update``, cascades of deletes).
"""

from __future__ import annotations

import marshal
import os
import shutil
import sqlite3
import stat
import uuid
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.cache.opening import Identity, mirror_path
from balsam_sync.cache.schema import PACKED, TABLES
from balsam_sync.client import Client
from balsam_sync.errors import MirrorError
from balsam_sync.remote.jwt import user_of
from tests.conftest import FAST_RETRY, RequestLog, User, register_user
from tests.mirror_view import held, held_count, sql

Row = dict[str, Any]


# -- helpers ---------------------------------------------------------------------------------


def make_jobs(client: Client, app: Any, n: int, **fields: Any) -> list[Any]:
    jobs = [
        client.Job(workdir=f"w/{uuid.uuid4().hex[:8]}-{i}", app_id=app.id, **fields)
        for i in range(n)
    ]
    return client.Job.objects.bulk_create(jobs)


def by_id(query: Any) -> dict[int, Row]:
    return {obj.id: obj.to_dict() for obj in query}


def online_offline(query_of: Any) -> tuple[dict[int, Row], dict[int, Row]]:
    """Rows of the same query from the server and from the mirror."""
    return by_id(query_of().online()), by_id(held(query_of()))


def assert_field(client: Client, model: str, field: str) -> None:
    """``field`` of every object of ``model`` is the same online and offline."""
    manager = getattr(client, model).objects
    online = {o.id: o.to_dict()[field] for o in manager.online()}
    offline = {o.id: o.to_dict()[field] for o in held(manager.all())}
    assert offline == online, f"{model}.{field}"


def offline_job(client: Client, job_id: int) -> Any:
    return client.Job.objects.offline().get(id=job_id)


def states_offline(client: Client, ids: list[int]) -> dict[int, str]:
    return {
        j.id: getattr(j.state, "value", j.state)
        for j in client.Job.objects.filter(id=ids).offline()
    }


def states_online(client: Client, ids: list[int]) -> dict[int, str]:
    return {
        j.id: getattr(j.state, "value", j.state) for j in client.Job.objects.filter(id=ids).online()
    }


# -- write-through: jobs --------------------------------------------------------------------


def test_created_job_is_staged_in_offline_without_a_request(
    client: Client, app: Any, sent: RequestLog
) -> None:
    job = client.Job.objects.create(workdir="w/a", app_id=app.id, tags={"k": "v"})
    assert job.state == "STAGED_IN"
    sent.clear()
    q = client.Job.objects.filter(id=[job.id]).offline()
    (cached,) = list(q)
    assert len(sent) == 0
    assert q.source == "cache"
    assert cached.id == job.id
    assert cached.state == "STAGED_IN"
    assert str(cached.workdir) == "w/a"
    assert cached.app_id == app.id
    assert cached.last_update == job.last_update
    assert held_count(client.Job.objects.all()) == 1
    assert held_count(client.Job.objects.filter(tags={"k": "v"})) == 1


@pytest.fixture
def rich(client: Client) -> Client:
    """One object of every kind with nested and JSON fields, written through online."""
    client.pull()  # the mirror knows the (empty) account: .offline() may answer from here on
    site = client.Site.objects.create(
        name="rich",
        path="/projects/rich",
        transfer_locations={"here": "rsync://user@host"},
        allowed_projects=["p1"],
        backfill_windows={"q": [{"num_nodes": 2, "wall_time_min": 10}]},
        optional_batch_job_params={"k": "v"},
    )
    app = client.App.objects.create(
        site_id=site.id,
        name="Rich",
        serialized_class="txt",
        source_code="pass",
        parameters={"x": {"required": True}, "y": {"required": False, "default": "2"}},
        transfers={
            "inp": {"required": False, "direction": "in", "local_path": "in.txt"},
            "out": {"required": False, "direction": "out", "local_path": "out.txt"},
        },
    )
    parent = client.Job.objects.create(workdir="w/p", app_id=app.id)
    child = client.Job.objects.create(
        workdir="w/c",
        app_id=app.id,
        tags={"a": "1", "b": "2"},
        data={"x": [1, 2], "y": {"z": None}},
        launch_params={"cpu_bind": "depth"},
        parent_ids={parent.id},
        num_nodes=2,
        gpus_per_rank=0.5,
        wall_time_min=7,
        transfers={"inp": "here:/abs/in", "out": "here:/abs/out"},
    )
    assert child.state == "AWAITING_PARENTS"
    parent.state = "POSTPROCESSED"
    parent.save()
    client.BatchJob.objects.create(
        site_id=site.id,
        project="p1",
        queue="q",
        num_nodes=2,
        wall_time_min=10,
        job_mode="mpi",
        filter_tags={"a": "1"},
        partitions=[{"job_mode": "mpi", "num_nodes": 2, "filter_tags": {"a": "1"}}],
    )
    # transfer items and events are made by the server: read them once so they are mirrored
    assert len(list(client.TransferItem.objects.online())) == 2
    assert len(list(client.EventLog.objects.online())) >= 4
    return client


@pytest.mark.parametrize("model", ["Site", "App", "Job", "BatchJob", "TransferItem", "EventLog"])
def test_offline_rows_equal_online_rows_field_by_field(rich: Client, model: str) -> None:
    manager = getattr(rich, model).objects
    list(manager.all())  # a read the mirror answers confirms what the server changed unseen
    offline = by_id(manager.offline())
    online = by_id(manager.online())
    assert online
    assert offline.keys() == online.keys()
    for obj_id, row in online.items():
        cached = offline[obj_id]
        assert cached.keys() == row.keys(), f"{model} {obj_id}"
        for name, value in row.items():
            assert cached[name] == value, f"{model} {obj_id}.{name}"
            assert type(cached[name]) is type(value), f"{model} {obj_id}.{name}"


def assert_packed_copies_are_exact(client: Client) -> int:
    """Every packed row copy equals its columns as SQLite holds them; return how many exist."""
    conn = sql(client)
    packed = 0
    for tdef in TABLES.values():
        cols = ", ".join(f"[{c}]" for c in tdef.columns)
        for obj_id, blob, fresh in conn.execute(
            f"SELECT id, [{PACKED}], bsync_pack('{tdef.table}', {cols}) FROM [{tdef.table}]"
        ):
            if blob is not None:
                packed += 1
                kept, now = marshal.loads(blob), marshal.loads(fresh)
                assert kept == now, f"{tdef.resource} {obj_id}"
                assert [type(v) for v in kept] == [type(v) for v in now], (
                    f"{tdef.resource} {obj_id}"
                )
    return packed


def test_packed_row_copies_never_go_stale(
    rich: Client, user: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert assert_packed_copies_are_exact(rich) >= 10
    app = rich.App.objects.offline().first()
    monkeypatch.setenv("BALSAM_SYNC_OFFLINE", "1")
    offline = balsam_sync.connect(
        user.api_root, user.token, home=str(tmp_path / "home"), retry=FAST_RETRY
    )
    parent = offline.Job.objects.create(workdir="w/off-p", app_id=app.id, tags={"k": "v"})
    child = offline.Job.objects.create(workdir="w/off-c", app_id=app.id, parent_ids=[parent.id])
    offline.Job.objects.filter(workdir__contains="w/off-p").update(num_nodes=4)
    offline.close()
    assert parent.id < 0 and child.id < 0
    assert_packed_copies_are_exact(rich)
    monkeypatch.delenv("BALSAM_SYNC_OFFLINE")
    assert rich.push().remaining == 0  # remaps ids (SQL UPDATEs) and writes the server's rows
    assert_packed_copies_are_exact(rich)
    rows = {str(j.workdir): j for j in rich.Job.objects.offline()}
    assert rows["w/off-p"].num_nodes == 4 and rows["w/off-p"].id > 0
    assert set(rows["w/off-c"].parent_ids) == {rows["w/off-p"].id}
    online = {str(j.workdir): set(j.parent_ids) for j in rich.Job.objects.online()}
    assert online["w/off-c"] == {rows["w/off-p"].id}
    # Any UPDATE that does not write the packed copy clears it, and reads repack the row.
    conn = sql(rich)
    target = rows["w/off-c"].id
    conn.execute("UPDATE jobs SET workdir = 'w/edited' WHERE id = ?", [target])
    assert conn.execute(f"SELECT [{PACKED}] FROM jobs WHERE id = ?", [target]).fetchone() == (None,)
    assert rich.Job.objects.offline().get(id=target).workdir == Path("w/edited")


def test_offline_field_values_decode_like_online(client: Client, app: Any) -> None:
    job = client.Job.objects.create(
        workdir="w/d", app_id=app.id, tags={"a": "1"}, data={"n": 3}, launch_params={"p": "q"}
    )
    cached = offline_job(client, job.id)
    server = client.Job.objects.online().get(id=job.id)
    assert cached.tags["a"] == "1"
    assert cached.tags == server.tags
    assert cached.data == server.data == {"n": 3}
    assert cached.launch_params == server.launch_params == {"p": "q"}
    assert cached.parent_ids == server.parent_ids == set()
    assert cached.pending_file_cleanup is True
    assert cached.last_update == server.last_update


def test_save_postprocessed_ends_job_finished_everywhere(client: Client, app: Any) -> None:
    job = client.Job.objects.create(workdir="w/pp", app_id=app.id)
    before = job.last_update
    job.state = "POSTPROCESSED"
    job.save()
    assert job.state == "JOB_FINISHED"  # the mirror knows the job has no stage-out items
    cached = offline_job(client, job.id)
    assert cached.state == "JOB_FINISHED"
    assert cached.stale  # the server's new stamp is not known offline
    assert job.last_update > before  # read on first use (one request)
    server = client.Job.objects.online().get(id=job.id)
    assert server.state == "JOB_FINISHED"
    cached = offline_job(client, job.id)
    assert cached.last_update == server.last_update == job.last_update
    assert not cached.stale
    assert held_count(client.Job.objects.filter(state="JOB_FINISHED")) == 1
    assert held_count(client.Job.objects.filter(state="POSTPROCESSED")) == 0


def test_ready_is_stored_as_staged_in_offline(client: Client, app: Any) -> None:
    job = client.Job.objects.create(workdir="w/r", app_id=app.id)
    job.state = "RESTART_READY"
    job.save()
    assert offline_job(client, job.id).state == "RESTART_READY"
    job.state = "READY"
    job.save()
    assert job.state == "STAGED_IN"
    cached = offline_job(client, job.id)
    assert cached.state == "STAGED_IN"
    assert job.last_update == client.Job.objects.online().get(id=job.id).last_update
    assert offline_job(client, job.id).last_update == job.last_update


def test_bulk_update_writes_server_rows_through(client: Client, app: Any) -> None:
    a, b, c = make_jobs(client, app, 3)
    a.state = "POSTPROCESSED"
    b.state = "READY"
    b.tags = {"edited": "yes"}
    c.data = {"d": 1}
    assert client.Job.objects.bulk_update([a, b, c]) == 3
    assert (a.state, b.state) == ("JOB_FINISHED", "STAGED_IN")
    ids = [a.id, b.id, c.id]
    assert states_offline(client, ids) == {
        a.id: "JOB_FINISHED",
        b.id: "STAGED_IN",
        c.id: "STAGED_IN",
    }
    assert states_offline(client, ids) == states_online(client, ids)
    assert [j.id for j in held(client.Job.objects.filter(tags={"edited": "yes"}))] == [b.id]
    assert_field(client, "Job", "last_update")


def test_query_update_writes_server_rows_through(client: Client, app: Any) -> None:
    group = make_jobs(client, app, 3, tags={"g": "x"})
    other = make_jobs(client, app, 2, tags={"g": "y"})
    n = client.Job.objects.filter(tags={"g": "x"}).update(state="POSTPROCESSED")
    assert n == 3
    ids = [j.id for j in group + other]
    offline = states_offline(client, ids)
    assert offline == states_online(client, ids)
    assert {offline[j.id] for j in group} == {"JOB_FINISHED"}
    assert {offline[j.id] for j in other} == {"STAGED_IN"}
    assert_field(client, "Job", "last_update")
    # READY through a query update is stored as STAGED_IN as well
    client.Job.objects.filter(tags={"g": "y"}).update(state="RESTART_READY")
    client.Job.objects.filter(tags={"g": "y"}).update(state="READY")
    assert {states_offline(client, ids)[j.id] for j in other} == {"STAGED_IN"}
    assert_field(client, "Job", "last_update")


def test_children_promoted_by_the_server_are_seen_offline(client: Client, app: Any) -> None:
    p1 = client.Job.objects.create(workdir="w/p1", app_id=app.id)
    p2 = client.Job.objects.create(workdir="w/p2", app_id=app.id)
    only_p1 = client.Job.objects.create(workdir="w/c1", app_id=app.id, parent_ids={p1.id})
    both = client.Job.objects.create(workdir="w/c2", app_id=app.id, parent_ids={p1.id, p2.id})
    assert only_p1.state == "AWAITING_PARENTS"
    assert offline_job(client, both.id).state == "AWAITING_PARENTS"

    p1.state = "POSTPROCESSED"
    p1.save()
    assert offline_job(client, only_p1.id).state == "STAGED_IN"
    assert offline_job(client, both.id).state == "AWAITING_PARENTS"

    client.Job.objects.filter(id=[p2.id]).update(state="POSTPROCESSED")
    assert offline_job(client, both.id).state == "STAGED_IN"
    ids = [p1.id, p2.id, only_p1.id, both.id]
    assert states_offline(client, ids) == states_online(client, ids)
    assert_field(client, "Job", "last_update")
    assert [j.id for j in held(client.Job.objects.filter(parent_id=[p2.id]))] == [both.id]


def test_children_promoted_by_bulk_update_are_seen_offline(client: Client, app: Any) -> None:
    parent = client.Job.objects.create(workdir="w/bp", app_id=app.id)
    kids = make_jobs(client, app, 3, parent_ids={parent.id})
    parent.state = "POSTPROCESSED"
    assert client.Job.objects.bulk_update([parent]) == 1
    ids = [k.id for k in kids]
    assert set(states_offline(client, ids).values()) == {"STAGED_IN"}
    assert_field(client, "Job", "last_update")


def test_job_delete_removes_job_and_its_events_offline(client: Client, app: Any) -> None:
    keep, gone = make_jobs(client, app, 2)
    gone.state = "POSTPROCESSED"
    gone.save()
    events = list(client.EventLog.objects.filter(job_id=[gone.id]).online())
    assert len(events) >= 2  # CREATED -> STAGED_IN, STAGED_IN -> JOB_FINISHED
    assert held_count(client.EventLog.objects.filter(job_id=[gone.id])) == len(events)
    gone_id = gone.id
    gone.delete()
    assert gone.id is None
    assert [j.id for j in held(client.Job.objects.all())] == [keep.id]
    assert list(held(client.EventLog.objects.filter(job_id=[gone_id]))) == []
    assert held_count(client.EventLog.objects.filter(job_id=[gone_id])) == 0
    assert {e.job_id for e in held(client.EventLog.objects.all())} <= {keep.id}


def test_query_delete_removes_exactly_the_deleted_jobs_offline(client: Client, app: Any) -> None:
    doomed = make_jobs(client, app, 3, tags={"del": "1"})
    kept = make_jobs(client, app, 2, tags={"del": "0"})
    list(client.EventLog.objects.online())
    client.Job.objects.filter(tags={"del": "1"}).delete()
    assert sorted(by_id(held(client.Job.objects.all()))) == sorted(j.id for j in kept)
    assert held_count(client.Job.objects.filter(tags={"del": "1"})) == 0
    doomed_ids = [j.id for j in doomed]
    assert held_count(client.EventLog.objects.filter(job_id=doomed_ids)) == 0
    assert_field(client, "Job", "last_update")


# -- write-through: sites, apps, batch jobs --------------------------------------------------


def test_site_and_app_create_update_are_seen_offline(client: Client) -> None:
    site = client.Site.objects.create(name="alpha", path="/projects/a")
    cached = client.Site.objects.offline().get(id=site.id)
    assert (cached.name, str(cached.path)) == ("alpha", "/projects/a")

    site.name = "beta"
    site.save()
    cached = client.Site.objects.offline().get(id=site.id)
    server = client.Site.objects.online().get(id=site.id)
    assert cached.name == server.name == "beta"
    assert cached.last_refresh == server.last_refresh == site.last_refresh
    assert held_count(client.Site.objects.filter(name="alpha")) == 0

    app = client.App.objects.create(
        site_id=site.id, name="First", serialized_class="txt", source_code="a"
    )
    app.description = "changed"
    app.save()
    cached_app = client.App.objects.offline().get(id=app.id)
    assert (cached_app.name, cached_app.description) == ("First", "changed")
    assert cached_app.site_id == site.id
    assert held_count(client.App.objects.filter(site_id=[site.id])) == 1


def test_batch_job_create_update_delete_offline(client: Client, site: Any, app: Any) -> None:
    bj = client.BatchJob.objects.create(
        site_id=site.id,
        project="proj",
        queue="debug",
        num_nodes=2,
        wall_time_min=10,
        job_mode="mpi",
        filter_tags={"system": "x"},
    )
    cached = client.BatchJob.objects.offline().get(id=bj.id)
    assert cached.state == bj.state
    assert (cached.queue, cached.num_nodes) == ("debug", 2)

    bj.state = "queued"
    bj.scheduler_id = 123
    bj.save()
    cached = client.BatchJob.objects.offline().get(id=bj.id)
    assert cached.state == "queued"
    assert cached.scheduler_id == 123

    other = client.BatchJob.objects.create(
        site_id=site.id, project="proj", queue="q", num_nodes=1, wall_time_min=5, job_mode="serial"
    )
    bj.state = "running"
    other.scheduler_id = 77
    client.BatchJob.objects.bulk_update([bj, other])
    offline = {b.id: (b.state, b.scheduler_id) for b in held(client.BatchJob.objects.all())}
    online = {b.id: (b.state, b.scheduler_id) for b in client.BatchJob.objects.online()}
    assert offline == online
    assert offline[bj.id][0] == "running"
    assert offline[other.id][1] == 77

    jobs = make_jobs(client, app, 2)
    for job in jobs:
        job.batch_job_id = bj.id
    client.Job.objects.bulk_update(jobs)
    ids = [j.id for j in jobs]
    assert held_count(client.Job.objects.filter(batch_job_id=bj.id)) == 2

    bj.delete()
    assert [b.id for b in held(client.BatchJob.objects.all())] == [other.id]
    cached_jobs = list(client.Job.objects.filter(id=ids).offline())
    assert len(cached_jobs) == 2
    assert [j.batch_job_id for j in cached_jobs] == [None, None]
    assert [j.batch_job_id for j in client.Job.objects.filter(id=ids).online()] == [None, None]
    assert_field(client, "Job", "batch_job_id")


def test_site_delete_cascades_in_the_mirror(client: Client) -> None:
    doomed = client.Site.objects.create(name="doomed", path="/projects/d")
    kept = client.Site.objects.create(name="kept", path="/projects/k")
    apps = {}
    for site in (doomed, kept):
        apps[site.id] = client.App.objects.create(
            site_id=site.id, name="A", serialized_class="txt", source_code="x"
        )
    doomed_jobs = make_jobs(client, apps[doomed.id], 3)
    kept_jobs = make_jobs(client, apps[kept.id], 2)
    client.BatchJob.objects.create(
        site_id=doomed.id, project="p", queue="q", num_nodes=1, wall_time_min=1, job_mode="mpi"
    )
    list(client.EventLog.objects.online())  # the mirror holds the jobs' events
    assert held_count(client.EventLog.objects.all()) == 5

    doomed.delete()
    assert [s.id for s in held(client.Site.objects.all())] == [kept.id]
    assert [a.id for a in held(client.App.objects.all())] == [apps[kept.id].id]
    assert sorted(j.id for j in held(client.Job.objects.all())) == sorted(j.id for j in kept_jobs)
    assert held_count(client.Job.objects.filter(id=[j.id for j in doomed_jobs])) == 0
    assert held_count(client.BatchJob.objects.all()) == 0
    assert {e.job_id for e in held(client.EventLog.objects.all())} == {j.id for j in kept_jobs}
    # the server agrees
    assert client.Job.objects.online().count() == 2
    assert client.BatchJob.objects.online().count() == 0


def test_app_delete_cascades_to_its_jobs_offline(client: Client, site: Any) -> None:
    a1 = client.App.objects.create(site_id=site.id, name="A1", serialized_class="t", source_code="")
    a2 = client.App.objects.create(site_id=site.id, name="A2", serialized_class="t", source_code="")
    make_jobs(client, a1, 2)
    kept = make_jobs(client, a2, 1)
    a1.delete()
    assert [a.id for a in held(client.App.objects.all())] == [a2.id]
    assert [j.id for j in held(client.Job.objects.all())] == [kept[0].id]


# -- the mirror file -------------------------------------------------------------------------


def connect(user: User, home: Path) -> Client:
    return balsam_sync.connect(user.api_root, user.token, home=str(home), retry=FAST_RETRY)


def path_of(user: User, home: Path) -> Path:
    name = user_of(user.token)
    assert name is not None
    return mirror_path(home, Identity(user.api_root, name))


def test_mirror_file_location_and_permissions(client: Client, user: User, tmp_path: Path) -> None:
    home = tmp_path / "home"
    client.mirror  # noqa: B018  (opens the mirror)
    path = client.mirror.path
    assert path.parent == home / "mirrors"
    assert path == path_of(user, home)
    assert path.is_file()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert [p for p in path.parent.iterdir() if p.suffix == ".sqlite3"] == [path]


def test_mirror_is_in_wal_mode(client: Client) -> None:
    client.Site.objects.create(name="w", path="/w")
    (mode,) = sql(client).execute("PRAGMA journal_mode").fetchone()
    assert mode.lower() == "wal"
    other = sqlite3.connect(str(client.mirror.path))
    try:
        (mode,) = other.execute("PRAGMA journal_mode").fetchone()
    finally:
        other.close()
    assert mode.lower() == "wal"


def test_second_user_in_same_home_gets_own_file(
    client: Client, user: User, app: Any, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    make_jobs(client, app, 2)
    second = register_user(user.api_root)
    c2 = connect(second, home)
    try:
        assert held_count(c2.Job.objects.all()) == 0
        assert held_count(c2.Site.objects.all()) == 0
        assert c2.mirror.path != client.mirror.path
        assert c2.mirror.path.parent == client.mirror.path.parent == home / "mirrors"
        assert stat.S_IMODE(c2.mirror.path.stat().st_mode) == 0o600
    finally:
        c2.close()
    assert held_count(client.Job.objects.all()) == 2


def test_another_users_mirror_file_is_refused(
    client: Client, user: User, app: Any, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    make_jobs(client, app, 1)
    mine = client.mirror.path
    client.close()
    second = register_user(user.api_root)
    theirs = path_of(second, home)
    assert theirs != mine
    shutil.copyfile(mine, theirs)
    os.chmod(theirs, 0o600)
    c2 = connect(second, home)
    try:
        with pytest.raises(MirrorError):
            c2.Job.objects.offline().count()
        with pytest.raises(MirrorError):
            c2.mirror  # noqa: B018
    finally:
        c2.close()


def test_corrupt_mirror_file_says_how_to_rebuild(user: User, tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = path_of(user, home)
    path.parent.mkdir(parents=True, mode=0o700)
    path.write_bytes(b"this is not an sqlite database\x00\xff" * 500)
    c = connect(user, home)
    try:
        with pytest.raises(MirrorError) as info:
            c.Job.objects.offline().count()
    finally:
        c.close()
    message = str(info.value)
    assert "rebuild" in message.lower()
    assert str(path) in message


def test_mirror_corrupted_after_use_raises_mirror_error(
    client: Client, user: User, app: Any, tmp_path: Path
) -> None:
    make_jobs(client, app, 1)
    path = client.mirror.path
    client.close()
    for extra in ("-wal", "-shm"):
        Path(f"{path}{extra}").unlink(missing_ok=True)
    path.write_bytes(os.urandom(8192))
    c = connect(user, tmp_path / "home")
    try:
        with pytest.raises(MirrorError, match=r"(?i)rebuild"):
            c.Job.objects.offline().count()
    finally:
        c.close()
