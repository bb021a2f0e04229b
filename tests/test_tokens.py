"""Tokens as long-running processes need them, and a server that cannot be reached said so.

``push``, ``pull``, ``status`` and ``daemon`` exit 4 on a refused token, and a refused token
creates no mirror. A daemon whose token the server refuses pauses sending (its log and
``status`` say so), takes up the new token ``balsam-sync login`` writes to client.yml, and
delivers what was queued, without a restart. A server that cannot be reached (or a URL where
no Balsam server answers) is "cannot reach <scheme://host:port>", exit 5, never "not logged
in".
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.client import Client
from balsam_sync.config import write_client_yml
from balsam_sync.testing.faultproxy import FaultProxy
from tests.clienv import Run, make_app, queue_offline, start_daemon, stop_daemon, wait_for
from tests.conftest import PASSWORD, User, register_user, server_jobs

ENV_NAMES = (
    "BALSAM_SYNC_API_ROOT",
    "BALSAM_SYNC_TOKEN",
    "BALSAM_SYNC_HOME",
    "BALSAM_CLIENT_PATH",
    "BALSAM_SYNC_OFFLINE",
)


def forged(token: str) -> str:
    """The same claims (the same user, the same mirror) with a signature the server refuses."""
    return token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A shell whose settings come from client.yml (no token in the environment)."""
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BALSAM_SYNC_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("BALSAM_CLIENT_PATH", str(tmp_path / "etc" / "client.yml"))
    return tmp_path / "home"


def settings_file() -> Path:
    return Path(os.environ["BALSAM_CLIENT_PATH"])


def login_file(api_root: str, token: str) -> None:
    write_client_yml(settings_file(), {"api_root": api_root, "token": token})


def queue(user: User, monkeypatch: pytest.MonkeyPatch, n: int) -> Any:
    """Queue ``n`` job creates in the mirror of ``user`` (nothing sent); return their App."""
    login_file(user.api_root, user.token)
    other = balsam_sync.connect(user.api_root, user.token, home=str(settings_file().parent / "x"))
    app = make_app(other)
    other.close()
    queue_offline(monkeypatch, app, n, prefix="tok").close()
    return app


def mirrors(home: Path) -> list[Path]:
    return sorted((home / "mirrors").glob("*.sqlite3")) if (home / "mirrors").exists() else []


def test_a_refused_token_exits_4_in_push_pull_status_andstart_daemon(
    user: User, home: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    queue(user, monkeypatch, 2)
    bad = forged(user.token)
    login_file(user.api_root, bad)
    run = Run(user.token, bad)
    assert "log in again" in run("push", code=4).stderr
    assert "log in" in run("pull", code=4).stderr
    assert "refused" in run("status", code=4).stderr
    assert (
        "refused" in run("daemon", "--once", "--log-file", str(tmp_path / "d.log"), code=4).stderr
    )
    assert json.loads(run("status", "--offline", "--json").stdout)["pending"] == 2  # all kept
    assert server_jobs(user) == []


@pytest.mark.parametrize("command", ["push", "pull", "daemon"])
def test_a_garbage_token_creates_no_mirror(
    user: User, home: Path, command: str, tmp_path: Path
) -> None:
    login_file(user.api_root, "garbage-token")
    args = (
        [command, "--once", "--log-file", str(tmp_path / "d.log")]
        if command == "daemon"
        else [command]
    )
    Run(user.token, "garbage-token")(*args, code=4)
    assert mirrors(home) == []


def test_an_unreachable_server_is_cannot_reach_exit_5(
    user: User, home: Path, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    login_file(url, user.token)
    run = Run(user.token)
    for args in (
        ["push"],
        ["pull"],
        ["status"],
        ["daemon", "--once", "--log-file", str(tmp_path / "d.log")],
    ):
        err = run(*args, code=5).stderr
        assert f"cannot reach {url}" in err and "log in" not in err, (args, err)
    login = run("login", "--url", url, "--username", "x", "--password-stdin", input="pw\n", code=5)
    assert f"cannot reach {url}" in login.stderr


def test_a_url_where_no_balsam_server_answers_is_cannot_reach(
    user: User, home: Path, tmp_path: Path
) -> None:
    mistyped = user.api_root + "/api"
    login_file(mistyped, user.token)
    run = Run(user.token)
    for args in (["pull"], ["status"]):
        err = run(*args, code=5).stderr
        assert f"cannot reach a Balsam server at {mistyped}" in err, (args, err)
    login = run(
        "login", "--url", mistyped, "--username", "x", "--password-stdin", input="pw\n", code=5
    )
    assert f"cannot reach a Balsam server at {mistyped}" in login.stderr


def test_no_token_for_an_unreachable_url_is_cannot_reach_not_not_logged_in(
    user: User, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    login_file(user.api_root, user.token)  # logged in, to the right server
    typo = f"http://127.0.0.1:{closed_port()}"
    monkeypatch.setenv("BALSAM_SYNC_API_ROOT", typo)  # ... but a mistyped URL is used
    err = Run(user.token)("push", code=5).stderr
    assert f"cannot reach {typo}" in err and "not logged in" not in err
    monkeypatch.setenv("BALSAM_SYNC_API_ROOT", user.api_root + "/")  # the same server, spelled
    Run(user.token)("push")  # differently: its token applies
    settings_file().unlink()
    err = Run(user.token)("push", code=4).stderr  # a server that answers, and no token
    assert "not logged in" in err


# -- the daemon: pause on 401, resume with a new token ---------------------------------------


def _status() -> dict[str, Any]:
    out = Run()("status", "--offline", "--json")
    found: dict[str, Any] = json.loads(out.stdout)
    return found


def test_the_daemon_pauses_on_a_refused_token_and_resumes_after_login(
    user: User, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FaultProxy(user.api_root) as proxy:
        queue(User(proxy.url, user.username, user.password, user.token), monkeypatch, 3)
        bad = forged(user.token)
        login_file(proxy.url, bad)
        log = tmp_path / "daemon.log"
        proc = start_daemon(log, "--interval", "0.2")
        try:
            wait_for(lambda: _status()["paused_for_auth"] is not None, 30, "the pause")
            wait_for(lambda: log.exists() and "paused" in log.read_text(), 10, "the log line")
            assert "paused" in Run()("status", "--offline").stdout
            sent = proxy.stats.requests
            rounds = log.read_text().count("round ")
            wait_for(lambda: log.read_text().count("round ") >= rounds + 5, 30, "five rounds")
            assert proxy.stats.requests == sent  # paused: the refused token is not sent again
            assert server_jobs(user) == []

            Run(user.token)(
                "login",
                "--url",
                proxy.url,
                "--username",
                user.username,
                "--password-stdin",
                input=f"{PASSWORD}\n",
            )
            wait_for(lambda: len(server_jobs(user)) == 3, 30, "the queued jobs")
            wait_for(lambda: _status()["pending"] == 0, 30, "an empty queue")
            assert _status()["paused_for_auth"] is None
            assert "resum" in log.read_text()
            assert proc.poll() is None  # never restarted
        finally:
            code = stop_daemon(proc)
    assert code == 0
    workdirs = [j["workdir"] for j in server_jobs(user)]
    assert len(workdirs) == len(set(workdirs)) == 3  # delivered, once each
    text = log.read_text()
    assert bad not in text and user.token not in text


def test_a_daemon_stopped_while_paused_exits_4(
    user: User, home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue(user, monkeypatch, 1)
    login_file(user.api_root, forged(user.token))
    proc = start_daemon(tmp_path / "d.log", "--interval", "0.2")
    try:
        wait_for(lambda: _status()["paused_for_auth"] is not None, 30, "the pause")
    finally:
        code = stop_daemon(proc)
    assert code == 4


def test_a_new_token_of_another_user_is_not_taken_up(
    user: User, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    bad = forged(user.token)
    login_file(user.api_root, bad)
    client: Client = balsam_sync.connect()
    try:
        assert client.reload_token() is False  # nothing new
        stranger = register_user(user.api_root, "tok-other")
        login_file(user.api_root, stranger.token)
        caplog.set_level(logging.WARNING)
        assert client.reload_token() is False  # the mirror and its queue are another user's
        assert "another user" in caplog.text and stranger.username in caplog.text
        login_file(user.api_root, user.token)
        assert client.reload_token() is True
        assert client.Site.objects.online().count() == 0  # the new token is the one sent
    finally:
        client.close()
