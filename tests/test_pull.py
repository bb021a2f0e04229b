"""Pulls against a busy real server: late commits, a site agent at work, and what they cost.

The server stamps a job's ``last_update`` when a request starts and commits it later; a pull
that sees faster requests' newer stamps must still pick up the slow one. While a simulated
site agent moves jobs, transfer items and batch jobs (plain REST, as the real one), pulls
repeat; once it stops, one more pull must leave the mirror equal to the server, field by field,
for every resource. Incremental pulls must read what changed, not the account.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
import requests

import balsam_sync
from balsam_sync.client import Client
from balsam_sync.errors import ConfigError
from tests.conftest import FAST_RETRY, User
from tests.site_agent import BulkWriter, Rest, SiteAgent, create_jobs, make_account

MODELS = ("Site", "App", "Job", "BatchJob", "TransferItem", "EventLog")


def connect(user: User, home: Path, **settings: Any) -> Client:
    return balsam_sync.connect(
        user.api_root, user.token, home=str(home), retry=FAST_RETRY, **settings
    )


@pytest.fixture
def rest(user: User) -> Rest:
    return Rest(user.api_root, user.token)


def assert_mirror_equals_server(client: Client) -> None:
    """Every row of every resource, field by field (the mirror first: reading the server
    writes its rows through)."""
    for name in MODELS:
        manager = getattr(client, name).objects
        mirror = {o.id: o.to_dict() for o in manager.offline()}
        server = {o.id: o.to_dict() for o in manager.online()}
        assert mirror.keys() == server.keys(), (
            f"{name}: missing {sorted(server.keys() - mirror.keys())[:10]}, "
            f"extra {sorted(mirror.keys() - server.keys())[:10]}"
        )
        differ = [i for i in server if mirror[i] != server[i]]
        assert not differ, (name, len(differ), mirror[differ[0]], server[differ[0]])


# -- late commits ----------------------------------------------------------------------------


def overlap_a_pull(
    client: Client, rest: Rest, slow: list[int], fast: int, value: Any, pause: float
) -> tuple[bool, float]:
    """Update ``slow`` in one long PATCH; ``pause`` seconds later update ``fast`` (it commits
    first, with a newer stamp) and pull. Return whether the long PATCH was still running
    during the pull, and how long it took."""
    done = threading.Event()
    took: list[float] = []

    def bulk() -> None:
        started = time.monotonic()
        rest.call("PATCH", "/jobs/", json=[{"id": i, "data": {"v": value}} for i in slow])
        took.append(time.monotonic() - started)
        done.set()

    listed: list[bool] = []  # per listed page: was the long PATCH still running?

    def progress(resource: str, _rows: int, _total: int | None) -> None:
        if resource == "Job":
            listed.append(not done.is_set())

    writer = threading.Thread(target=bulk)
    writer.start()
    time.sleep(pause)
    rest.call("PUT", f"/jobs/{fast}", json={"data": {"v": value}})
    running = not done.is_set()
    client.pull(progress=progress)
    writer.join()
    return running and bool(listed) and all(listed), took[0]


def late_commit(client: Client, rest: Rest, slow: list[int], fast: int, value: str) -> None:
    """Make a long PATCH commit after a pull saw a newer stamp (up to four tries).

    The fast update and the pull start 0.2 s into the PATCH, or, once a try shows the PATCH
    takes less than 0.8 s (an idle server), a quarter into it as measured on this machine.
    """
    pause = 0.2
    for attempt in range(4):
        overlapped, took = overlap_a_pull(client, rest, slow, fast, f"{value}-{attempt}", pause)
        if overlapped:
            return
        pause = min(pause, took / 4)
    raise AssertionError("the slow update never overlapped a pull (the machine is too fast?)")


def test_a_slow_bulk_update_that_commits_after_a_pull_started_is_not_skipped(
    client: Client, rest: Rest
) -> None:
    _, app_id = make_account(rest, 0, 0)
    slow = [r["id"] for r in create_jobs(rest, app_id, 3000)]
    fast = create_jobs(rest, app_id, 1)[0]["id"]
    client.pull()
    late_commit(client, rest, slow, fast, "late")
    client.pull()
    expected = {j["id"]: j["data"] for j in rest.rows("/jobs/")}
    values = {j.id: j.data for j in client.Job.objects.filter(id=slow).offline()}
    stale = [i for i in slow if values[i] != expected[i]]
    assert not stale, f"{len(stale)} of {len(slow)} jobs never got the slow update"


# -- a busy site agent -----------------------------------------------------------------------


@pytest.fixture
def busy(user: User, rest: Rest) -> Iterator[tuple[SiteAgent, BulkWriter]]:
    site_id, app_id = make_account(rest, 300, 4)
    quiet = [r["id"] for r in create_jobs(rest, app_id, 2000, tag="quiet")]
    for start in range(0, len(quiet), 500):
        chunk = quiet[start : start + 500]
        rest.call("PUT", "/jobs/", params=[("id", str(i)) for i in chunk], json={"state": "FAILED"})
    yield SiteAgent(rest, site_id, app_id, seed=7), BulkWriter(rest, quiet)


def agent_job(rest: Rest) -> int:
    """A job the site agent does not move (one it created, still waiting on stage-in)."""
    job_id: int = rest.rows("/jobs/", [("state", "READY")])[0]["id"]
    return job_id


def test_pulls_converge_while_a_site_agent_works(
    user: User, rest: Rest, busy: tuple[SiteAgent, BulkWriter], tmp_path: Path
) -> None:
    agent, writer = busy
    # A short max_request_seconds, so the watermark moves on while the agent works; every
    # request of this test commits well within it.
    client = connect(user, tmp_path / "home", max_request_seconds=10)
    try:
        client.pull()
        stop, writer_stop = threading.Event(), threading.Event()
        threads = [
            threading.Thread(target=agent.run, args=(stop,)),
            threading.Thread(target=writer.run, args=(writer_stop,)),
        ]
        for t in threads:
            t.start()
        pulls = 0
        start = time.monotonic()
        try:
            while time.monotonic() < start + 16:
                client.pull()
                pulls += 1
                # The last part without creations and deletions: nothing but the watermark
                # then brings the late commits (no count differs).
                if time.monotonic() > start + 8:
                    agent.calm.set()
            writer_stop.set()
            threads[1].join()
            # At the end, for certain: a long PATCH committing after a pull saw newer stamps.
            late_commit(client, rest, writer.job_ids, agent_job(rest), "final")
        finally:
            stop.set()
            writer_stop.set()
            for t in threads:
                t.join()
        assert agent.steps >= 20 and writer.rounds >= 4 and pulls >= 2
        assert max(agent.longest, writer.longest) < 10, "a request outlasted max_request_seconds"
        client.pull()
        assert_mirror_equals_server(client)
    finally:
        client.close()


# -- what incremental pulls read -------------------------------------------------------------


@pytest.fixture
def account(user: User, rest: Rest, tmp_path: Path) -> Iterator[tuple[Client, Rest, list[Any]]]:
    """40 jobs with a stage-in and a stage-out each: 30 finished, 10 waiting on stage-in."""
    _, app_id = make_account(rest, 0, 2)
    jobs = create_jobs(rest, app_id, 40)
    items = rest.rows("/transfers/")
    finished = {j["id"] for j in jobs[:30]}
    mine = [i for i in items if i["job_id"] in finished]
    rest.call(
        "PATCH",
        "/transfers/",
        json=[{"id": i["id"], "state": "done"} for i in mine if i["direction"] == "in"],
    )
    rest.call("PATCH", "/jobs/", json=[{"id": j, "state": "POSTPROCESSED"} for j in finished])
    rest.call(
        "PATCH",
        "/transfers/",
        json=[{"id": i["id"], "state": "done"} for i in mine if i["direction"] == "out"],
    )
    bjs = rest.rows("/batch-jobs/")
    rest.call("PATCH", "/batch-jobs/", json=[{"id": bjs[0]["id"], "state": "finished"}])
    client = connect(user, tmp_path / "home", max_request_seconds=1)
    newest = max(datetime.fromisoformat(j["last_update"]) for j in rest.rows("/jobs/"))
    wait_for_server_clock(user.api_root, newest + timedelta(seconds=1 + 2))
    yield client, rest, jobs
    client.close()


def wait_for_server_clock(api_root: str, moment: datetime, timeout: float = 60.0) -> None:
    """Wait until the server's clock (its Date header, which lags on a busy server) has
    passed ``moment``: every row is then older than a pull's overlap."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        date = parsedate_to_datetime(
            requests.get(api_root + "/auth/how", timeout=30).headers["Date"]
        )
        if date > moment.replace(tzinfo=moment.tzinfo or timezone.utc):
            return
        time.sleep(0.25)
    raise AssertionError(f"the server's clock did not pass {moment} within {timeout} s")


def test_an_idle_pull_reads_only_what_is_in_motion(account: tuple[Client, Rest, list[Any]]) -> None:
    client, _, _ = account
    first = client.pull()
    assert first.fetched["TransferItem"] == 80 and first.fetched["EventLog"] > 40
    idle = client.pull()
    assert idle.full is False
    assert idle.fetched["Job"] == 0
    assert idle.fetched["EventLog"] == 0
    assert idle.fetched["TransferItem"] == 10  # the stage-ins still pending
    assert idle.fetched["BatchJob"] == 1  # the unfinished one
    assert idle.requests <= 8, idle


def test_an_incremental_pull_reads_the_changes_and_their_children(
    account: tuple[Client, Rest, list[Any]],
) -> None:
    client, rest, jobs = account
    client.pull()
    changed = jobs[35]["id"]
    rest.call("PUT", f"/jobs/{changed}", json={"state": "FAILED"})
    item = rest.rows("/transfers/", [("job_id", str(jobs[36]["id"])), ("direction", "in")])[0]
    rest.call("PUT", f"/transfers/{item['id']}", json={"state": "active", "task_id": "t1"})
    bj = next(b for b in rest.rows("/batch-jobs/") if b["state"] != "finished")
    rest.call("PUT", f"/batch-jobs/{bj['id']}", json={"state": "finished"})
    report = client.pull()
    assert report.fetched["Job"] == 1
    assert report.fetched["EventLog"] == 2  # the changed job's events, all of them
    assert report.fetched["TransferItem"] == 10 + 2  # in motion, and the changed job's own
    assert client.Job.objects.offline().get(id=changed).state == "FAILED"
    assert client.TransferItem.objects.offline().get(id=item["id"]).state == "active"
    assert client.BatchJob.objects.offline().get(id=bj["id"]).state == "finished"
    assert_mirror_equals_server(client)


# -- settings --------------------------------------------------------------------------------


def test_pull_settings_come_from_arguments_or_the_environment(
    user: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = connect(user, tmp_path / "a", max_request_seconds=5, page_rows=10)
    assert (client.settings.max_request_seconds, client.settings.page_rows) == (5, 10)
    assert client.settings.reconcile_seconds == 86_400
    client.close()
    monkeypatch.setenv("BALSAM_SYNC_MAX_REQUEST_SECONDS", "30")
    client = connect(user, tmp_path / "b")
    assert client.settings.max_request_seconds == 30
    client.close()
    with pytest.raises(ConfigError, match="max_request_seconds"):
        connect(user, tmp_path / "c", max_request_seconds=-1)
    monkeypatch.setenv("BALSAM_SYNC_PAGE_ROWS", "many")
    with pytest.raises(ConfigError, match="BALSAM_SYNC_PAGE_ROWS"):
        connect(user, tmp_path / "d")
    monkeypatch.setenv("BALSAM_SYNC_PAGE_ROWS", "1")  # a page must hold the row it anchors on
    with pytest.raises(ConfigError, match="page_rows"):
        connect(user, tmp_path / "e")
    monkeypatch.setenv("BALSAM_SYNC_PAGE_ROWS", "200000")  # more than the server returns
    with pytest.raises(ConfigError, match="page_rows"):
        connect(user, tmp_path / "f")


def test_a_direct_edit_of_a_parked_transfer_item_is_found_by_the_periodic_full_pull(
    account: tuple[Client, Rest, list[Any]], user: User, tmp_path: Path
) -> None:
    client, rest, jobs = account
    client.pull()
    done = rest.rows("/transfers/", [("job_id", str(jobs[0]["id"]))])[0]
    # Through the API, without its job changing: no incremental pull can see this.
    rest.call("PUT", f"/transfers/{done['id']}", json={"transfer_info": {"edited": "yes"}})
    assert client.pull().full is False
    assert client.TransferItem.objects.offline().get(id=done["id"]).transfer_info == {}
    due = connect(user, tmp_path / "home", max_request_seconds=1, reconcile_seconds=0)
    try:
        assert due.pull().full is True  # the last full pull is older than reconcile_seconds
        edited = due.TransferItem.objects.offline().get(id=done["id"])
        assert edited.transfer_info == {"edited": "yes"}
    finally:
        due.close()
