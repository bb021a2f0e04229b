"""What balsam_sync leaves on disk is private, each mirror has its own daemon log, the last
error is the last sync's, and ``daemon --once`` says when its round failed."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.cache import EntryState, companion
from balsam_sync.testing.faultproxy import FaultProxy
from tests.clienv import Run, queue_offline
from tests.conftest import User, register_user


def modes(home: Path) -> dict[str, int]:
    found = {str(home): stat.S_IMODE(home.stat().st_mode)}
    found.update({str(p): stat.S_IMODE(p.stat().st_mode) for p in home.rglob("*")})
    return found


def test_everything_written_is_private_and_each_mirror_has_its_own_log(
    env_user: User, env_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    saved = os.umask(0o022)  # the usual umask: files would be 0644 if nothing took care
    try:
        queue_offline(monkeypatch, env_app, 2).close()
        run = Run(env_user.token)
        run("daemon", "--once")
        run("salvage", "--force")
        second = register_user(env_user.api_root, "files2")
        monkeypatch.setenv("BALSAM_SYNC_TOKEN", second.token)
        Run(second.token)("daemon", "--once")
        still_open = balsam_sync.connect(env_user.api_root, env_user.token, home=str(home))
        still_open.Job.objects.offline().count()  # its WAL and shared-memory files exist now
        found = modes(home)
        still_open.close()
    finally:
        os.umask(saved)
    assert {p: oct(m) for p, m in found.items() if Path(p).is_dir() and m != 0o700} == {}
    assert {p: oct(m) for p, m in found.items() if Path(p).is_file() and m != 0o600} == {}
    names = [Path(p).name for p in found]
    assert any(n.endswith("-wal") for n in names) and any(n.endswith("-shm") for n in names)
    assert any(".damaged-" in n for n in names) and any(n.endswith(".lock") for n in names)
    logs = {n.removesuffix(".daemon.log") for n in names if n.endswith(".daemon.log")}
    mirrors = {companion(Path(n), "").name for n in names if n.endswith(".sqlite3")}
    assert len(logs) == 2 and logs == mirrors  # one log per mirror, named after it


def test_last_error_shows_a_settling_failure_and_clears_on_success(
    env_user: User, env_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FaultProxy(env_user.api_root) as proxy:
        monkeypatch.setenv("BALSAM_SYNC_API_ROOT", proxy.url)
        # A create that may have reached the server is resent only after this (README).
        monkeypatch.setenv("BALSAM_SYNC_MAX_REQUEST_SECONDS", "2")
        queued = queue_offline(monkeypatch, env_app, 1)
        (entry,) = queued.mirror.queued([EntryState.PENDING])
        queued.mirror.sending([entry.seq], marker="f" * 32)  # sent, reply lost
        queued.close()
        run = Run(env_user.token)
        proxy.set_down(True)
        pushed = run("push", code=5)  # 5: the server cannot be reached
        shown = run("status", "--offline").stdout
        assert "last error:       -" not in shown, (pushed.output, pushed.stderr, shown)
        run("daemon", "--once", code=5)  # its round failed: not a success
        proxy.set_down(False)
        assert run("push").stdout.startswith("sent 1,")
        assert "last error:       -" in run("status", "--offline").stdout


def test_daemon_once_exits_5_when_it_cannot_reach_the_server(
    env_user: User, env_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FaultProxy(env_user.api_root) as proxy:
        monkeypatch.setenv("BALSAM_SYNC_API_ROOT", proxy.url)
        # A create that may have reached the server is resent only after this (README).
        monkeypatch.setenv("BALSAM_SYNC_MAX_REQUEST_SECONDS", "2")
        queue_offline(monkeypatch, env_app, 1).close()
        proxy.set_down(True)
        out = Run(env_user.token)("daemon", "--once", code=5)
        assert "one round done: 1 pending" in out.stdout
        assert f"error: cannot reach {proxy.url}" in out.stderr
        proxy.set_down(False)
        assert "one round done: 0 pending" in Run(env_user.token)("daemon", "--once").stdout
