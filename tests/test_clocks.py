"""A wrong clock: stale data never looks fresh, ``as_of`` never runs ahead of the server, and
only the server decides whether a token is still good.

This machine's clock is the server's (both run here), so a skewed clock is injected into the
client (``connect(clock=...)``); the server keeps the true time and says so in its replies.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import requests

import balsam_sync
from tests.conftest import FAST_RETRY, User


class Clock:
    """This machine's clock, off by ``skew``."""

    def __init__(self, skew: timedelta) -> None:
        self.skew = skew

    def __call__(self) -> datetime:
        return datetime.now(timezone.utc) + self.skew


def true_now() -> datetime:
    return datetime.now(timezone.utc)


def change_on_server(user: User, job_id: int, num_nodes: int) -> None:
    reply = requests.put(
        f"{user.api_root}/jobs/{job_id}",
        json={"num_nodes": num_nodes},
        headers={"Authorization": f"Bearer {user.token}"},
        timeout=30,
    )
    reply.raise_for_status()


def test_a_pull_made_while_the_clock_ran_ahead_is_not_fresh_once_it_is_corrected(
    user: User, tmp_path: Path, app: Any
) -> None:
    clock = Clock(timedelta(hours=1))
    c = balsam_sync.connect(
        user.api_root, user.token, home=str(tmp_path / "h"), retry=FAST_RETRY, clock=clock
    )
    try:
        job = c.Job.objects.create(workdir="clock/1", app_id=app.id, num_nodes=1)
        c.pull()
        cached = c.Job.objects.offline()
        assert [j.id for j in cached] == [job.id]
        assert cached.as_of is not None and cached.as_of <= true_now()
        online = c.Job.objects.online()
        assert len(online) == 1 and online.as_of is not None and online.as_of <= true_now()

        change_on_server(user, job.id, 5)
        clock.skew = timedelta(seconds=5)  # corrected; a few seconds went by
        fresh = c.Job.objects.filter(id=job.id).fresh(max_age=2)
        assert [j.num_nodes for j in fresh] == [5]
        assert fresh.source == "server"
        assert fresh.as_of is not None and fresh.as_of <= true_now()
    finally:
        c.close()


def test_a_future_sync_time_is_never_fresh(user: User, tmp_path: Path, app: Any) -> None:
    clock = Clock(timedelta(0))
    c = balsam_sync.connect(
        user.api_root, user.token, home=str(tmp_path / "h"), retry=FAST_RETRY, clock=clock
    )
    try:
        job = c.Job.objects.create(workdir="clock/2", app_id=app.id, num_nodes=1)
        c.pull()
        # Written by another process whose clock ran two hours ahead:
        ahead = (true_now() + timedelta(hours=2)).isoformat()
        c.mirror.store.conn.execute("UPDATE sync_state SET full_at = ?", [ahead])
        change_on_server(user, job.id, 3)
        auto = c.Job.objects.filter(id=job.id)
        assert [j.num_nodes for j in auto] == [3] and auto.source == "server"
    finally:
        c.close()


def test_a_clock_days_ahead_still_uses_a_token_the_server_accepts(
    user: User, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    clock = Clock(timedelta(days=3))  # the token (48 h) looks expired to this machine
    c = balsam_sync.connect(
        user.api_root, user.token, home=str(tmp_path / "h"), retry=FAST_RETRY, clock=clock
    )
    try:
        assert c.Site.objects.online().count() == 0
        assert c.Site.objects.online().count() == 0
        warned = [r for r in caplog.records if "seems to have expired" in r.getMessage()]
        assert len(warned) == 1
        st = c.status()
        assert st.token_accepted is True and st.server_reachable is True
        assert st.clock_skew is not None and abs(st.clock_skew - 3 * 86400) < 60
    finally:
        c.close()
