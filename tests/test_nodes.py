"""One user, several login nodes: the queue follows the user, the mirror is each node's own.

Each "node" here has its own node-local folder (``home``, the mirror) and its own name, and
all share one home folder holding the user's queue (``queue_home``), as login nodes share an
NFS home. What each test claims is checked on the real server with plain HTTP.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.client import Client
from tests.conftest import FAST_RETRY, User, server_jobs

ROOT = Path(__file__).resolve().parents[1]


def node(user: User, tmp: Path, name: str, offline: bool = False, **settings: Any) -> Client:
    """A client on login node ``name``: its own mirror folder, the user's shared queue."""
    return balsam_sync.connect(
        user.api_root,
        user.token,
        home=str(tmp / name),
        queue_home=tmp / "shared-home",
        node=name,
        offline=offline,
        retry=FAST_RETRY,
        **settings,
    )


def node_env(user: User, tmp: Path, name: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALSAM_SYNC")}
    env.update(
        BALSAM_SYNC_API_ROOT=user.api_root,
        BALSAM_SYNC_TOKEN=user.token,
        BALSAM_SYNC_HOME=str(tmp / name),
        BALSAM_SYNC_QUEUE_HOME=str(tmp / "shared-home"),
        BALSAM_SYNC_NODE=name,
        PYTHONPATH=str(ROOT),
        **extra,
    )
    return env


def workdirs(user: User) -> Counter[str]:
    return Counter(str(r["workdir"]) for r in server_jobs(user))


def test_a_change_queued_on_one_node_is_counted_shown_and_sent_from_another(
    user: User, app: Any, tmp_path: Path
) -> None:
    b = node(user, tmp_path, "login-b")
    b.pull()  # B knows the account: its offline answers are worth something
    a = node(user, tmp_path, "login-a", offline=True)
    jobs = a.Job.objects.bulk_create(
        [a.Job(workdir=f"n/{i}", app_id=app.id, tags={"run": "n"}) for i in range(5)]
    )
    jobs[0].num_nodes = 7
    jobs[0].save()
    st = a.status(check_server=False)
    assert st.pending == 6 and st.pending_by_node == {"login-a": 6}

    b_offline = node(user, tmp_path, "login-b", offline=True)
    st = b_offline.status(check_server=False)
    assert st.pending == 6 and st.pending_by_node == {"login-a": 6}  # B sees A's queue
    shown = {str(j.workdir): j.num_nodes for j in b_offline.Job.objects.filter(tags={"run": "n"})}
    assert shown == {f"n/{i}": 7 if i == 0 else 1 for i in range(5)}  # ...and its changes
    b_offline.close()

    report = b.push()
    assert report.remaining == 0 and report.sent == 6
    rows = {r["workdir"]: r["num_nodes"] for r in server_jobs(user)}
    assert rows == {f"n/{i}": 7 if i == 0 else 1 for i in range(5)}
    assert a.status(check_server=False).pending == 0  # A learns it was sent
    assert [a.Job.objects.real_id(j.id) for j in jobs] == sorted(r["id"] for r in server_jobs(user))
    a.close()
    b.close()


def test_a_purged_node_local_mirror_loses_no_queued_change(
    user: User, app: Any, tmp_path: Path
) -> None:
    a = node(user, tmp_path, "login-a", offline=True)
    jobs = a.Job.objects.bulk_create([a.Job(workdir=f"p/{i}", app_id=app.id) for i in range(3)])
    jobs[1].delete()
    mirror = a.mirror.path
    a.close()
    shutil.rmtree(tmp_path / "login-a")  # a purge of /var/tmp, a reinstalled node
    assert not mirror.exists()

    again = node(user, tmp_path, "login-a")
    assert again.status(check_server=False).pending == 4  # rebuilt from the user's queue
    assert again.push().remaining == 0
    assert workdirs(user) == Counter({"p/0": 1, "p/2": 1})
    again.close()


PUSHER = """
import sys, time, balsam_sync
client = balsam_sync.connect()
while time.time() < float(sys.argv[1]):
    time.sleep(0.001)
report = client.push()
print("pushed", report)
"""


def test_two_nodes_pushing_at_the_same_moment_deliver_each_change_once(
    user: User, app: Any, tmp_path: Path
) -> None:
    a = node(user, tmp_path, "login-a", offline=True)
    jobs = a.Job.objects.bulk_create([a.Job(workdir=f"t/{i}", app_id=app.id) for i in range(300)])
    for job in jobs[::10]:
        job.num_nodes = 5
        job.save()
    a.close()
    at = str(time.time() + 2.0)
    pushers = [
        subprocess.Popen(
            [sys.executable, "-c", PUSHER, at],
            env=node_env(user, tmp_path, name),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for name in ("login-a", "login-b", "login-c")
    ]
    for p in pushers:
        _out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err.decode()[-2000:]
    seen = workdirs(user)
    assert seen == Counter({f"t/{i}": 1 for i in range(300)})  # none lost, none twice
    nodes = {r["workdir"]: r["num_nodes"] for r in server_jobs(user)}
    assert all(nodes[f"t/{i}"] == (5 if i % 10 == 0 else 1) for i in range(300))
    check = node(user, tmp_path, "login-b")
    st = check.status(check_server=False)
    assert st.pending == 0 and st.dead == 0
    check.close()


KILLED_PUSHER = """
import balsam_sync
balsam_sync.connect().push()
"""


def test_a_pusher_killed_mid_push_on_one_node_is_settled_from_another(
    user: User, app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = node(user, tmp_path, "login-a", offline=True)
    a.Job.objects.bulk_create([a.Job(workdir=f"k/{i}", app_id=app.id) for i in range(4000)])
    a.close()
    env = node_env(user, tmp_path, "login-a", BALSAM_SYNC_LEASE_SECONDS="4")
    pusher = subprocess.Popen([sys.executable, "-c", KILLED_PUSHER], env=env)
    queue = tmp_path / "shared-home" / "queues"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # kill it once its first POST is on its way
        if any('"in_flight"' in p.read_text() for p in queue.rglob("new/*.json")):
            break
        time.sleep(0.005)
    pusher.send_signal(signal.SIGKILL)
    pusher.wait(timeout=30)

    monkeypatch.setenv("BALSAM_SYNC_LEASE_SECONDS", "4")  # this process's journal reads it
    b = node(user, tmp_path, "login-b", max_request_seconds=10)
    report = b.push()  # waits out the lease, settles the create A may have sent, sends the rest
    assert report.remaining == 0, report
    assert workdirs(user) == Counter({f"k/{i}": 1 for i in range(4000)})
    b.close()
