"""Every failure a real deployment produces ends exactly as intended on the server (R1 by hand).

Each test puts the fault proxy between a client and the real server, breaks one request on
purpose and then checks the server with plain HTTP: every change applied exactly once, nothing
lost, nothing parked as a dead letter. The outcome table in ``balsam_sync/outcomes.py`` says
what each failure means; these tests hold it to that.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync import errors
from balsam_sync.cache import Identity, open_mirror
from balsam_sync.client import Client
from balsam_sync.testing.faultproxy import FaultKind, FaultPlan, FaultProxy
from tests.conftest import QUICK_RETRY, ROOT, SERVER_SCRIPT, User, server_jobs
from tests.conftest import via as shared_via
from tests.mirror_view import held, sql


def via(proxy: FaultProxy, user: User, home: Path, **settings: Any) -> Client:
    """A client of ``user`` through ``proxy``; a request here may take up to 4 s."""
    settings.setdefault("max_request_seconds", 4.0)
    return shared_via(proxy, user, home, **settings)


@pytest.fixture
def proxied(proxy: FaultProxy, user: User, tmp_path: Path) -> Iterator[Client]:
    c = via(proxy, user, tmp_path / "proxied")
    yield c
    c.close()


def drain(client: Client, timeout: float = 30.0) -> None:
    """Push until the queue is empty (what a user or the daemon does after a failure)."""
    deadline = time.monotonic() + timeout
    while client.push().remaining:
        assert time.monotonic() < deadline, client.status(check_server=False)
        time.sleep(0.2)
    assert client.status(check_server=False).dead == 0


def workdirs(user: User, prefix: str) -> Counter[str]:
    return Counter(r["workdir"] for r in server_jobs(user) if r["workdir"].startswith(prefix))


# -- 5xx after the server committed -----------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_5xx_after_a_create_committed_leaves_each_job_once(
    status: int, proxied: Client, proxy: FaultProxy, user: User, app: Any
) -> None:
    proxy.inject(FaultKind.HTTP_5XX_AFTER, methods=["POST"], path_prefix="/jobs/", status=status)
    jobs = [proxied.Job(workdir=f"c5/{i}", app_id=app.id) for i in range(30)]
    proxied.Job.objects.bulk_create(jobs)  # the change is kept: no error for a maybe-applied POST
    drain(proxied)
    assert workdirs(user, "c5/") == Counter({f"c5/{i}": 1 for i in range(30)})
    on_server = {r["workdir"]: r["id"] for r in server_jobs(user)}
    assert [j.id for j in jobs] == [on_server[f"c5/{i}"] for i in range(30)]
    assert proxy.stats.faults["http_5xx_after"] == 1


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_5xx_after_an_update_committed_is_resent_not_buried(
    status: int, proxied: Client, proxy: FaultProxy, user: User, app: Any
) -> None:
    job = proxied.Job.objects.create(workdir="u5/1", app_id=app.id)
    proxy.inject(FaultKind.HTTP_5XX_AFTER, methods=["PATCH", "PUT"], status=status)
    job.num_nodes = 7
    job.save()
    drain(proxied)
    (row,) = [r for r in server_jobs(user) if r["workdir"] == "u5/1"]
    assert row["num_nodes"] == 7 and row["id"] == job.id
    assert proxy.stats.faults["http_5xx_after"] == 1


@pytest.mark.parametrize("status", [500, 502, 504])
def test_a_5xx_after_a_delete_committed_is_not_a_dead_letter(
    status: int, proxied: Client, proxy: FaultProxy, user: User, app: Any
) -> None:
    kept, gone = (proxied.Job.objects.create(workdir=f"d5/{i}", app_id=app.id) for i in range(2))
    proxy.inject(FaultKind.HTTP_5XX_AFTER, methods=["DELETE"], status=status)
    gone.delete()
    drain(proxied)
    assert workdirs(user, "d5/") == Counter({"d5/0": 1})
    assert [j.id for j in held(proxied.Job.objects.all())] == [kept.id]


def test_a_500_before_the_commit_is_sent_again_once(
    proxied: Client, proxy: FaultProxy, user: User, app: Any
) -> None:
    proxy.inject(FaultKind.HTTP_5XX, methods=["POST"], path_prefix="/jobs/", status=500)
    job = proxied.Job.objects.create(workdir="b5/1", app_id=app.id)  # kept, not raised
    drain(proxied)
    assert workdirs(user, "b5/") == Counter({"b5/1": 1})
    assert job.id == server_jobs(user)[0]["id"]


# -- replies that never come -------------------------------------------------------------------


@pytest.mark.parametrize("fault", ["lost_reply", "late_commit", "hang_after"])
def test_a_create_whose_reply_is_lost_exists_once(
    fault: str, proxy: FaultProxy, user: User, app: Any, tmp_path: Path
) -> None:
    """``late_commit``: the POST reaches the server after the client gave up waiting, so the
    first look for its marker finds nothing although the server is about to commit it."""
    c = via(proxy, user, tmp_path / "c", read_timeout=0.5)
    if fault == "late_commit":
        proxy.plan = FaultPlan(delay=1.0, delay_seconds=1.5, methods={"POST"}, path_prefix="/j")
    else:
        proxy.inject(FaultKind(fault), methods=["POST"], path_prefix="/jobs/")
    jobs = [c.Job(workdir=f"l/{i}", app_id=app.id) for i in range(20)]
    c.Job.objects.bulk_create(jobs)
    proxy.plan = FaultPlan()
    drain(c)
    assert workdirs(user, "l/") == Counter({f"l/{i}": 1 for i in range(20)})
    c.close()


# -- a token the server refuses ---------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def server_signed(user: User, exp: float) -> str:
    """A token for ``user`` signed by the real server's key (as a login would issue it)."""
    env = subprocess.run(
        ["bash", str(SERVER_SCRIPT), "env"], capture_output=True, text=True, check=True, cwd=ROOT
    ).stdout
    key = next(
        line.split("=", 1)[1].strip("'\"")
        for line in env.splitlines()
        if line.startswith("BALSAM_AUTH_SECRET_KEY=")
    )
    claims = json.loads(base64.urlsafe_b64decode(user.token.split(".")[1] + "=="))
    head = _b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = _b64(json.dumps({**claims, "exp": int(exp)}).encode())
    signature = hmac.new(key.encode(), f"{head}.{body}".encode(), hashlib.sha256).digest()
    return f"{head}.{body}.{_b64(signature)}"


@pytest.mark.parametrize("refusal", ["expired", "forged"])
def test_a_refused_token_during_create_leaves_nothing_then_login_and_retry_creates_once(
    refusal: str, user: User, app: Any, tmp_path: Path
) -> None:
    if refusal == "expired":
        token = server_signed(user, time.time() - 60)
    else:  # a valid-looking token whose signature the server rejects
        token = user.token.rsplit(".", 1)[0] + "." + _b64(b"not-the-signature")
    c = balsam_sync.connect(user.api_root, token, home=str(tmp_path), retry=QUICK_RETRY)
    with pytest.raises(errors.NotAuthenticated) as caught:
        c.Job.objects.create(workdir="auth/1", app_id=app.id)
    assert "outbox" not in str(caught.value)  # it says nothing is kept, because nothing is
    assert c.status(check_server=False).pending == 0
    assert held(c.Job.objects.all()) == []
    c.transport.set_token(server_signed(user, time.time() + 3600))  # logged in again
    job = c.Job.objects.create(workdir="auth/1", app_id=app.id)
    assert workdirs(user, "auth/") == Counter({"auth/1": 1})
    assert job.id == server_jobs(user)[0]["id"]
    c.close()


# -- a link that is down or silent ------------------------------------------------------------


def test_a_silent_link_costs_write_wait_once_and_loses_nothing(
    proxy: FaultProxy, user: User, app: Any, tmp_path: Path
) -> None:
    c = via(proxy, user, tmp_path / "c", retry=None, max_request_seconds=10.0, write_wait=3.0)
    job = c.Job.objects.create(workdir="s/0", app_id=app.id)
    c.pull()
    c.gateway.max_age = 0  # reads want the server
    proxy.set_silent(True)  # connections are accepted; nothing ever answers
    timings = []
    for n in range(1, 21):
        started = time.monotonic()
        job.num_nodes = n
        job.save()
        c.Job.objects.create(workdir=f"s/{n}", app_id=app.id)
        timings.append(time.monotonic() - started)
    assert timings[0] < 3.0 + 1.5, timings  # write_wait, once ...
    assert max(timings[1:]) < 0.5, timings  # ... then writes queue and return at once
    started = time.monotonic()
    q = c.Job.objects.all()
    assert len(q) == 21 and q.stale is True
    assert c.Job.objects.filter(workdir__contains="s/0").fresh(0).count() == 1
    assert time.monotonic() - started < 0.5
    for call in (lambda: c.status(), lambda: c.push()):
        started = time.monotonic()
        call()
        assert time.monotonic() - started < 4.5
    proxy.set_silent(False)
    drain(c)
    assert workdirs(user, "s/") == Counter({f"s/{n}": 1 for n in range(21)})
    assert next(r for r in server_jobs(user) if r["workdir"] == "s/0")["num_nodes"] == 20
    c.close()


def test_writes_never_wait_on_a_refused_port(user: User, app: Any, tmp_path: Path) -> None:
    with FaultProxy(user.api_root) as gone:
        port = gone.port
    c = balsam_sync.connect(f"http://127.0.0.1:{port}", user.token, home=str(tmp_path))
    started = time.monotonic()
    jobs = [c.Job.objects.create(workdir=f"r/{i}", app_id=app.id) for i in range(30)]
    assert time.monotonic() - started < 1.5
    assert all(j.id < 0 for j in jobs) and c.status(check_server=False).pending == 30
    c.close()


@pytest.mark.parametrize("status", [502, 503, 504])
def test_reads_answer_from_the_mirror_when_a_gateway_says_5xx(
    status: int, proxied: Client, proxy: FaultProxy, app: Any
) -> None:
    job = proxied.Job.objects.create(workdir="g/1", app_id=app.id)
    proxied.pull()
    proxied.gateway.max_age = 0
    proxy.plan = FaultPlan(http_5xx=1.0, status_codes=(status,), close_on_5xx=False)
    q = proxied.Job.objects.all()
    assert [j.id for j in q] == [job.id]
    assert (q.source, q.stale) == ("cache", True)
    with pytest.raises(errors.OfflineError):
        proxied.Job.objects.online().count()


def test_one_process_failing_keeps_the_others_writes_off_the_link(
    proxy: FaultProxy, user: User, app: Any, tmp_path: Path
) -> None:
    first = via(proxy, user, tmp_path / "shared")
    second = via(proxy, user, tmp_path / "shared")  # another process on the same mirror
    sent: list[str] = []
    second.transport.on_request.append(lambda method, url: sent.append(url))
    proxy.set_down(True)
    first.Job.objects.create(workdir="b/1", app_id=app.id)  # finds the server unreachable
    started = time.monotonic()
    second.Job.objects.create(workdir="b/2", app_id=app.id)
    assert time.monotonic() - started < 0.2 and sent == []
    proxy.set_down(False)
    drain(second)
    assert workdirs(user, "b/") == Counter({"b/1": 1, "b/2": 1})
    first.close()
    second.close()


# -- the daemon -------------------------------------------------------------------------------


def test_stopping_a_daemon_leaves_the_client_as_it_was(client: Client, app: Any) -> None:
    retry, replayer = client.transport.retry, client.gateway.replayer()
    batch = replayer.batch_size
    daemon = client.daemon(interval=0.01, batch_size=7)
    daemon.request_stop()
    daemon.run(max_rounds=3)
    assert client.transport.retry is retry and replayer.batch_size == batch
    client.gateway.offline = True
    client.Job.objects.create(workdir="stop/1", app_id=app.id)
    client.gateway.offline = False
    report = client.push()
    assert (report.sent, report.remaining) == (1, 0), report


def test_sigterm_stops_the_daemon_within_5_s_mid_request_on_a_silent_link(
    proxy: FaultProxy, user: User, app: Any, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    queued = via(proxy, user, home, offline=True)
    queued.Job.objects.bulk_create([queued.Job(workdir=f"t/{i}", app_id=app.id) for i in range(5)])
    queued.close()
    proxy.set_silent(True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("BALSAM_SYNC")}
    env.update(
        BALSAM_SYNC_API_ROOT=proxy.url,
        BALSAM_SYNC_TOKEN=user.token,
        BALSAM_SYNC_HOME=str(home),
        PYTHONPATH=str(ROOT),
    )
    log = tmp_path / "daemon.log"
    command = [sys.executable, "-m", "balsam_sync.cli", "daemon", "--log-file", str(log)]
    proc = subprocess.Popen(command, env=env, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while proxy.stats.faults["silent"] == 0:  # the daemon is waiting for a reply
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.02)
        time.sleep(0.2)
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        stopped_in = time.monotonic() - started
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, proc.stderr.read() if proc.stderr else ""
    assert stopped_in < 5.0


# -- the mirror is never held while the network is asked --------------------------------------


def test_no_request_starts_inside_a_mirror_transaction(
    client: Client, app: Any, user: User, tmp_path: Path
) -> None:
    parent = client.Job.objects.create(workdir="tx/parent", app_id=app.id)
    child = client.Job.objects.create(workdir="tx/child", app_id=app.id, parent_ids=[parent.id])
    doomed = client.Job.objects.create(workdir="tx/doomed", app_id=app.id)
    client.pull()
    other = balsam_sync.connect(user.api_root, user.token, home=str(tmp_path / "other"))
    other.Job.objects.filter(id=[doomed.id]).delete()
    other.close()
    inside: list[str] = []
    conn = sql(client)
    client.transport.on_request.append(
        lambda method, url: inside.append(f"{method} {url}") if conn.in_transaction else None
    )
    assert child.state == "AWAITING_PARENTS"
    assert sorted(str(j.workdir) for j in client.Job.objects.all().fresh(0)) == [
        "tx/child",
        "tx/parent",
    ]  # the mirror's copy of the deleted job was settled with the server
    parent.state = "POSTPROCESSED"  # the server finishes it and promotes the child
    parent.save()
    promoted = client.Job.objects.offline().get(id=child.id).state
    assert promoted in ("READY", "STAGED_IN"), promoted
    assert inside == []


def test_a_failed_commit_is_rolled_back(tmp_path: Path) -> None:
    mirror = open_mirror(tmp_path, Identity("http://127.0.0.1:1", "u#1"))
    store = mirror._store
    store.conn.execute("PRAGMA foreign_keys = ON")
    store.conn.execute("CREATE TABLE a (id INTEGER PRIMARY KEY)")
    store.conn.execute(
        "CREATE TABLE b (id INTEGER PRIMARY KEY, "
        "a_id INTEGER REFERENCES a(id) DEFERRABLE INITIALLY DEFERRED)"
    )
    with pytest.raises(Exception, match="FOREIGN KEY"), store.write():
        store.conn.execute("INSERT INTO b VALUES (1, 99)")  # fails only at COMMIT
    assert not store.conn.in_transaction
    with store.write():
        store.conn.execute("INSERT INTO a VALUES (1)")
    reader = sqlite3.connect(mirror.path)
    assert reader.execute("SELECT count(*) FROM a").fetchone() == (1,)  # really committed
    assert reader.execute("SELECT count(*) FROM b").fetchone() == (0,)
    reader.close()
    mirror.close()


def _locked_job(client: Client, app: Any, workdir: str) -> tuple[Any, Any]:
    """A job acquired by a running session: the server answers 204 to its DELETE but keeps it."""
    job = client.Job.objects.create(workdir=workdir, app_id=app.id)
    job.state = "PREPROCESSED"
    job.save()
    session = client.Session(app.site_id)
    session.save()
    assert [j.id for j in session.acquire_jobs(max_num_jobs=1)] == [job.id]
    return job, session


def _push_until(client: Client, done: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not done() and time.monotonic() < deadline:
        time.sleep(0.05)
        client.push()
    assert done()


def test_a_delete_the_server_keeps_is_tried_again_then_parked_with_its_reason(
    user: User, app: Any, tmp_path: Path
) -> None:
    client = balsam_sync.connect(
        user.api_root, user.token, home=str(tmp_path / "h"), max_request_seconds=0.3
    )
    job, _ = _locked_job(client, app, "kept/locked")
    job.delete()  # returns: kept once may be a request still holding the row, not a refusal
    assert client.status(check_server=False).pending == 1
    _push_until(client, lambda: client.status(check_server=False).dead == 1)
    (dead,) = client.dead_letters()
    assert dead.status == 409 and "session holds it" in (dead.error or "")
    assert [r["workdir"] for r in server_jobs(user)] == ["kept/locked"]
    client.close()


def test_a_delete_kept_for_a_while_goes_through_once_the_server_lets_go(
    user: User, app: Any, tmp_path: Path
) -> None:
    client = balsam_sync.connect(
        user.api_root, user.token, home=str(tmp_path / "h"), max_request_seconds=30.0
    )
    job, session = _locked_job(client, app, "kept/released")
    job.delete()
    assert client.status(check_server=False).pending == 1
    session.delete()  # the server releases the job
    _push_until(client, lambda: client.status(check_server=False).pending == 0)
    assert client.status(check_server=False).dead == 0
    assert server_jobs(user) == []
    client.close()
