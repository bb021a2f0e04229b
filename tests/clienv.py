"""Helpers for tests of the ``balsam-sync`` command: a user's shell environment and a runner
that checks no token, password or traceback is ever printed."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

import balsam_sync
from balsam_sync.cli import main
from balsam_sync.client import Client
from tests.conftest import User


def use_env(monkeypatch: pytest.MonkeyPatch, user: User, home: Path) -> None:
    """Settings from the environment, as a user's shell would have them."""
    monkeypatch.setenv("BALSAM_SYNC_API_ROOT", user.api_root)
    monkeypatch.setenv("BALSAM_SYNC_TOKEN", user.token)
    monkeypatch.setenv("BALSAM_SYNC_HOME", str(home))
    monkeypatch.setenv("BALSAM_CLIENT_PATH", str(home / "etc" / "client.yml"))
    monkeypatch.delenv("BALSAM_SYNC_OFFLINE", raising=False)


class Run:
    """Invokes the command and checks it never prints a secret or a traceback."""

    def __init__(self, *secrets: str) -> None:
        self.secrets = list(secrets)

    def __call__(self, *args: str, input: str | None = None, code: int = 0) -> Result:
        result = CliRunner().invoke(main, list(args), input=input)
        text = result.output + result.stderr
        assert "Traceback" not in text
        for secret in self.secrets:
            assert secret not in text
        assert result.exit_code == code, (args, result.output, result.exception)
        if result.exception is not None:
            assert isinstance(result.exception, SystemExit), result.exception
        return result


def make_app(client: Client) -> Any:
    site = client.Site.objects.create(name=f"cli-{uuid.uuid4().hex[:6]}", path="/projects/x")
    return client.App.objects.create(
        site_id=site.id, name="Hello", serialized_class="txt", source_code="print('hi')"
    )


def queue_offline(
    monkeypatch: pytest.MonkeyPatch, app: Any, n: int, prefix: str = "q", **fields: Any
) -> Client:
    """Queue ``n`` job creates in the env's mirror without sending them; return that client."""
    monkeypatch.setenv("BALSAM_SYNC_OFFLINE", "1")
    c = balsam_sync.connect()
    monkeypatch.delenv("BALSAM_SYNC_OFFLINE")
    calls: list[str] = []
    c.transport.on_request.append(lambda method, url: calls.append(url))
    jobs = [
        c.Job(workdir=f"{prefix}/{uuid.uuid4().hex[:6]}-{i}", app_id=app.id, **fields)
        for i in range(n)
    ]
    c.Job.objects.bulk_create(jobs)
    assert calls == []
    return c


def leaf_pages(path: Path, table: str) -> list[int]:
    """The leaf pages of ``table`` in the (checkpointed, closed) mirror file at ``path``."""
    conn = sqlite3.connect(str(path))
    try:
        rows = conn.execute(
            "SELECT pageno FROM dbstat WHERE name = ? AND pagetype = 'leaf' ORDER BY pageno",
            [table],
        ).fetchall()
        (size,) = conn.execute("PRAGMA page_size").fetchone()
    finally:
        conn.close()
    assert size == 4096
    return [r[0] for r in rows]


def smash(path: Path, page: int) -> None:
    """Overwrite one 4 KiB page of ``path`` with bytes SQLite cannot take for a page."""
    assert not Path(f"{path}-wal").exists()  # closed: every change is in the file itself
    with open(path, "r+b") as fh:
        fh.seek((page - 1) * 4096)
        fh.write(b"\xff" * 4096)


def smash_header(path: Path) -> None:
    """Zero the 100-byte file header (SQLite then says "file is not a database")."""
    assert not Path(f"{path}-wal").exists()
    with open(path, "r+b") as fh:
        fh.write(b"\x00" * 100)


def start_daemon(
    log: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``balsam-sync daemon`` as its own process, logging to ``log``."""
    command = [sys.executable, "-m", "balsam_sync.cli", "daemon", "--log-file", str(log), *args]
    return subprocess.Popen(
        command,
        env=dict(os.environ) if env is None else env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def stop_daemon(proc: subprocess.Popen[bytes]) -> int:
    """Stop it as a user would (SIGTERM) and return its exit code; kill it after 30 s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    """Polls ``check`` until it holds; fails the test after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)
