"""The server's clock: a frozen, stale or absurd ``Date`` moves neither the estimate nor the
watermark back or into the future.

The real server stack (uvicorn behind gunicorn) writes ``Date`` once per connection, so on a
keep-alive connection it is frozen; the first tests check that fact on the real server, and
that pulls on such a connection still move their watermark with real time. A lying proxy in
front of the real server then sends stale and absurd ``Date`` headers. The last tests drive the
estimate itself with made-up readings and clocks, to pin each rule of ``serverclock.py``.
"""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone
from email.utils import format_datetime, formatdate
from pathlib import Path
from typing import Any

import pytest
import requests

import balsam_sync
from balsam_sync.client import Client
from balsam_sync.remote.serverclock import (
    CONFIRM_SECONDS,
    TOLERANCE,
    ServerClock,
)
from balsam_sync.testing.faultproxy import FaultProxy
from balsam_sync.testing.rewrite import Message, Request
from tests.conftest import FAST_RETRY, User

PROXY_SEED = 5


def true_now() -> datetime:
    return datetime.now(timezone.utc)


def watermark(client: Client) -> datetime:
    text = client.mirror.watermark("Job")
    assert text is not None
    return datetime.fromisoformat(text)


def connect(api_root: str, user: User, home: Path, **settings: Any) -> Client:
    settings.setdefault("retry", FAST_RETRY)
    return balsam_sync.connect(api_root, user.token, home=str(home), **settings)


def change_on_server(user: User, job_id: int, num_nodes: int) -> None:
    reply = requests.put(
        f"{user.api_root}/jobs/{job_id}",
        json={"num_nodes": num_nodes},
        headers={"Authorization": f"Bearer {user.token}", "Connection": "close"},
        timeout=30,
    )
    reply.raise_for_status()


# -- the real server --------------------------------------------------------------------------


def test_the_real_server_freezes_date_for_the_life_of_a_keep_alive_connection(
    balsam_server: str,
) -> None:
    with requests.Session() as kept:
        first = kept.get(f"{balsam_server}/auth/how", timeout=30).headers["Date"]
        time.sleep(2.2)
        again = kept.get(f"{balsam_server}/auth/how", timeout=30).headers["Date"]
    fresh = requests.get(
        f"{balsam_server}/auth/how", headers={"Connection": "close"}, timeout=30
    ).headers["Date"]
    assert again == first  # frozen: written when the connection was opened
    assert fresh != first  # a new connection carries the time


def test_pulls_on_a_keep_alive_connection_move_the_watermark_with_real_time(
    user: User, app: Any, tmp_path: Path
) -> None:
    c = connect(user.api_root, user, tmp_path / "h", max_request_seconds=1)
    try:
        c.Job.objects.create(workdir="kept/1", app_id=app.id)  # opens the connections
        c.pull()
        time.sleep(2.5)  # the job is now older than the overlap a pull reads again
        c.pull()  # the overlap of the first pull may still hold the job: read it once more
        for _ in range(3):
            time.sleep(1.2)
            started = true_now()
            report = c.pull()
            assert report.fetched["Job"] == 0, report  # idle: nothing since the watermark
            assert watermark(c) >= started - timedelta(seconds=1 + TOLERANCE + 1)
            assert watermark(c) <= true_now() - timedelta(seconds=1)
        q = c.Job.objects.all()
        assert len(q) == 1 and q.source == "cache"
        assert q.as_of is not None and abs((true_now() - q.as_of).total_seconds()) < 30
    finally:
        c.close()


# -- a lying proxy ----------------------------------------------------------------------------


def dated(seconds: float) -> Any:
    """A rewrite that sends every reply with ``Date`` = now + ``seconds``."""

    def lie(request: Request, message: Message) -> Message | None:
        return message.with_header("date", formatdate(time.time() + seconds, usegmt=True))

    return lie


ABSURD = format_datetime(datetime(2100, 1, 1, tzinfo=timezone.utc), usegmt=True)


def absurd(request: Request, message: Message) -> Message | None:
    return message.with_header("date", ABSURD)


def test_an_absurd_date_moves_nothing_into_the_future(
    proxy: FaultProxy, user: User, app: Any, tmp_path: Path
) -> None:
    c = connect(proxy.url, user, tmp_path / "h", max_request_seconds=2)
    try:
        job = c.Job.objects.create(workdir="absurd/1", app_id=app.id)
        proxy.rewrite(absurd)  # every reply of one pull claims the year 2100
        c.pull()
        proxy.rewrite(None)
        assert watermark(c) < true_now()
        assert c.transport.server_now() < true_now() + timedelta(seconds=TOLERANCE + 1)
        q = c.Job.objects.offline()
        assert len(q) == 1 and q.as_of is not None and q.as_of <= true_now()
        change_on_server(user, job.id, 6)  # committed after that pull
        c.pull()
        assert c.Job.objects.offline().get(id=job.id).num_nodes == 6
        other = connect(proxy.url, user, tmp_path / "h")  # a fresh client on the same mirror
        change_on_server(user, job.id, 7)
        other.pull()
        assert other.Job.objects.offline().get(id=job.id).num_nodes == 7
        other.close()
    finally:
        c.close()


def test_an_absurd_date_confirmed_by_later_readings_is_still_capped(
    proxy: FaultProxy, user: User, app: Any, tmp_path: Path
) -> None:
    c = connect(proxy.url, user, tmp_path / "h", max_request_seconds=2)
    try:
        job = c.Job.objects.create(workdir="absurd/2", app_id=app.id)
        c.pull()
        proxy.rewrite(absurd)  # a relay that keeps lying, on new connections too
        deadline = time.monotonic() + CONFIRM_SECONDS * 2.5
        while time.monotonic() < deadline:
            c.pull()
            time.sleep(0.5)
        proxy.rewrite(None)
        assert watermark(c) < true_now()
        assert c.transport.server_now() < true_now() + timedelta(seconds=TOLERANCE + 1)
        change_on_server(user, job.id, 9)
        c.pull()
        assert c.Job.objects.offline().get(id=job.id).num_nodes == 9
    finally:
        c.close()


def test_a_stale_date_on_every_reply_cannot_hold_the_sync_time_back(
    proxy: FaultProxy, user: User, app: Any, tmp_path: Path
) -> None:
    proxy.rewrite(dated(-90))  # a relay (or cache) that sends a Date 90 s old
    c = connect(proxy.url, user, tmp_path / "h", max_request_seconds=2)
    try:
        c.Job.objects.create(workdir="stale/1", app_id=app.id)  # stamped by the server: now
        started = true_now()
        c.pull()
        assert watermark(c) >= started - timedelta(seconds=2 + TOLERANCE + 1)
        q = c.Job.objects.all()
        assert len(q) == 1 and q.source == "cache"
        assert q.as_of is not None and abs((true_now() - q.as_of).total_seconds()) < 30
    finally:
        c.close()


# -- the estimate's rules, with made-up readings ------------------------------------------------


class Machine:
    """This machine's wall clock and monotonic clock, moved by hand."""

    def __init__(self, wall: datetime) -> None:
        self.wall = wall
        self.mono = 1000.0

    def pass_time(self, seconds: float) -> None:
        self.wall += timedelta(seconds=seconds)
        self.mono += seconds

    def date(self, offset: float = 0.0) -> str:
        return format_datetime(self.wall + timedelta(seconds=offset), usegmt=True)


T0 = datetime(2026, 6, 1, 12, 0, 0, tzinfo=timezone.utc)


@pytest.fixture
def machine() -> Machine:
    return Machine(T0)


@pytest.fixture
def clock(machine: Machine) -> ServerClock:
    return ServerClock(lambda: machine.wall, lambda: machine.mono)


def off_by(clock: ServerClock, machine: Machine) -> float:
    return (clock.now() - machine.wall).total_seconds()


def test_only_the_first_reply_on_a_connection_is_read(clock: ServerClock, machine: Machine) -> None:
    clock.read(machine.date(-3600), 0.01, first_on_connection=False)  # a frozen Date
    assert not clock.read_yet and off_by(clock, machine) == 0
    clock.read(machine.date(), 0.01, first_on_connection=True)
    assert clock.read_yet and clock.offset == 0.0


def test_a_server_behind_this_machine_is_believed_at_the_first_reading(
    clock: ServerClock, machine: Machine
) -> None:
    clock.read(machine.date(-3600), 0.01, first_on_connection=True)
    assert -3601 <= off_by(clock, machine) <= -3599
    assert clock.offset is not None and round(clock.offset) == -3600


def test_a_single_absurd_or_stale_reading_moves_nothing(
    clock: ServerClock, machine: Machine
) -> None:
    clock.read(machine.date(), 0.01, first_on_connection=True)
    machine.pass_time(30)
    clock.read("Fri, 01 Jan 2100 00:00:00 GMT", 0.01, first_on_connection=True)
    assert abs(off_by(clock, machine)) <= TOLERANCE
    machine.pass_time(1)
    clock.read(machine.date(-600), 0.01, first_on_connection=True)  # stale, 1 s later
    assert abs(off_by(clock, machine)) <= TOLERANCE
    assert clock.wants_reading() is False  # a claim waits CONFIRM_SECONDS for a new reading


def test_a_frozen_date_never_confirms_itself(clock: ServerClock, machine: Machine) -> None:
    clock.read(machine.date(), 0.01, first_on_connection=True)
    frozen = machine.date()
    for _ in range(5):
        machine.pass_time(CONFIRM_SECONDS + 10)
        clock.read(frozen, 0.01, first_on_connection=True)  # each reading older than the last
        assert abs(off_by(clock, machine)) <= TOLERANCE


def test_a_lasting_skew_is_confirmed_but_never_runs_past_this_machine_without_rows(
    clock: ServerClock, machine: Machine
) -> None:
    clock.read(machine.date(), 0.01, first_on_connection=True)
    machine.pass_time(10)
    clock.read(machine.date(-300), 0.01, first_on_connection=True)  # behind: a claim
    assert abs(off_by(clock, machine)) <= TOLERANCE
    machine.pass_time(CONFIRM_SECONDS)
    assert clock.wants_reading()  # the transport then opens a new connection
    clock.read(machine.date(-300), 0.01, first_on_connection=True)  # confirmed
    assert -301 <= off_by(clock, machine) <= -299
    machine.pass_time(10)
    clock.read(machine.date(3600), 0.01, first_on_connection=True)  # ahead
    machine.pass_time(CONFIRM_SECONDS)
    clock.read(machine.date(3600), 0.01, first_on_connection=True)  # confirmed, but capped
    assert off_by(clock, machine) <= TOLERANCE
    clock.witness(machine.wall + timedelta(seconds=3599))  # rows the server stamped prove it
    assert 3598 <= off_by(clock, machine) <= 3601


def test_rows_the_server_stamped_hold_the_estimate_up(clock: ServerClock, machine: Machine) -> None:
    clock.read(machine.date(-90), 0.01, first_on_connection=True)  # stale, but the first
    assert off_by(clock, machine) <= -89
    clock.witness(machine.wall - timedelta(seconds=1))
    machine.pass_time(20)
    assert -2 <= off_by(clock, machine) <= 0  # carried forward with time


def test_setting_this_machines_clock_does_not_move_the_estimate(
    clock: ServerClock, machine: Machine
) -> None:
    clock.read(machine.date(), 0.01, first_on_connection=True)
    before = clock.now()
    machine.wall += timedelta(hours=1)  # the wall clock jumps; monotonic time does not
    assert abs((clock.now() - before).total_seconds()) < 0.001
    machine.wall -= timedelta(hours=2)  # set back behind the server: the estimate follows
    assert clock.now() <= machine.wall + timedelta(seconds=TOLERANCE)
