"""A full disk under the mirror, and a mirror folder that cannot be used.

The full disk is real: a small tmpfs mounted as the home (the tests run as root; without the
right to mount, the test fails and says so). Nothing is half-written and the queue survives.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

import balsam_sync
from balsam_sync.cache import check
from balsam_sync.client import Client
from balsam_sync.errors import MirrorError, MirrorFull
from balsam_sync.spec import QuerySpec
from tests.clienv import Run, make_app, queue_offline
from tests.conftest import FAST_RETRY, User, server_jobs


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 2 MiB tmpfs, unmounted afterwards."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0700", "tmpfs", str(mount)],
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs (needs root): {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until the disk has no room left; return it."""
    filler = disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)
    return filler


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "balsam_sync.cli", *args]
    env = dict(os.environ)
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=120)


def test_a_full_disk_gives_one_clear_line_and_loses_nothing(
    env_user: User, small_disk: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BALSAM_SYNC_HOME", str(small_disk))
    other = balsam_sync.connect(env_user.api_root, env_user.token, home=str(tmp_path / "other"))
    app = make_app(other)
    blob = {"blob": "x" * 4000}
    other.Job.objects.bulk_create(
        [other.Job(workdir=f"big/{i}", app_id=app.id, data=blob) for i in range(600)]
    )
    other.close()
    queue_offline(monkeypatch, app, 3, prefix="mine").close()
    client = balsam_sync.connect(retry=FAST_RETRY)
    mirror = client.mirror.path
    offline = balsam_sync.connect(offline=True)
    # Never pulled, so queries refuse offline; the mirror's own rows are counted instead.
    assert offline.mirror.count(QuerySpec("Job")) == 3  # opened before the disk fills
    filler = fill(small_disk)

    pulled = cli("pull")
    lines = pulled.stderr.strip().splitlines()
    assert pulled.returncode == 1, pulled.stderr
    assert len(lines) == 1 and lines[0].startswith("error: the disk holding"), pulled.stderr
    assert str(mirror) in lines[0] and lines[0].endswith(".")

    with pytest.raises(MirrorFull, match="full"):
        offline.Job.objects.bulk_create(
            [offline.Job(workdir=f"late/{i}", app_id=app.id) for i in range(200)]
        )
    assert offline.mirror.count(QuerySpec("Job")) == 3  # the refused write left no trace
    assert offline.status(check_server=False).pending == 3
    offline.close()
    client.close()

    filler.unlink()
    assert check(mirror) == []
    assert Run(env_user.token)("push").stdout.strip() == "sent 3, failed 0, dead 0, remaining 0"
    workdirs = [j["workdir"] for j in server_jobs(env_user)]
    assert len(workdirs) == 603 and sum(w.startswith("mine/") for w in workdirs) == 3


@pytest.mark.parametrize("kind", ["missing", "a file"])
def test_an_unusable_home_is_a_clear_error_and_online_reads_still_work(
    env_user: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kind: str
) -> None:
    if kind == "missing":
        home = Path("/proc/nope")
    else:
        home = tmp_path / "plain-file"
        home.write_text("not a folder")
    monkeypatch.setenv("BALSAM_SYNC_HOME", str(home))
    client: Client = balsam_sync.connect(retry=FAST_RETRY)
    try:
        assert client.Site.objects.count() == 0  # the server answers
        with pytest.raises(MirrorError, match="BALSAM_SYNC_HOME") as caught:
            client.Site.objects.offline().count()
        assert str(home) in str(caught.value)
        with pytest.raises(MirrorError):
            client.Site.objects.create(name=f"s-{uuid.uuid4().hex[:6]}", path="/p")
    finally:
        client.close()
    out = Run(env_user.token)("jobs", code=1)
    assert out.stderr.startswith("error: cannot use") and len(out.stderr.splitlines()) == 1
    assert "BALSAM_SYNC_HOME" in out.stderr and "Traceback" not in out.stderr
