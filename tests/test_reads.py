"""Reads say what they know: objects are read from the server when it can be reached, and the
mirror never answers a query it has no evidence for as if nothing matched.

Unreachable servers are made with the fault proxy (the client talks to the real server
through it from the start), as in test_offline.py.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.cache.store import STREAM_CACHE_KIB
from balsam_sync.client import Client
from balsam_sync.errors import NoEvidence, OfflineError
from balsam_sync.testing.faultproxy import FaultProxy
from tests.conftest import FAST_RETRY, User
from tests.mirror_view import held_count, sql


def connect(api_root: str, user: User, home: Path) -> Client:
    return balsam_sync.connect(api_root, user.token, home=str(home), retry=FAST_RETRY)


def make_jobs(client: Client, app: Any, n: int) -> list[Any]:
    jobs = [client.Job(workdir=f"w/{uuid.uuid4().hex[:8]}", app_id=app.id) for _ in range(n)]
    return client.Job.objects.bulk_create(jobs)


def change_elsewhere(user: User, home: Path, job_id: int, state: str) -> None:
    other = connect(user.api_root, user, home)
    try:
        other.Job.objects.filter(id=[job_id]).online().update(state=state)
    finally:
        other.close()


# -- objects are read from the server ------------------------------------------------------


def test_refresh_and_get_see_a_server_change_right_after_a_pull(
    via_proxy: Client, user: User, tmp_path: Path
) -> None:
    c = via_proxy
    site = c.Site.objects.create(name="s", path="/projects/s")
    app = c.App.objects.create(site_id=site.id, name="A", serialized_class="t", source_code="")
    job = make_jobs(c, app, 1)[0]
    report = c.pull()  # the mirror is fresh: queries are answered from it
    change_elsewhere(user, tmp_path / "other", job.id, "RUN_DONE")

    job.refresh_from_db()
    assert job.state == "RUN_DONE"
    assert (job.source, job.stale) == ("server", False)
    assert job.as_of is not None and job.as_of > report.started_at
    got = c.Job.objects.get(id=job.id)
    assert got.state == "RUN_DONE"
    assert (got.source, got.stale) == ("server", False)
    assert job.done() is False  # upstream's polling helper reads the server too
    change_elsewhere(user, tmp_path / "other", job.id, "JOB_FINISHED")
    assert job.done() is True


def test_refresh_reads_the_mirror_marked_stale_when_the_server_is_unreachable(
    via_proxy: Client, proxy: FaultProxy
) -> None:
    c = via_proxy
    site = c.Site.objects.create(name="s", path="/projects/s")
    app = c.App.objects.create(site_id=site.id, name="A", serialized_class="t", source_code="")
    job = make_jobs(c, app, 1)[0]
    report = c.pull()
    proxy.set_down(True)
    job.refresh_from_db()
    assert job.state == "STAGED_IN"
    assert (job.source, job.stale, job.as_of) == ("cache", True, report.started_at)
    got = c.Job.objects.get(id=job.id)
    assert (got.source, got.stale, got.as_of) == ("cache", True, report.started_at)


def test_the_default_max_age_lets_a_polling_loop_see_changes_within_30_seconds(
    client: Client,
) -> None:
    assert client.gateway.max_age <= 30


# -- no evidence is not "nothing" ----------------------------------------------------------


def test_a_never_synced_mirror_with_the_server_unreachable_refuses_to_answer(
    via_proxy: Client, proxy: FaultProxy
) -> None:
    c = via_proxy
    site = c.Site.objects.create(name="s", path="/projects/s")
    proxy.set_down(True)
    with pytest.raises(NoEvidence, match="never pulled"):
        len(c.Job.objects.all())
    with pytest.raises(NoEvidence):
        c.Job.objects.all().count()
    with pytest.raises(NoEvidence):
        c.Job.objects.filter(state="FAILED").count()
    with pytest.raises(OfflineError):  # NoEvidence is an OfflineError
        list(c.Site.objects.filter(name="s"))
    # an object it holds, asked for by id, is answered from it, marked stale
    got = c.Site.objects.get(id=site.id)
    assert (got.name, got.source, got.stale) == ("s", "cache", True)


@pytest.fixture
def offline_env(
    client: Client, user: User, app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Client, list[Any]]]:
    """Jobs on the server that the mirror saw only as written; then BALSAM_SYNC_OFFLINE=1."""
    jobs = make_jobs(client, app, 3)
    client.Job.objects.filter(id=[j.id for j in jobs]).online().update(state="FAILED")
    monkeypatch.setenv("BALSAM_SYNC_OFFLINE", "1")
    c = connect(user.api_root, user, tmp_path / "home")
    yield c, jobs
    c.close()


def test_offline_query_without_evidence_refuses_instead_of_answering_zero(
    offline_env: tuple[Client, list[Any]],
) -> None:
    c, _ = offline_env
    q = c.Job.objects.filter(state="FAILED")
    with pytest.raises(NoEvidence):
        list(q)
    with pytest.raises(NoEvidence):
        q.count()
    with pytest.raises(NoEvidence):
        c.Job.objects.filter(state="FAILED").offline().count()


def test_offline_query_update_without_evidence_refuses_and_queues_nothing(
    offline_env: tuple[Client, list[Any]],
) -> None:
    c, jobs = offline_env
    with pytest.raises(NoEvidence):
        c.Job.objects.filter(state="FAILED").update(state="RESTART_READY")
    with pytest.raises(NoEvidence):
        c.Job.objects.filter(state="FAILED").delete()
    assert c.status(check_server=False).pending == 0
    assert held_count(c.Job.objects.filter(state="RESTART_READY")) == 0
    # by ids the mirror holds, the intent is clear: it is queued
    assert c.Job.objects.filter(id=[jobs[0].id]).update(state="RESTART_READY") == 1
    assert c.status(check_server=False).pending == 1


def test_offline_query_update_after_a_pull_is_resolved_from_the_mirror(
    client: Client, user: User, app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = make_jobs(client, app, 3)
    client.Job.objects.filter(id=[j.id for j in jobs[:2]]).online().update(state="FAILED")
    client.pull()
    monkeypatch.setenv("BALSAM_SYNC_OFFLINE", "1")
    c = connect(user.api_root, user, tmp_path / "home")
    try:
        assert c.Job.objects.filter(state="FAILED").count() == 2
        assert c.Job.objects.filter(state="FAILED").update(state="RESTART_READY") == 2
        assert c.status(check_server=False).pending == 2
    finally:
        c.close()
    assert client.push().remaining == 0
    assert client.Job.objects.filter(state="RESTART_READY").online().count() == 2


def test_one_pull_answers_the_history_of_finished_jobs_offline(
    client: Client, user: User, app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = make_jobs(client, app, 6)
    client.Job.objects.filter(id=[j.id for j in jobs[:5]]).online().update(state="FAILED")
    server = {
        j.id: [e.to_state for e in client.EventLog.objects.filter(job_id=[j.id]).online()]
        for j in jobs
    }
    c = balsam_sync.connect(
        user.api_root, user.token, home=str(tmp_path / "h"), retry=FAST_RETRY, page_rows=2
    )
    try:
        first = c.pull()  # pages of two rows: every listing takes several
        assert first.full and not first.resumed
    finally:
        c.close()
    monkeypatch.setenv("BALSAM_SYNC_OFFLINE", "1")
    c = connect(user.api_root, user, tmp_path / "h")
    try:
        for j in jobs:  # finished or not, each job's events, newest first, as the server has them
            events = c.EventLog.objects.filter(job_id=[j.id])
            assert [e.to_state for e in events] == server[j.id]
            assert events.as_of == first.started_at
        assert c.EventLog.objects.count() == 11  # 6 creations, 5 failures
        assert c.EventLog.objects.filter(to_state="FAILED").count() == 5
        assert c.TransferItem.objects.count() == 0
    finally:
        c.close()


# -- every read says where it was answered and why ------------------------------------------


def test_every_read_logs_where_it_was_answered_and_why(
    via_proxy: Client, proxy: FaultProxy, app: Any, caplog: pytest.LogCaptureFixture
) -> None:
    make_jobs(via_proxy, app, 3)
    caplog.set_level(logging.DEBUG, logger="balsam_sync.gateway")

    def said() -> str:
        lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("read ")]
        caplog.clear()
        assert len(lines) == 1, lines  # one line per read
        return lines[0]

    assert len(via_proxy.Job.objects.all()) == 3
    assert "read Job rows all: server (policy auto: the mirror has no full sync" in said()
    via_proxy.pull()
    assert len(via_proxy.Job.objects.all()) == 3
    line = said()
    assert "read Job rows all: mirror (policy auto: full sync " in line and "s old" in line
    assert via_proxy.Job.objects.filter(state="STAGED_IN").count() == 3
    assert "read Job count {'state': ('STAGED_IN',)}: mirror" in said()
    proxy.set_down(True)
    assert len(via_proxy.Job.objects.all().fresh(0)) == 3
    assert "mirror, stale (the server could not be reached" in said()


# -- memory ----------------------------------------------------------------------------------


def test_iterating_the_mirror_holds_a_small_page_cache_and_gives_the_big_one_back(
    client: Client, app: Any
) -> None:
    made = make_jobs(client, app, 5)
    client.pull()
    conn = sql(client)

    def cache_size() -> int:
        (kib,) = conn.execute("PRAGMA cache_size").fetchone()
        return int(kib)

    big = cache_size()
    seen = []
    for job in client.Job.objects.offline().all().iterator(chunk_size=2):
        seen.append(job.id)
        # A scan reads each page once: a big cache would only grow the process (bench P7).
        assert cache_size() == -STREAM_CACHE_KIB > big
    assert sorted(seen) == sorted(j.id for j in made)
    assert cache_size() == big
    first = next(iter(client.Job.objects.offline().all().iterator(chunk_size=2)))  # stops early
    assert first.id in seen and cache_size() == big
