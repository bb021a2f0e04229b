"""Where the client's settings come from: arguments, then environment, then client.yml.

``BALSAM_SYNC_API_ROOT`` and ``BALSAM_SYNC_TOKEN`` win over the upstream settings file
(``~/.balsam/client.yml`` or ``BALSAM_CLIENT_PATH``), whose layout and 0600 mode we keep.

The server URL is normalised before anything uses it (``normalize_url``): scheme and host in
lower case, the default port dropped, no trailing slash. A URL holding a user name or password
is refused, so credentials never reach a file name, a log, a repr or a request. The mirror is
chosen by ``server_key``, which also treats every loopback spelling (``localhost``,
``127.0.0.1``, ``[::1]``) of one port as one server.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
import stat
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import platformdirs
import yaml

from .errors import ConfigError
from .resources import MAX_PAGE
from .utc import naive_utc

log = logging.getLogger(__name__)

ENV_API_ROOT = "BALSAM_SYNC_API_ROOT"
ENV_TOKEN = "BALSAM_SYNC_TOKEN"
ENV_QUEUE_HOME = "BALSAM_SYNC_QUEUE_HOME"
ENV_NODE = "BALSAM_SYNC_NODE"
ENV_HOME = "BALSAM_SYNC_HOME"
ENV_OFFLINE = "BALSAM_SYNC_OFFLINE"
ENV_MAX_REQUEST = "BALSAM_SYNC_MAX_REQUEST_SECONDS"
ENV_CLIENT_PATH = "BALSAM_CLIENT_PATH"
DEFAULT_PORTS = {"http": 80, "https": 443}
_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s]*@")


def redact_url(text: str) -> str:
    """``text`` with any user name and password inside a URL replaced by ``***``."""
    return _USERINFO.sub(r"\1***@", text)


def normalize_url(url: str) -> str:
    """Return the canonical form of a server URL: ``scheme://host[:port][/path]``.

    Raises:
        ConfigError: no http(s) scheme, no host, a bad port, a query or fragment, or a user
            name or password in the URL (the message never repeats them).
    """
    text = url.strip()
    shown = redact_url(text)
    parts = urlsplit(text)
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not text.lower().startswith(scheme + "://"):
        raise ConfigError(
            f"the server URL {shown!r} must start with http:// or https:// "
            "(e.g. https://balsam.example.org or http://127.0.0.1:8765)"
        )
    if "@" in parts.netloc:
        raise ConfigError(
            f"the server URL {shown} holds a user name or password: remove it from the URL "
            "(log in with `balsam-sync login`; the token is what authenticates you)"
        )
    try:
        port = parts.port
    except ValueError as exc:
        raise ConfigError(f"the server URL {shown!r} has a bad port") from exc
    host = (parts.hostname or "").rstrip(".")
    if not host or parts.query or parts.fragment:
        raise ConfigError(f"the server URL {shown!r} needs a host and no '?' or '#' part")
    host = f"[{host}]" if ":" in host else host
    netloc = host if port in (None, DEFAULT_PORTS[scheme]) else f"{host}:{port}"
    return f"{scheme}://{netloc}{re.sub('/+', '/', parts.path).rstrip('/')}"


def origin(url: str) -> str:
    """``scheme://host:port`` of a URL, the port always shown (what a connection is tried to);
    the text itself when it is no URL."""
    parts = urlsplit(url)
    try:
        port = parts.port or DEFAULT_PORTS.get(parts.scheme.lower())
    except ValueError:
        port = None
    host = parts.hostname or ""
    if not parts.scheme or not host:
        return redact_url(url)
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port else "")


def server_key(url: str) -> str:
    """Return the server's identity for the mirror: the normalised URL, loopback as localhost.

    ``http://localhost:8765`` and ``http://127.0.0.1:8765`` are one server (one port on this
    machine), so they share one mirror; requests still go to the URL as written.
    """
    normal = normalize_url(url)
    parts = urlsplit(normal)
    host = (parts.hostname or "").strip("[]")
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return normal
    netloc = "localhost" + (f":{parts.port}" if parts.port is not None else "")
    return f"{parts.scheme}://{netloc}{parts.path}"


def offline_from_env() -> bool:
    """Whether ``BALSAM_SYNC_OFFLINE`` asks for offline mode (1, true or yes)."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in ("1", "true", "yes")


PULL_ENV = {
    "max_request_seconds": (ENV_MAX_REQUEST, float),
    "reconcile_seconds": ("BALSAM_SYNC_RECONCILE_SECONDS", float),
    "page_rows": ("BALSAM_SYNC_PAGE_ROWS", int),
    "write_wait": ("BALSAM_SYNC_WRITE_WAIT", float),
}
"""Settings that may also come from the environment (e.g. for ``balsam-sync daemon``)."""


@dataclass(frozen=True)
class Settings:
    """Everything needed to build a client.

    Attributes:
        api_root: the server's base URL, normalised (``normalize_url``).
        token: bearer token, or None (only the auth routes work then).
        home: folder holding the mirror files.
        connect_timeout / read_timeout: seconds, as in upstream client.yml.
        retry_count: attempts for transient failures (first try included).
        offline: never touch the network (``BALSAM_SYNC_OFFLINE=1``).
        verify_tls: verify TLS certificates (turn off only explicitly).
        settings_path: the client.yml the values came from, if any.
        max_request_seconds: the longest the server may take from receiving a request to
            committing it (plus any clock difference between the server and its database).
            The server stamps a job's ``last_update`` when a request starts, so a pull reads
            again every job stamped within this many seconds before the server's clock
            (balsam_sync/sync/pull.py), and a POST whose reply was lost is only resent after
            this long.
        reconcile_seconds: a pull re-reads everything (as ``pull(full=True)``) when the last
            full pull is older than this.
        queue_home: folder holding the user's queue (``BALSAM_SYNC_QUEUE_HOME``; default: the
            mirror folder as chosen, before a network file system sends the mirror itself to
            node-local storage): where every login node of the user sees it.
        node: this login node's name in the user's queue (``BALSAM_SYNC_NODE``; default: the
            host name).
        page_rows: rows per page of the listings a pull reads (jobs, transfer items,
            events). A first pull keeps every page it stored when it is killed, so a smaller
            page loses less; a larger one costs the server fewer requests.
        retry_backoff: seconds writes and reads stay away from a server that just could not
            be reached, and writes wait before resending a change the server failed (doubled
            after each further failure, up to 60 s and 5 min).
        write_wait: the longest a write (``save()``, ``create()``, ...) waits for the reply of
            a server whose host took the request (a busy server); after it the change stays
            queued and the call returns. A connect the host never answers is given up on
            after 2 s, whatever this says.
    """

    api_root: str
    token: str | None = None
    home: Path | None = None
    connect_timeout: float = 6.2
    read_timeout: float = 120.0
    retry_count: int = 4
    offline: bool = False
    verify_tls: bool = True
    settings_path: Path | None = None
    max_request_seconds: float = 120.0
    retry_backoff: float = 2.0
    reconcile_seconds: float = 86_400.0
    queue_home: Path | None = None
    node: str | None = None
    page_rows: int = 20_000
    write_wait: float = 10.0

    def __post_init__(self) -> None:
        for name in PULL_ENV:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")
        if not isinstance(self.page_rows, int) or not 2 <= self.page_rows <= MAX_PAGE:
            raise ConfigError(
                f"page_rows must be a whole number from 2 to {MAX_PAGE} (the most rows the "
                f"server returns in one page), got {self.page_rows!r}"
            )

    def __repr__(self) -> str:
        # The token never appears in logs, reprs or tracebacks.
        shown = replace(self, token="***" if self.token else None)
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(shown).items())
        return f"Settings({fields})"

    @property
    def mirror_home(self) -> Path:
        return self.home or default_home()

    @property
    def queue_folder(self) -> Path:
        """Where the user's queue is kept (see ``queue_home``)."""
        env = os.environ.get(ENV_QUEUE_HOME)
        return self.queue_home or (Path(env) if env else self.mirror_home)

    @property
    def node_name(self) -> str | None:
        return self.node or os.environ.get(ENV_NODE) or None


def default_home() -> Path:
    """Return ``BALSAM_SYNC_HOME`` or the per-user data folder for balsam-sync."""
    env = os.environ.get(ENV_HOME)
    return Path(env) if env else Path(platformdirs.user_data_dir("balsam-sync"))


def client_yml_path() -> Path:
    """Return the upstream settings file location (``BALSAM_CLIENT_PATH`` overrides)."""
    env = os.environ.get(ENV_CLIENT_PATH)
    return Path(env) if env else Path.home() / ".balsam" / "client.yml"


def read_client_yml(path: Path) -> dict[str, Any]:
    """Return the settings stored at ``path`` ({} when the file does not exist).

    Raises:
        ConfigError: the file exists but cannot be read or is not a YAML mapping.
    """
    try:
        with open(path) as fh:
            _check_settings_file(path, os.fstat(fh.fileno()))
            text = fh.read()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise ConfigError(f"cannot read settings file {path}: {exc.strerror}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"settings file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"settings file {path} must hold a mapping, not {type(data).__name__}")
    return data


_warned: set[tuple[str, int]] = set()


def _check_settings_file(path: Path, st: os.stat_result) -> None:
    """Refuse a settings file of another user; warn (once) when others can read its token.

    Raises:
        ConfigError: the file belongs to another user (root's is accepted: an administrator's).
    """
    if st.st_uid not in (os.geteuid(), 0):
        raise ConfigError(
            f"settings file {path} belongs to another user (uid {st.st_uid}): it could send "
            "your work to any server. Remove it, or log in again (`balsam-sync login`)"
        )
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o044 and (str(path), mode) not in _warned:
        _warned.add((str(path), mode))
        log.warning(
            "settings file %s holds your token and others can read it (mode %04o): `chmod 600 %s`",
            path,
            mode,
            path,
        )


def write_client_yml(path: Path, values: dict[str, Any]) -> None:
    """Write settings with mode 0600 in a 0700 folder, keeping keys already there.

    The file is upstream's: datetimes are written as upstream's ``balsam login`` writes them,
    YAML timestamps in naive UTC (upstream subtracts ``datetime.utcnow()`` from them).
    """
    if not path.parent.exists():  # a folder that already existed keeps its mode
        path.parent.mkdir(mode=0o700, parents=True)
        os.chmod(path.parent, stat.S_IRWXU)
    merged = {**read_client_yml(path), **values}
    for key, value in list(merged.items()):
        if isinstance(value, datetime):
            merged[key] = naive_utc(value)
    tmp = path.with_suffix(".tmp")
    tmp.unlink(missing_ok=True)  # never written through: a link planted there just goes
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(merged, fh, default_flow_style=False, sort_keys=False)
    os.replace(tmp, path)


def load_settings(
    api_root: str | None = None,
    token: str | None = None,
    home: str | os.PathLike[str] | None = None,
    **overrides: Any,
) -> Settings:
    """Resolve settings from arguments, then the environment, then client.yml.

    Raises:
        ConfigError: no api_root anywhere, or an unreadable settings file.
    """
    env_root = os.environ.get(ENV_API_ROOT)
    env_token = os.environ.get(ENV_TOKEN)
    path = client_yml_path()
    stored: dict[str, Any] = {}
    if not (api_root or env_root) or not (token or env_token):
        stored = read_client_yml(path)
    root = api_root or env_root or stored.get("api_root")
    if not root:
        raise ConfigError(
            f"no Balsam server configured: set {ENV_API_ROOT} (and {ENV_TOKEN}), "
            f"pass api_root to balsam_sync.connect(), or run `balsam-sync login` to write {path}"
        )
    root = normalize_url(str(root))
    values: dict[str, Any] = {
        "api_root": root,
        "token": token or env_token or (stored.get("token") if _same(stored, root) else None),
        "home": Path(home) if home is not None else None,
        "offline": offline_from_env(),
        "settings_path": path if stored else None,
    }
    for key in ("connect_timeout", "read_timeout", "retry_count"):
        if key in stored:
            values[key] = stored[key]
    values.update(_pull_env())
    values.update(overrides)
    try:
        return Settings(**values)
    except TypeError as exc:
        raise ConfigError(f"unknown setting: {exc}") from exc


def _same(stored: dict[str, Any], root: str) -> bool:
    """Whether client.yml's server is ``root`` (under any spelling), so its token applies."""
    try:
        return server_key(str(stored.get("api_root", ""))) == server_key(root)
    except ConfigError:
        return False


def _pull_env() -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, (env, kind) in PULL_ENV.items():
        text = os.environ.get(env)
        if text:
            try:
                out[name] = kind(text)
            except ValueError as exc:
                raise ConfigError(f"{env} must be a number, got {text!r}") from exc
    return out
