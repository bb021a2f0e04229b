"""``balsam-sync daemon`` against the real server: one round, one per mirror, a clean SIGTERM
that loses and duplicates nothing, and patience while the server is unreachable.

Long-running daemons are real subprocesses (``python -m balsam_sync.cli daemon``) so that
signals and the per-mirror lock behave as in production.
"""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import balsam_sync
from balsam_sync.cli import main
from balsam_sync.client import Client
from balsam_sync.testing.faultproxy import FaultProxy
from tests.clienv import start_daemon, stop_daemon, wait_for
from tests.conftest import User


def use_env(monkeypatch: pytest.MonkeyPatch, api_root: str, token: str, home: Path) -> None:
    monkeypatch.setenv("BALSAM_SYNC_API_ROOT", api_root)
    monkeypatch.setenv("BALSAM_SYNC_TOKEN", token)
    monkeypatch.setenv("BALSAM_SYNC_HOME", str(home))
    monkeypatch.setenv("BALSAM_CLIENT_PATH", str(home / "client.yml"))
    monkeypatch.delenv("BALSAM_SYNC_OFFLINE", raising=False)


def queue_offline(monkeypatch: pytest.MonkeyPatch, app_id: int, n: int) -> list[str]:
    """Queue ``n`` job creates in the env's mirror (nothing sent); return their workdirs."""
    monkeypatch.setenv("BALSAM_SYNC_OFFLINE", "1")
    c = balsam_sync.connect()
    monkeypatch.delenv("BALSAM_SYNC_OFFLINE")
    try:
        jobs = [c.Job(workdir=f"d/{i:05d}", app_id=app_id) for i in range(n)]
        c.Job.objects.bulk_create(jobs)
        assert c.status(check_server=False).pending == n
    finally:
        c.close()
    return [f"d/{i:05d}" for i in range(n)]


def invoke(*args: str) -> Result:
    result = CliRunner().invoke(main, list(args))
    assert "Traceback" not in result.output + result.stderr
    return result


def logged(log: Path, text: str) -> Callable[[], bool]:
    return lambda: log.exists() and text in log.read_text()


def test_daemon_once_pushes_and_pulls(
    env_user: User, elsewhere: Client, env_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_offline(monkeypatch, env_app.id, 2)
    made_elsewhere = elsewhere.Job.objects.create(workdir="elsewhere", app_id=env_app.id)
    handlers = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    log = tmp_path / "once.log"
    result = invoke("daemon", "--once", "--log-file", str(log))
    assert result.exit_code == 0, result.output
    assert "one round done: 0 pending, 0 dead letters" in result.stdout
    assert (signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)) == handlers
    assert elsewhere.Job.objects.online().count() == 3
    assert "round 1: sent 2, dead 0, pulled " in log.read_text()
    jobs = invoke("jobs", "--workdir", "elsewhere")  # pulled into the mirror
    assert jobs.stdout.splitlines()[1].split()[0] == str(made_elsewhere.id)
    assert invoke("status", "--json", "--offline").stdout.count('"last_pull": "20') == 1
    default_log = invoke("daemon", "--once")
    assert "daemon.log" in default_log.stderr


def test_second_daemon_on_the_same_mirror_exits_3(
    env_user: User, env_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "first.log"
    first = start_daemon(log, "--interval", "0.2")
    try:
        wait_for(logged(log, "round 1:"), 20, "the first daemon's first round")
        second = invoke("daemon", "--once", "--log-file", str(tmp_path / "second.log"))
        assert second.exit_code == 3
        assert second.stderr.strip().splitlines()[-1].startswith("error: a daemon already syncs")
        assert first.poll() is None
    finally:
        assert stop_daemon(first) == 0


def test_sigterm_mid_batch_exits_0_and_loses_nothing(
    env_user: User, elsewhere: Client, env_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workdirs = queue_offline(monkeypatch, env_app.id, 3000)
    probe = balsam_sync.connect()  # reads the daemon's mirror from this process
    log = tmp_path / "daemon.log"
    proc = start_daemon(log, "--interval", "0.2", "--batch-size", "100")
    try:
        wait_for(lambda: probe.status(check_server=False).pending <= 2800, 30, "two batches")
    finally:
        assert stop_daemon(proc) == 0
    left = probe.status(check_server=False).pending
    probe.close()
    assert "stop requested" in log.read_text() and env_user.token not in log.read_text()
    assert 0 < left < 3000 and left % 100 == 0  # whole batches only: none was cut in half

    pushed = invoke("push")
    assert pushed.exit_code == 0, pushed.output
    on_server = [str(j.workdir) for j in elsewhere.Job.objects.online()]
    assert len(on_server) == 3000
    assert sorted(on_server) == workdirs


def test_daemon_waits_out_an_unreachable_server(
    env_user: User, elsewhere: Client, env_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FaultProxy(env_user.api_root) as proxy:
        proxy.set_down(True)
        use_env(monkeypatch, proxy.url, env_user.token, tmp_path / "via-proxy")
        # The down proxy resets connections it accepted, so the first POST may have arrived:
        # it is only sent again once it can no longer commit (outcomes.py).
        monkeypatch.setenv("BALSAM_SYNC_MAX_REQUEST_SECONDS", "3")
        queue_offline(monkeypatch, env_app.id, 5)
        log = tmp_path / "down.log"
        proc = start_daemon(log, "--interval", "0.2", "--max-backoff", "0.5")
        try:
            wait_for(logged(log, "round 2:"), 30, "two rounds while the server is down")
            assert proc.poll() is None
            assert elsewhere.Job.objects.online().count() == 0
            proxy.set_down(False)
            wait_for(lambda: elsewhere.Job.objects.online().count() == 5, 30, "the delivery")
            wait_for(logged(log, "sent 5"), 10, "the round that sent the jobs")
        finally:
            assert stop_daemon(proc) == 0
    assert "error: " in log.read_text() and env_user.token not in log.read_text()
