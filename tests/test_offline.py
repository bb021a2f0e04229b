"""Freshness policies, provenance, working without the server, and pulls.

The server is the real Balsam server. "Unreachable" is made with the fault proxy: the client
talks to the server through it from the start (the mirror file name depends on ``api_root``),
pulls, then the proxy goes down.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.client import Client
from balsam_sync.errors import NoEvidence, OfflineError
from balsam_sync.freshness import AUTO, OFFLINE, ONLINE, Route, fresh, plan_read
from balsam_sync.sync.pull import prefetched
from balsam_sync.testing.faultproxy import FaultProxy
from tests.conftest import FAST_RETRY, RequestLog, User
from tests.mirror_view import held, held_count

# -- helpers ---------------------------------------------------------------------------------


def make_jobs(client: Client, app: Any, n: int, **fields: Any) -> list[Any]:
    jobs = [
        client.Job(workdir=f"w/{uuid.uuid4().hex[:8]}-{i}", app_id=app.id, **fields)
        for i in range(n)
    ]
    return client.Job.objects.bulk_create(jobs)


def create_one_by_one(client: Client, app: Any, n: int, **fields: Any) -> list[Any]:
    """Jobs created in separate requests, so their ``last_update`` values all differ."""
    return [
        client.Job.objects.create(workdir=f"w/one-{i}", app_id=app.id, **fields) for i in range(n)
    ]


def ids(query: Any) -> list[int]:
    return [obj.id for obj in query]


def recorder(client: Client) -> RequestLog:
    log = RequestLog([])
    client.transport.on_request.append(lambda method, url: log.calls.append((method, url)))
    return log


def connect(api_root: str, user: User, home: Path) -> Client:
    return balsam_sync.connect(api_root, user.token, home=str(home), retry=FAST_RETRY)


@contextmanager
def another_client(user: User, home: Path) -> Iterator[Client]:
    """A second client of the same user: another mirror, or the same one (a second shell)."""
    c = connect(user.api_root, user, home)
    try:
        yield c
    finally:
        c.close()


def assert_aware_utc(value: Any) -> None:
    assert isinstance(value, datetime)
    assert value.tzinfo is not None
    assert value.utcoffset() == timedelta(0)


# -- provenance ------------------------------------------------------------------------------


def test_server_answer_has_source_and_aware_as_of(client: Client, app: Any) -> None:
    make_jobs(client, app, 2)
    q = client.Job.objects.all()
    assert q.source is None
    assert q.as_of is None
    before = datetime.now(timezone.utc)
    assert len(list(q)) == 2
    after = datetime.now(timezone.utc)
    assert q.source == "server"
    assert q.stale is False
    assert_aware_utc(q.as_of)
    assert q.as_of is not None
    assert before - timedelta(seconds=1) <= q.as_of <= after

    counted = client.Job.objects.filter(state="STAGED_IN")
    assert counted.count() == 2
    assert counted.source == "server"
    assert_aware_utc(counted.as_of)

    cached = client.Job.objects.offline()
    assert len(list(cached)) == 2
    assert cached.source == "cache"
    assert cached.as_of == q.as_of  # the mirror knows when the server confirmed these rows


# -- AUTO ------------------------------------------------------------------------------------


def test_auto_asks_server_until_pull_then_answers_from_mirror(
    client: Client, app: Any, sent: RequestLog
) -> None:
    jobs = make_jobs(client, app, 3, tags={"k": "v"})
    for _ in range(2):
        sent.clear()
        q = client.Job.objects.all()
        assert ids(q) == [j.id for j in jobs]
        assert q.source == "server"
        assert len(sent) >= 1

    report = client.pull()
    assert report.full is True
    sent.clear()
    q = client.Job.objects.all()
    assert ids(q) == [j.id for j in jobs]
    assert q.source == "cache"
    assert q.stale is False
    assert q.as_of == report.started_at
    counted = client.Job.objects.filter(tags={"k": "v"})
    assert counted.count() == 3
    assert counted.source == "cache"
    assert client.Job.objects.first().id == jobs[0].id
    assert ids(client.Job.objects.order_by("-id")[1:3]) == [jobs[1].id, jobs[0].id]
    assert len(list(client.Site.objects.all())) == 1
    assert len(list(client.App.objects.all())) == 1
    events = client.EventLog.objects.all()
    assert len(list(events)) == 3
    assert events.source == "cache"
    assert len(sent) == 0, sent.calls
    # get() names one object: like upstream, it asks the server whenever it can
    got = client.Job.objects.get(id=jobs[1].id)
    assert (got.id, got.source, got.stale) == (jobs[1].id, "server", False)
    assert len(sent) >= 1


def test_auto_after_own_write_keeps_jobs_cached_but_rereads_events(
    client: Client, app: Any, sent: RequestLog
) -> None:
    make_jobs(client, app, 2)
    client.pull()
    new = client.Job.objects.create(workdir="w/after", app_id=app.id)
    sent.clear()
    q = client.Job.objects.all()
    assert new.id in ids(q)
    assert q.source == "cache"
    assert len(sent) == 0
    # the server logged an event the mirror never saw: events must come from the server
    events = client.EventLog.objects.filter(job_id=[new.id])
    assert [e.to_state for e in events] == ["STAGED_IN"]
    assert events.source == "server"


class MovableClock:
    """This machine's clock, moved forward by the test (``ahead``) instead of sleeping."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.ahead


def test_auto_goes_back_to_server_once_the_pull_is_older_than_max_age(
    user: User, app: Any, tmp_path: Path
) -> None:
    clock = MovableClock()
    c = balsam_sync.connect(
        user.api_root, user.token, home=str(tmp_path / "h"), retry=FAST_RETRY, clock=clock
    )
    sent = recorder(c)
    try:
        assert c.gateway.max_age == 30  # a polling loop sees a server change within 30 s
        make_jobs(c, app, 1)
        c.pull()
        sent.clear()
        q = c.Job.objects.all()
        list(q)
        assert q.source == "cache"
        assert len(sent) == 0
        clock.ahead = timedelta(seconds=31)  # the pull is now older than max_age
        q = c.Job.objects.all()
        list(q)
        assert q.source == "server"
        assert len(sent) >= 1
    finally:
        c.close()


# -- fresh() ---------------------------------------------------------------------------------


def test_fresh_uses_the_record_of_this_exact_query(
    client: Client, app: Any, sent: RequestLog
) -> None:
    ones = make_jobs(client, app, 2, tags={"a": "1"})
    make_jobs(client, app, 2, tags={"a": "2"})

    def narrow() -> Any:
        return client.Job.objects.filter(tags={"a": "1"})

    first = narrow().fresh(max_age=60)
    assert ids(first) == [j.id for j in ones]
    assert first.source == "server"

    sent.clear()
    again = narrow().fresh(60)
    assert ids(again) == [j.id for j in ones]
    assert again.source == "cache"
    assert again.as_of == first.as_of
    counted = narrow().fresh(60)
    assert counted.count() == 2
    assert counted.source == "cache"
    # an unsliced answer covers any ordering and window of the same filters
    assert ids(narrow().order_by("-id")[0:1].fresh(60)) == [ones[1].id]
    assert len(sent) == 0

    stale = narrow().fresh(0)
    list(stale)
    assert stale.source == "server"
    assert len(sent) >= 1


def test_fresh_narrow_query_never_covers_broader_one(
    client: Client, app: Any, sent: RequestLog
) -> None:
    make_jobs(client, app, 2, tags={"a": "1"})
    make_jobs(client, app, 3, tags={"a": "2"})
    list(client.Job.objects.filter(tags={"a": "1"}).online())
    list(client.Job.objects.filter(tags={"a": "1"}, state="STAGED_IN").online())
    sent.clear()
    counted = client.Job.objects.fresh(3600)
    assert counted.count() == 5
    assert counted.source == "server"
    broad = client.Job.objects.all().fresh(3600)
    assert len(list(broad)) == 5
    assert broad.source == "server"
    other_filter = client.Job.objects.filter(tags={"a": "2"}).fresh(3600)
    assert len(list(other_filter)) == 3
    assert other_filter.source == "server"
    assert len(sent) >= 3


def test_fresh_default_query_answer_is_reused(client: Client, app: Any, sent: RequestLog) -> None:
    make_jobs(client, app, 2)
    q = client.Job.objects.filter(state="STAGED_IN")
    list(q)
    assert q.source == "server"
    sent.clear()
    again = client.Job.objects.filter(state="STAGED_IN").fresh(60)
    assert len(list(again)) == 2
    assert again.source == "cache"
    assert len(sent) == 0


def test_fresh_after_full_sync_answers_any_query(
    client: Client, app: Any, sent: RequestLog
) -> None:
    jobs = make_jobs(client, app, 3, tags={"x": "y"})
    report = client.pull()
    sent.clear()
    for q in (
        client.Job.objects.filter(tags={"x": "y"}).fresh(60),
        client.Job.objects.filter(id=[jobs[0].id]).fresh(60),
        client.Job.objects.order_by("workdir")[1:2].fresh(60),
        client.EventLog.objects.filter(job_id=[jobs[2].id]).fresh(60),
    ):
        assert len(list(q)) >= 1
        assert q.source == "cache"
        assert q.as_of == report.started_at
    assert len(sent) == 0
    time.sleep(0.05)
    late = client.Job.objects.filter(tags={"x": "y"}).fresh(0.01)
    list(late)
    assert late.source == "server"


def test_sliced_fetch_covers_same_ordering_and_windows_inside_only(
    client: Client, app: Any, sent: RequestLog
) -> None:
    jobs = make_jobs(client, app, 12)
    newest_first = sorted((j.id for j in jobs), reverse=True)

    def by_id_desc() -> Any:
        return client.Job.objects.order_by("-id")

    window = by_id_desc()[0:10].fresh(60)
    assert ids(window) == newest_first[0:10]
    assert window.source == "server"

    sent.clear()
    for low, high in ((2, 5), (0, 10), (9, 10), (0, 1)):
        inside = by_id_desc()[low:high].fresh(60)
        assert ids(inside) == newest_first[low:high]
        assert inside.source == "cache", (low, high)
    assert len(sent) == 0

    for q in (
        by_id_desc()[5:15].fresh(60),  # reaches past the fetched window
        client.Job.objects.order_by("id")[2:5].fresh(60),  # another ordering
        client.Job.objects.all()[2:5].fresh(60),  # the default ordering is another one too
    ):
        list(q)
        assert q.source == "server"
    counted = by_id_desc().fresh(60)
    assert counted.count() == 12  # a window says nothing about the total
    assert counted.source == "server"
    whole = by_id_desc().fresh(60)
    assert ids(whole) == newest_first
    assert whole.source == "server"


def test_sliced_and_count_records_are_dropped_by_own_writes(
    client: Client, app: Any, sent: RequestLog
) -> None:
    make_jobs(client, app, 6)
    list(client.Job.objects.order_by("-id")[0:4].fresh(60))
    assert client.Job.objects.filter(state="STAGED_IN").fresh(60).count() == 6
    new = client.Job.objects.create(workdir="w/new", app_id=app.id)
    sent.clear()
    window = client.Job.objects.order_by("-id")[0:2].fresh(60)
    assert ids(window)[0] == new.id
    assert window.source == "server"
    counted = client.Job.objects.filter(state="STAGED_IN").fresh(60)
    assert counted.count() == 7
    assert counted.source == "server"
    assert len(sent) >= 2


def test_unsliced_record_stays_true_after_own_writes(
    client: Client, app: Any, sent: RequestLog
) -> None:
    a, b = make_jobs(client, app, 2, tags={"a": "1"})
    list(client.Job.objects.filter(tags={"a": "1"}))
    c, d = make_jobs(client, app, 2, tags={"a": "1"})
    b.tags = {"a": "2"}
    b.save()
    sent.clear()
    q = client.Job.objects.filter(tags={"a": "1"}).fresh(60)
    assert ids(q) == [a.id, c.id, d.id]
    assert q.source == "cache"
    # The save was one PATCH; its row (whose new stamp the server did not send) is read once,
    # by id, before the mirror answers with it. Then the record answers on its own.
    assert [method for method, _ in sent.calls] == ["GET"]
    sent.clear()
    again = client.Job.objects.filter(tags={"a": "1"}).fresh(60)
    assert ids(again) == [a.id, c.id, d.id] and again.source == "cache"
    assert len(sent) == 0


def test_offline_count_agrees_with_offline_rows_after_own_create(client: Client, app: Any) -> None:
    make_jobs(client, app, 2)
    assert len(list(client.Job.objects.all())) == 2  # server answer, recorded
    client.Job.objects.create(workdir="w/third", app_id=app.id)
    assert len(list(client.Job.objects.offline())) == 3
    assert client.Job.objects.offline().count() == 3


def test_fresh_count_is_current_after_own_create(client: Client, app: Any) -> None:
    make_jobs(client, app, 2)
    list(client.Job.objects.all())
    client.Job.objects.create(workdir="w/third", app_id=app.id)
    assert client.Job.objects.fresh(60).count() == 3
    assert client.Job.objects.online().count() == 3


def test_auto_count_after_pull_is_current_after_own_create(client: Client, app: Any) -> None:
    make_jobs(client, app, 2)
    client.pull()
    list(client.Job.objects.online())
    client.Job.objects.create(workdir="w/third", app_id=app.id)
    q = client.Job.objects.all()
    assert q.count() == 3
    assert q.source == "cache"
    assert len(list(client.Job.objects.all())) == 3


def test_fresh_job_count_is_current_after_cascading_delete(
    client: Client, site: Any, app: Any, sent: RequestLog
) -> None:
    make_jobs(client, app, 3)
    assert client.Job.objects.fresh(60).count() == 3
    app.delete()
    assert held_count(client.Job.objects.all()) == 0
    assert client.Job.objects.fresh(60).count() == 0
    assert client.Job.objects.online().count() == 0


def test_server_answer_settles_mirror_rows_it_left_out(
    client: Client, user: User, app: Any, tmp_path: Path
) -> None:
    a, b, c = make_jobs(client, app, 3, tags={"a": "1"})
    with another_client(user, tmp_path / "other") as other:
        moved = other.Job.objects.get(id=b.id)
        moved.tags = {"a": "2"}
        moved.save()
        other.Job.objects.get(id=c.id).delete()
    assert ids(client.Job.objects.filter(tags={"a": "1"})) == [a.id]
    assert ids(client.Job.objects.filter(tags={"a": "1"}).offline()) == [a.id]
    assert ids(held(client.Job.objects.filter(tags={"a": "2"}))) == [b.id]
    assert ids(held(client.Job.objects.all())) == [a.id, b.id]


# -- offline() and online() ------------------------------------------------------------------


def test_offline_never_sends_and_refuses_what_the_mirror_never_saw(
    client: Client, app: Any, sent: RequestLog
) -> None:
    jobs = make_jobs(client, app, 3, tags={"t": "1"})  # written through, never pulled
    sent.clear()
    for query in (
        client.Job.objects.offline(),
        client.Job.objects.filter(tags={"t": "1"}).offline(),
        client.Job.objects.offline()[1:],
        client.EventLog.objects.offline(),
        client.App.objects.offline(),
    ):
        with pytest.raises(NoEvidence, match="never pulled"):
            list(query)
        with pytest.raises(NoEvidence):
            query.count()
    with pytest.raises(NoEvidence):
        client.Job.objects.offline().first()
    with pytest.raises(NoEvidence):
        list(client.Job.objects.offline().iterator(chunk_size=2))
    with pytest.raises(NoEvidence):
        client.Job.objects.offline().get(id=10**9)
    # The objects it holds, asked for by id, are its last word on them: answered, stale.
    one = client.Job.objects.offline().get(id=jobs[2].id)
    assert (one.id, one.source, one.stale, one.as_of) == (jobs[2].id, "cache", True, None)
    by_ids = client.Job.objects.filter(id=[j.id for j in jobs]).offline()
    assert ids(by_ids) == [j.id for j in jobs]
    assert (by_ids.source, by_ids.stale, by_ids.as_of) == ("cache", True, None)
    assert client.Job.objects.filter(id=[j.id for j in jobs]).offline().count() == 3
    assert len(sent) == 0, sent.calls


def test_online_always_asks_the_server(client: Client, app: Any, sent: RequestLog) -> None:
    make_jobs(client, app, 2)
    client.pull()
    for _ in range(2):
        sent.clear()
        q = client.Job.objects.online()
        assert len(list(q)) == 2
        assert q.source == "server"
        assert len(sent) >= 1
    sent.clear()
    counted = client.Job.objects.online()
    assert counted.count() == 2
    assert counted.source == "server"
    assert len(sent) >= 1


# -- the server goes away --------------------------------------------------------------------


@pytest.fixture
def pulled(via_proxy: Client, proxy: FaultProxy) -> dict[str, Any]:
    """Data built online and pulled, then the server made unreachable."""
    c = via_proxy
    site = c.Site.objects.create(name="s", path="/projects/s")
    app = c.App.objects.create(site_id=site.id, name="A", serialized_class="t", source_code="")
    jobs = make_jobs(c, app, 5, tags={"g": "1"})
    jobs[0].state = "POSTPROCESSED"
    jobs[0].save()
    report = c.pull()
    c.gateway.max_age = 0  # AUTO must ask the server (and fail) rather than trust the pull
    proxy.set_down(True)
    return {"client": c, "jobs": jobs, "report": report, "site": site, "app": app}


def test_unreachable_server_falls_back_to_mirror_with_one_warning(
    pulled: dict[str, Any], proxy: FaultProxy, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    c: Client = pulled["client"]
    jobs = pulled["jobs"]
    job_ids = [j.id for j in jobs]
    as_of = pulled["report"].started_at
    before = proxy.stats.faults["down"]

    q = c.Job.objects.all()
    assert ids(q) == job_ids
    assert (q.source, q.stale, q.as_of) == ("cache", True, as_of)
    assert proxy.stats.faults["down"] > before  # the server really was asked

    tagged = c.Job.objects.filter(tags={"g": "1"})
    assert len(tagged) == 5
    assert (tagged.source, tagged.stale) == ("cache", True)

    finished = c.Job.objects.filter(state="JOB_FINISHED")
    assert finished.count() == 1
    assert (finished.source, finished.stale) == ("cache", True)
    assert c.Job.objects.all().count() == 5

    assert c.Job.objects.get(id=jobs[3].id).id == jobs[3].id
    assert c.Job.objects.first().id == jobs[0].id
    window = c.Job.objects.order_by("-id")[1:3]
    assert ids(window) == [jobs[3].id, jobs[2].id]
    assert window.stale is True
    assert [j.id for j in c.Job.objects.filter(tags={"g": "1"})] == job_ids
    assert bool(c.Job.objects.filter(state="STAGED_IN")) is True
    assert c.Job.objects.all()[4].id == jobs[4].id
    events = c.EventLog.objects.filter(job_id=[jobs[0].id])
    assert sorted(e.to_state for e in events) == ["JOB_FINISHED", "STAGED_IN"]
    assert events.stale is True
    assert ids(c.Site.objects.all()) == [pulled["site"].id]
    with pytest.raises(c.Job.DoesNotExist):
        c.Job.objects.get(id=10**9)
    fresh = c.Job.objects.filter(tags={"g": "1"}).fresh(0)
    assert len(fresh) == 5
    assert (fresh.source, fresh.stale) == ("cache", True)

    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]


def test_server_back_means_server_answers_again(pulled: dict[str, Any], proxy: FaultProxy) -> None:
    c: Client = pulled["client"]
    down = c.Job.objects.all()
    assert len(down) == 5
    assert down.stale is True
    proxy.set_down(False)
    while c.transport.link.down():  # reads stay off the server for the link's back-off
        time.sleep(0.05)
    up = c.Job.objects.all()
    assert len(up) == 5
    assert (up.source, up.stale) == ("server", False)


def test_unreachable_server_streaming_iterator_falls_back(pulled: dict[str, Any]) -> None:
    c: Client = pulled["client"]
    streamed = [j.id for j in c.Job.objects.all().iterator(chunk_size=2)]
    assert streamed == [j.id for j in pulled["jobs"]]


def test_online_query_raises_offline_error_when_unreachable(pulled: dict[str, Any]) -> None:
    c: Client = pulled["client"]
    job = pulled["jobs"][1]
    with pytest.raises(OfflineError, match=r"(?i)online") as info:
        list(c.Job.objects.online())
    assert "reach" in str(info.value).lower()
    with pytest.raises(OfflineError):
        c.Job.objects.online().count()
    with pytest.raises(OfflineError):
        c.Job.objects.filter(id=[job.id]).online().get()
    with pytest.raises(OfflineError):
        c.Job.objects.online().first()
    # the mirror still answers offline queries meanwhile
    assert c.Job.objects.offline().count() == 5


def test_offline_env_makes_every_query_cache_only(
    client: Client, user: User, app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    jobs = make_jobs(client, app, 4, tags={"e": "1"})
    report = client.pull()
    job_ids = [j.id for j in jobs]
    monkeypatch.setenv("BALSAM_SYNC_OFFLINE", "1")
    c = connect(user.api_root, user, tmp_path / "home")
    log = recorder(c)
    try:
        assert c.default_policy == OFFLINE
        q = c.Job.objects.all()
        assert ids(q) == job_ids
        assert (q.source, q.as_of) == ("cache", report.started_at)
        assert c.Job.objects.count() == 4
        assert c.Job.objects.filter(tags={"e": "1"}).count() == 4
        assert c.Job.objects.get(id=job_ids[2]).id == job_ids[2]
        assert c.Job.objects.first().id == job_ids[0]
        assert ids(c.Job.objects.order_by("-id")[0:2]) == job_ids[:1:-1]
        assert [j.id for j in c.Job.objects.all().iterator(chunk_size=3)] == job_ids
        assert len(list(c.EventLog.objects.all())) == 4
        assert ids(c.App.objects.all()) == [app.id]
        assert len(log) == 0, log.calls
    finally:
        c.close()


def test_offline_env_without_any_pull_refuses_and_sends_nothing(
    user: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BALSAM_SYNC_OFFLINE", "1")
    c = connect(user.api_root, user, tmp_path / "empty")
    log = recorder(c)
    try:
        with pytest.raises(NoEvidence):
            list(c.Job.objects.all())
        with pytest.raises(NoEvidence):
            c.Site.objects.count()
        assert len(log) == 0
    finally:
        c.close()


@pytest.fixture
def offline_env_client(
    client: Client, user: User, app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Client]:
    """A BALSAM_SYNC_OFFLINE=1 client over the (pulled) mirror of ``client``."""
    make_jobs(client, app, 2)
    client.pull()
    monkeypatch.setenv("BALSAM_SYNC_OFFLINE", "1")
    c = connect(user.api_root, user, tmp_path / "home")
    yield c
    c.close()


def test_offline_env_fresh_query_sends_nothing(offline_env_client: Client) -> None:
    log = recorder(offline_env_client)
    q = offline_env_client.Job.objects.all().fresh(0)
    assert len(list(q)) == 2
    assert q.source == "cache"
    assert len(log) == 0, log.calls


def test_offline_env_online_query_raises_without_sending(offline_env_client: Client) -> None:
    log = recorder(offline_env_client)
    with pytest.raises(OfflineError):
        list(offline_env_client.Job.objects.online())
    with pytest.raises(OfflineError):
        offline_env_client.Job.objects.online().count()
    assert len(log) == 0, log.calls


# -- pull ------------------------------------------------------------------------------------


def assert_mirror_matches_server(client: Client) -> None:
    online = {j.id: (j.state, j.last_update, j.batch_job_id) for j in client.Job.objects.online()}
    offline = {j.id: (j.state, j.last_update, j.batch_job_id) for j in client.Job.objects.offline()}
    assert offline == online
    online_events = {e.id: (e.job_id, e.to_state) for e in client.EventLog.objects.online()}
    offline_events = {e.id: (e.job_id, e.to_state) for e in client.EventLog.objects.offline()}
    assert offline_events == online_events


def test_first_pull_is_full_later_ones_incremental(client: Client, app: Any) -> None:
    jobs = create_one_by_one(client, app, 3)
    first = client.pull()
    assert first.full is True
    assert first.fetched["Job"] == 3
    assert first.fetched["EventLog"] == 3
    assert first.deleted["Job"] == 0
    assert_aware_utc(first.started_at)

    second = client.pull()
    assert second.full is False
    # jobs stamped within max_request_seconds of the server's clock are read again (a slow
    # request may still commit such a stamp), not duplicated, and their unchanged transfer
    # items and events are not read again
    assert second.fetched["Job"] == 3
    assert second.fetched["EventLog"] == 0
    assert second.deleted["Job"] == 0
    assert ids(client.Job.objects.offline()) == [j.id for j in jobs]
    assert client.Job.objects.offline().count() == 3
    assert client.EventLog.objects.offline().count() == 3

    again = client.pull(full=True)
    assert again.full is True
    assert again.fetched["Job"] == 3
    assert client.pull().full is False
    assert client.Job.objects.offline().count() == 3
    assert_mirror_matches_server(client)


def test_incremental_pull_brings_another_clients_changes(
    client: Client, user: User, app: Any, tmp_path: Path
) -> None:
    j1, j2, j3, j4 = create_one_by_one(client, app, 4, tags={"old": "1"})
    client.EventLog.objects.filter(job_id=[j3.id]).online().count()
    list(client.EventLog.objects.online())
    client.pull()
    with another_client(user, tmp_path / "other") as other:
        o1 = other.Job.objects.get(id=j1.id)
        o1.state = "POSTPROCESSED"
        o1.save()
        o2 = other.Job.objects.get(id=j2.id)
        o2.tags = {"new": "tag"}
        o2.save()
        other.Job.objects.get(id=j3.id).delete()
        new = other.Job.objects.create(workdir="w/elsewhere", app_id=app.id, tags={"by": "b"})
    assert client.Job.objects.offline().get(id=j1.id).state == "STAGED_IN"

    report = client.pull()
    assert report.full is False
    assert report.deleted["Job"] == 1
    assert client.Job.objects.offline().get(id=j1.id).state == "JOB_FINISHED"
    assert ids(client.Job.objects.filter(tags={"new": "tag"}).offline()) == [j2.id]
    assert ids(client.Job.objects.filter(tags={"old": "1"}).offline()) == [j1.id, j4.id]
    assert ids(client.Job.objects.offline()) == [j1.id, j2.id, j4.id, new.id]
    assert client.Job.objects.offline().get(id=new.id).state == "STAGED_IN"
    assert ids(client.Job.objects.filter(tags={"by": "b"}).offline()) == [new.id]
    j1_events = client.EventLog.objects.filter(job_id=[j1.id]).offline()
    assert sorted(e.to_state for e in j1_events) == ["JOB_FINISHED", "STAGED_IN"]
    new_events = list(client.EventLog.objects.filter(job_id=[new.id]).offline())
    assert [(e.from_state, e.to_state) for e in new_events] == [("CREATED", "STAGED_IN")]
    assert client.EventLog.objects.filter(job_id=[j3.id]).offline().count() == 0
    assert_mirror_matches_server(client)


def test_pull_finds_a_few_deletions_among_many_jobs(
    client: Client, user: User, app: Any, tmp_path: Path
) -> None:
    jobs = make_jobs(client, app, 150) + make_jobs(client, app, 150)
    client.pull()
    doomed = [jobs[0].id, jobs[149].id, jobs[150].id, jobs[299].id]
    with another_client(user, tmp_path / "other") as other:
        other.Job.objects.filter(id=doomed).online().delete()
        assert other.Job.objects.filter(id=doomed).online().count() == 0
        other.Job.objects.filter(id=[jobs[10].id]).online().update(state="POSTPROCESSED")
    report = client.pull()
    assert report.full is False
    assert report.deleted["Job"] == 4
    assert client.Job.objects.offline().count() == 296
    assert client.Job.objects.filter(id=doomed).offline().count() == 0
    assert client.Job.objects.offline().get(id=jobs[10].id).state == "JOB_FINISHED"
    assert client.EventLog.objects.filter(job_id=doomed).offline().count() == 0
    assert_mirror_matches_server(client)

    again = client.pull()
    assert again.deleted["Job"] == 0
    assert client.Job.objects.offline().count() == 296


def test_pull_detects_deletion_balanced_by_a_creation(
    client: Client, user: User, app: Any, tmp_path: Path
) -> None:
    jobs = create_one_by_one(client, app, 3)
    client.pull()
    with another_client(user, tmp_path / "other") as other:
        other.Job.objects.get(id=jobs[1].id).delete()
        new = other.Job.objects.create(workdir="w/replacement", app_id=app.id)
    report = client.pull()
    assert report.deleted["Job"] == 1
    assert ids(client.Job.objects.offline()) == [jobs[0].id, jobs[2].id, new.id]
    assert_mirror_matches_server(client)


def test_full_pull_reconciles_everything(
    client: Client, user: User, app: Any, tmp_path: Path
) -> None:
    jobs = create_one_by_one(client, app, 3)
    client.pull()
    with another_client(user, tmp_path / "other") as other:
        other.Job.objects.get(id=jobs[0].id).delete()
        o = other.Job.objects.get(id=jobs[1].id)
        o.state = "POSTPROCESSED"
        o.save()
        site2 = other.Site.objects.create(name="second", path="/second")
    report = client.pull(full=True)
    assert report.full is True
    assert report.deleted["Job"] == 1
    assert ids(client.Job.objects.offline()) == [jobs[1].id, jobs[2].id]
    assert client.Job.objects.offline().get(id=jobs[1].id).state == "JOB_FINISHED"
    assert site2.id in ids(client.Site.objects.offline())
    assert_mirror_matches_server(client)


def test_pull_keeps_an_app_another_process_wrote_during_it(
    client: Client, user: User, site: Any, app: Any, tmp_path: Path
) -> None:
    """A row written to the mirror after the pull listed the server is not taken as deleted."""
    late: list[Any] = []

    def meanwhile(resource: str, _done: int, _total: int | None) -> None:
        if resource == "App" and not late:
            late.append(
                neighbour.App.objects.create(
                    site_id=site.id, name="late", serialized_class="txt", source_code=""
                )
            )

    with another_client(user, tmp_path / "home") as neighbour:  # one mirror, like a 2nd shell
        report = client.pull(progress=meanwhile)
    assert late and report.deleted["App"] == 0
    assert [a.name for a in client.App.objects.filter(id=[late[0].id]).offline()] == ["late"]
    assert_mirror_matches_server(client)


def test_pull_keeps_a_job_that_changed_on_the_server_during_it(
    client: Client, user: User, app: Any, tmp_path: Path
) -> None:
    """A job whose last_update moved past the pull's range while it ran is refreshed, not lost."""
    jobs = create_one_by_one(client, app, 4)
    client.pull()
    changed: list[int] = []

    def meanwhile(resource: str, _done: int, _total: int | None) -> None:
        if resource == "Job" and not changed:
            other.Job.objects.filter(id=[jobs[1].id]).online().update(state="POSTPROCESSED")
            changed.append(jobs[1].id)

    with another_client(user, tmp_path / "other") as other:
        other.Job.objects.get(id=jobs[0].id).delete()  # the counts differ: the range is bisected
        other.Job.objects.filter(id=[jobs[3].id]).online().update(num_nodes=3)  # a page to pull
        report = client.pull(progress=meanwhile)
    assert changed and report.deleted["Job"] == 1
    assert ids(client.Job.objects.offline()) == [jobs[1].id, jobs[2].id, jobs[3].id]
    assert client.Job.objects.offline().get(id=jobs[1].id).state == "JOB_FINISHED"
    assert_mirror_matches_server(client)


def test_prefetch_thread_ends_when_the_pull_stops_early() -> None:
    """A pull whose write fails stops reading pages; the fetching thread must not hang on."""
    produced: list[int] = []

    def pages() -> Iterator[list[dict[str, Any]]]:
        for i in range(100):
            produced.append(i)
            yield [{"id": i}]

    before = {t for t in threading.enumerate() if t.name == "balsam-sync-prefetch"}
    reader = prefetched(pages())
    assert next(reader) == [{"id": 0}]
    reader.close()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        alive = {t for t in threading.enumerate() if t.name == "balsam-sync-prefetch"} - before
        if not alive:
            break
        time.sleep(0.05)
    assert not alive
    assert len(produced) <= 3  # it stopped fetching instead of reading every page


def test_the_read_plan_follows_policy_coverage_and_clock() -> None:
    now = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
    ago = now - timedelta(seconds=10)
    assert plan_read(OFFLINE, None, now, 30).route is Route.MIRROR
    assert plan_read(ONLINE, ago, now, 30).route is Route.SERVER
    cached = plan_read(AUTO, ago, now, 30)
    assert (cached.route, cached.as_of) == (Route.CACHED, ago)
    assert "10.0 s old" in cached.why  # what the DEBUG line of the read says
    assert plan_read(AUTO, ago, now, 5).route is Route.SERVER  # older than max_age
    assert plan_read(AUTO, None, now, 30).route is Route.SERVER  # never synced
    assert plan_read(fresh(60), ago, now, 5).route is Route.CACHED  # its own max_age
    assert plan_read(fresh(0), now, now, 30).route is Route.SERVER  # fresh(0): the server
    ahead = now + timedelta(seconds=1)  # stamped by a clock that was set back since
    assert plan_read(AUTO, ahead, now, 30).route is Route.SERVER
