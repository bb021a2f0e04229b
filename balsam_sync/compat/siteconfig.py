"""``site_config``: the Balsam site this process runs in, found as upstream finds it.

A site is a folder holding ``.balsam-site`` (its id) and ``settings.yml``; it is named by
``BALSAM_SITE_PATH`` or found by walking up from the current folder. Outside a site,
``balsam_sync.api.site_config`` is None, as upstream's is. The settings are the parsed YAML
mapping (upstream builds its scheduler and launcher objects from them; a client does not).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..config import read_client_yml
from ..errors import ConfigError
from .host import Host, default_client

ENV_SITE_PATH = "BALSAM_SITE_PATH"


class SiteConfig:
    """One Balsam site folder: its id, paths, settings and a client for its user."""

    def __init__(self, site_path: str | Path | None = None) -> None:
        self.site_path, self.site_id = self.resolve_site_path(site_path)
        yaml_settings = self.site_path / "settings.yml"
        if not yaml_settings.is_file():
            raise FileNotFoundError(f"{self.site_path} must contain a settings.yml")
        try:
            self.settings: dict[str, Any] = read_client_yml(yaml_settings)
        except ConfigError as exc:
            raise ConfigError(f"{yaml_settings} is invalid: {exc}") from exc

    @staticmethod
    def resolve_site_path(site_path: str | Path | None = None) -> tuple[Path, int]:
        """The site folder (argument, ``BALSAM_SITE_PATH``, or a parent of the cwd) and id."""
        found = site_path or os.environ.get(ENV_SITE_PATH) or SiteConfig.search_site_dir()
        if found is None:
            raise ValueError(
                "Initialize SiteConfig with a `site_path` or set env BALSAM_SITE_PATH to a "
                "Balsam site directory containing a .balsam-site file."
            )
        path = Path(found).resolve()
        if not path.is_dir():
            raise FileNotFoundError(f"BALSAM_SITE_PATH {path} must be an existing site folder")
        try:
            site_id = int(path.joinpath(".balsam-site").read_text())
        except FileNotFoundError as exc:
            raise FileNotFoundError(
                f"BALSAM_SITE_PATH {path} is not a valid Balsam site directory "
                "(does not contain a .balsam-site file)"
            ) from exc
        os.environ[ENV_SITE_PATH] = str(path)
        return path, site_id

    @staticmethod
    def search_site_dir() -> Path | None:
        """The nearest folder above the cwd (or the cwd) holding ``.balsam-site``."""
        for folder in (Path.cwd(), *Path.cwd().parents):
            if folder.joinpath(".balsam-site").is_file():
                return folder
        return None

    @property
    def client(self) -> Host:
        """The default client (the site's user, from client.yml or the environment)."""
        return default_client()

    @property
    def apps_path(self) -> Path:
        return self.site_path / "apps"

    @property
    def log_path(self) -> Path:
        return self.site_path / "log"

    @property
    def job_path(self) -> Path:
        return self.site_path / "qsubmit"

    @property
    def data_path(self) -> Path:
        return self.site_path / "data"

    def __repr__(self) -> str:
        return f"SiteConfig(site_path={str(self.site_path)!r}, site_id={self.site_id})"


def load_site_config() -> SiteConfig | None:
    """The site this process runs in, or None outside a site (as upstream's ``site_config``)."""
    try:
        return SiteConfig()
    except (ValueError, OSError, ConfigError):
        return None
