"""A shared home folder: nothing balsam_sync opens follows a link or trusts another user's file.

On a login node other users may be able to write to the folder holding the mirror. A symlink
planted where balsam_sync keeps its own file (the mirror, its WAL and shared-memory files, its
lock files, the link state, the daemon log, a salvage copy) must never be followed: the file it
points to stays exactly as it was, and the error names the path. A file or folder of another
user where balsam_sync expects its own is refused; a home folder others can write to, and a
client.yml others can read, are warned about.

The tests run as root: a second OS user (``useradd``) owns the planted files, and the files
the links point to are root's (ours) or that user's. No test needs the server: every check
happens before a request would be sent.
"""

from __future__ import annotations

import logging
import os
import pwd
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import balsam_sync
from balsam_sync.cache import companion
from balsam_sync.cache import salvage as cache_salvage
from balsam_sync.client import Client
from balsam_sync.errors import ConfigError, MirrorError, UnsafeFile
from tests.clienv import Run
from tests.conftest import fake_jwt

OTHER = "bsync-other"
UNREACHABLE = "http://127.0.0.1:9"


@dataclass(frozen=True)
class Other:
    uid: int
    gid: int


@pytest.fixture(scope="session")
def other() -> Other:
    """A second OS user, made once (the tests run as root)."""
    if os.geteuid() != 0:
        pytest.fail("these tests plant files of another user: run them as root", pytrace=False)
    try:
        entry = pwd.getpwnam(OTHER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", OTHER],
            check=True,
            capture_output=True,
        )
        entry = pwd.getpwnam(OTHER)
    return Other(entry.pw_uid, entry.pw_gid)


@dataclass(frozen=True)
class Victim:
    """A file a planted link points to: it must stay exactly as it was."""

    path: Path
    before: tuple[bytes, int, int]

    def untouched(self) -> bool:
        st = self.path.stat()
        return (self.path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_uid) == self.before


def victim(path: Path, owner: Other | None = None) -> Victim:
    path.write_bytes(b"precious\n")
    os.chmod(path, 0o644)
    if owner is not None:
        os.chown(path, owner.uid, owner.gid)
    st = path.stat()
    return Victim(path, (path.read_bytes(), stat.S_IMODE(st.st_mode), st.st_uid))


def plant(link: Path, target: Path, other: Other) -> None:
    """A symlink made by the other user."""
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    os.lchown(link, other.uid, other.gid)


@pytest.fixture
def home(tmp_path: Path) -> Path:
    return tmp_path / "home"


def connect(home: Path, *, offline: bool = False) -> Client:
    token = fake_jwt(sub=1, username="shared")
    return balsam_sync.connect(UNREACHABLE, token, home=str(home), offline=offline)


@pytest.fixture
def client(home: Path) -> Iterator[Client]:
    c = connect(home)
    yield c
    c.close()


def _create_job(c: Client) -> None:
    c.Job.objects.create(workdir="w/1", app_id=1)


@pytest.mark.parametrize("owner", ["ours", "theirs"])
@pytest.mark.parametrize("suffix", [".open.lock", ".replay.lock", ".daemon.lock"])
def test_a_planted_link_at_a_lock_file_is_refused_and_its_target_untouched(
    client: Client, other: Other, tmp_path: Path, suffix: str, owner: str
) -> None:
    target = victim(tmp_path / "victim", other if owner == "theirs" else None)
    lock = companion(client.mirror_file, suffix)
    if suffix != ".open.lock":
        client.mirror  # opened before the link is planted  # noqa: B018
    plant(lock, target.path, other)
    with pytest.raises(UnsafeFile, match=str(lock)):
        if suffix == ".daemon.lock":
            client.daemon().run(max_rounds=1)
        elif suffix == ".replay.lock":
            client.push()
        else:
            _create_job(client)
    assert target.untouched()


@pytest.mark.parametrize("suffix", ["", "-wal", "-shm", "-journal"])
def test_a_planted_link_at_the_mirror_or_its_companions_is_refused(
    home: Path, other: Other, tmp_path: Path, suffix: str
) -> None:
    first = connect(home, offline=True)
    _create_job(first)
    path = first.mirror.path
    first.close()
    target = victim(tmp_path / "victim")
    companion = Path(f"{path}{suffix}")
    if suffix == "":
        os.replace(path, tmp_path / "moved.sqlite3")
    companion.unlink(missing_ok=True)
    plant(companion, target.path, other)
    again = connect(home, offline=True)
    with pytest.raises(UnsafeFile, match=str(companion)):
        _create_job(again)
    again.close()
    assert target.untouched()


def test_a_mirror_file_of_another_user_is_refused_and_left_as_it_is(
    home: Path, other: Other
) -> None:
    first = connect(home, offline=True)
    _create_job(first)
    path = first.mirror.path
    first.close()
    os.chown(path, other.uid, other.gid)
    os.chmod(path, 0o644)  # that user could read our queue and add changes we would send
    before = (path.read_bytes(), path.stat().st_uid, stat.S_IMODE(path.stat().st_mode))
    again = connect(home, offline=True)
    with pytest.raises(UnsafeFile, match=rf"{path}.*another user") as caught:
        again.Job.objects.offline().count()
    again.close()
    assert isinstance(caught.value, MirrorError)  # one of the mirror's errors, in one tree
    after = (path.read_bytes(), path.stat().st_uid, stat.S_IMODE(path.stat().st_mode))
    assert after == before


@pytest.mark.parametrize("which", ["home", "mirrors"])
def test_a_folder_of_another_user_or_a_link_in_place_of_ours_is_refused(
    home: Path, other: Other, tmp_path: Path, which: str
) -> None:
    folder = home if which == "home" else home / "mirrors"
    folder.mkdir(parents=True)
    os.chown(folder, other.uid, other.gid)
    c = connect(home, offline=True)
    with pytest.raises(UnsafeFile, match=rf"{folder}.*another user"):
        _create_job(c)
    c.close()
    assert folder.stat().st_uid == other.uid and not list(folder.iterdir())

    theirs = tmp_path / "theirs"
    theirs.mkdir()
    mirrors = home / "mirrors"
    if mirrors.exists():
        mirrors.rmdir()
    os.chown(home, 0, 0)
    plant(mirrors, theirs, other)
    c = connect(home, offline=True)
    with pytest.raises(UnsafeFile, match=rf"{mirrors}.*link"):
        _create_job(c)
    c.close()
    assert list(theirs.iterdir()) == []


def test_a_home_others_can_write_to_is_warned_about(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    home.mkdir(parents=True)
    os.chmod(home, 0o777)  # chmod ignores the umask
    caplog.set_level(logging.WARNING)
    c = connect(home, offline=True)
    _create_job(c)  # still works: a warning, as ssh gives
    c.close()
    assert f"{home}" in caplog.text and "0777" in caplog.text
    assert "others can write" in caplog.text


def test_a_planted_link_at_the_daemon_log_is_refused(
    home: Path, other: Other, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = fake_jwt(sub=1, username="shared")
    monkeypatch.setenv("BALSAM_SYNC_API_ROOT", UNREACHABLE)
    monkeypatch.setenv("BALSAM_SYNC_TOKEN", token)
    monkeypatch.setenv("BALSAM_SYNC_HOME", str(home))
    monkeypatch.setenv("BALSAM_CLIENT_PATH", str(tmp_path / "client.yml"))
    monkeypatch.delenv("BALSAM_SYNC_OFFLINE", raising=False)
    c = connect(home, offline=True)
    _create_job(c)  # the mirror exists: the daemon starts without asking the server
    log = companion(c.mirror_file, ".daemon.log")
    c.close()
    target = victim(tmp_path / "theirs.log", other)
    plant(log, target.path, other)
    out = Run(token)("daemon", "--once", code=1)
    assert str(log) in out.stderr and "link" in out.stderr
    assert target.untouched()
    chosen = tmp_path / "chosen.log"
    plant(chosen, target.path, other)
    out = Run(token)("daemon", "--once", "--log-file", str(chosen), code=1)
    assert str(chosen) in out.stderr
    assert target.untouched()


def test_the_link_state_never_follows_a_planted_link(
    client: Client, other: Other, tmp_path: Path
) -> None:
    target = victim(tmp_path / "victim")
    path = client.mirror.companion(".link.json")
    plant(path, target.path, other)
    plant(Path(f"{path}.{os.getpid()}.tmp"), target.path, other)
    _create_job(client)  # the server cannot be reached: the link state is written
    assert target.untouched()
    assert not path.is_symlink()  # replaced by our own file, never written through


def test_a_salvage_copy_never_follows_a_planted_link(
    home: Path, other: Other, tmp_path: Path
) -> None:
    first = connect(home, offline=True)
    _create_job(first)
    path = first.mirror.path
    first.close()
    with open(path, "r+b") as fh:  # a damaged header: salvage reads through a rebuilt one
        fh.write(b"\x00" * 100)
    target = victim(tmp_path / "victim")
    plant(path.with_name(path.name + ".repaired"), target.path, other)
    copy = cache_salvage._with_new_header(path)
    assert copy is not None and not copy.is_symlink()
    assert target.untouched()


def test_client_yml_readable_by_others_is_warned_about_and_another_users_is_refused(
    tmp_path: Path, other: Other, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = tmp_path / "cfg" / "client.yml"
    balsam_sync.config.write_client_yml(settings, {"api_root": UNREACHABLE, "token": "t"})
    monkeypatch.setenv("BALSAM_CLIENT_PATH", str(settings))
    monkeypatch.delenv("BALSAM_SYNC_API_ROOT", raising=False)
    monkeypatch.delenv("BALSAM_SYNC_TOKEN", raising=False)
    caplog.set_level(logging.WARNING)
    balsam_sync.connect().close()
    assert "client.yml" not in caplog.text  # 0600: nothing to say
    os.chmod(settings, 0o644)
    balsam_sync.connect().close()
    assert str(settings) in caplog.text and "0644" in caplog.text
    os.chown(settings, other.uid, other.gid)
    with pytest.raises(ConfigError, match=rf"{settings}.*another user"):
        balsam_sync.connect()


def test_a_planted_link_at_client_yml_temporary_file_is_not_followed(
    tmp_path: Path, other: Other
) -> None:
    settings = tmp_path / "cfg" / "client.yml"
    target = victim(tmp_path / "victim")
    plant(settings.with_suffix(".tmp"), target.path, other)
    balsam_sync.config.write_client_yml(settings, {"api_root": UNREACHABLE, "token": "t"})
    assert target.untouched()
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
