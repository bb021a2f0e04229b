"""The real server with plain ``requests``: new users, data set-up, "another client" changes."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import requests

DEFAULT_API_ROOT = "http://127.0.0.1:8765"
PASSWORD = "bench-password-0"
ID_CHUNK = 500


@dataclass(frozen=True)
class User:
    api_root: str
    username: str
    token: str
    expiry: str | None


def register_user(api_root: str, prefix: str = "bench") -> User:
    """Register a brand-new user on the server and log in (as tests.conftest does)."""
    name = f"{prefix}-{uuid.uuid4().hex[:12]}"
    reply = requests.post(
        f"{api_root}/auth/password/register",
        json={"username": name, "password": PASSWORD},
        timeout=30,
    )
    if reply.status_code != 201:
        raise RuntimeError(f"register {name}: {reply.status_code} {reply.text[:300]}")
    login = requests.post(
        f"{api_root}/auth/password/login",
        data={"username": name, "password": PASSWORD},
        timeout=30,
    )
    if login.status_code != 200:
        raise RuntimeError(f"login {name}: {login.status_code} {login.text[:300]}")
    body = login.json()
    return User(api_root, name, str(body["access_token"]), body.get("expiration"))


def answers(api_root: str) -> str | None:
    """None when the server answers at ``api_root``, else why not."""
    try:
        requests.get(f"{api_root}/auth/how", timeout=5).raise_for_status()
    except requests.RequestException as exc:
        return str(exc)
    return None


class Api:
    """The REST API of one user with plain requests."""

    def __init__(self, user: User) -> None:
        self.root = user.api_root
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Bearer {user.token}"

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        reply = self.session.request(method, self.root + path, timeout=600, **kwargs)
        if reply.status_code >= 400:
            raise RuntimeError(f"{method} {path}: {reply.status_code} {reply.text[:300]}")
        return reply.json() if reply.content else None

    def site_and_app(self) -> tuple[int, int]:
        site = self.call(
            "POST", "/sites/", json={"name": f"bench-{uuid.uuid4().hex[:6]}", "path": "/bench"}
        )
        app = self.call(
            "POST",
            "/apps/",
            json={
                "site_id": site["id"],
                "name": "Bench",
                "serialized_class": "txt",
                "source_code": "print('bench')",
            },
        )
        return int(site["id"]), int(app["id"])

    def count(self, path: str, params: list[tuple[str, str]]) -> int:
        return int(self.call("GET", path, params=[*params, ("limit", "0")])["count"])

    def set_state(self, ids: list[int], state: str) -> None:
        """A query update on an id list (one PUT per 500 ids)."""
        for start in range(0, len(ids), ID_CHUNK):
            chunk = ids[start : start + ID_CHUNK]
            self.call(
                "PUT", "/jobs/", params=[("id", str(i)) for i in chunk], json={"state": state}
            )
