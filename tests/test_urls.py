"""Server URLs: one canonical form (and one mirror) per server, credentials refused and never
written anywhere, our Bearer token never replaced by Basic auth."""

from __future__ import annotations

import logging
import os
import uuid
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import balsam_sync
from balsam_sync.config import normalize_url, server_key
from balsam_sync.errors import ConfigError
from tests.clienv import Run, use_env
from tests.conftest import FAST_RETRY, User


@pytest.mark.parametrize(
    ("given", "normal"),
    [
        ("HTTP://Example.ORG:80/", "http://example.org"),
        ("https://balsam.example.org:443/api//v1/", "https://balsam.example.org/api/v1"),
        ("  http://127.0.0.1:8765  ", "http://127.0.0.1:8765"),
        ("http://[::1]:8765/", "http://[::1]:8765"),
        ("https://h.example.:8443", "https://h.example:8443"),
    ],
)
def test_urls_are_normalised(given: str, normal: str) -> None:
    assert normalize_url(given) == normal


def test_every_loopback_spelling_is_one_server() -> None:
    keys = {
        server_key(u)
        for u in ("http://127.0.0.1:8765/", "http://LOCALHOST:8765", "http://[::1]:8765")
    }
    assert keys == {"http://localhost:8765"}
    assert server_key("https://balsam.example.org:443/") == "https://balsam.example.org"
    assert server_key("http://127.0.0.1:8766") != server_key("http://127.0.0.1:8765")


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ("127.0.0.1:8765", "must start with http:// or https://"),
        ("ftp://example.org", "must start with http:// or https://"),
        ("http://", "needs a host"),
        ("http://h:port", "bad port"),
        ("http://h/?next=1", r"no '\?' or '#' part"),
    ],
)
def test_bad_urls_are_refused_clearly(given: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        normalize_url(given)


def test_credentials_in_the_url_are_refused_and_written_nowhere(
    nobody: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    user = nobody  # refused before anything is sent: no server needed
    caplog.set_level(logging.DEBUG)
    parts = urlsplit(user.api_root)
    leaky = f"{parts.scheme}://alice:s3cret-pw@{parts.netloc}/"
    home = tmp_path / "home"
    with pytest.raises(ConfigError, match="user name or password") as caught:
        balsam_sync.connect(leaky, user.token, home=str(home))
    assert "s3cret-pw" not in str(caught.value) and "***@" in str(caught.value)

    use_env(monkeypatch, user, home)
    run = Run(user.token, "s3cret-pw")
    for args in (["--api-root", leaky, "status"], ["login", "--url", leaky, "--username", "a"]):
        out = run(*args, code=1)
        assert out.stderr.startswith("error: the server URL") and "remove it" in out.stderr
    monkeypatch.setenv("BALSAM_SYNC_API_ROOT", leaky)
    assert "user name or password" in run("push", code=1).stderr
    assert not home.exists() or list(home.rglob("*")) == []
    assert "s3cret-pw" not in caplog.text


def test_login_needs_a_scheme(
    nobody: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    use_env(monkeypatch, nobody, tmp_path)
    out = Run(nobody.token)("login", "--url", "127.0.0.1:8765", "--username", "x", code=1)
    assert "must start with http:// or https://" in out.stderr and "SSL" not in out.stderr


def test_a_netrc_entry_never_replaces_our_bearer_token(
    user: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    netrc = tmp_path / ".netrc"
    host = urlsplit(user.api_root).hostname
    netrc.write_text(f"machine {host} login alice password s3cret-pw\n")
    os.chmod(netrc, 0o600)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(netrc))
    c = balsam_sync.connect(user.api_root, user.token, home=str(tmp_path / "h"), retry=FAST_RETRY)
    try:
        assert c.Site.objects.online().count() == 0  # Basic auth would be refused (401)
    finally:
        c.close()


def test_two_spellings_of_one_server_share_one_mirror(user: User, tmp_path: Path) -> None:
    port = urlsplit(user.api_root).port
    home = str(tmp_path / "home")
    numeric = balsam_sync.connect(f"http://127.0.0.1:{port}", user.token, home=home, offline=True)
    named = balsam_sync.connect(f"http://LocalHost:{port}/", user.token, home=home)
    try:
        numeric.Site.objects.create(name=f"s-{uuid.uuid4().hex[:6]}", path="/p")
        assert named.mirror.path == numeric.mirror.path
        assert named.status(check_server=False).pending == 1
        report = named.push()
        assert (report.sent, report.remaining) == (1, 0)
        assert named.Site.objects.online().count() == 1
    finally:
        numeric.close()
        named.close()


def test_status_and_push_point_at_changes_queued_in_another_mirror(
    user: User, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    use_env(monkeypatch, user, home)
    elsewhere = "http://127.0.0.1:9"  # another server (port): its own mirror, same user
    away = balsam_sync.connect(elsewhere, user.token, home=str(home), offline=True)
    away.Site.objects.create(name="queued-away", path="/p")
    away.close()
    run = Run(user.token)
    out = run("status")
    assert "pending:          0" in out.stdout
    assert "1 change(s) of yours wait in another mirror, for http://localhost:9" in out.stderr
    assert "--api-root http://localhost:9 push" in out.stderr
    assert "another mirror" in run("push").stderr
    assert run("status", "--json").stdout.count('"pending": 1') == 1  # under "elsewhere"
