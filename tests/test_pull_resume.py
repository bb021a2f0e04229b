"""A first pull killed part-way keeps what it stored, claims nothing it does not hold, and the
next pull reads only the rest: ``balsam-sync pull`` in a subprocess is killed with SIGKILL at
random points, chosen by what the mirror shows it stored (never by the clock).

After the pull that completes it, every resource answers offline with the server's ids and
counts (compared with plain HTTP), each job's events and transfer items too; that pull's bytes
(``PullReport.bytes``) are what the killed one had left, not a whole pull's.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.client import Client
from balsam_sync.errors import NoEvidence
from balsam_sync.testing.killing import kill_pull_at
from tests.conftest import FAST_RETRY, User, register_user
from tests.site_agent import Rest, create_jobs, make_account
from tests.test_pull import wait_for_server_clock

N_JOBS = 2400
PAGE_ROWS = 250
"""Small pages, so that a few thousand jobs make a few dozen pages a kill can fall between."""
MAX_REQUEST_SECONDS = 1.0
"""Short, so that a resumed pull reads again only the jobs stamped within a second of the
first pull's start (the account is older than that)."""
PATHS = {"Job": "/jobs/", "TransferItem": "/transfers/", "EventLog": "/events/"}
RUN = ("PREPROCESSED", "RUNNING", "RUN_DONE", "POSTPROCESSED")


@dataclass
class Account:
    user: User
    rest: Rest
    app_id: int
    whole_bytes: int
    """What a pull that is never killed reads of this account."""


def build(rest: Rest) -> int:
    """Jobs with a stage-in and a stage-out each, most of them taken the whole way as a site
    agent takes them (so each has its trail of events); return the app's id."""
    _, app_id = make_account(rest, 0, 2)
    jobs = [r["id"] for r in create_jobs(rest, app_id, N_JOBS)]
    items = rest.rows("/transfers/")
    ins = [i["id"] for i in items if i["direction"] == "in"]
    rest.call("PATCH", "/transfers/", json=[{"id": i, "state": "done"} for i in ins])
    rng = random.Random(5)
    moving = jobs[: int(N_JOBS * 0.9)]
    when = datetime.now() - timedelta(hours=3)
    for state in RUN:
        patch = [
            {
                "id": j,
                "state": state,
                "state_timestamp": (when + timedelta(seconds=rng.uniform(0, 9000))).isoformat(),
                "state_data": {"message": state.lower()},
            }
            for j in moving
        ]
        rest.call("PATCH", "/jobs/", json=patch)
    outs = {i["job_id"]: i["id"] for i in items if i["direction"] == "out"}
    done = [{"id": outs[j], "state": "done"} for j in moving[: int(N_JOBS * 0.85)]]
    rest.call("PATCH", "/transfers/", json=done)
    return app_id


def connect(user: User, home: Path, offline: bool = False) -> Client:
    return balsam_sync.connect(
        user.api_root,
        user.token,
        home=str(home),
        retry=FAST_RETRY,
        offline=offline,
        max_request_seconds=MAX_REQUEST_SECONDS,
        page_rows=PAGE_ROWS,
    )


@pytest.fixture(scope="module")
def account(balsam_server: str, tmp_path_factory: pytest.TempPathFactory) -> Account:
    user = register_user(balsam_server)
    rest = Rest(user.api_root, user.token)
    app_id = build(rest)
    newest = max(datetime.fromisoformat(j["last_update"]) for j in rest.rows("/jobs/"))
    wait_for_server_clock(user.api_root, newest + timedelta(seconds=3))
    whole = connect(user, tmp_path_factory.mktemp("whole"))
    try:
        report = whole.pull()
    finally:
        whole.close()
    assert report.full and not report.resumed
    return Account(user, rest, app_id, report.bytes)


def server_rows(rest: Rest) -> dict[str, list[dict[str, Any]]]:
    return {name: rest.rows(path) for name, path in PATHS.items()}


def pull_env(user: User, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "BALSAM_SYNC_API_ROOT": user.api_root,
        "BALSAM_SYNC_TOKEN": user.token,
        "BALSAM_SYNC_HOME": str(home),
        "BALSAM_SYNC_MAX_REQUEST_SECONDS": str(MAX_REQUEST_SECONDS),
        "BALSAM_SYNC_PAGE_ROWS": str(PAGE_ROWS),
    }


@pytest.fixture
def watcher(account: Account, tmp_path: Path) -> Iterator[Client]:
    """A client of the mirror the killed pulls write (it only reads it)."""
    c = connect(account.user, tmp_path / "home")
    yield c
    c.close()


def kill_at(account: Account, home: Path, watcher: Client, share: float) -> float:
    """Kill a ``balsam-sync pull`` into ``home`` once ``share`` of the rows are stored; return
    the share it had stored."""
    rows = sum(len(r) for r in server_rows(account.rest).values())
    killed = kill_pull_at(pull_env(account.user, home), watcher, share, rows, timeout=300)
    assert killed.killed, f"the pull ended before {share:.0%} ({killed.stderr[-2000:]})"
    return killed.share


def assert_claims_nothing_unproven(user: User, home: Path, jobs: list[int]) -> None:
    """Between the kill and the next pull: no resource claims to be whole, no job's children
    are claimed, yet every stored page is there (lookups by id answer from it)."""
    c = connect(user, home, offline=True)
    try:
        for name in ("Site", "App", "BatchJob", *PATHS):
            with pytest.raises(NoEvidence):
                getattr(c, name).objects.count()
        with pytest.raises(NoEvidence):
            list(c.EventLog.objects.filter(job_id=jobs[:3]))
        with pytest.raises(NoEvidence):
            list(c.TransferItem.objects.filter(job_id=jobs[:3]))
    finally:
        c.close()


def assert_answers_as_the_server(c: Client, rest: Rest) -> None:
    """Every resource offline: the server's ids and counts; each job's events and items."""
    server = server_rows(rest)
    for name, rows in server.items():
        manager = getattr(c, name).objects.offline()
        assert manager.count() == len(rows), name
        assert sorted(o.id for o in manager.all()) == sorted(r["id"] for r in rows), name
    events: dict[int, list[int]] = {}
    for e in server["EventLog"]:
        events.setdefault(e["job_id"], []).append(e["id"])
    items: dict[int, list[int]] = {}
    for i in server["TransferItem"]:
        items.setdefault(i["job_id"], []).append(i["id"])
    for job in random.Random(3).sample(server["Job"], 25):
        got = c.EventLog.objects.filter(job_id=[job["id"]]).offline()
        assert sorted(e.id for e in got) == sorted(events[job["id"]])
        held = c.TransferItem.objects.filter(job_id=[job["id"]]).offline()
        assert sorted(i.id for i in held) == sorted(items[job["id"]])


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_pull_killed_at_a_random_point_is_completed_by_the_next_reading_only_the_rest(
    account: Account, watcher: Client, tmp_path: Path, seed: int
) -> None:
    share = random.Random(seed).uniform(0.15, 0.85)
    home = tmp_path / "home"
    stored = kill_at(account, home, watcher, share)
    jobs = [j["id"] for j in account.rest.rows("/jobs/")]
    assert_claims_nothing_unproven(account.user, home, jobs)
    c = connect(account.user, home)
    try:
        report = c.pull()
        assert report.full and report.resumed
        assert_answers_as_the_server(c, account.rest)
    finally:
        c.close()
    # Rows are a lower bound of the bytes stored (jobs, listed first, are the largest rows).
    assert report.bytes <= account.whole_bytes * (1 - stored + 0.1), (stored, report)


def test_a_pull_killed_again_and_again_while_the_account_changes_completes_exactly(
    account: Account, watcher: Client, tmp_path: Path
) -> None:
    rest = account.rest
    home = tmp_path / "home"
    jobs = rest.rows("/jobs/")
    stored = 0.0
    for n, share in enumerate((0.2, 0.45, 0.7)):
        stored = max(stored, kill_at(account, home, watcher, max(share, stored + 0.05)))
        assert_claims_nothing_unproven(account.user, home, [j["id"] for j in jobs])
        # Meanwhile the account changes: jobs already listed are deleted (every later row
        # moves up a place), move on or are created; items move. The launcher reports the
        # moves late: their events sort before those the killed pull already stored.
        gone = jobs[10 * n : 10 * n + 10]
        rest.call("DELETE", "/jobs/", params=[("id", str(j["id"])) for j in gone])
        ready = [j["id"] for j in jobs[N_JOBS - 200 :]][20 * n : 20 * n + 20]
        late = (datetime.now() - timedelta(days=2)).isoformat()
        patch = [{"id": j, "state": "RESTART_READY", "state_timestamp": late} for j in ready]
        rest.call("PATCH", "/jobs/", json=patch)
        create_jobs(rest, account.app_id, 5, tag=f"new-{n}")
        pending = rest.rows("/transfers/", [("state", "pending")])[:5]
        rest.call(
            "PATCH", "/transfers/", json=[{"id": i["id"], "state": "active"} for i in pending]
        )
    c = connect(account.user, home)
    try:
        report = c.pull()
        assert report.full and report.resumed
        assert_answers_as_the_server(c, rest)
        assert c.pull().full is False  # the plan is done: the next pull is incremental
        assert_answers_as_the_server(c, rest)
    finally:
        c.close()
