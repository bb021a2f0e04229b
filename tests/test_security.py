"""Secrets stay secret, settings problems are clear, oversized input never leaves (R4, security)."""

from __future__ import annotations

import logging
import stat
import time
from pathlib import Path
from typing import Any

import pytest

import balsam_sync
from balsam_sync import errors
from balsam_sync.client import Client
from tests.conftest import FAST_RETRY, RequestLog, User, fake_jwt
from tests.mirror_view import held_count


def test_an_expired_looking_token_is_sent_and_the_server_decides(
    balsam_server: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    token = fake_jwt(sub=1, username="x", exp=int(time.time()) - 60)
    client = balsam_sync.connect(balsam_server, token, home=str(tmp_path), retry=FAST_RETRY)
    calls: list[str] = []
    client.transport.on_request.append(lambda method, url: calls.append(url))
    with pytest.raises(errors.NotAuthenticated) as caught:
        client.Site.objects.online().count()
    assert len(calls) == 1 and caught.value.status == 401  # the server's answer, not ours
    assert token not in str(caught.value)
    assert "seems to have expired" in caplog.text
    st = client.status()
    assert st.token_accepted is False and st.server_reachable is True


def test_the_token_never_reaches_logs_or_errors(
    user: User, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    client = balsam_sync.connect(user.api_root, user.token, home=str(tmp_path), retry=FAST_RETRY)
    site = client.Site.objects.create(name="sec", path="/sec")
    client.pull()
    with pytest.raises(errors.Rejected) as caught:
        client.Site.objects.create(name="sec", path="/again")
    dead = balsam_sync.connect("http://127.0.0.1:9", user.token, home=str(tmp_path / "d"))
    with pytest.raises(errors.OfflineError) as offline:
        dead.Site.objects.online().count()
    texts = [caplog.text, str(caught.value), repr(caught.value), str(offline.value)]
    texts += [repr(client.settings), repr(client), str(client.status())]
    assert all(user.token not in t for t in texts)
    assert site.id > 0


def test_mirror_and_settings_files_are_private(client: Client, tmp_path: Path) -> None:
    client.Site.objects.create(name="priv", path="/priv")
    path = client.mirror.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    settings = tmp_path / "cfg" / "client.yml"
    balsam_sync.config.write_client_yml(settings, {"api_root": "http://x", "token": "t"})
    assert stat.S_IMODE(settings.stat().st_mode) == 0o600
    assert stat.S_IMODE(settings.parent.stat().st_mode) == 0o700


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("api_root: [unclosed", "not valid YAML"),
        ("- just\n- a list\n", "must hold a mapping"),
    ],
)
def test_a_broken_settings_file_is_a_clear_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, content: str, message: str
) -> None:
    path = tmp_path / "client.yml"
    path.write_text(content)
    monkeypatch.setenv("BALSAM_CLIENT_PATH", str(path))
    monkeypatch.delenv("BALSAM_SYNC_API_ROOT", raising=False)
    monkeypatch.delenv("BALSAM_SYNC_TOKEN", raising=False)
    with pytest.raises(errors.ConfigError, match=message):
        balsam_sync.connect()


def test_an_unreadable_settings_file_is_a_clear_config_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BALSAM_CLIENT_PATH", str(tmp_path))  # a folder: cannot be read as a file
    monkeypatch.delenv("BALSAM_SYNC_API_ROOT", raising=False)
    with pytest.raises(errors.ConfigError, match="cannot read settings file"):
        balsam_sync.connect()


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"workdir": "x" * 257}, "257 characters"),
        ({"workdir": "/absolute/path"}, "absolute"),
        ({"parameters": {"blob": "x" * 600_000}}, "512000"),
    ],
)
def test_oversized_or_invalid_jobs_are_refused_before_anything_is_written(
    unreachable: Client, unreachable_sent: RequestLog, fields: dict[str, Any], message: str
) -> None:
    client, sent = unreachable, unreachable_sent  # it would try to send, if it got that far
    with pytest.raises(errors.UsageError, match=message):
        client.Job.objects.create(app_id=1, **{"workdir": "ok", **fields})
    assert len(sent) == 0
    assert client.status(check_server=False).pending == 0
    assert held_count(client.Job.objects.all()) == 0


def test_oversized_site_and_app_names_are_refused(
    unreachable: Client, unreachable_sent: RequestLog
) -> None:
    with pytest.raises(errors.UsageError, match="100"):
        unreachable.Site(name="s" * 101, path="/p")
    with pytest.raises(errors.UsageError, match="512"):
        unreachable.Site(name="s", path="/" + "p" * 600)
    assert len(unreachable_sent) == 0
