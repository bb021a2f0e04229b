"""Where a read is answered, and why: the read plan, without a server.

The plan is pure (``freshness.plan_read``: the policy, the evidence the mirror holds and the
clock decide). The client-level tests use a client whose server refuses every connection
(``unreachable``) and a mirror told of a pull through its front door: a read the plan sends
to the server is seen trying (the request hook), then falls back to the mirror, marked stale.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone

import pytest

from balsam_sync import fresh
from balsam_sync.client import Client
from balsam_sync.errors import OfflineError
from balsam_sync.freshness import (
    AUTO,
    LATEST,
    OFFLINE,
    ONLINE,
    USE_CLIENT_DEFAULT,
    Route,
    choose,
    plan_read,
)
from tests.conftest import RequestLog
from tests.server_rows import server_row

NOW = datetime(2025, 5, 1, 12, 0, 0, tzinfo=timezone.utc)


def ago(seconds: float) -> datetime:
    return NOW - timedelta(seconds=seconds)


# -- the plan --------------------------------------------------------------------------------


def test_offline_reads_the_mirror_and_online_the_server_whatever_the_evidence() -> None:
    assert plan_read(OFFLINE, None, NOW, 30).route is Route.MIRROR
    assert plan_read(ONLINE, ago(1), NOW, 30).route is Route.SERVER


def test_auto_answers_from_a_full_sync_within_max_age() -> None:
    plan = plan_read(AUTO, ago(3.2), NOW, 30)
    assert plan.route is Route.CACHED and plan.as_of == ago(3.2)
    assert plan.why == "policy auto: full sync 3.2 s old (max_age 30 s)"


@pytest.mark.parametrize(("age", "route"), [(29.9, Route.CACHED), (30, Route.CACHED)])
def test_max_age_is_inclusive(age: float, route: Route) -> None:
    assert plan_read(AUTO, ago(age), NOW, 30).route is route


def test_older_evidence_or_none_sends_the_read_to_the_server_and_says_why() -> None:
    old = plan_read(AUTO, ago(31), NOW, 30)
    assert old.route is Route.SERVER and "31.0 s old > max_age 30 s" in old.why
    none = plan_read(AUTO, None, NOW, 30)
    assert none.route is Route.SERVER and none.why == "policy auto: the mirror has no full sync"


def test_fresh_takes_its_own_max_age_and_needs_a_recorded_answer() -> None:
    assert plan_read(fresh(5), ago(4), NOW, 30).route is Route.CACHED
    plan = plan_read(fresh(5), ago(6), NOW, 30)
    assert plan.route is Route.SERVER and "recorded answer" in plan.why


def test_evidence_stamped_ahead_of_the_clock_is_never_fresh() -> None:
    """This machine's clock was set back since the stamp was written."""
    assert plan_read(AUTO, NOW + timedelta(seconds=5), NOW, 30).route is Route.SERVER


def test_max_age_zero_always_asks_the_server() -> None:
    assert plan_read(fresh(0), NOW, NOW, 30).route is Route.SERVER
    assert plan_read(AUTO, NOW, NOW, 0).route is Route.SERVER


def test_a_read_naming_objects_asks_the_server_unless_the_query_chose() -> None:
    assert choose(AUTO, USE_CLIENT_DEFAULT, offline=False, latest=True) == LATEST
    assert choose(AUTO, fresh(60), offline=False, latest=True) == fresh(60)
    assert choose(AUTO, USE_CLIENT_DEFAULT, offline=False, latest=False) == AUTO


def test_offline_mode_makes_every_read_a_mirror_read_and_refuses_online() -> None:
    assert choose(AUTO, fresh(60), offline=True, latest=True) == OFFLINE
    with pytest.raises(OfflineError, match="online"):
        choose(AUTO, ONLINE, offline=True, latest=False)


def test_a_negative_max_age_is_refused() -> None:
    with pytest.raises(ValueError, match="negative"):
        fresh(-1)


# -- the plan followed by a client -----------------------------------------------------------


@pytest.fixture
def pulled(unreachable: Client, unreachable_sent: RequestLog) -> Client:
    """The unreachable client's mirror holds two jobs, as a pull that just finished left it."""
    mirror = unreachable.mirror
    mirror.server_rows("Site", [server_row("Site", id=1)])
    mirror.server_rows("App", [server_row("App", id=2, site_id=1)])
    mirror.server_rows("Job", [server_row("Job", id=i, app_id=2) for i in (3, 4)])
    mirror.pull_done(datetime.now(timezone.utc), None, full=False, marks_checked=False)
    assert unreachable_sent.calls == []
    return unreachable


def test_a_fresh_pull_answers_without_a_request(
    pulled: Client, unreachable_sent: RequestLog
) -> None:
    q = pulled.Job.objects.all()
    assert [j.id for j in q] == [3, 4]
    assert (q.source, q.stale) == ("cache", False)
    assert pulled.Job.objects.count() == 2
    assert unreachable_sent.calls == []


def test_an_old_pull_asks_the_server_then_answers_stale_from_the_mirror_with_one_warning(
    pulled: Client, unreachable_sent: RequestLog, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="balsam_sync.gateway")
    pulled.gateway.max_age = 0
    q = pulled.Job.objects.all()
    assert [j.id for j in q] == [3, 4]
    assert (q.source, q.stale) == ("cache", True)
    assert [m for m, _ in unreachable_sent.calls] == ["GET"]
    assert [j.id for j in pulled.Job.objects.filter(id=[3])] == [3]  # the link is known down
    assert len(unreachable_sent) == 1
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_get_asks_the_server_even_after_a_fresh_pull(
    pulled: Client, unreachable_sent: RequestLog
) -> None:
    job = pulled.Job.objects.get(id=3)
    assert (job.id, job.source, job.stale) == (3, "cache", True)
    assert len(unreachable_sent) == 1


def test_offline_and_online_reads_follow_their_policy(
    pulled: Client, unreachable_sent: RequestLog
) -> None:
    pulled.gateway.max_age = 0
    assert pulled.Job.objects.offline().count() == 2
    assert unreachable_sent.calls == []
    with pytest.raises(OfflineError, match="online"):
        pulled.Job.objects.online().count()
    assert len(unreachable_sent) == 1


def test_every_read_says_at_debug_where_it_was_answered_and_why(
    pulled: Client, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="balsam_sync.gateway")
    list(pulled.Job.objects.filter(id=[3]))
    pulled.gateway.max_age = 0
    list(pulled.Job.objects.filter(id=[4]))
    lines = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(lines) == 2, lines
    assert "mirror (policy auto: full sync" in lines[0]
    assert "mirror, stale (the server could not be reached" in lines[1]
