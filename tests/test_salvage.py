"""A damaged mirror: clear errors, online reads that keep working, and a salvage that keeps
the queue (R1: nothing queued is lost short of the outbox's own pages).

Pages are damaged for real in the SQLite file of a closed mirror; whether the queued changes
arrived is checked on the real server with plain HTTP, not with the client under test.
"""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync.cache import EntryState
from balsam_sync.client import Client
from balsam_sync.errors import MirrorDamaged
from tests.clienv import Run, leaf_pages, make_app, queue_offline, smash, smash_header
from tests.conftest import FAST_RETRY, User, server_jobs


def queued(monkeypatch: pytest.MonkeyPatch, app: Any, n: int) -> tuple[Path, dict[int, str]]:
    """Queue ``n`` creates offline; return the mirror path and seq -> workdir of each."""
    c = queue_offline(monkeypatch, app, n, prefix="salvage")
    seqs = {e.seq: e.payload["workdir"] for e in c.mirror.queued([EntryState.PENDING])}
    path = c.mirror.path
    c.close()
    assert len(seqs) == n
    return path, seqs


def test_status_never_counts_a_damaged_queue_as_empty(
    env_user: User, run: Run, env_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = queued(monkeypatch, env_app, 200)
    pages = leaf_pages(path, "outbox")
    smash(path, pages[len(pages) // 2])
    client = balsam_sync.connect()
    try:
        st = client.status(check_server=False)
        # Not a count of 0: a user who trusted it would delete a mirror that holds the queue.
        assert st.pending is None and st.dead is None
        assert st.mirror_error is not None and str(path) in st.mirror_error
    finally:
        client.close()
    out = run("status", "--json", code=1)  # 1: the mirror cannot be used
    shown = json.loads(out.stdout)
    assert shown["pending"] is None and shown["mirror_error"]
    text = run("status", code=1).stdout
    assert "UNKNOWN" in text and "salvage" in text
    refused = run("rebuild", "--yes", code=1)
    assert "cannot be counted" in refused.stderr  # never deleted on the word of a broken count


def test_a_damaged_outbox_page_loses_nothing_the_users_queue_holds_it_all(
    env_user: User, run: Run, env_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, seqs = queued(monkeypatch, env_app, 60)
    pages = leaf_pages(path, "outbox")
    assert len(pages) >= 3, pages
    smash(path, pages[1])

    client = balsam_sync.connect()
    with pytest.raises(MirrorDamaged, match=re.escape(str(path))):
        client.push()
    client.close()
    assert "balsam-sync salvage" in run("push", code=1).stderr
    out = run("check", code=1)
    assert "damaged" in out.stdout and "balsam-sync salvage" in out.stderr

    out = run("salvage")  # every queued change is in the user's queue too
    assert "could NOT be recovered" not in out.stdout
    assert "recovered: 60 pending" in out.stdout and "user's queue" in out.stdout
    kept_aside = list(path.parent.glob(f"{path.name}.damaged-*"))
    assert len(kept_aside) == 1

    assert run("push").stdout.strip() == "sent 60, failed 0, dead 0, remaining 0"
    delivered = sorted(j["workdir"] for j in server_jobs(env_user))
    assert delivered == sorted(seqs.values())
    assert run("check").stdout.strip().endswith(": ok")


@pytest.mark.parametrize("damage", ["jobs table", "file header"])
def test_salvage_keeps_every_change_when_the_outbox_is_intact(
    env_user: User, run: Run, env_app: Any, monkeypatch: pytest.MonkeyPatch, damage: str
) -> None:
    path, seqs = queued(monkeypatch, env_app, 30)
    if damage == "jobs table":
        smash(path, leaf_pages(path, "jobs")[0])
    else:
        smash_header(path)

    out = run("salvage")
    assert "recovered: 30 pending, 0 in flight, 0 dead letter(s)" in out.stdout
    assert "nothing was lost" in out.stdout and "pulled again" in out.stdout
    offline_view = run("jobs", "--count").stdout.strip()
    assert offline_view == "30"  # the queued creates show again, with provisional ids
    assert run("push").stdout.strip() == "sent 30, failed 0, dead 0, remaining 0"
    assert sorted(j["workdir"] for j in server_jobs(env_user)) == sorted(seqs.values())


def test_a_damaged_mirror_names_itself_and_online_reads_still_work(
    env_user: User, env_app: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    path, _ = queued(monkeypatch, env_app, 2)
    smash_header(path)
    client = balsam_sync.connect(retry=FAST_RETRY)
    try:
        with pytest.raises(MirrorDamaged) as caught:
            client.Job.objects.offline().count()
        assert str(path) in str(caught.value) and "balsam-sync salvage" in str(caught.value)
        with pytest.raises(MirrorDamaged):
            client.Job.objects.create(workdir="nope", app_id=env_app.id)
        caplog.set_level(logging.WARNING)
        assert client.App.objects.count() == 1  # asked the server, not the broken file
        assert [a.id for a in client.App.objects.all()] == [env_app.id]
        assert [a.name for a in client.App.objects.all().iterator()] == ["Hello"]
        warnings = [r for r in caplog.records if "answering from the server" in r.getMessage()]
        assert len(warnings) == 1
        st = client.status()
        assert st.mirror_error is not None and str(path) in st.mirror_error
        assert st.server_reachable is True and st.token_accepted is True
    finally:
        client.close()


def test_rebuild_deletes_a_damaged_mirror_only_when_forced(
    run: Run, env_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = queued(monkeypatch, env_app, 2)
    smash_header(path)
    out = run("rebuild", "--yes", code=1)
    assert "salvage" in out.stderr and path.exists()
    run("rebuild", "--yes", "--force")
    assert not path.exists()
    # The new mirror was never pulled: offline it cannot say how many jobs there are.
    assert "no evidence" in run("jobs", "--count", code=1).stderr


def test_an_empty_mirror_file_is_damage_not_a_fresh_start(
    env_user: User, run: Run, env_app: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    path, _ = queued(monkeypatch, env_app, 1)
    path.write_bytes(b"")  # truncated
    out = run("jobs", code=1)
    assert "empty (0 bytes)" in out.stderr and str(path) in out.stderr
    assert path.stat().st_size == 0  # not silently re-created as an empty mirror
    assert "empty" in run("check", code=1).stdout
    out = run("salvage")
    assert "could NOT be recovered" not in out.stdout and "recovered: 1 pending" in out.stdout
    assert run("jobs", "--count").stdout == "1\n"  # the queued create, from the user's queue


def test_salvage_of_a_sound_mirror_needs_force_and_keeps_dead_letters(
    env_user: User, run: Run, env_app: Any, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    queued(monkeypatch, env_app, 1)
    other = balsam_sync.connect(env_user.api_root, env_user.token, home=str(tmp_path / "other"))
    other.App.objects.get(id=env_app.id).delete()
    other.close()
    run("push", code=1)  # refused: a dead letter
    queue_offline(monkeypatch, make_app_again(env_user, tmp_path), 2).close()
    assert "is sound" in run("salvage").stdout
    out = run("salvage", "--force")
    assert "recovered: 2 pending, 0 in flight, 1 dead letter(s)" in out.stdout
    assert "1 dead letter(s)" in run("dead", "list").stdout
    assert run("push").stdout.startswith("sent 2,")


def make_app_again(user: User, tmp_path: Path) -> Any:
    c: Client = balsam_sync.connect(user.api_root, user.token, home=str(tmp_path / "third"))
    try:
        return make_app(c)
    finally:
        c.close()
