"""Where the client's settings come from: arguments, then environment, then client.yml.

``BALSAM_SYNC_API_ROOT`` and ``BALSAM_SYNC_TOKEN`` win over the upstream settings file
(``~/.balsam/client.yml`` or ``BALSAM_CLIENT_PATH``), whose layout and 0600 mode we keep.
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import platformdirs
import yaml

from .errors import ConfigError

ENV_API_ROOT = "BALSAM_SYNC_API_ROOT"
ENV_TOKEN = "BALSAM_SYNC_TOKEN"
ENV_HOME = "BALSAM_SYNC_HOME"
ENV_OFFLINE = "BALSAM_SYNC_OFFLINE"
ENV_CLIENT_PATH = "BALSAM_CLIENT_PATH"
PULL_ENV = {
    "max_request_seconds": ("BALSAM_SYNC_MAX_REQUEST_SECONDS", float),
    "reconcile_seconds": ("BALSAM_SYNC_RECONCILE_SECONDS", float),
    "history_per_pull": ("BALSAM_SYNC_HISTORY_PER_PULL", int),
}
"""Pull settings that may also come from the environment (e.g. for ``balsam-sync daemon``)."""


@dataclass(frozen=True)
class Settings:
    """Everything needed to build a client.

    Attributes:
        api_root: the server's base URL.
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
            (balsam_sync/sync/pull.py).
        reconcile_seconds: a pull re-reads everything (as ``pull(full=True)``) when the last
            full pull is older than this.
        history_per_pull: most finished jobs whose transfer items and events (their history)
            one pull reads when they were never read (unfinished and changed jobs are always
            read): a first pull of a large account stays short and later pulls complete it.
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
    reconcile_seconds: float = 86_400.0
    history_per_pull: int = 1000

    def __post_init__(self) -> None:
        for name in PULL_ENV:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"{name} must be a number >= 0, got {value!r}")

    def __repr__(self) -> str:
        # The token never appears in logs, reprs or tracebacks.
        shown = replace(self, token="***" if self.token else None)
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(shown).items())
        return f"Settings({fields})"

    @property
    def mirror_home(self) -> Path:
        return self.home or default_home()


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
        text = path.read_text()
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


def write_client_yml(path: Path, values: dict[str, Any]) -> None:
    """Write settings with mode 0600 in a 0700 folder, keeping keys already there."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path.parent, stat.S_IRWXU)
    merged = {**read_client_yml(path), **values}
    for key, value in list(merged.items()):
        if isinstance(value, datetime):
            merged[key] = value.isoformat()
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        yaml.safe_dump(merged, fh, default_flow_style=False)
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
    root = str(root)
    if not root.startswith(("http://", "https://")):
        raise ConfigError(f"api_root must start with http:// or https://, got {root!r}")
    same_server = str(stored.get("api_root", "")).rstrip("/") == root.rstrip("/")
    values: dict[str, Any] = {
        "api_root": root.rstrip("/"),
        "token": token or env_token or (stored.get("token") if same_server else None),
        "home": Path(home) if home is not None else None,
        "offline": os.environ.get(ENV_OFFLINE, "").lower() in ("1", "true", "yes"),
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
