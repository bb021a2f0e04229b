"""The command tells the truth: offline means offline, a refused token is said to be refused,
a closed pipe is not an error, progress has totals, and refused changes can be read in full
and corrected before they are sent again."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.cli import jobs as jobs_command
from balsam_sync.client import Client
from balsam_sync.testing.faultproxy import FaultProxy
from tests.clienv import Run, make_app, queue_offline
from tests.conftest import FAST_RETRY, User, server_jobs

ROOT = Path(__file__).resolve().parents[1]


def test_offline_mode_is_honoured_by_every_command(
    env_user: User, env_app: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FaultProxy(env_user.api_root) as proxy:
        monkeypatch.setenv("BALSAM_SYNC_API_ROOT", proxy.url)
        queue_offline(monkeypatch, env_app, 1).close()
        monkeypatch.setenv("BALSAM_SYNC_OFFLINE", "1")
        run = Run(env_user.token)
        for command in (["pull"], ["push"], ["daemon", "--once"], ["jobs", "--online"]):
            out = run(*command, code=1)
            assert "BALSAM_SYNC_OFFLINE" in out.stderr and len(out.stderr.splitlines()) == 1
        assert "BALSAM_SYNC_OFFLINE" in run("login", "--username", "x", code=1).stderr
        text = run("status").stdout
        assert "server reachable: not checked (BALSAM_SYNC_OFFLINE is set)" in text
        assert "token:            not checked (offline)" in text
        # Never pulled: the mirror holds one queued job but cannot say what the server has.
        refused = run("jobs", "--count", code=1).stderr
        assert "no evidence" in refused and len(refused.splitlines()) == 1
        assert "run `balsam-sync pull` when online" in run("salvage", "--force").stdout
        assert proxy.stats.requests == 0  # not one request left this machine
    assert server_jobs(env_user) == []


def test_status_with_a_garbage_token_asks_the_server_and_says_refused(
    env_user: User, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("BALSAM_SYNC_TOKEN", "garbage-token")
    out = Run(env_user.token, "garbage-token")("status", code=4)
    assert "server reachable: yes" in out.stdout
    assert "token:            refused by the server" in out.stdout
    assert "token refused by the server" in out.stderr
    assert not (tmp_path / "home" / "mirrors").exists() or not list(
        (tmp_path / "home" / "mirrors").glob("*.sqlite3")
    )


def _closed_pipe(*args: str) -> subprocess.CompletedProcess[bytes]:
    """Run the command with its stdout a pipe that is already closed (``| head -0``)."""
    read, write = os.pipe()
    os.close(read)
    try:
        command = [sys.executable, "-m", "balsam_sync.cli", *args]
        return subprocess.run(
            command, stdout=write, stderr=subprocess.PIPE, env=dict(os.environ), timeout=120
        )
    finally:
        os.close(write)


def test_a_closed_pipe_ends_the_command_quietly(run: Run, env_app: Any, elsewhere: Client) -> None:
    elsewhere.Job.objects.bulk_create(
        [elsewhere.Job(workdir=f"p/{i}", app_id=env_app.id) for i in range(5)]
    )
    for args in (["pull"], ["jobs"]):
        done = _closed_pipe(*args)
        assert done.stderr == b"", (args, done.stderr)
        assert done.returncode != 0  # the output was cut short, as `yes | head` is
    assert run("jobs", "--count").stdout == "5\n"  # the pull itself went through


def test_pull_progress_counts_on_across_chunks_and_knows_the_job_total(
    env_user: User, env_app: Any, elsewhere: Client, tmp_path: Path
) -> None:
    made = elsewhere.Job.objects.bulk_create(
        [elsewhere.Job(workdir=f"c/{i}", app_id=env_app.id) for i in range(620)]
    )
    c = balsam_sync.connect(
        env_user.api_root, env_user.token, home=str(tmp_path / "p"), retry=FAST_RETRY
    )
    try:
        calls: list[tuple[str, int, int | None]] = []
        c.pull(progress=lambda r, n, t: calls.append((r, n, t)))
        assert ("Job", 620, 620) in calls
        elsewhere.Job.objects.filter(id=[j.id for j in made]).update(num_nodes=2)
        calls.clear()
        c.pull(progress=lambda r, n, t: calls.append((r, n, t)))  # events in 2 chunks of ids
        events = [n for r, n, _ in calls if r == "EventLog"]
        assert events == sorted(events) and len(events) >= 2
    finally:
        c.close()


def test_progress_bars_show_on_a_terminal(env_user: User, env_app: Any, elsewhere: Client) -> None:
    elsewhere.Job.objects.bulk_create(
        [elsewhere.Job(workdir=f"t/{i}", app_id=env_app.id) for i in range(7)]
    )
    primary, secondary = os.openpty()
    try:
        command = [sys.executable, "-m", "balsam_sync.cli", "pull"]
        done = subprocess.run(
            command, stdout=subprocess.PIPE, stderr=secondary, env=dict(os.environ), timeout=120
        )
        os.close(secondary)
        shown = b""
        while chunk := _read(primary):
            shown += chunk
    finally:
        os.close(primary)
    assert done.returncode == 0
    text = shown.decode(errors="replace")
    assert "pulling Job" in text and "7/7" in text
    finished = [line for line in text.replace("\r", "\n").splitlines() if "pulling Job" in line]
    assert finished and "7/7" in finished[-1]


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # the terminal closed
        return b""


def test_login_help_and_readme_say_how_to_get_an_account(run: Run) -> None:
    text = run("login", "--help").stdout
    assert "administrators" in text and "/auth/password/register" in text
    readme = (ROOT / "README.md").read_text()
    assert "/auth/password/register" in readme and "administrators" in readme


def test_a_dead_letter_is_shown_in_full_and_corrected_before_it_is_sent(
    env_user: User, run: Run, env_app: Any, elsewhere: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue_offline(monkeypatch, env_app, 1, prefix="fixme").close()
    elsewhere.App.objects.get(id=env_app.id).delete()
    run("push", code=1)
    (letter,) = json.loads(run("dead", "list", "--json").stdout)["dead"]
    seq = letter["seq"]
    shown = run("dead", "show", str(seq)).stdout
    assert f'"app_id": {env_app.id}' in shown and "404" in shown and "fixme/" in shown
    full = json.loads(run("dead", "show", str(seq), "--json").stdout)
    assert full["payload"]["app_id"] == env_app.id and full["status"] == 404

    bad = run("dead", "edit", str(seq), "--set", "num_nodes=many", code=2)
    assert "num_nodes" in bad.stderr
    assert json.loads(run("dead", "show", str(seq), "--json").stdout)["payload"] == full["payload"]
    run("dead", "edit", str(seq), "--set", "nonsense=1", code=2)
    run("dead", "show", "999999", code=1)

    new_app = make_app(elsewhere)
    out = run("dead", "edit", str(seq), "--set", f"app_id={new_app.id}", "--retry")
    assert "queued again" in out.stdout
    assert run("push").stdout.startswith("sent 1,")
    (job,) = server_jobs(env_user)
    assert job["app_id"] == new_app.id and job["workdir"].startswith("fixme/")


def test_an_unexpected_error_is_one_line(run: Run, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any) -> Any:
        raise KeyError("surprise")

    monkeypatch.setattr(jobs_command, "_job_query", broken)
    out = run("jobs", code=1)
    assert out.stderr.startswith("error: unexpected KeyError") and len(out.stderr.splitlines()) == 1
