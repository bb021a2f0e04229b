"""The read commands an upstream user knows (``job ls/show/count``, ``site/app/queue/event ls``),
answered offline from a pulled mirror: no request is sent, each says ``source``/``as_of`` on
stderr, and ``--json`` has the documented shape."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
import balsam_sync.api
from balsam_sync.client import Client
from balsam_sync.remote import transport
from tests.clienv import Run
from tests.conftest import User, server_jobs

ORIGIN = {"source", "as_of", "stale"}


@dataclass
class Account:
    """What the other machine made, pulled into the command's mirror, which is now offline."""

    alpha: Any
    beta: Any
    hello: Any
    other: Any
    jobs: list[Any]
    child: Any
    queued: Any
    finished: Any
    sent: list[str]


def _batch_job(c: Client, site: Any, state: str, **fields: Any) -> Any:
    bj = c.BatchJob.objects.create(
        site_id=site.id, project="p", queue="debug", num_nodes=2, wall_time_min=10, job_mode="mpi"
    )
    bj.state = state
    for key, value in fields.items():
        setattr(bj, key, value)
    bj.save()
    return bj


@pytest.fixture
def account(elsewhere: Client, run: Run, monkeypatch: pytest.MonkeyPatch) -> Iterator[Account]:
    c, uid = elsewhere, uuid.uuid4().hex[:6]
    alpha = c.Site.objects.create(name=f"alpha-{uid}", path=f"/projects/alpha-{uid}")
    beta = c.Site.objects.create(name=f"beta-{uid}", path=f"/projects/beta-{uid}")
    hello = c.App.objects.create(
        site_id=alpha.id, name="Hello", serialized_class="t", source_code="x"
    )
    c.App.objects.create(site_id=beta.id, name="Hello", serialized_class="t", source_code="x")
    other = c.App.objects.create(
        site_id=alpha.id, name="Other", serialized_class="t", source_code="x"
    )
    jobs = c.Job.objects.bulk_create(
        [
            c.Job(f"run/{i}", hello.id, tags={"grp": "a" if i < 2 else "b"}, parameters={"n": i})
            for i in range(3)
        ]
    )
    child = c.Job("run/child", other.id, parent_ids=[jobs[0].id])
    child.save()
    jobs[1].state = "FAILED"
    jobs[1].save()
    jobs[2].state = "PREPROCESSED"
    jobs[2].save()
    queued = _batch_job(c, alpha, "queued", scheduler_id=4242)
    finished = _batch_job(c, beta, "finished")
    run("pull")
    monkeypatch.setenv("BALSAM_SYNC_OFFLINE", "1")
    sent: list[str] = []
    hook = lambda method, url: sent.append(f"{method} {url}")  # noqa: E731
    transport.REQUEST_HOOKS.append(hook)
    yield Account(alpha, beta, hello, other, jobs, child, queued, finished, sent)
    transport.REQUEST_HOOKS.remove(hook)


def origin_line(stderr: str, what: str) -> str:
    """The line a command says its answer's origin on (it names the mirror and a time)."""
    (line,) = [ln for ln in stderr.splitlines() if ln.startswith(f"{what}: source: ")]
    assert line.startswith(f"{what}: source: cache (the local mirror), as of: 20"), line
    assert line.endswith(" UTC"), line
    return line


def ids_of(table: str) -> list[int]:
    """The first column of a printed table, below its header."""
    return [int(row.split()[0]) for row in table.splitlines()[1:]]


# -- job ls ------------------------------------------------------------------------------------


def test_job_ls_takes_upstreams_filters_offline(run: Run, account: Account) -> None:
    a = account
    out = run("job", "ls")
    origin_line(out.stderr, "jobs")
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "Site", "App", "Workdir", "State", "Tags"]
    assert ids_of(out.stdout) == [j.id for j in [*a.jobs, a.child]]
    assert lines[1].split() == [
        str(a.jobs[0].id),
        a.alpha.name,
        "Hello",
        "run/0",
        "STAGED_IN",
        "grp=a",
    ]
    assert run("job", "ls", "--tag", "grp=a").stdout == run("job", "ls", "-t", "grp=a").stdout
    assert ids_of(run("job", "ls", "--tag", "grp=a").stdout) == [a.jobs[0].id, a.jobs[1].id]
    old = run("job", "ls", "--tag", "grp:b")
    assert ids_of(old.stdout) == [a.jobs[2].id]
    assert "--tag grp:b is the old form, deprecated: write --tag grp=b" in old.stderr
    assert ids_of(run("job", "ls", "--state", "FAILED").stdout) == [a.jobs[1].id]
    assert ids_of(run("job", "ls", "-ns", "STAGED_IN", "-t", "grp=a").stdout) == [a.jobs[1].id]
    assert ids_of(run("job", "ls", "--id", str(a.child.id)).stdout) == [a.child.id]
    assert ids_of(run("job", "ls", "--workdir", "child").stdout) == [a.child.id]
    assert ids_of(run("job", "ls", "--app", "Other").stdout) == [a.child.id]
    assert ids_of(run("job", "ls", "--app", str(a.other.id)).stdout) == [a.child.id]
    ambiguous = run("job", "ls", "--app", "Hello", code=2).stderr
    assert "several Apps are named 'Hello'" in ambiguous
    by_site = run("job", "ls", "--app", "Hello", "--site", a.alpha.path.as_posix())
    assert ids_of(by_site.stdout) == [j.id for j in a.jobs]
    assert ids_of(run("job", "ls", "--site", str(a.beta.id)).stdout) == []
    assert len(ids_of(run("job", "ls", "--limit", "2").stdout)) == 2
    assert "KEY=VALUE" in run("job", "ls", "--tag", "nothing", code=2).stderr
    assert run("job", "ls", "--state", "FINISHED", code=2).stderr.startswith("Usage:")
    assert a.sent == []


def test_job_ls_json_shape(run: Run, account: Account) -> None:
    data = json.loads(run("job", "ls", "--json", "--tag", "grp=a").stdout)
    assert set(data) == ORIGIN | {"jobs"}
    assert (data["source"], data["stale"]) == ("cache", False) and data["as_of"].startswith("20")
    first = data["jobs"][0]
    assert (first["id"], first["state"], first["tags"]) == (
        account.jobs[0].id,
        "STAGED_IN",
        {"grp": "a"},
    )
    assert {"workdir", "app_id", "parent_ids", "last_update", "data"} <= set(first)
    counted = json.loads(run("job", "ls", "--by-state", "--json").stdout)
    assert counted["by_state"] == {
        "STAGED_IN": 1,
        "PREPROCESSED": 1,
        "FAILED": 1,
        "AWAITING_PARENTS": 1,
    }
    assert account.sent == []


def test_job_ls_online_asks_the_server_and_says_so(
    run: Run, account: Account, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BALSAM_SYNC_OFFLINE")
    out = run("job", "ls", "--online", "--state", "FAILED")
    assert ids_of(out.stdout) == [account.jobs[1].id]
    assert "jobs: source: server (the server), as of: 20" in out.stderr
    assert account.sent  # the request hook sees what the command sends
    assert "exclude each other" in run("job", "ls", "--online", "--offline", code=2).stderr


# -- job show / count ----------------------------------------------------------------------------


def test_job_show_prints_every_field_its_parents_and_events(run: Run, account: Account) -> None:
    child, parent = account.child, account.jobs[0]
    out = run("job", "show", str(child.id))
    origin_line(out.stderr, "job")
    origin_line(out.stderr, "events")
    shown = {line.split(":")[0] for line in out.stdout.splitlines() if not line.startswith(" ")}
    assert set(child.to_dict()) <= shown
    assert "parameters (decoded)" in shown
    parents = out.stdout.split("parents:\n")[1].split("events:")[0]
    assert parents.split() == [str(parent.id), "STAGED_IN", "run/0"]
    assert "CREATED -> AWAITING_PARENTS" in out.stdout.split("events:")[1]

    data = json.loads(run("job", "show", str(account.jobs[2].id), "--json").stdout)
    assert set(data) == ORIGIN | {"job", "parents", "events"}
    assert data["job"]["parameters"] == {"n": 2} and data["job"]["state"] == "PREPROCESSED"
    assert data["parents"] == []
    moves = [(e["from_state"], e["to_state"]) for e in data["events"]]
    assert moves == [("STAGED_IN", "PREPROCESSED"), ("CREATED", "STAGED_IN")]  # newest first
    child_data = json.loads(run("job", "show", str(child.id), "--json").stdout)
    assert child_data["parents"] == [{"id": parent.id, "state": "STAGED_IN", "workdir": "run/0"}]

    missing = run("job", "show", "1", code=1).stderr
    assert missing.startswith("error: No Job matched") and len(missing.splitlines()) == 1
    assert account.sent == []


def test_job_count_by_state(run: Run, account: Account) -> None:
    out = run("job", "count")
    assert out.stdout == "4\n"
    origin_line(out.stderr, "jobs")
    assert run("job", "count", "--tag", "grp=a").stdout == "2\n"
    table = run("job", "count", "--by", "state").stdout.splitlines()
    assert table[0].split() == ["State", "Count"]
    assert {tuple(row.split()) for row in table[1:]} == {
        ("AWAITING_PARENTS", "1"),
        ("STAGED_IN", "1"),
        ("PREPROCESSED", "1"),
        ("FAILED", "1"),
    }
    every = run("job", "count", "--by", "state", "--all-states").stdout.splitlines()
    assert ("JOB_FINISHED", "0") in {tuple(row.split()) for row in every[1:]}
    data = json.loads(run("job", "count", "--by", "state", "--json", "-t", "grp=a").stdout)
    assert set(data) == ORIGIN | {"total", "by_state"}
    assert (data["total"], data["by_state"]) == (2, {"STAGED_IN": 1, "FAILED": 1})
    assert json.loads(run("job", "count", "--json").stdout)["total"] == 4
    assert account.sent == []


# -- site / app / queue / event ls ---------------------------------------------------------------


def test_site_and_app_ls(run: Run, account: Account) -> None:
    a = account
    out = run("site", "ls")
    origin_line(out.stderr, "sites")
    lines = out.stdout.splitlines()
    assert lines[0].split() == ["ID", "Name", "Path", "Last", "refresh", "Active"]
    assert ids_of(out.stdout) == [a.alpha.id, a.beta.id]
    assert a.alpha.name in lines[1] and a.alpha.path.as_posix() in lines[1]
    sites = json.loads(run("site", "ls", "--json").stdout)
    assert set(sites) == ORIGIN | {"sites"}
    assert [s["name"] for s in sites["sites"]] == [a.alpha.name, a.beta.name]

    apps = run("app", "ls")
    origin_line(apps.stderr, "apps")
    rows = [row.split() for row in apps.stdout.splitlines()]
    assert rows[0] == ["ID", "Name", "Site"]
    assert sorted((r[1], r[2]) for r in rows[1:]) == sorted(
        [("Hello", a.alpha.name), ("Other", a.alpha.name), ("Hello", a.beta.name)]
    )
    beta_only = run("app", "ls", "--site", a.beta.path.as_posix()).stdout.splitlines()[1:]
    assert [row.split()[1:] for row in beta_only] == [["Hello", a.beta.name]]
    data = json.loads(run("app", "ls", "--json", "--site", str(a.alpha.id)).stdout)
    assert set(data) == ORIGIN | {"apps"}
    assert sorted(x["name"] for x in data["apps"]) == ["Hello", "Other"]
    assert a.sent == []


def test_queue_ls_shows_the_active_batch_jobs_or_all(run: Run, account: Account) -> None:
    a = account
    out = run("queue", "ls")
    origin_line(out.stderr, "batch_jobs")
    rows = [row.split() for row in out.stdout.splitlines()]
    assert rows[0][:2] == ["ID", "Site"]
    assert rows[1:] == [
        [str(a.queued.id), a.alpha.name, "4242", "queued", "debug", "2", "10", "mpi"]
    ]
    assert ids_of(run("queue", "ls", "--history").stdout) == [a.queued.id, a.finished.id]
    assert ids_of(run("queue", "ls", "--num", "1").stdout) == [a.finished.id]
    assert ids_of(run("queue", "ls", "--scheduler-id", "4242").stdout) == [a.queued.id]
    data = json.loads(run("queue", "ls", "--history", "--json").stdout)
    assert set(data) == ORIGIN | {"batch_jobs"}
    assert [(b["id"], b["state"]) for b in data["batch_jobs"]] == [
        (a.queued.id, "queued"),
        (a.finished.id, "finished"),
    ]
    assert a.sent == []


def test_event_ls_of_a_job(run: Run, account: Account) -> None:
    failed = account.jobs[1]
    out = run("event", "ls", "--job", str(failed.id))
    origin_line(out.stderr, "events")
    rows = [row.split() for row in out.stdout.splitlines()]
    assert rows[0] == ["Timestamp", "Job", "From", "To", "Data"]
    assert [(r[3], r[4], r[5]) for r in rows[1:]] == [
        (str(failed.id), "STAGED_IN", "FAILED"),
        (str(failed.id), "CREATED", "STAGED_IN"),
    ]
    data = json.loads(run("event", "ls", "--job", str(failed.id), "--json").stdout)
    assert set(data) == ORIGIN | {"events"}
    assert [e["to_state"] for e in data["events"]] == ["FAILED", "STAGED_IN"]
    assert {"id", "job_id", "timestamp", "from_state", "to_state", "data"} <= set(data["events"][0])
    to_failed = json.loads(run("event", "ls", "--to-state", "FAILED", "--json").stdout)
    assert [e["job_id"] for e in to_failed["events"]] == [failed.id]
    assert account.sent == []


# -- a mirror that knows nothing, and the older command --------------------------------------


def test_a_never_pulled_mirror_says_to_pull_instead_of_listing_nothing(
    run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BALSAM_SYNC_OFFLINE", "1")
    for command in (["job", "ls"], ["job", "count"], ["site", "ls"], ["queue", "ls"]):
        err = run(*command, code=1).stderr
        assert err.startswith("error: ") and "pull" in err and len(err.splitlines()) == 1


def test_the_older_jobs_command_still_works_and_points_to_job_ls(
    run: Run, account: Account
) -> None:
    out = run("jobs", "--tag", "grp:a", "--count")
    assert out.stdout == "2\n"
    assert "`balsam-sync jobs` is deprecated: use `balsam-sync job ls`" in out.stderr


# -- balsam_sync.api.push ------------------------------------------------------------------------


def test_api_push_sends_what_was_queued_offline(
    env_user: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BALSAM_SYNC_OFFLINE", "1")
    offline = balsam_sync.connect()
    site = offline.Site(name=f"push-{uuid.uuid4().hex[:6]}", path="/projects/push")
    site.save()
    app = offline.App(site_id=site.id, name="Later", serialized_class="t", source_code="x")
    app.save()
    offline.Job("queued/1", app.id).save()
    offline.close()
    monkeypatch.delenv("BALSAM_SYNC_OFFLINE")
    balsam_sync.set_default_client(None)
    try:
        report = balsam_sync.api.push()
        assert (report.sent, report.remaining, report.dead) == (3, 0, 0)
    finally:
        balsam_sync.set_default_client(None)
    (row,) = server_jobs(env_user)
    assert row["workdir"] == "queued/1"
