"""Busy is not down: a write waits for a server whose host is there, and only for it.

The fault proxy in front of the real server plays three links: a busy server (every reply
4 s late: its kernel accepts connections and takes requests at once), a host that is gone (a
listener whose connects are never answered) and a peer that accepts and never answers. The
first must give online calls the server's ids; the second must cost a write a couple of
seconds and mark the change as never sent; the third costs the first write ``write_wait`` and
the next ones nothing. In every case each change reaches the server exactly once.

The upper bounds on time below only prove that nothing hangs; the figures are P8's
(``scripts/bench.py --only P8``).
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.cache import EntryState
from balsam_sync.client import Client
from balsam_sync.remote.transport.network import unacknowledged
from balsam_sync.testing.faultproxy import FaultPlan, FaultProxy
from tests.conftest import User, server_jobs, via

PROXY_SEED = 11


def workdirs(user: User, prefix: str) -> Counter[str]:
    return Counter(str(r["workdir"]) for r in server_jobs(user) if r["workdir"].startswith(prefix))


def drain(client: Client) -> None:
    client.transport.link.reset()
    deadline = time.monotonic() + 60
    while client.status(check_server=False).pending:
        assert time.monotonic() < deadline, "the queue did not drain"
        client.push(lock_wait=5)


def test_a_busy_server_gets_its_writes_online_and_answers_with_its_ids(
    proxy: FaultProxy, user: User, app: Any, tmp_path: Path
) -> None:
    c = via(proxy, user, tmp_path / "h")
    proxy.plan = FaultPlan(delay=1.0, delay_seconds=4.0)  # every reply 4 s late
    job = c.Job.objects.create(workdir="busy/1", app_id=app.id)
    assert job.id is not None and job.id > 0  # the server's id, not a provisional one
    assert job.state != "CREATED"  # the server's state
    job.num_nodes = 3
    job.save()
    assert c.status(check_server=False).pending == 0
    proxy.plan = FaultPlan()
    assert workdirs(user, "busy/") == Counter({"busy/1": 1})
    assert next(r for r in server_jobs(user) if r["id"] == job.id)["num_nodes"] == 3
    c.close()


def test_a_host_that_is_gone_costs_a_write_seconds_and_the_change_was_never_sent(
    proxy: FaultProxy, user: User, app: Any, tmp_path: Path
) -> None:
    proxy.set_accepting(False)  # connects are never answered
    c = via(proxy, user, tmp_path / "h", max_request_seconds=600.0)
    started = time.monotonic()
    job = c.Job.objects.create(workdir="gone/0", app_id=app.id)
    assert time.monotonic() - started < 6, "a write waited for a host that is gone"
    assert job.id is not None and job.id < 0
    # Nothing left: the create is not "in flight" (which would wait max_request_seconds).
    assert c.mirror.queued([EntryState.IN_FLIGHT]) == []
    later = [c.Job.objects.create(workdir=f"gone/{i}", app_id=app.id) for i in range(1, 6)]
    assert all(j.id is not None and j.id < 0 for j in later)
    proxy.set_accepting(True)
    drain(c)
    assert workdirs(user, "gone/") == Counter({f"gone/{i}": 1 for i in range(6)})
    assert job.id > 0
    c.close()


def test_a_peer_that_never_answers_costs_the_first_write_write_wait_and_no_more(
    proxy: FaultProxy, user: User, app: Any, tmp_path: Path
) -> None:
    c = via(proxy, user, tmp_path / "h", write_wait=3.0)
    job = c.Job.objects.create(workdir="quiet/0", app_id=app.id)
    proxy.set_silent(True)  # accepted, taken, never answered
    started = time.monotonic()
    job.num_nodes = 2
    job.save()
    first = time.monotonic() - started
    assert c.settings.write_wait <= first < c.settings.write_wait + 3, first
    others = []
    for i in range(1, 11):
        started = time.monotonic()
        made = c.Job.objects.create(workdir=f"quiet/{i}", app_id=app.id)
        others.append(time.monotonic() - started)
        assert made.id is not None and made.id < 0
    assert max(others) < 1.0, others  # the link counts as down: queued at once
    proxy.set_silent(False)
    drain(c)
    assert workdirs(user, "quiet/") == Counter({f"quiet/{i}": 1 for i in range(11)})
    assert next(r for r in server_jobs(user) if r["id"] == job.id)["num_nodes"] == 2
    c.close()


def test_a_host_too_busy_to_read_still_acknowledges_what_it_received() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    sender = socket.create_connection(listener.getsockname())
    peer, _ = listener.accept()  # never reads: its receive window fills up
    sender.setblocking(False)
    with contextlib.suppress(BlockingIOError):
        while True:
            sender.send(b"x" * 65536)
    time.sleep(0.2)
    assert unacknowledged(sender) in (0, None)  # None: a system that does not tell
    for sock in (sender, peer, listener):
        sock.close()


def test_write_wait_is_a_setting(
    user: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = balsam_sync.connect(user.api_root, user.token, home=str(tmp_path / "a"))
    assert c.settings.write_wait == 10.0 and c.transport.write_wait == 10.0
    c.close()
    monkeypatch.setenv("BALSAM_SYNC_WRITE_WAIT", "4.5")
    c = balsam_sync.connect(user.api_root, user.token, home=str(tmp_path / "b"))
    assert c.transport.write_wait == 4.5
    c.close()
