"""The ``balsam-sync`` command, run with click's CliRunner against the real Balsam server.

Every test runs as a fresh user with settings from the environment (as a user's shell would
have them); offline changes are queued by a client built with ``BALSAM_SYNC_OFFLINE=1``.
"""

from __future__ import annotations

import json
import re
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click
import pytest
import yaml

from balsam_sync.cli import duration, main
from balsam_sync.client import Client
from tests.clienv import Run, queue_offline
from tests.conftest import PASSWORD, User


def status_json(run: Run, *args: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(run("status", "--json", *args).stdout)
    return found


# -- login -----------------------------------------------------------------------------------


def test_login_writes_private_settings(env_user: User, run: Run, env_home: Path) -> None:
    out = run("login", "--username", env_user.username, "--password-stdin", input=PASSWORD + "\n")
    path = env_home / "etc" / "client.yml"
    saved = yaml.safe_load(path.read_text())
    run.secrets.append(saved["token"])
    assert saved["api_root"] == env_user.api_root
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert str(path) in out.stdout and "0600" in out.stdout
    assert "expires in 1d" in out.stdout  # the server issues 48 h tokens
    assert saved["token"] not in out.output


def test_login_with_a_wrong_password_exits_4(env_user: User, run: Run, env_home: Path) -> None:
    out = run("login", "--username", env_user.username, "--password-stdin", input="nope\n", code=4)
    assert out.stderr.strip() == (
        f"error: login as {env_user.username!r} refused: wrong username or password."
    )
    assert not (env_home / "etc" / "client.yml").exists()
    run("login", "--password-stdin", input="x\n", code=2)  # stdin is for the password only


def test_saved_login_is_used_without_env(
    env_user: User, run: Run, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("BALSAM_SYNC_TOKEN")
    out = run("status", "--offline", code=4)
    assert "not logged in" in out.stderr and "balsam-sync login" in out.stderr
    run("login", "--username", env_user.username, "--password-stdin", input=PASSWORD + "\n")
    monkeypatch.delenv("BALSAM_SYNC_API_ROOT")
    assert status_json(run)["user"] == env_user.username


# -- status and push -------------------------------------------------------------------------


def test_status_shows_pending_and_push_sends_it(
    env_user: User, run: Run, env_app: Any, elsewhere: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = status_json(run)
    assert (before["pending"], before["dead"], before["server_reachable"]) == (0, 0, True)
    assert before["user"] == env_user.username and before["last_push"] is None
    assert before["token_expired"] is False

    queue_offline(monkeypatch, env_app, 2).close()
    info = status_json(run, "--offline")
    assert (info["pending"], info["dead"], info["server_reachable"]) == (2, 0, None)
    assert info["oldest_pending_age"] >= 0
    text = run("status").stdout
    assert "pending:          2 (oldest " in text
    assert "server reachable: yes" in text and "expires in 1d" in text

    out = run("push")
    assert out.stdout.strip() == "sent 2, failed 0, dead 0, remaining 0"
    assert elsewhere.Job.objects.online().count() == 2
    after = status_json(run)
    assert after["pending"] == 0 and after["last_push"] is not None
    assert re.search(r"last push: +\d+s ago \(20", run("status").stdout)


def test_push_with_a_refused_token_says_log_in_again(
    env_user: User, run: Run, env_app: Any, elsewhere: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_offline(monkeypatch, env_app, 1).close()
    forged = env_user.token[:-6] + ("AAAAAA" if not env_user.token.endswith("AAAAAA") else "BBBBBB")
    run.secrets.append(forged)
    monkeypatch.setenv("BALSAM_SYNC_TOKEN", forged)  # same claims: same mirror, bad signature
    out = run("push", code=4)  # 4: not logged in, or the token was refused
    assert "log in again" in out.stderr
    assert status_json(run, "--offline")["pending"] == 1  # nothing is dropped
    monkeypatch.setenv("BALSAM_SYNC_TOKEN", env_user.token)
    run("push")
    assert elsewhere.Job.objects.online().count() == 1


# -- pull and jobs ---------------------------------------------------------------------------


def test_pull_then_jobs_offline_with_filters(
    run: Run, env_app: Any, elsewhere: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = [
        elsewhere.Job.objects.create(workdir=f"run/{i}", app_id=env_app.id, tags={"kind": k})
        for i, k in enumerate(["a", "a", "b"])
    ]
    made[2].state = "FAILED"
    made[2].save()
    out = run("pull")
    assert "full pull done" in out.stdout
    assert any(line.split()[:2] == ["Job", "3"] for line in out.stdout.splitlines())

    monkeypatch.setenv("BALSAM_SYNC_OFFLINE", "1")  # from here on, no request can be sent
    listed = run("jobs").stdout.splitlines()
    assert listed[0].split() == ["id", "state", "workdir", "tags", "last_update"]
    assert [line.split()[0] for line in listed[1:4]] == [str(j.id) for j in made]
    assert "bsync_op" not in "\n".join(listed)
    assert listed[-1].startswith("3 of 3 jobs, from cache as of 20")

    failed = run("jobs", "--state", "FAILED").stdout.splitlines()
    assert [line.split()[:3] for line in failed[1:-1]] == [[str(made[2].id), "FAILED", "run/2"]]
    assert failed[-1].startswith("1 of 1 jobs, from cache")
    assert run("jobs", "--tag", "kind:a", "--count").stdout == "2\n"
    assert run("jobs", "--state", "FAILED", "--state", "STAGED_IN", "--count").stdout == "3\n"
    assert run("jobs", "--workdir", "run/1", "--count").stdout == "1\n"
    page = run("jobs", "--order", "-id", "--limit", "1", "--offset", "1").stdout.splitlines()
    assert page[1].split()[0] == str(made[1].id) and page[-1].startswith("1 of 3 jobs")
    data = json.loads(run("jobs", "--json", "--tag", "kind:b").stdout)
    assert [j["id"] for j in data["jobs"]] == [made[2].id]
    assert (data["total"], data["source"]) == (1, "cache")

    bad = run("jobs", "--state", "FAILD", code=2)
    assert bad.stderr.startswith("error: ") and "FAILED" in bad.stderr  # did you mean
    assert len(bad.stderr.strip().splitlines()) == 1
    assert "ordering" in run("jobs", "--order", "bogus", code=2).stderr
    assert "key:value" in run("jobs", "--tag", "nocolon", code=2).stderr


def test_jobs_before_any_pull_says_so(run: Run) -> None:
    # The mirror never saw the account: it says so instead of answering "0 jobs".
    result = run("jobs", code=1)
    assert "never pulled" in result.output + result.stderr


# -- dead letters ----------------------------------------------------------------------------


def test_dead_letters_list_retry_discard(
    run: Run, env_app: Any, elsewhere: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    queued = queue_offline(monkeypatch, env_app, 1)
    elsewhere.App.objects.get(id=env_app.id).delete()
    out = run("push", code=1)
    assert out.stdout.strip() == "sent 0, failed 0, dead 1, remaining 0"
    assert "dead list" in out.stderr
    (letter,) = queued.dead_letters()
    queued.close()
    assert letter.status == 404 and "App" in (letter.error or "")

    listed = run("dead", "list").stdout.splitlines()
    assert listed[0].split()[:4] == ["seq", "resource", "op", "object"]
    assert listed[1].split()[:5] == [str(letter.seq), "Job", "create", str(letter.obj_id), "404"]
    assert (letter.error or "")[:40] in listed[1]
    assert status_json(run, "--offline")["dead"] == 1

    assert "queued again: 1" in run("dead", "retry", str(letter.seq)).stdout
    assert (status_json(run, "--offline")["pending"], status_json(run)["dead"]) == (1, 0)
    run("push", code=1)  # the App is still gone: refused again
    run("dead", "retry", "999999", code=1)
    run("dead", "retry", code=2)  # neither SEQ nor --all

    run("dead", "discard", "--all", input="n\n", code=1)  # declined: kept
    assert status_json(run, "--offline")["dead"] == 1
    assert "discarded: 1" in run("dead", "discard", "--all", input="y\n").stdout
    assert run("dead", "list").stdout == "no dead letters\n"
    assert "discarded: 0" in run("dead", "discard", "--all", "--yes").stdout


# -- rebuild ---------------------------------------------------------------------------------


def test_rebuild_refuses_pending_changes_then_rebuilds(
    run: Run, env_app: Any, elsewhere: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    mirror = Path(queue_offline(monkeypatch, env_app, 1).mirror.path)
    out = run("rebuild", "--yes", code=1)
    assert "not sent yet" in out.stderr and mirror.exists()
    run("push")
    run("rebuild", input="n\n", code=1)
    assert mirror.exists()
    assert "deleted" in run("rebuild", input="y\n").stdout
    assert not mirror.exists()
    run("pull")
    assert run("jobs", "--count").stdout == "1\n"


# -- help and formatting ---------------------------------------------------------------------


def _commands(group: click.Group, prefix: list[str]) -> Iterator[list[str]]:
    for name, command in group.commands.items():
        yield [*prefix, name]
        if isinstance(command, click.Group):
            yield from _commands(command, [*prefix, name])


def test_every_command_has_help(run: Run) -> None:
    names = list(_commands(main, []))
    assert {n[0] for n in names} >= {"login", "status", "push", "pull", "jobs", "dead", "daemon"}
    for words in [[], *names]:
        out = run(*words, "--help")
        assert out.stdout.startswith("Usage: ") and len(out.stdout.splitlines()) > 3, words


@pytest.mark.parametrize(
    ("seconds", "text"),
    [(0, "0s"), (59.9, "59s"), (192, "3m 12s"), (7200, "2h"), (7260, "2h 1m"), (90000, "1d 1h")],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text
